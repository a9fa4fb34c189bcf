//! Triggers against real PostgreSQL and Kafka: with an hour-long poll interval, a model runs at
//! once on `POST /run/<model>`, on a PostgreSQL `NOTIFY` on its channel, and at its cron times.


use std::sync::Arc;
use std::time::Duration;

use super::common::*;
use sluice_core::config::Config;
use sluice_integration_tests::{eventually, unique};
use sluice_telemetry::ops::Health;
use tokio_util::sync::CancellationToken;

fn hourly(f: &Fixture, extra: &str) -> Arc<Config> {
    let text = f.config_text.replace("poll_interval_ms = 200", &format!("poll_interval_ms = 3600000\n{extra}"));
    Arc::new(Config::parse("integration-test.toml", &text).expect("valid config"))
}

fn free_port() -> std::net::SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http_run_now_and_notify_start_a_run_at_once() {
    let f = fixture("diff", None, "").await;
    let channel = unique("sluice_wake");
    let config = hourly(&f, &format!("notify_channel = \"{channel}\""));
    upsert(&f, 1, "free", "1.00").await;
    let addr = free_port();
    let token = CancellationToken::new();
    let options = sluice_poller::RunOptions { confirm_large_change: Vec::new(), trigger_listen: Some(addr) };
    let poller = tokio::spawn(sluice_poller::run_with(Arc::clone(&config), None, options, Health::new(), token.clone()));
    eventually("first run at start", WAIT, || count(&decode_all(&f), "r") == 1).await;

    upsert(&f, 2, "free", "1.00").await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(decode_all(&f).len(), 1, "no run before the next hour without a trigger");
    let client = reqwest_free_post(addr, &f.model).await;
    assert_eq!(client, 202);
    eventually("run started by POST /run", WAIT, || count(&decode_all(&f), "c") == 1).await;
    assert_eq!(reqwest_free_post(addr, "no_such_model").await, 404);

    upsert(&f, 3, "free", "1.00").await;
    f.db.batch_execute(&format!("NOTIFY \"{channel}\"")).await.unwrap();
    eventually("run started by NOTIFY", WAIT, || count(&decode_all(&f), "c") == 2).await;
    token.cancel();
    poller.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cron_schedules_runs() {
    let f = fixture("diff", None, "").await;
    let config = hourly(&f, "cron = \"*/2 * * * * *\"");
    let token = CancellationToken::new();
    upsert(&f, 1, "free", "1.00").await;
    let poller = tokio::spawn(sluice_poller::run(Arc::clone(&config), None, Health::new(), token.clone()));
    eventually("first run at start", WAIT, || count(&decode_all(&f), "r") == 1).await;
    upsert(&f, 2, "free", "1.00").await;
    // The interval is an hour: only the cron schedule (every 2 s) can pick row 2 up.
    eventually("a cron run picks the new row up", Duration::from_secs(30), || count(&decode_all(&f), "c") == 1).await;
    token.cancel();
    poller.await.unwrap().unwrap();

    // A cron expression the poller cannot schedule never reaches it: the config is refused at
    // load (by every service and `sluice check`), at the model's line, with the fix.
    let bad = f.config_text.replace("poll_interval_ms = 200", "poll_interval_ms = 3600000\ncron = \"every tuesday\"");
    let error = Config::parse("integration-test.toml", &bad).unwrap_err();
    assert!(error.message.contains("cron = \"every tuesday\" does not parse"), "{error}");
    assert!(error.line.is_some() && error.fix.contains("e.g. \"0 */15 * * * *\""), "{error}");
}

/// POST with a raw HTTP/1.1 request (no HTTP client dependency needed); returns the status.
async fn reqwest_free_post(addr: std::net::SocketAddr, model: &str) -> u16 {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("POST /run/{model} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}
