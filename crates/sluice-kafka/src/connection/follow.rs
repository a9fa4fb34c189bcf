//! [`follow_brokers`]: readiness that follows the brokers going away mid-run and coming back.
//!
//! Guarantees:
//! - Once every broker a watched client knows is down (librdkafka's all-brokers-down event),
//!   `/readyz` is 503 with the reason ([`Health::set_away`]) until a metadata request to the
//!   brokers succeeds again; then it is ready again ([`Health::set_back`]), without a restart.
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

/// How often the brokers are asked for metadata while they are away.
const PROBE_EVERY: Duration = Duration::from_secs(1);
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
    let _ = fetch_metadata(&client).await;
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

/// The loop of [`follow_brokers`], with the request that says the brokers are back.
async fn follow<F, Fut>(context: &ConnectionContext, health: &Health, shutdown: &CancellationToken, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), KafkaError>>,
{
    loop {
        let reason = tokio::select! {
            reason = context.brokers_down() => reason,
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
    use std::sync::atomic::{AtomicUsize, Ordering};

    use rdkafka::types::RDKafkaErrorCode;

    use super::*;

    fn all_down(context: &ConnectionContext) {
        context.record(&rdkafka::error::KafkaError::Global(RDKafkaErrorCode::AllBrokersDown), "1/1 brokers are down");
    }

    fn unreachable() -> KafkaError {
        KafkaError::Retryable { operation: "fetch metadata", source: rdkafka::error::KafkaError::MetadataFetch(RDKafkaErrorCode::BrokerTransportFailure) }
    }

    #[tokio::test(start_paused = true)]
    async fn not_ready_with_the_reason_while_the_brokers_are_away_and_ready_once_a_request_succeeds() {
        let (context, health, shutdown) = (ConnectionContext::default(), Health::new(), CancellationToken::new());
        health.set_ready();
        let failures_left = Arc::new(AtomicUsize::new(3));
        let follower = tokio::spawn({
            let (context, health, shutdown, failures_left) = (context.clone(), Arc::clone(&health), shutdown.clone(), Arc::clone(&failures_left));
            async move {
                follow(&context, &health, &shutdown, || {
                    let failed = failures_left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
                    std::future::ready(if failed { Err(unreachable()) } else { Ok(()) })
                })
                .await
            }
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(health.not_ready_reason(), None, "no event, no change");

        all_down(&context);
        tokio::time::sleep(Duration::from_millis(10)).await;
        let reason = health.not_ready_reason().expect("not ready while every broker is down");
        assert!(reason.contains("every broker is down") && reason.contains("1/1 brokers are down"), "{reason}");
        // Three failed requests, one a second: still away after them.
        tokio::time::sleep(PROBE_EVERY * 3).await;
        assert!(health.not_ready_reason().is_some());
        tokio::time::sleep(PROBE_EVERY * 2).await;
        assert_eq!(health.not_ready_reason(), None, "a request succeeded: ready again");

        // Away again, and a fatal stop meanwhile: the recovery does not hide it.
        failures_left.store(1, Ordering::SeqCst);
        all_down(&context);
        tokio::time::sleep(Duration::from_millis(10)).await;
        health.set_not_ready("model m stopped: fenced");
        tokio::time::sleep(PROBE_EVERY * 4).await;
        assert_eq!(health.not_ready_reason().as_deref(), Some("model m stopped: fenced"));

        shutdown.cancel();
        follower.await.expect("the follower ends on shutdown");
    }
}
