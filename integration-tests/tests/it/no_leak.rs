//! Nothing private leaks: the poller and a sink, as processes at `RUST_LOG=debug`, carry rows
//! with emails and phone numbers to a vendor that throttles, refuses a record echoing its email
//! and phone back, and accepts the rest. Every log line of both processes and every series of
//! both `/metrics` must be free of the configured secrets (the webhook's signing secret, the
//! warehouse URL with its password) and of the raw emails and phone numbers; so must the
//! dead letter's headers (the vendor's excerpt is masked; the record itself stays in the payload,
//! which redrive needs).

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use sluice_core::naming;
use sluice_integration_tests::receiver::{self, Behaviour, Reply};
use sluice_integration_tests::process::{free_address, get as http_get};
use sluice_integration_tests::{binary, eventually, pipeline, postgres_url, read_topic, unique, Spec};

const WAIT: Duration = Duration::from_secs(120);
/// Standard Webhooks secret: `whsec_` + base64 of 24 bytes; unique to this test so a grep for it
/// finds only a leak.
const SIGNING_SECRET: &str = "whsec_TGVha1Byb2JlU2VjcmV0S2V5MDEyMzQ1Njc4";

fn email(id: i64) -> String {
    format!("leak.probe.{id}@example.com")
}

fn phone(id: i64) -> String {
    format!("+1 415 555 01{id:02}")
}

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        self.0.kill().ok();
        self.0.wait().ok();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn debug_logs_and_metrics_carry_no_secret_and_no_raw_email_or_phone() {
    let (url, received) = receiver::start().await;
    // The first request is throttled; a request holding row 4 gets 207 refusing it with the
    // vendor's words, which echo its email and phone (as vendors' validation errors do).
    received.set_behaviour(Behaviour::Script(Arc::new(|n, records| {
        if n == 0 {
            return Reply::error(429, Some("0"));
        }
        let refused: Vec<usize> = (0..records.len()).filter(|&i| records[i]["key"]["id"] == 4).collect();
        if refused.is_empty() {
            return Reply::ok(records.len());
        }
        let errors: Vec<serde_json::Value> = refused
            .iter()
            .map(|&i| {
                let fields = &records[i]["fields"];
                serde_json::json!({ "index": i, "message": format!("invalid contact {} / {}", fields["email"].as_str().unwrap_or(""), fields["phone"].as_str().unwrap_or("")) })
            })
            .collect();
        Reply { status: 207, body: serde_json::json!({ "errors": errors }).to_string(), apply: (0..records.len()).filter(|i| !refused.contains(i)).collect(), ..Reply::ok(0) }
    })));
    std::env::set_var("SLUICE_IT_LEAK_SIGNING_SECRET", SIGNING_SECRET);
    let p = pipeline(
        &url,
        Spec {
            bootstrap_servers: None,
            kafka_extra: "",
            columns_sql: "id bigint PRIMARY KEY, email text, phone text, updated_at timestamptz NOT NULL, created_at timestamptz NOT NULL",
            columns: &["id", "email", "phone", "updated_at", "created_at"],
            model_extra: "batch_rows = 3",
            destination_extra: "batch_max_records = 4\nbatch_linger_ms = 20\nretry = { initial_backoff_ms = 20, max_backoff_ms = 200, max_attempts = 5 }",
            webhook_extra: "signing_secret = { env = \"SLUICE_IT_LEAK_SIGNING_SECRET\" }",
            sync: "mode = \"upsert\"\nfields = { email = \"email\", phone = \"phone\" }",
            kind: None,
            detection: None,
        },
    )
    .await;
    for id in 1..=8i64 {
        p.db.execute(&format!("INSERT INTO {} VALUES ($1, $2, $3, clock_timestamp(), clock_timestamp())", p.table), &[&id, &email(id), &phone(id)]).await.unwrap();
    }

    let dir = std::env::temp_dir().join(unique("sluice-it-leak"));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("sluice.toml");
    std::fs::write(&config, &p.text).unwrap();
    let (poller_ops, sink_ops) = (free_address(), free_address());
    let spawn = |name: &str, log: &str, args: &[&str]| {
        let out = std::fs::File::create(dir.join(log)).unwrap();
        Process(
            Command::new(binary(name))
                .arg("--config")
                .arg(&config)
                .args(args)
                .env("RUST_LOG", "debug")
                .env("SLUICE_IT_WAREHOUSE_URL", postgres_url())
                .stdout(Stdio::from(out.try_clone().unwrap()))
                .stderr(Stdio::from(out))
                .spawn()
                .unwrap_or_else(|e| panic!("start {name}: {e}")),
        )
    };
    let poller = spawn("sluice-poller", "poller.log", &["--ops-listen", &poller_ops, "--trigger-listen", "127.0.0.1:0"]);
    let sink = spawn("sluice-sink", "sink.log", &["--destination", "crm", "--ops-listen", &sink_ops]);

    let dead_letters = naming::dead_letter_topic(&p.prefix, "crm");
    eventually("seven rows applied and row 4 dead-lettered", WAIT, || received.records().len() >= 7 && !read_topic(&dead_letters).is_empty()).await;
    // An update with a changed email and phone, so before images carry personal values too.
    p.db.execute(&format!("UPDATE {} SET email = $2, phone = $3, updated_at = clock_timestamp() WHERE id = $1", p.table), &[&2i64, &email(20), &phone(20)]).await.unwrap();
    eventually("the update applied", WAIT, || received.records().iter().any(|r| r["fields"]["email"] == email(20).as_str())).await;

    let mut metrics = String::new();
    for address in [&poller_ops, &sink_ops] {
        let (status, body) = http_get(address, "/metrics").await.expect("the service serves /metrics");
        assert_eq!(status, 200);
        metrics.push_str(&body);
    }
    assert!(metrics.contains("sluice_sink_records_total"), "the sink's series are there to check:\n{metrics}");
    drop((poller, sink));
    let logs = std::fs::read_to_string(dir.join("poller.log")).unwrap() + &std::fs::read_to_string(dir.join("sink.log")).unwrap();
    assert!(logs.lines().filter(|l| l.contains("DEBUG")).count() >= 5, "the services logged at debug level:\n{logs}");
    assert!(logs.contains("invalid contact"), "the vendor's refusal was logged (masked), so the check below has something to check:\n{logs}");

    let dlq = read_topic(&dead_letters);
    assert_eq!(dlq.len(), 1, "row 4, once");
    let dlq_headers: String = dlq.iter().flat_map(|r| r.headers.iter()).map(|(k, v)| format!("{k}={v}\n")).collect();
    assert!(dlq_headers.contains("invalid contact"), "the dead letter carries the vendor's excerpt: {dlq_headers}");

    let warehouse_url = postgres_url();
    let mut needles = vec![SIGNING_SECRET.to_string(), warehouse_url.clone()];
    if let Some((credentials, _)) = warehouse_url.split_once('@') {
        needles.push(format!("{}@", credentials.trim_start_matches("postgres://")));
    }
    for id in (1..=8).chain([20]) {
        needles.push(email(id));
        needles.push(phone(id));
        needles.push(phone(id).replace(' ', ""));
        needles.push(phone(id).chars().filter(char::is_ascii_digit).collect());
    }
    for (what, text) in [("logs", &logs), ("/metrics", &metrics), ("dead-letter headers", &dlq_headers)] {
        let found: Vec<&String> = needles.iter().filter(|needle| text.contains(needle.as_str())).collect();
        assert!(found.is_empty(), "{what} contain {found:?}:\n{}", text.lines().filter(|l| found.iter().any(|n| l.contains(n.as_str()))).take(20).collect::<Vec<_>>().join("\n"));
    }
    std::fs::remove_dir_all(&dir).ok();
}
