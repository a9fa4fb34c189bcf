//! Why a client cannot talk to the brokers, and what a service does about it.
//!
//! librdkafka never fails a request because a password or a certificate is wrong: it reports
//! the failure as an error *event* (`sasl_ssl://host:9095/bootstrap: SASL authentication
//! error: ...`) and keeps reconnecting, while the request waits for its own timeout and then
//! says only "timed out". [`ConnectionContext`] catches those events and classifies them
//! ([`ConnectionProblem`]: the listener, the cause, librdkafka's words, the fix), so callers can
//! stop waiting at once and say what is wrong.
//!
//! Guarantees:
//! - [`check_connection`] returns `Ok` only after a metadata round trip with every security
//!   setting applied (TLS handshake, certificate and hostname verification, SASL), and fails
//!   as soon as the brokers reject the credentials or the certificate, with that problem.
//! - [`retry_until_connected`] never gives up on a problem an operator or time can fix: while a
//!   startup step fails, `/readyz` says why (listener, cause, fix) and the step is retried with
//!   jittered exponential backoff (1 s to 30 s) until it succeeds or the service shuts down.
//!   Each attempt builds new clients, so fixed TLS files on disk are picked up without a
//!   restart; secrets are resolved once at start, so a fixed password needs a restart.
//! - [`follow_brokers`]: once running, every broker going away turns `/readyz` to 503 with the
//!   reason until a request to the brokers succeeds again.

mod context;
mod follow;
mod problem;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use rdkafka::producer::{Producer, ThreadedProducer};
use sluice_core::config::KafkaConfig;
use sluice_telemetry::ops::Health;
use tokio_util::sync::CancellationToken;

pub use context::ConnectionContext;
pub use follow::follow_brokers;
pub use problem::{Cause, ConnectionProblem};

use crate::{client_config, KafkaError};

/// How long [`check_connection`] waits for metadata when no decisive problem shows up.
const CHECK_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest [`retry_until_connected`] waits between two attempts, jitter included.
pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(30);

/// Connect with every security setting and fetch the cluster's metadata (see the module docs).
/// A certificate that fails verification is looked at once more without the hostname check:
/// if it passes then, the problem is [`Cause::Hostname`] (trusted, but for another host).
pub async fn check_connection(kafka: &KafkaConfig) -> Result<(), KafkaError> {
    match probe(kafka).await {
        Err(KafkaError::Connection { operation, problem }) if problem.cause == Cause::Certificate && kafka.verifies_hostnames() => {
            // The chain verified without the hostname check if that connection succeeded or
            // failed only at a later step (SASL); the second connection sends no data.
            let cause = match probe(&kafka.without_hostname_check()).await {
                Ok(()) => Cause::Hostname,
                Err(KafkaError::Connection { problem: again, .. }) if again.cause == Cause::Authentication => Cause::Hostname,
                Err(_) => Cause::Certificate,
            };
            Err(KafkaError::Connection { operation, problem: ConnectionProblem { cause, ..problem } })
        }
        other => other,
    }
}

/// One connection attempt: metadata, or the first decisive problem, or (after
/// [`CHECK_TIMEOUT`]) the last problem seen.
async fn probe(kafka: &KafkaConfig) -> Result<(), KafkaError> {
    let context = ConnectionContext::default();
    // A threaded producer: its thread serves librdkafka's event queue, so error events arrive
    // while the metadata request waits.
    let client: ThreadedProducer<ConnectionContext> =
        client_config(kafka).create_with_context(context.clone()).map_err(|e| KafkaError::classify("create client", e))?;
    let stop = StopOnDrop(Arc::new(AtomicBool::new(false)));
    let fetch = tokio::task::spawn_blocking({
        let stop = Arc::clone(&stop.0);
        move || (fetch_metadata_until(&client, &stop), client)
    });
    let fetched = context.or_problem("connect", async {
        let (fetched, client) = fetch.await.expect("fetch_metadata does not panic");
        // Closing a client takes a poll interval or two (~100 ms); nobody needs to wait for it.
        tokio::task::spawn_blocking(move || drop(client));
        fetched.map_err(|e| KafkaError::classify("connect", e))
    });
    match fetched.await {
        // A timeout says nothing; the last problem (e.g. connection refused) says why.
        Err(KafkaError::Retryable { operation, source }) => match context.last_problem() {
            Some(problem) => Err(KafkaError::Connection { operation, problem }),
            None => Err(KafkaError::Retryable { operation, source }),
        },
        other => other,
    }
}

/// Metadata requests of up to a second each until one succeeds, [`CHECK_TIMEOUT`] passes or
/// `stop` is set: a blocking request cannot be cancelled, so short ones let an abandoned
/// attempt (a decisive problem came first) end within a second instead of reconnecting on.
fn fetch_metadata_until(client: &ThreadedProducer<ConnectionContext>, stop: &AtomicBool) -> rdkafka::error::KafkaResult<()> {
    let deadline = Instant::now() + CHECK_TIMEOUT;
    loop {
        let started = Instant::now();
        match client.client().fetch_metadata(None, Duration::from_secs(1)) {
            Ok(_) => return Ok(()),
            Err(error) if stop.load(Ordering::SeqCst) || Instant::now() >= deadline => return Err(error),
            Err(_) => std::thread::sleep(Duration::from_millis(100).saturating_sub(started.elapsed())),
        }
    }
}

/// Sets its flag when dropped, i.e. whichever way [`probe`] returns.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Run a startup step that needs the brokers until it succeeds (see the module docs); `None`
/// when `shutdown` came first. Every failure is retried, a client librdkafka refuses to build
/// too (a TLS file it cannot load may be fixed on disk; a property it refuses shows in
/// `/readyz` rather than as a restart loop).
pub async fn retry_until_connected<T, F, Fut>(step: &str, health: &Health, shutdown: &CancellationToken, mut attempt: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, KafkaError>>,
{
    // backon adds its jitter (up to 100 %) on top of the capped delay, so the cap is half the
    // bound the module docs promise: every wait stays within 1 s to 30 s.
    let mut backoff = ExponentialBuilder::default()
        .with_min_delay(Duration::from_secs(1))
        .with_max_delay(MAX_RETRY_DELAY / 2)
        .with_jitter()
        .without_max_times()
        .build();
    loop {
        let error = tokio::select! {
            result = attempt() => match result {
                Ok(value) => return Some(value),
                Err(error) => error,
            },
            _ = shutdown.cancelled() => return None,
        };
        let delay = backoff.next().unwrap_or(MAX_RETRY_DELAY).min(MAX_RETRY_DELAY);
        let fix = error.fix();
        health.set_not_ready(format!("kafka: {step}: {error}; fix: {fix}; retrying in {} s", delay.as_secs().max(1)));
        match &error {
            KafkaError::Connection { problem, .. } => tracing::error!(
                step, listener = %problem.listener, cause = problem.cause.describe(), error = %error, fix, delay_ms = delay.as_millis() as u64,
                "kafka unavailable at start; not ready, retrying"
            ),
            _ => tracing::warn!(step, error = %error, fix, delay_ms = delay.as_millis() as u64, "kafka unavailable at start; not ready, retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every wait between attempts stays within the documented 1 s to 30 s, jitter included,
    /// however long the failures last (backon's jitter comes on top of its cap).
    #[tokio::test(start_paused = true)]
    async fn waits_between_attempts_stay_within_one_to_thirty_seconds() {
        let health = Health::new();
        let shutdown = CancellationToken::new();
        let mut attempts: Vec<tokio::time::Instant> = Vec::new();
        let stopped = retry_until_connected("create topics", &health, &shutdown, || {
            attempts.push(tokio::time::Instant::now());
            if attempts.len() == 40 {
                shutdown.cancel();
            }
            std::future::ready(Err::<(), _>(KafkaError::Retryable { operation: "connect", source: rdkafka::error::KafkaError::MetadataFetch(rdkafka::types::RDKafkaErrorCode::BrokerTransportFailure) }))
        })
        .await;
        assert_eq!(stopped, None);
        let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(gaps.len(), 39);
        assert!(gaps.iter().all(|gap| *gap >= Duration::from_secs(1) && *gap <= MAX_RETRY_DELAY), "{gaps:?}");
        assert!(gaps.iter().any(|gap| *gap > Duration::from_secs(15)), "the backoff grows towards the cap: {gaps:?}");
    }

    #[tokio::test]
    async fn a_tls_file_librdkafka_cannot_load_is_retried_and_named_with_the_fix() {
        let dir = std::env::temp_dir().join(format!("sluice-kafka-bad-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // PEM-shaped, so the config accepts it; not a certificate, so OpenSSL refuses it.
        std::fs::write(dir.join("ca.pem"), "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n").unwrap();
        let text = format!(
            "[kafka]\nbootstrap_servers = \"127.0.0.1:1\"\nsecurity_protocol = \"ssl\"\ntls = {{ ca_file = \"{}\" }}\n[warehouse]\nkind = \"duckdb\"\npath = \"w.duckdb\"\n",
            dir.join("ca.pem").display()
        );
        let kafka = sluice_core::config::Config::parse("t.toml", &text).expect("valid config").kafka;
        let error = check_connection(&kafka).await.expect_err("librdkafka cannot load the CA");
        assert!(error.to_string().contains("ssl.ca.location"), "{error}");
        assert!(error.fix().contains("tls.ca_file"), "{}", error.fix());

        let health = Health::new();
        let shutdown = CancellationToken::new();
        let mut attempts = 0;
        let stopped = tokio::time::timeout(Duration::from_secs(10), async {
            retry_until_connected("create topics", &health, &shutdown, || {
                attempts += 1;
                if attempts == 2 {
                    shutdown.cancel();
                }
                check_connection(&kafka)
            })
            .await
        })
        .await
        .expect("shutdown ends the retries");
        assert_eq!(stopped, None, "no client, no value; the service stays up until shut down");
        let reason = health.not_ready_reason().expect("not ready");
        assert!(reason.starts_with("kafka: create topics: ") && reason.contains("ssl.ca.location") && reason.contains("fix: "), "{reason}");
    }
}
