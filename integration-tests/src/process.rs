//! Service *processes* for the fault tests: a binary started on a config file with an ops
//! address of its own and its output in a file, read over HTTP (`/readyz`, `/metrics`) the way
//! an orchestrator and a scraper read it, and signalled the way an orchestrator signals it.

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use crate::{binary, unique};

/// A running `sluice-sink` (or other service) process; killed when dropped.
pub struct Service {
    pub child: Child,
    /// The ops endpoints' address (`host:port`).
    pub ops: String,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
    dir: PathBuf,
}

impl Service {
    /// Start the sink of `destination` on `config_text`, with `env` added to its environment
    /// (`RUST_LOG=info` unless `env` sets it).
    pub fn sink(config_text: &str, destination: &str, env: &[(&str, &str)]) -> Service {
        Service::start("sluice-sink", config_text, &["--destination", destination], env)
    }

    /// Start binary `name` with `--config <file holding config_text> --ops-listen <free port>`
    /// and `args`.
    pub fn start(name: &str, config_text: &str, args: &[&str], env: &[(&str, &str)]) -> Service {
        let dir = std::env::temp_dir().join(unique("sluice-it-process"));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("sluice.toml");
        std::fs::write(&config, config_text).unwrap();
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let ops = free_address();
        let child = Command::new(binary(name))
            .arg("--config")
            .arg(&config)
            .args(["--ops-listen", &ops])
            .args(args)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .unwrap_or_else(|e| panic!("start {name}: {e}"));
        Service { child, ops, log, dir }
    }

    /// Its output so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `/readyz`: status and body, `None` while nothing listens.
    pub async fn readyz(&self) -> Option<(u16, String)> {
        get(&self.ops, "/readyz").await
    }

    /// The value of the series `series` (name and labels exactly as rendered, e.g.
    /// `sluice_sink_stopped{destination="crm"}`) on `/metrics`, `None` when absent.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let (_, body) = get(&self.ops, "/metrics").await?;
        body.lines().find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
    }

    /// Send SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("kill runs");
        assert!(status.success(), "kill -TERM {}", self.child.id());
    }

    /// Send SIGKILL and reap it.
    pub fn kill(&mut self) {
        self.child.kill().ok();
        self.child.wait().ok();
    }

    /// Wait up to `limit` for the process to exit; its status, or `None` if still running.
    pub async fn exited_within(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill();
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

/// A loopback address nothing listens on right now.
pub fn free_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// `GET path` over a raw HTTP/1.1 connection: the status and the body, or `None` while nothing
/// listens yet.
pub async fn get(address: &str, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(address).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response.split_once("\r\n\r\n").map_or("", |(_, body)| body).to_string();
    Some((status, body))
}
