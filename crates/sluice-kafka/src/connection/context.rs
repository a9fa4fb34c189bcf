//! [`ConnectionContext`]: the librdkafka client context that catches connection problems.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::producer::{NoCustomPartitioner, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;
use tokio::sync::watch;

use super::problem::ConnectionProblem;
use crate::KafkaError;

/// How often one problem is logged at most (librdkafka's own suppression interval).
const LOG_EVERY: Duration = Duration::from_secs(30);

/// A client context that records the connection problems librdkafka reports, and logs each
/// with its fix. Clone it before handing it to a client to watch the problems from outside.
#[derive(Clone)]
pub struct ConnectionContext {
    problems: Arc<watch::Sender<Option<ConnectionProblem>>>,
    /// When each problem was last logged: librdkafka reports one failure as two events, and a
    /// producer's context hears each event twice.
    logged: Arc<Mutex<HashMap<ConnectionProblem, Instant>>>,
    /// librdkafka's words from the last all-brokers-down event, until [`Self::clear_brokers_down`].
    brokers_down: Arc<watch::Sender<Option<String>>>,
}

impl Default for ConnectionContext {
    fn default() -> Self {
        ConnectionContext { problems: Arc::new(watch::Sender::new(None)), logged: Arc::default(), brokers_down: Arc::new(watch::Sender::new(None)) }
    }
}

impl ConnectionContext {
    /// The last problem seen, if any.
    pub fn last_problem(&self) -> Option<ConnectionProblem> {
        self.problems.borrow().clone()
    }

    /// Resolves with the first decisive problem ([`super::Cause::is_decisive`]); never otherwise.
    pub async fn decisive_problem(&self) -> ConnectionProblem {
        let mut problems = self.problems.subscribe();
        let found = problems.wait_for(|p| p.as_ref().is_some_and(|p| p.cause.is_decisive())).await.map(|problem| problem.clone());
        match found {
            Ok(problem) => problem.expect("waited for Some"),
            // The sender lives in `self`, so it is never dropped while this waits.
            Err(_) => std::future::pending().await,
        }
    }

    /// Resolves with librdkafka's words once every broker the client knows is down (an
    /// all-brokers-down event came and was not cleared since); never otherwise.
    pub async fn brokers_down(&self) -> String {
        let mut down = self.brokers_down.subscribe();
        match down.wait_for(Option::is_some).await.map(|reason| reason.clone()) {
            Ok(reason) => reason.expect("waited for Some"),
            // The sender lives in `self`, so it is never dropped while this waits.
            Err(_) => std::future::pending().await,
        }
    }

    /// Forget the last all-brokers-down event: [`Self::brokers_down`] waits for the next one.
    pub fn clear_brokers_down(&self) {
        self.brokers_down.send_replace(None);
    }

    /// Run a request of this context's client; a decisive problem ends it early with
    /// [`KafkaError::Connection`].
    pub async fn or_problem<T>(&self, operation: &'static str, request: impl Future<Output = Result<T, KafkaError>>) -> Result<T, KafkaError> {
        tokio::select! {
            result = request => result,
            problem = self.decisive_problem() => Err(KafkaError::Connection { operation, problem }),
        }
    }

    /// Record an error event (what [`ClientContext::error`] does; public so other contexts,
    /// such as a consumer's, can forward to it).
    pub fn record(&self, error: &rdkafka::error::KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) {
            // Not a problem of one listener: the brokers stopped (or the network went), which
            // time fixes; `super::follow_brokers` turns it into not-ready until one answers.
            if self.brokers_down.send_replace(Some(reason.to_string())).is_none() {
                tracing::warn!(target: "librdkafka", reason, "every kafka broker is down; retrying until one answers");
            }
            return;
        }
        let problem = error.rdkafka_error_code().and_then(|code| ConnectionProblem::from_event(code, reason));
        let Some(problem) = problem else {
            tracing::warn!(target: "librdkafka", %error, reason, "kafka client error");
            return;
        };
        if self.first_in_a_while(&problem) {
            let (listener, cause, fix) = (problem.listener.as_str(), problem.cause.describe(), problem.cause.fix());
            if problem.cause.is_decisive() {
                tracing::error!(listener, cause, detail = %problem.detail, fix, "kafka connection rejected");
            } else {
                tracing::warn!(listener, cause, detail = %problem.detail, fix, "kafka connection failed");
            }
        }
        self.problems.send_replace(Some(problem));
    }

    fn first_in_a_while(&self, problem: &ConnectionProblem) -> bool {
        let now = Instant::now();
        let mut logged = self.logged.lock().expect("log lock");
        match logged.get(problem) {
            Some(at) if now.duration_since(*at) < LOG_EVERY => false,
            _ => {
                logged.insert(problem.clone(), now);
                true
            }
        }
    }
}

impl ClientContext for ConnectionContext {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        self.record(&error, reason);
    }

    /// librdkafka's log, into `tracing` as rdkafka does by default, except broker failures at
    /// error level: every one of those also arrives as an error event, which [`Self::record`]
    /// logs classified and with its fix.
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error if facility == "FAIL" => {
                tracing::debug!(target: "librdkafka", "librdkafka: {facility} {message}")
            }
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", "librdkafka: {facility} {message}")
            }
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", "librdkafka: {facility} {message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => tracing::info!(target: "librdkafka", "librdkafka: {facility} {message}"),
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", "librdkafka: {facility} {message}"),
        }
    }
}

impl ProducerContext<NoCustomPartitioner> for ConnectionContext {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::producer::DeliveryResult<'_>, _: ()) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_all_brokers_down_event_is_kept_until_cleared_and_is_not_a_connection_problem() {
        let context = ConnectionContext::default();
        context.record(&rdkafka::error::KafkaError::Global(RDKafkaErrorCode::AllBrokersDown), "2/2 brokers are down");
        assert_eq!(context.brokers_down().await, "2/2 brokers are down");
        assert_eq!(context.last_problem(), None, "no listener refused anything");
        context.clear_brokers_down();
        let waited = tokio::time::timeout(Duration::from_millis(50), context.brokers_down()).await;
        assert!(waited.is_err(), "cleared: waits for the next event");
    }
}
