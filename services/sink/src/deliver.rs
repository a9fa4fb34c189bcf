//! Delivery of one batch: rate limits, adaptive concurrency, retries honouring the vendor's
//! `Retry-After`, per-record failures, isolation of refused records, dead-lettering.

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use rdkafka::message::{Headers, Message, OwnedMessage};
use sluice_core::config::RetryConfig;
use sluice_core::ErrorClass;
use sluice_destinations::{AnyDestination, DeliveryError, Destination, OutboundRecord};
use sluice_kafka::dead_letter::{DeadLetter, DeadLetterWriter};
use sluice_kafka::headers::dlq;
use sluice_kafka::KafkaError;
use tokio_util::sync::CancellationToken;

use crate::limits::{AdaptiveConcurrency, RateLimits};

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

/// Why a batch was not finished.
pub(crate) enum Stop {
    /// The service must stop (fatal destination error, DLQ unwritable).
    Failed(SinkError),
    /// Shutdown interrupted a retry wait: the records stay unfinished and are delivered again
    /// after restart.
    Interrupted,
}

/// A record that will not be applied, and why.
#[derive(Clone)]
struct Failure {
    class: ErrorClass,
    message: String,
    status: Option<u16>,
    excerpt: String,
    attempts: usize,
    first_failure_ms: i64,
    last_failure_ms: i64,
}

/// One record of a batch: the source message (for dead-lettering) and what to send.
pub(crate) struct Item {
    pub message: Arc<OwnedMessage>,
    pub record: OutboundRecord,
    pub bytes: usize,
}

pub(crate) struct Deliverer {
    pub destination: String,
    pub retry: RetryConfig,
    pub target: AnyDestination,
    pub dead_letters: DeadLetterWriter,
    pub limits: RateLimits,
    pub concurrency: AdaptiveConcurrency,
    pub shutdown: CancellationToken,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Deliverer {
    /// Deliver `records` (parallel to their source `messages`); returns once each is applied
    /// or dead-lettered (and the dead letter acknowledged).
    pub(crate) async fn deliver(&self, messages: &[Arc<OwnedMessage>], records: &[OutboundRecord]) -> Result<(), Stop> {
        let all: Vec<usize> = (0..records.len()).collect();
        let dead = self.attempt(records, all).await?;
        let applied = records.len() - dead.len();
        self.count("delivered", applied as u64);
        for (i, failure) in dead {
            self.dead_letter_failure(&messages[i], &failure).await.map_err(Stop::Failed)?;
        }
        Ok(())
    }

    /// Send the records at `indexes`, retrying what is retryable; returns the records that
    /// failed for good.
    async fn attempt(&self, records: &[OutboundRecord], mut indexes: Vec<usize>) -> Result<Vec<(usize, Failure)>, Stop> {
        let mut backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(self.retry.initial_backoff_ms))
            .with_max_delay(Duration::from_millis(self.retry.max_backoff_ms))
            .with_jitter()
            .with_max_times(self.retry.max_attempts.saturating_sub(1))
            .build();
        let mut dead = Vec::new();
        let mut attempts = 0;
        let mut first_failure_ms = None;
        let mut last_error: (String, Option<u16>, String);
        loop {
            attempts += 1;
            // The whole batch goes as it is; only a retried subset is copied.
            let batch: std::borrow::Cow<'_, [OutboundRecord]> = if indexes.len() == records.len() {
                std::borrow::Cow::Borrowed(records)
            } else {
                std::borrow::Cow::Owned(indexes.iter().map(|&i| records[i].clone()).collect())
            };
            let result = {
                let _slot = self.concurrency.acquire().await;
                let _permit = self.limits.acquire(batch.len()).await;
                let started = std::time::Instant::now();
                let result = self.target.send(&batch).await;
                metrics::histogram!("sluice_sink_request_seconds", "destination" => self.destination.clone()).record(started.elapsed().as_secs_f64());
                result
            };
            let now = now_ms();
            let first = *first_failure_ms.get_or_insert(now);
            let failure = |class: ErrorClass, message: String, status: Option<u16>, excerpt: String| Failure {
                class,
                message,
                status,
                excerpt,
                attempts,
                first_failure_ms: first,
                last_failure_ms: now,
            };
            let retry_after = match result {
                Ok(failures) => {
                    self.concurrency.success();
                    self.request("success");
                    if failures.is_empty() {
                        return Ok(dead);
                    }
                    let mut retry = Vec::new();
                    let mut retry_after = None;
                    for f in failures {
                        let Some(&original) = indexes.get(f.index) else { continue };
                        match self.effective_class(f.class, f.status) {
                            ErrorClass::Retryable { retry_after: ra } => {
                                retry.push(original);
                                retry_after = retry_after.max(ra);
                            }
                            ErrorClass::Fatal => return Err(Stop::Failed(SinkError::Fatal { message: f.message, status: f.status })),
                            ErrorClass::Permanent => dead.push((original, failure(ErrorClass::Permanent, f.message, f.status, f.excerpt))),
                        }
                    }
                    if retry.is_empty() {
                        return Ok(dead);
                    }
                    indexes = retry;
                    last_error = ("records refused as retryable inside a successful request".to_string(), None, String::new());
                    retry_after
                }
                Err(error) => {
                    let class = self.effective_class(error.class.clone(), error.status);
                    self.request(class.label());
                    match class {
                        ErrorClass::Fatal => return Err(Stop::Failed(SinkError::Fatal { message: error.message, status: error.status })),
                        ErrorClass::Permanent if indexes.len() > 1 => {
                            // Refused as a whole: find the bad records by sending them one by one.
                            tracing::info!(destination = %self.destination, records = indexes.len(), status = ?error.status, "request refused, isolating its records");
                            for i in indexes {
                                dead.extend(Box::pin(self.attempt(records, vec![i])).await?);
                            }
                            return Ok(dead);
                        }
                        ErrorClass::Permanent => {
                            dead.push((indexes[0], failure(ErrorClass::Permanent, error.message, error.status, error.excerpt)));
                            return Ok(dead);
                        }
                        ErrorClass::Retryable { retry_after } => {
                            self.concurrency.backoff();
                            log_retry(&self.destination, attempts, &error);
                            last_error = (error.message, error.status, error.excerpt);
                            retry_after
                        }
                    }
                }
            };
            let delay = match retry_after {
                // The vendor said when to come back (Retry-After, a reset time, a daily quota):
                // that is throttling, not failure. Waiting it out does not spend the retry
                // budget, so a daily limit pauses the destination instead of dead-lettering.
                Some(delay) => {
                    metrics::counter!("sluice_sink_throttled_seconds_total", "destination" => self.destination.clone()).increment(delay.as_secs());
                    delay
                }
                None => match backoff.next() {
                    Some(delay) => delay,
                    None => {
                        let (message, status, excerpt) = last_error;
                        let exhausted =
                            failure(ErrorClass::Retryable { retry_after: None }, format!("retries exhausted: {message}"), status, excerpt);
                        dead.extend(indexes.iter().map(|&i| (i, exhausted.clone())));
                        return Ok(dead);
                    }
                },
            };
            metrics::counter!("sluice_sink_retries_total", "destination" => self.destination.clone()).increment(1);
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.shutdown.cancelled() => return Err(Stop::Interrupted),
            }
        }
    }

    /// The destination's class, with the operator's extra retryable statuses applied.
    fn effective_class(&self, class: ErrorClass, status: Option<u16>) -> ErrorClass {
        match status {
            Some(s) if self.retry.retry_on_statuses.contains(&s) && class == ErrorClass::Permanent => ErrorClass::Retryable { retry_after: None },
            _ => class,
        }
    }

    fn request(&self, outcome: &'static str) {
        metrics::counter!("sluice_sink_requests_total", "destination" => self.destination.clone(), "outcome" => outcome).increment(1);
        metrics::gauge!("sluice_sink_concurrency_limit", "destination" => self.destination.clone()).set(self.concurrency.limit() as f64);
    }

    fn count(&self, outcome: &'static str, n: u64) {
        if n > 0 {
            metrics::counter!("sluice_sink_records_total", "destination" => self.destination.clone(), "outcome" => outcome).increment(n);
        }
    }

    async fn dead_letter_failure(&self, message: &OwnedMessage, failure: &Failure) -> Result<(), SinkError> {
        tracing::warn!(
            destination = %self.destination, topic = message.topic(), partition = message.partition(), offset = message.offset(),
            class = failure.class.label(), status = ?failure.status, attempts = failure.attempts, error = %failure.message,
            "record dead-lettered"
        );
        let context = DeadLetterContext {
            class: failure.class.label(),
            reason: &failure.message,
            status: failure.status,
            excerpt: &failure.excerpt,
            attempts: failure.attempts,
            first_failure_ms: failure.first_failure_ms,
            last_failure_ms: failure.last_failure_ms,
        };
        self.dead_letter(message, context).await
    }

    /// An unreadable message: dead-letter it with class `decode`.
    pub(crate) async fn dead_letter_unreadable(&self, message: &OwnedMessage, reason: &str) -> Result<(), SinkError> {
        tracing::warn!(destination = %self.destination, topic = message.topic(), partition = message.partition(), offset = message.offset(), %reason, "unreadable record dead-lettered");
        let now = now_ms();
        let context = DeadLetterContext { class: "decode", reason, status: None, excerpt: "", attempts: 0, first_failure_ms: now, last_failure_ms: now };
        self.dead_letter(message, context).await
    }

    async fn dead_letter(&self, message: &OwnedMessage, context: DeadLetterContext<'_>) -> Result<(), SinkError> {
        let mut headers: Vec<(String, Vec<u8>)> = message
            .headers()
            .map(|h| h.iter().map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec())).collect())
            .unwrap_or_default();
        let mut add = |key: &str, value: String| headers.push((key.to_string(), value.into_bytes()));
        add(dlq::ERROR_CLASS, context.class.to_string());
        add(dlq::ERROR_MESSAGE, context.reason.to_string());
        if let Some(status) = context.status {
            add(dlq::RESPONSE_STATUS, status.to_string());
        }
        add(dlq::RESPONSE_EXCERPT, context.excerpt.to_string());
        add(dlq::ATTEMPTS, context.attempts.to_string());
        add(dlq::FIRST_FAILURE_MS, context.first_failure_ms.to_string());
        add(dlq::LAST_FAILURE_MS, context.last_failure_ms.to_string());
        add(dlq::DESTINATION, self.destination.clone());
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
}

struct DeadLetterContext<'a> {
    class: &'static str,
    reason: &'a str,
    status: Option<u16>,
    excerpt: &'a str,
    attempts: usize,
    first_failure_ms: i64,
    last_failure_ms: i64,
}

fn log_retry(destination: &str, attempt: usize, error: &DeliveryError) {
    tracing::info!(%destination, attempt, status = ?error.status, error = %error.message, "retrying request");
}
