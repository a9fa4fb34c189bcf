//! Delivery of one batch: rate limits, adaptive concurrency, retries honouring the vendor's
//! `Retry-After`, per-record failures, isolation of refused records, dead-lettering.
//!
//! [`Deliverer::deliver`] returns `Ok` only once every record of the batch is applied or its
//! dead letter is durable, so the caller may then count the whole batch as finished. Otherwise:
//! - **Fatal** (the destination refuses everything, or a record's failure is fatal): stop with
//!   [`Stop::Failed`], and dead-letter *nothing*, not even records of the same batch refused
//!   before: they stay unfinished and are delivered again after the restart.
//! - **Stop** ([`Deliverer::shutdown`] cancelled: SIGTERM or a failure elsewhere): no request
//!   starts any more, a retry or rate-limit wait ends at once, and the records not finished
//!   stay so: [`Stop::Interrupted`], nothing dead-lettered. A request already sent is answered.
//! - **A dead-letter write fails**: [`Stop::Failed`]; the batch stays unfinished.
//!
//! The decisions, one request at a time ([`Deliverer::attempt`]):
//! - applied (with no record refused) → done;
//! - records refused inside a successful answer → the permanent ones are dead-lettered with the
//!   context of that answer, only the retryable ones are sent again;
//! - refused as a whole (permanent) with several records → sent one by one to find the bad ones
//!   (isolation), and only those are dead-lettered; with one record → dead-lettered;
//! - retryable → sent again after the vendor's `Retry-After` (or reset time) when it gave one,
//!   which spends no retry budget (throttling is a pause, not a failure); a throttle naming no
//!   wait after jittered backoff, which spends none either unless `retry.throttle = "budget"`;
//!   any other failure after jittered backoff, which does; once the budget is spent the records
//!   are dead-lettered as [`DeadLetterClass::RetriesExhausted`] ([`crate::retries`]);
//! - `retry.retry_on_statuses` turns a permanent status retryable (never a fatal one).
//!
//! Every attempt, retries included, takes an adaptive-concurrency slot and rate-limit permits
//! ([`crate::limits`]): vendors count every call.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use rdkafka::message::{Message, OwnedMessage};
use sluice_core::config::RetryConfig;
use sluice_core::{DeadLetterClass, ErrorClass};
use sluice_destinations::{DeliveryError, Destination, OutboundRecord, RecordFailure};
use sluice_kafka::KafkaError;
use tokio_util::sync::CancellationToken;

use crate::audit::{self, Audit, Refusal};
use crate::breaker::Breaker;
use crate::dead_letters::{self, Attempts, Cause, DeadLetterSink, Failure};
use crate::membership::{Pending, Presence};
use crate::limits::{AdaptiveConcurrency, RateLimits};
use crate::retries::{Again, Delay, Retries};

/// Why a sink stopped.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The configuration cannot work (unknown destination, no syncs, bad header).
    #[error("configuration: {0}")]
    Config(String),
    /// The destination refuses everything (credentials, endpoint): stop, dead-letter nothing.
    #[error("destination failed fatally: {message} (status {status:?})")]
    Fatal { message: String, status: Option<u16> },
    /// The dead-letter circuit breaker tripped: the sink halts rather than dead-letter more
    /// (`crate::breaker`).
    #[error("dead-letter circuit breaker tripped: {0}; fix the cause (the destination's answers are in the dead letters: `sluice dlq list`), then restart the sink and redrive")]
    Breaker(String),
    /// Kafka failed, including a dead-letter write that was not acknowledged.
    #[error(transparent)]
    Kafka(KafkaError),
}

impl SinkError {
    /// What stopped the sink, for a run record: the kind and the status, never a vendor's
    /// message (which may quote a record).
    pub(crate) fn summary(&self) -> String {
        match self {
            SinkError::Config(_) => "configuration error".into(),
            SinkError::Fatal { status, .. } => format!("destination failed fatally (status {})", status.map_or("none".to_string(), |s| s.to_string())),
            SinkError::Breaker(_) => "dead-letter circuit breaker tripped".into(),
            SinkError::Kafka(_) => "kafka failed (dead-letter write)".into(),
        }
    }
}

/// Why a batch was not finished.
#[derive(Debug)]
pub(crate) enum Stop {
    /// The service must stop (fatal destination error, DLQ unwritable).
    Failed(SinkError),
    /// Shutdown interrupted a retry wait: the records stay unfinished and are delivered again
    /// after restart.
    Interrupted,
}

/// One record of a batch: the source message (for dead-lettering) and what to send.
pub(crate) struct Item {
    pub message: Arc<OwnedMessage>,
    pub record: OutboundRecord,
    pub bytes: usize,
    /// What the record says about its row, for the membership stage's send-time decision.
    pub presence: Presence,
    /// What finishes when the record is applied or dead-lettered.
    pub done: Done,
}

/// What an applied (or dead-lettered) record finishes.
pub(crate) enum Done {
    /// Its own offset.
    Offset,
    /// One part of a list record's work ([`crate::membership::Pending`]): a recompute, or the
    /// delivery of a record whose topic is both a list's and a sync's.
    Part(Arc<Pending>),
}

/// Milliseconds since the epoch, for the failure times of dead letters.
pub(crate) type Clock = fn() -> i64;

/// The wall clock, for [`Deliverer::clock`] in production.
pub(crate) fn system_clock() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Delivers batches to the destination `D` and dead-letters through `L`.
pub(crate) struct Deliverer<D, L> {
    /// The destination's configured name (metrics, logs, the dead-letter header).
    pub destination: String,
    pub retry: RetryConfig,
    pub target: D,
    pub dead_letters: L,
    pub limits: RateLimits,
    pub concurrency: AdaptiveConcurrency,
    /// The sink's stop (`Shared::stop`: SIGTERM or a failure): once cancelled no request starts
    /// and every wait ends.
    pub shutdown: CancellationToken,
    /// A field, not a call, so tests under paused time can read tokio's clock instead.
    pub clock: Clock,
    /// Asked before every dead letter; shared by every lane of the destination.
    pub breaker: Arc<Breaker>,
    /// Where each batch's run record and its records' outcomes go ([`crate::audit`]).
    pub audit: Arc<Audit>,
}

/// What the answer to one request means for the records it carried.
struct Decision {
    /// Records refused for good by this answer (indexes into the batch), with why.
    refused: Vec<(usize, Failure)>,
    /// What to do with the others.
    next: Next,
}

enum Next {
    /// Nothing left to send: the records not refused were applied.
    Done,
    /// Send these records (indexes into the batch) again, when `again` says
    /// ([`crate::retries`]). `cause` is what they are dead-lettered with if the budget runs out.
    Retry { indexes: Vec<usize>, again: Again, cause: Cause },
    /// Refused as a whole while carrying several records: send them one by one to find the bad
    /// ones, rather than dead-letter good records with them.
    Isolate,
}

impl<D: Destination, L: DeadLetterSink> Deliverer<D, L> {
    /// Deliver `records` (parallel to their source `messages`); returns once each is applied
    /// or dead-lettered (and the dead letter acknowledged). The batch's audit records follow
    /// ([`crate::audit`]).
    pub(crate) async fn deliver(&self, messages: &[Arc<OwnedMessage>], records: &[OutboundRecord]) -> Result<(), Stop> {
        let started_ms = (self.clock)();
        let result = self.apply(messages, records).await;
        let batch = audit::Batch { messages, records, started_ms, finished_ms: (self.clock)() };
        match &result {
            Ok(refused) => self.audit.finished(self.target.kind(), &batch, refused),
            Err(Stop::Failed(error)) => self.audit.failed(self.target.kind(), &batch, error.summary()),
            Err(Stop::Interrupted) => {}
        }
        result.map(|_| ())
    }

    /// [`Deliverer::deliver`] without its audit: the records refused, once dead-lettered.
    async fn apply(&self, messages: &[Arc<OwnedMessage>], records: &[OutboundRecord]) -> Result<Vec<(usize, Refusal)>, Stop> {
        let refused = self.attempt(records, (0..records.len()).collect()).await?;
        self.count("delivered", (records.len() - refused.len()) as u64);
        self.breaker.applied((records.len() - refused.len()) as u64);
        crate::telemetry::applied(&self.destination, records, refused.iter().map(|(i, _)| *i), (self.clock)());
        let mut refusals = Vec::with_capacity(refused.len());
        for (i, failure) in refused {
            let class = self.dead_letter_refused(&messages[i], &failure).await.map_err(Stop::Failed)?;
            refusals.push((i, Refusal { class, status: failure.cause.status }));
        }
        Ok(refusals)
    }

    /// Send the records at `indexes` until each is applied or refused for good; returns the
    /// refused ones.
    async fn attempt(&self, records: &[OutboundRecord], mut indexes: Vec<usize>) -> Result<Vec<(usize, Failure)>, Stop> {
        let mut retries = Retries::new(&self.retry);
        let mut refused = Vec::new();
        loop {
            let answer = self.request(records, &indexes).await?;
            let attempts = retries.answered((self.clock)());
            let decision = self.decide(answer, &indexes, attempts)?;
            refused.extend(decision.refused);
            match decision.next {
                Next::Done => return Ok(refused),
                Next::Isolate => {
                    for i in indexes {
                        refused.extend(Box::pin(self.attempt(records, vec![i])).await?);
                    }
                    return Ok(refused);
                }
                Next::Retry { indexes: again, again: why, cause } => {
                    let Some(delay) = retries.next_delay(why) else {
                        let message = format!("retries exhausted: {}", cause.message);
                        let exhausted = Failure { class: DeadLetterClass::RetriesExhausted, cause: Cause { message, ..cause }, attempts };
                        refused.extend(again.into_iter().map(|i| (i, exhausted.clone())));
                        return Ok(refused);
                    };
                    self.wait(delay).await?;
                    indexes = again;
                }
            }
        }
    }

    /// One request with the records at `indexes`, under a concurrency slot and rate permits;
    /// [`Stop::Interrupted`] without sending once `shutdown` is cancelled, also while waiting
    /// for the slot or the permits. A request already sent is not cut short: its answer decides.
    async fn request(&self, records: &[OutboundRecord], indexes: &[usize]) -> Result<Result<Vec<RecordFailure>, DeliveryError>, Stop> {
        // The whole batch goes as it is; only a retried subset is copied.
        let batch: Cow<'_, [OutboundRecord]> = if indexes.len() == records.len() {
            Cow::Borrowed(records)
        } else {
            Cow::Owned(indexes.iter().map(|&i| records[i].clone()).collect())
        };
        let held = async {
            let slot = self.concurrency.acquire().await;
            (slot, self.limits.acquire(batch.len()).await)
        };
        let _held = tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => return Err(Stop::Interrupted),
            held = held => held,
        };
        let started = Instant::now();
        let answer = self.target.send(&batch).await;
        metrics::histogram!("sluice_sink_request_seconds", "destination" => self.destination.clone()).record(started.elapsed().as_secs_f64());
        Ok(answer)
    }

    /// What the answer to the request that carried `indexes` means; `Err` for a fatal failure.
    fn decide(&self, answer: Result<Vec<RecordFailure>, DeliveryError>, indexes: &[usize], attempts: Attempts) -> Result<Decision, Stop> {
        let error = match answer {
            Ok(failures) => {
                self.concurrency.success();
                self.request_outcome("success");
                return self.decide_refusals(failures, indexes, attempts);
            }
            Err(error) => error,
        };
        let class = self.effective_class(error.class.clone(), error.status);
        self.request_outcome(class.label());
        let nothing_refused = |next| Ok(Decision { refused: Vec::new(), next });
        match class {
            ErrorClass::Fatal => Err(fatal(error.message, error.status)),
            ErrorClass::Permanent if indexes.len() > 1 => {
                tracing::info!(destination = %self.destination, records = indexes.len(), status = ?error.status, "request refused, isolating its records");
                nothing_refused(Next::Isolate)
            }
            ErrorClass::Permanent => {
                let failure = Failure { class: DeadLetterClass::Permanent, cause: cause(error.message, error.status, error.excerpt), attempts };
                Ok(Decision { refused: vec![(indexes[0], failure)], next: Next::Done })
            }
            ErrorClass::Retryable { retry_after } => {
                self.concurrency.backoff();
                tracing::info!(destination = %self.destination, attempt = attempts.made, status = ?error.status, throttle = error.throttle, error = %error.message, "retrying request");
                let again = Again::of(retry_after, error.throttle.is_some());
                let cause = cause(error.message, error.status, error.excerpt);
                nothing_refused(Next::Retry { indexes: indexes.to_vec(), again, cause })
            }
        }
    }

    /// A successful request with `failures` refused inside it (indexes into the request).
    fn decide_refusals(&self, failures: Vec<RecordFailure>, indexes: &[usize], attempts: Attempts) -> Result<Decision, Stop> {
        let mut refused = Vec::new();
        let mut retry = Vec::new();
        let mut retry_after = None;
        for f in failures {
            // A failure naming a record the request did not carry is ignored: that record
            // counts as applied.
            let Some(&original) = indexes.get(f.index) else { continue };
            match self.effective_class(f.class, f.status) {
                ErrorClass::Retryable { retry_after: wait } => {
                    retry.push(original);
                    // The longest wait any record asked for (`None` orders below any `Some`).
                    retry_after = retry_after.max(wait);
                }
                ErrorClass::Fatal => return Err(fatal(f.message, f.status)),
                ErrorClass::Permanent => {
                    let failure = Failure { class: DeadLetterClass::Permanent, cause: cause(f.message, f.status, f.excerpt), attempts };
                    refused.push((original, failure));
                }
            }
        }
        let next = if retry.is_empty() {
            Next::Done
        } else {
            let cause = cause("records refused as retryable inside a successful request".to_string(), None, String::new());
            Next::Retry { indexes: retry, again: Again::of(retry_after, false), cause }
        };
        Ok(Decision { refused, next })
    }

    /// Wait before the next attempt; a shutdown cuts the wait short.
    async fn wait(&self, delay: Delay) -> Result<(), Stop> {
        let delay = match delay {
            Delay::Throttled(wait) => {
                metrics::counter!("sluice_sink_throttled_seconds_total", "destination" => self.destination.clone()).increment(wait.as_secs());
                wait
            }
            Delay::Backoff(wait) => wait,
        };
        metrics::counter!("sluice_sink_retries_total", "destination" => self.destination.clone()).increment(1);
        tokio::select! {
            _ = tokio::time::sleep(delay) => Ok(()),
            _ = self.shutdown.cancelled() => Err(Stop::Interrupted),
        }
    }

    /// The destination's class, with the operator's extra retryable statuses applied.
    fn effective_class(&self, class: ErrorClass, status: Option<u16>) -> ErrorClass {
        match status {
            Some(s) if self.retry.retry_on_statuses.contains(&s) && class == ErrorClass::Permanent => ErrorClass::Retryable { retry_after: None },
            _ => class,
        }
    }

    fn request_outcome(&self, outcome: &'static str) {
        metrics::counter!("sluice_sink_requests_total", "destination" => self.destination.clone(), "outcome" => outcome).increment(1);
        metrics::gauge!("sluice_sink_concurrency_limit", "destination" => self.destination.clone()).set(self.concurrency.limit() as f64);
    }

    fn count(&self, outcome: &'static str, n: u64) {
        if n > 0 {
            metrics::counter!("sluice_sink_records_total", "destination" => self.destination.clone(), "outcome" => outcome).increment(n);
        }
    }

    /// Dead-letter a refused record; the class it was dead-lettered as.
    async fn dead_letter_refused(&self, message: &OwnedMessage, failure: &Failure) -> Result<DeadLetterClass, SinkError> {
        let failure = &Failure { class: dead_letters::refused_class(message, failure.class), ..failure.clone() };
        tracing::warn!(
            destination = %self.destination, topic = message.topic(), partition = message.partition(), offset = message.offset(),
            class = failure.class.label(), status = ?failure.cause.status, attempts = failure.attempts.made, error = %failure.cause.message,
            "record dead-lettered"
        );
        self.dead_letter(message, failure).await.map(|()| failure.class)
    }

    /// An unreadable message: dead-letter it as [`DeadLetterClass::Undecodable`].
    pub(crate) async fn dead_letter_unreadable(&self, message: &OwnedMessage, reason: &str) -> Result<(), SinkError> {
        tracing::warn!(destination = %self.destination, topic = message.topic(), partition = message.partition(), offset = message.offset(), %reason, "unreadable record dead-lettered");
        let now = (self.clock)();
        let failure = Failure {
            class: DeadLetterClass::Undecodable,
            cause: cause(reason.to_string(), None, String::new()),
            attempts: Attempts { made: 0, first_failure_ms: now, last_failure_ms: now },
        };
        self.dead_letter(message, &failure).await?;
        self.audit.unreadable(message, now);
        Ok(())
    }

    async fn dead_letter(&self, message: &OwnedMessage, failure: &Failure) -> Result<(), SinkError> {
        if let Err(tripped) = self.breaker.admit() {
            tracing::error!(
                destination = %self.destination, topic = message.topic(), partition = message.partition(), offset = message.offset(), reason = %tripped.0,
                "dead-letter circuit breaker tripped: the sink halts, nothing committed past this record"
            );
            metrics::counter!("sluice_sink_breaker_trips_total", "destination" => self.destination.clone()).increment(1);
            return Err(SinkError::Breaker(tripped.0));
        }
        let headers = dead_letters::context_headers(&self.destination, message, failure);
        self.dead_letters.write(dead_letters::letter(message, headers)).await.map_err(SinkError::Kafka)?;
        self.count("dead_lettered", 1);
        crate::telemetry::dead_lettered(&self.destination, failure.class);
        Ok(())
    }
}

fn cause(message: String, status: Option<u16>, excerpt: String) -> Cause {
    Cause { message, status, excerpt }
}

fn fatal(message: String, status: Option<u16>) -> Stop {
    Stop::Failed(SinkError::Fatal { message, status })
}

#[cfg(test)]
mod tests;
