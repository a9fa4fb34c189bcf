//! [`follow_brokers`]: readiness that follows the brokers going away mid-run and coming back.
//!
//! Guarantees:
//! - Once every broker is down — librdkafka's all-brokers-down event from a watched client, or
//!   [`AWAY_AFTER`] metadata requests in a row unanswered (the event does not come while a
//!   client holds a broker entry it never connected to, such as the bootstrap one) — `/readyz`
//!   is 503 with the reason ([`Health::set_away`]) until a metadata request to the brokers
//!   succeeds again; then it is ready again ([`Health::set_back`]), without a restart. So the
//!   brokers going is noticed within about `AWAY_AFTER × (PROBE_EVERY + PROBE_TIMEOUT)` (9 s).
//! - It never touches the service's own readiness: a fatal stop stays not ready, whatever the
//!   brokers do (see [`Health`]).
//! - The services' own clients keep retrying by themselves meanwhile; nothing here ends or
//!   restarts their work.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::producer::{Producer, ThreadedProducer};
use sluice_core::config::KafkaConfig;
use sluice_telemetry::ops::Health;
use tokio_util::sync::CancellationToken;

use super::ConnectionContext;
use crate::{client_config, KafkaError};

/// How often the brokers are asked for metadata.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How many metadata requests in a row must go unanswered before the brokers count as away:
/// one slow answer is no outage.
pub const AWAY_AFTER: u32 = 3;
/// How long one such request may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Follow the brokers until `shutdown` (see the module docs). `context` is the context of the
/// service's own clients, whose events count too (a clone shares them); a client of its own
/// on that context makes sure some client always hears the brokers go, and asks them whether
/// they are back.
pub async fn follow_brokers(kafka: &KafkaConfig, context: ConnectionContext, health: Arc<Health>, shutdown: CancellationToken) {
    // A threaded producer: its thread serves librdkafka's event queue, so the all-brokers-down
    // event arrives without anyone polling.
    let client: Arc<ThreadedProducer<ConnectionContext>> = match client_config(kafka).create_with_context(context.clone()) {
        Ok(client) => Arc::new(client),
        Err(error) => {
            // The same settings already connected at start; nothing an operator could do here.
            tracing::error!(%error, "cannot create the client that follows the kafka brokers; /readyz will not follow them");
            return;
        }
    };
    // A first round trip, so the client holds a connection whose loss it reports.
    if let Err(error) = fetch_metadata(&client).await {
        // Not yet a reason to be not ready: the probes decide that, a few failures in a row.
        tracing::debug!(%error, "the broker follower's first metadata request failed");
    }
    follow(&context, &health, &shutdown, || fetch_metadata(&client)).await;
}

/// One metadata round trip (a blocking request, off the runtime's threads).
async fn fetch_metadata(client: &Arc<ThreadedProducer<ConnectionContext>>) -> Result<(), KafkaError> {
    let client = Arc::clone(client);
    tokio::task::spawn_blocking(move || client.client().fetch_metadata(None, PROBE_TIMEOUT).map(drop))
        .await
        .expect("fetch_metadata does not panic")
        .map_err(|e| KafkaError::classify("fetch metadata", e))
}

/// Ask the brokers every [`PROBE_EVERY`]; resolves once [`AWAY_AFTER`] requests in a row failed,
/// with the last failure.
async fn unanswered<F, Fut>(probe: &mut F) -> String
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), KafkaError>>,
{
    let mut failed = 0;
    loop {
        tokio::time::sleep(PROBE_EVERY).await;
        match probe().await {
            Ok(()) => failed = 0,
            Err(error) => {
                failed += 1;
                if failed >= AWAY_AFTER {
                    return format!("{failed} metadata requests in a row unanswered: {error}");
                }
            }
        }
    }
}

/// The loop of [`follow_brokers`], with the request that says the brokers are back.
async fn follow<F, Fut>(context: &ConnectionContext, health: &Health, shutdown: &CancellationToken, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), KafkaError>>,
{
    loop {
        let reason = tokio::select! {
            reason = context.brokers_down() => reason,
            reason = unanswered(&mut probe) => reason,
            _ = shutdown.cancelled() => return,
        };
        health.set_away(format!("kafka: every broker is down ({reason}); waiting for one to answer"));
        tracing::warn!(reason, "kafka brokers away; not ready until one answers");
        loop {
            tokio::select! {
                _ = tokio::time::sleep(PROBE_EVERY) => {}
                _ = shutdown.cancelled() => return,
            }
            // Cleared before asking: a broker that goes again during the request is a new
            // event, seen by the outer loop at once.
            context.clear_brokers_down();
            if probe().await.is_ok() {
                break;
            }
        }
        health.set_back();
        tracing::info!("kafka brokers answer again; ready");
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use rdkafka::types::RDKafkaErrorCode;

    use super::*;

    fn all_down(context: &ConnectionContext) {
        context.record(&rdkafka::error::KafkaError::Global(RDKafkaErrorCode::AllBrokersDown), "1/1 brokers are down");
    }

    fn unreachable() -> KafkaError {
        KafkaError::Retryable { operation: "fetch metadata", source: rdkafka::error::KafkaError::MetadataFetch(RDKafkaErrorCode::BrokerTransportFailure) }
    }

    /// A follower whose metadata requests succeed while `up` is set.
    fn spawn_follower(context: &ConnectionContext, health: &Arc<Health>, shutdown: &CancellationToken, up: &Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
        let (context, health, shutdown, up) = (context.clone(), Arc::clone(health), shutdown.clone(), Arc::clone(up));
        tokio::spawn(async move {
            follow(&context, &health, &shutdown, || std::future::ready(if up.load(Ordering::SeqCst) { Ok(()) } else { Err(unreachable()) })).await
        })
    }

    #[tokio::test(start_paused = true)]
    async fn not_ready_with_the_reason_from_the_event_until_a_request_succeeds_and_never_over_a_fatal_stop() {
        let (context, health, shutdown, up) = (ConnectionContext::default(), Health::new(), CancellationToken::new(), Arc::new(AtomicBool::new(true)));
        health.set_ready();
        let follower = spawn_follower(&context, &health, &shutdown, &up);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(health.not_ready_reason(), None, "brokers answering: no change");

        up.store(false, Ordering::SeqCst);
        all_down(&context);
        tokio::time::sleep(Duration::from_millis(10)).await;
        let reason = health.not_ready_reason().expect("not ready at the event, before any request failed");
        assert!(reason.contains("every broker is down") && reason.contains("1/1 brokers are down"), "{reason}");
        tokio::time::sleep(PROBE_EVERY * 5).await;
        assert!(health.not_ready_reason().is_some(), "still away while requests fail");
        up.store(true, Ordering::SeqCst);
        tokio::time::sleep(PROBE_EVERY + Duration::from_millis(10)).await;
        assert_eq!(health.not_ready_reason(), None, "a request succeeded: ready again");

        // Away again, and a fatal stop meanwhile: the recovery does not hide it.
        up.store(false, Ordering::SeqCst);
        all_down(&context);
        tokio::time::sleep(Duration::from_millis(10)).await;
        health.set_not_ready("model m stopped: fenced");
        up.store(true, Ordering::SeqCst);
        tokio::time::sleep(PROBE_EVERY * 4).await;
        assert_eq!(health.not_ready_reason().as_deref(), Some("model m stopped: fenced"));

        shutdown.cancel();
        follower.await.expect("the follower ends on shutdown");
    }

    /// No event (librdkafka keeps a broker entry it never connected to, so it never counts all
    /// of them down): requests unanswered [`AWAY_AFTER`] times in a row say it instead.
    #[tokio::test(start_paused = true)]
    async fn requests_unanswered_in_a_row_count_as_the_brokers_away_without_the_event() {
        let (context, health, shutdown, up) = (ConnectionContext::default(), Health::new(), CancellationToken::new(), Arc::new(AtomicBool::new(true)));
        health.set_ready();
        let follower = spawn_follower(&context, &health, &shutdown, &up);
        up.store(false, Ordering::SeqCst);
        tokio::time::sleep(PROBE_EVERY * (AWAY_AFTER - 1) + Duration::from_millis(10)).await;
        assert_eq!(health.not_ready_reason(), None, "fewer than AWAY_AFTER failures are no outage");
        tokio::time::sleep(PROBE_EVERY).await;
        let reason = health.not_ready_reason().expect("away after AWAY_AFTER failures");
        assert!(reason.contains("every broker is down") && reason.contains("3 metadata requests in a row unanswered"), "{reason}");
        up.store(true, Ordering::SeqCst);
        tokio::time::sleep(PROBE_EVERY + Duration::from_millis(10)).await;
        assert_eq!(health.not_ready_reason(), None);
        shutdown.cancel();
        follower.await.expect("the follower ends on shutdown");
    }
}
