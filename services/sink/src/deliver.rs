//! Delivery of a prepared batch: retries, isolation of rejected records, dead-lettering.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use sluice_core::config::RetryConfig;
use sluice_core::ErrorClass;
use sluice_destinations::{AnyDestination, DeliveryError, Destination, OutboundRecord};
use sluice_kafka::dead_letter::{DeadLetter, DeadLetterWriter};
use sluice_kafka::headers::dlq;
use sluice_kafka::KafkaError;
use tokio_util::sync::CancellationToken;

use crate::mapping::Prepared;

/// Why a sink stopped.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The configuration cannot work (unknown destination, no syncs, bad header).
    #[error("configuration: {0}")]
    Config(String),
    /// The destination refuses everything (credentials, endpoint): stop, dead-letter nothing.
    #[error("destination failed fatally: {message} (status {status:?})")]
    Fatal { message: String, status: Option<u16> },
    /// Kafka failed, including a dead-letter write that was not acknowledged.
    #[error(transparent)]
    Kafka(KafkaError),
}

/// A delivery attempt sequence that did not succeed.
#[derive(Clone)]
struct Failure {
    error: DeliveryError,
    attempts: usize,
    first_failure_ms: i64,
    last_failure_ms: i64,
}

pub(crate) struct Deliverer<'a> {
    pub destination: &'a str,
    pub retry: &'a RetryConfig,
    pub target: &'a AnyDestination,
    pub dead_letters: &'a DeadLetterWriter,
    pub shutdown: &'a CancellationToken,
}

/// Returned when shutdown interrupts a retry wait: the batch is left uncommitted and is
/// delivered again after restart.
pub(crate) struct Interrupted;

impl Deliverer<'_> {
    /// Deliver a batch; returns once every record is applied, skipped or dead-lettered.
    pub(crate) async fn deliver(&self, messages: &[BorrowedMessage<'_>], prepared: Vec<Prepared>) -> Result<Result<(), Interrupted>, SinkError> {
        let mut to_send: Vec<(usize, OutboundRecord)> = Vec::new();
        let mut skipped = 0u64;
        for (i, item) in prepared.into_iter().enumerate() {
            match item {
                Prepared::Deliver(record) => to_send.push((i, record)),
                Prepared::Skip => skipped += 1,
                Prepared::Reject(reason) => {
                    let now = now_ms();
                    tracing::warn!(destination = %self.destination, topic = messages[i].topic(), partition = messages[i].partition(), offset = messages[i].offset(), %reason, "unreadable record dead-lettered");
                    self.dead_letter(&messages[i], "decode", &reason, None, "", 0, now, now).await?;
                }
            }
        }
        self.count("skipped", skipped);
        if to_send.is_empty() {
            return Ok(Ok(()));
        }
        let records: Vec<OutboundRecord> = to_send.iter().map(|(_, r)| r.clone()).collect();
        match self.send_with_retries(&records).await {
            Err(Interrupted) => return Ok(Err(Interrupted)),
            Ok(Ok(())) => {
                self.count("delivered", records.len() as u64);
                return Ok(Ok(()));
            }
            Ok(Err(failure)) if failure.error.class == ErrorClass::Permanent && records.len() > 1 => {
                // The request was refused as a whole: find the bad records by sending them one by one.
                tracing::info!(destination = %self.destination, records = records.len(), status = ?failure.error.status, "batch refused, isolating records");
                for (i, record) in &to_send {
                    match self.send_with_retries(std::slice::from_ref(record)).await {
                        Err(Interrupted) => return Ok(Err(Interrupted)),
                        Ok(Ok(())) => self.count("delivered", 1),
                        Ok(Err(failure)) => self.handle_failure(&messages[*i], failure).await?,
                    }
                }
            }
            Ok(Err(failure)) => {
                if failure.error.class == ErrorClass::Fatal {
                    return Err(SinkError::Fatal { message: failure.error.message, status: failure.error.status });
                }
                for (i, _) in &to_send {
                    self.handle_failure(&messages[*i], failure.clone()).await?;
                }
            }
        }
        Ok(Ok(()))
    }

    async fn handle_failure(&self, message: &BorrowedMessage<'_>, failure: Failure) -> Result<(), SinkError> {
        if failure.error.class == ErrorClass::Fatal {
            return Err(SinkError::Fatal { message: failure.error.message, status: failure.error.status });
        }
        tracing::warn!(
            destination = %self.destination, topic = message.topic(), partition = message.partition(), offset = message.offset(),
            class = failure.error.class.label(), status = ?failure.error.status, attempts = failure.attempts, error = %failure.error.message,
            "record dead-lettered"
        );
        self.dead_letter(
            message,
            failure.error.class.label(),
            &failure.error.message,
            failure.error.status,
            &failure.error.excerpt,
            failure.attempts,
            failure.first_failure_ms,
            failure.last_failure_ms,
        )
        .await
    }

    /// Send with retries for retryable failures, honouring `Retry-After`. Returns the last
    /// failure when it is not retryable or the retry budget is spent.
    async fn send_with_retries(&self, records: &[OutboundRecord]) -> Result<Result<(), Failure>, Interrupted> {
        let mut backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(self.retry.initial_backoff_ms))
            .with_max_delay(Duration::from_millis(self.retry.max_backoff_ms))
            .with_jitter()
            .with_max_times(self.retry.max_attempts.saturating_sub(1))
            .build();
        let mut attempts = 0;
        let mut first_failure_ms = None;
        loop {
            attempts += 1;
            let started = std::time::Instant::now();
            let result = self.target.send(records).await;
            metrics::histogram!("sluice_sink_request_seconds", "destination" => self.destination.to_string()).record(started.elapsed().as_secs_f64());
            let error = match result {
                Ok(failures) if !failures.is_empty() => {
                    // Interim: per-record failures are treated as a refusal of the request.
                    let first = &failures[0];
                    DeliveryError { class: first.class.clone(), status: first.status, excerpt: first.excerpt.clone(), message: first.message.clone() }
                }
                Ok(_) => {
                    metrics::counter!("sluice_sink_requests_total", "destination" => self.destination.to_string(), "outcome" => "success").increment(1);
                    return Ok(Ok(()));
                }
                Err(error) => error,
            };
            metrics::counter!("sluice_sink_requests_total", "destination" => self.destination.to_string(), "outcome" => error.class.label()).increment(1);
            let now = now_ms();
            let first = *first_failure_ms.get_or_insert(now);
            let failure = |error| Failure { error, attempts, first_failure_ms: first, last_failure_ms: now };
            let ErrorClass::Retryable { retry_after } = error.class else {
                return Ok(Err(failure(error)));
            };
            let Some(delay) = backoff.next() else {
                return Ok(Err(failure(error)));
            };
            // The vendor's own instruction wins over our backoff.
            let delay = retry_after.unwrap_or(delay);
            metrics::counter!("sluice_sink_retries_total", "destination" => self.destination.to_string()).increment(1);
            tracing::info!(destination = %self.destination, attempt = attempts, status = ?error.status, delay_ms = delay.as_millis() as u64, error = %error.message, "retrying request");
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.shutdown.cancelled() => return Err(Interrupted),
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn dead_letter(
        &self,
        message: &BorrowedMessage<'_>,
        class: &str,
        reason: &str,
        status: Option<u16>,
        excerpt: &str,
        attempts: usize,
        first_failure_ms: i64,
        last_failure_ms: i64,
    ) -> Result<(), SinkError> {
        let mut headers: Vec<(String, Vec<u8>)> = message
            .headers()
            .map(|h| h.iter().map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec())).collect())
            .unwrap_or_default();
        let mut add = |key: &str, value: String| headers.push((key.to_string(), value.into_bytes()));
        add(dlq::ERROR_CLASS, class.to_string());
        add(dlq::ERROR_MESSAGE, reason.to_string());
        if let Some(status) = status {
            add(dlq::RESPONSE_STATUS, status.to_string());
        }
        add(dlq::RESPONSE_EXCERPT, excerpt.to_string());
        add(dlq::ATTEMPTS, attempts.to_string());
        add(dlq::FIRST_FAILURE_MS, first_failure_ms.to_string());
        add(dlq::LAST_FAILURE_MS, last_failure_ms.to_string());
        add(dlq::DESTINATION, self.destination.to_string());
        add(dlq::ORIGINAL_TOPIC, message.topic().to_string());
        add(dlq::ORIGINAL_PARTITION, message.partition().to_string());
        add(dlq::ORIGINAL_OFFSET, message.offset().to_string());
        if let Some(ts) = message.timestamp().to_millis() {
            add(dlq::ORIGINAL_TIMESTAMP_MS, ts.to_string());
        }
        self.dead_letters
            .write(DeadLetter { key: message.key(), payload: message.payload(), headers })
            .await
            .map_err(SinkError::Kafka)?;
        self.count("dead_lettered", 1);
        Ok(())
    }

    fn count(&self, outcome: &'static str, n: u64) {
        if n > 0 {
            metrics::counter!("sluice_sink_records_total", "destination" => self.destination.to_string(), "outcome" => outcome).increment(n);
        }
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
