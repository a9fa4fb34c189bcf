//! Logs written to a file or a pipe are plain text: no ANSI escape codes from any binary
//! (`sluice-poller`, `sluice-sink`, `sluice`), whatever `RUST_LOG` lets through. The service
//! processes run against the real broker and PostgreSQL until they have logged at `info` (so
//! there are log lines to check, not an empty file); colour stays for a terminal only.

use std::time::Duration;

use sluice_integration_tests::process::Service;
use sluice_integration_tests::{binary, eventually, pipeline, receiver, Spec};

const ESC: char = '\u{1b}';

/// The output holds log lines, and no escape code.
fn assert_plain(name: &str, output: &str) {
    assert!(output.contains("INFO"), "{name} logged at info: {output}");
    assert!(!output.contains(ESC), "{name} wrote ANSI escape codes to a file:\n{}", output.replace(ESC, "<ESC>"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_binary_logs_plain_text_to_a_file_or_a_pipe() {
    let (url, _received) = receiver::start().await;
    let spec = Spec {
        columns_sql: "id bigint PRIMARY KEY, email text, updated_at timestamptz NOT NULL, created_at timestamptz NOT NULL",
        columns: &["id", "email", "updated_at", "created_at"],
        sync: "fields = { email = \"email\" }",
        ..Spec::default()
    };
    let p = pipeline(&url, spec).await;
    let poller = Service::start("sluice-poller", &p.text, &["--trigger-listen", "127.0.0.1:0"], &[]);
    let sink = Service::sink(&p.text, "crm", &[]);
    let wait = Duration::from_secs(60);
    eventually("the poller logged its start", wait, || poller.output().contains("poller started")).await;
    eventually("the sink logged its start", wait, || sink.output().contains("sink started")).await;
    assert_plain("sluice-poller", &poller.output());
    assert_plain("sluice-sink", &sink.output());

    // The command line: a refused config and a refused argument, both to a pipe.
    for args in [&["check", "--config", "/nonexistent/sluice.toml"][..], &["check", "--no-such-flag"][..]] {
        let output = std::process::Command::new(binary("sluice")).args(args).env("RUST_LOG", "info").output().expect("sluice runs");
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(!output.status.success() && !text.trim().is_empty(), "sluice {args:?} says why it refused: {text}");
        assert!(!text.contains(ESC), "sluice {args:?} wrote ANSI escape codes to a pipe:\n{}", text.replace(ESC, "<ESC>"));
    }
}
