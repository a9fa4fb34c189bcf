//! Fakes of the sink's own seams for unit tests: a destination that answers from a script and
//! records what it was sent, a dead-letter sink that records what it was given (or fails), and
//! a clock that reads tokio's (paused) time, so failure times can be checked exactly.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rdkafka::message::OwnedMessage;
use rdkafka::Timestamp;
use sluice_core::config::{RateLimitConfig, RetryConfig};
use sluice_core::ErrorClass;
use sluice_destinations::{Action, DeliveryError, Destination, OutboundRecord, RecordFailure};
use sluice_kafka::dead_letter::DeadLetter;
use sluice_kafka::KafkaError;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::dead_letters::DeadLetterSink;
use crate::deliver::Deliverer;
use crate::limits::{AdaptiveConcurrency, RateLimits};

/// The answer to one request.
pub(crate) type Answer = Result<Vec<RecordFailure>, DeliveryError>;

/// A request the fake destination received.
#[derive(Debug, Clone)]
pub(crate) struct Sent {
    pub at: Instant,
    /// The record ids, in the order sent.
    pub ids: Vec<String>,
}

/// A destination that answers each request with the next scripted answer, and records it.
#[derive(Default)]
pub(crate) struct ScriptedDestination {
    answers: Mutex<VecDeque<Answer>>,
    sent: Mutex<Vec<Sent>>,
}

impl ScriptedDestination {
    pub(crate) fn new(answers: impl IntoIterator<Item = Answer>) -> ScriptedDestination {
        ScriptedDestination { answers: Mutex::new(answers.into_iter().collect()), sent: Mutex::default() }
    }

    pub(crate) fn sent(&self) -> Vec<Sent> {
        self.sent.lock().unwrap().clone()
    }

    /// The ids of every request, in order.
    pub(crate) fn sent_ids(&self) -> Vec<Vec<String>> {
        self.sent().into_iter().map(|s| s.ids).collect()
    }

    /// Scripted answers never asked for.
    pub(crate) fn unused(&self) -> usize {
        self.answers.lock().unwrap().len()
    }
}

impl Destination for ScriptedDestination {
    fn kind(&self) -> &'static str {
        "scripted"
    }

    fn max_batch_records(&self) -> usize {
        usize::MAX
    }

    async fn send(&self, batch: &[OutboundRecord]) -> Answer {
        let ids: Vec<String> = batch.iter().map(|r| r.id.clone()).collect();
        let answer = self.answers.lock().unwrap().pop_front();
        let answer = answer.unwrap_or_else(|| panic!("unscripted request #{} with {ids:?}", self.sent().len() + 1));
        self.sent.lock().unwrap().push(Sent { at: Instant::now(), ids });
        answer
    }
}

/// A dead letter as written: the bytes and the headers (UTF-8, as sluice writes them).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Written {
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, String)>,
}

impl Written {
    pub(crate) fn header(&self, key: &str) -> Option<&str> {
        sluice_kafka::headers::get(&self.headers, key)
    }
}

/// A dead-letter sink that records what it is given, or fails every write once told to.
#[derive(Default)]
pub(crate) struct RecordingDeadLetters {
    written: Mutex<Vec<Written>>,
    failing: AtomicBool,
}

impl RecordingDeadLetters {
    pub(crate) fn written(&self) -> Vec<Written> {
        self.written.lock().unwrap().clone()
    }

    pub(crate) fn fail_writes(&self) {
        self.failing.store(true, Ordering::SeqCst);
    }
}

impl DeadLetterSink for RecordingDeadLetters {
    async fn write(&self, letter: DeadLetter<'_>) -> Result<(), KafkaError> {
        if self.failing.load(Ordering::SeqCst) {
            let source = rdkafka::error::KafkaError::MessageProduction(rdkafka::types::RDKafkaErrorCode::MessageTimedOut);
            return Err(KafkaError::Retryable { operation: "write dead letter", source });
        }
        let headers = letter.headers.into_iter().map(|(k, v)| (k, String::from_utf8(v).expect("UTF-8 header"))).collect();
        self.written.lock().unwrap().push(Written { key: letter.key.map(<[u8]>::to_vec), payload: letter.payload.map(<[u8]>::to_vec), headers });
        Ok(())
    }
}

thread_local! {
    // Tests run on a current-thread runtime, so a per-thread origin is a per-test origin.
    static ORIGIN: Instant = Instant::now();
}

/// An arbitrary epoch offset, so failure times look like real ones.
const EPOCH_MS: i64 = 1_700_000_000_000;

/// The [`crate::deliver::Clock`] of tests: tokio's clock as ms since an arbitrary epoch.
pub(crate) fn paused_clock() -> i64 {
    clock_ms(Instant::now())
}

/// What [`paused_clock`] read, or would read, at `at`.
pub(crate) fn clock_ms(at: Instant) -> i64 {
    ORIGIN.with(|origin| EPOCH_MS + at.saturating_duration_since(*origin).as_millis() as i64)
}

/// A deliverer to the fakes, without rate limits, named `crm`.
pub(crate) fn deliverer(retry: RetryConfig, answers: impl IntoIterator<Item = Answer>) -> Deliverer<ScriptedDestination, RecordingDeadLetters> {
    // Read the clock once so its origin is the start of the test.
    paused_clock();
    Deliverer {
        destination: "crm".into(),
        retry,
        target: ScriptedDestination::new(answers),
        dead_letters: RecordingDeadLetters::default(),
        limits: RateLimits::new(&RateLimitConfig::default()).expect("no limits"),
        concurrency: AdaptiveConcurrency::new(4),
        shutdown: CancellationToken::new(),
        clock: paused_clock,
        breaker: Arc::new(crate::breaker::Breaker::new(&sluice_core::config::DeadLetterBreakerConfig::default())),
        audit: Arc::new(crate::audit::Audit::off()),
    }
}

/// A consumed message of topic `t`, partition 0: key `k<offset>`, value `v<offset>`, created at
/// `1000 + offset`, with a `traceparent` header of its own.
pub(crate) fn message(key: &str, offset: i64) -> Arc<OwnedMessage> {
    let headers = sluice_kafka::headers::owned([("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")]);
    Arc::new(OwnedMessage::new(
        Some(format!("v{offset}").into_bytes()),
        Some(key.as_bytes().to_vec()),
        "t".into(),
        Timestamp::CreateTime(1000 + offset),
        0,
        offset,
        Some(headers),
    ))
}

/// The record of [`message`]`(_, offset)`: id `t/0/<offset>`.
pub(crate) fn record(offset: i64) -> OutboundRecord {
    OutboundRecord {
        id: format!("t/0/{offset}"),
        model: "m".into(),
        action: Action::Upsert,
        op: sluice_core::Op::Update,
        key: Default::default(),
        fields: Default::default(),
        previous: None,
        ts_ms: 0,
    }
}

/// Messages and records at offsets `0..n`, keys `k0..`.
pub(crate) fn batch(n: i64) -> (Vec<Arc<OwnedMessage>>, Vec<OutboundRecord>) {
    (0..n).map(|offset| (message(&format!("k{offset}"), offset), record(offset))).unzip()
}

/// A request failure of `class`.
pub(crate) fn failed(class: ErrorClass, status: Option<u16>, message: &str) -> Answer {
    Err(DeliveryError { class, status, excerpt: format!("{{\"error\":\"{message}\"}}"), message: message.into(), throttle: None })
}

/// A throttle (retryable, with the vendor's throttle `signal`), naming `wait` or none.
pub(crate) fn throttled(signal: &'static str, wait: Option<std::time::Duration>, status: u16) -> Answer {
    let error = failed(ErrorClass::Retryable { retry_after: wait }, Some(status), signal).unwrap_err();
    Err(DeliveryError { throttle: Some(signal), ..error })
}

/// A record failure of `class` at `index` of the request.
pub(crate) fn refused(index: usize, class: ErrorClass, status: Option<u16>, message: &str) -> RecordFailure {
    RecordFailure { index, class, message: message.into(), status, excerpt: format!("{{\"index\":{index}}}") }
}
