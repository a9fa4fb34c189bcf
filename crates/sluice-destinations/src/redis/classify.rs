//! Redis's answers: a failed round trip or a fatal reply fails the batch; other error replies
//! refuse the record whose command they answer.

use std::time::Duration;

use ::redis::{RedisError, Value};
use sluice_core::ErrorClass;

use super::request::Request;
use super::Redis;
use crate::{DeliveryError, RecordFailure, RequestFailure, RetryLogic};

/// What one pipelined round trip came back with.
#[derive(Debug)]
pub enum Answer {
    /// One reply per command, in order (an error reply is one of them).
    Replies(Vec<Value>),
    /// The round trip failed: no connection, refused credentials at connect, a reset.
    Failed(RedisError),
    /// No answer within the timeout.
    TimedOut(Duration),
}

/// Codes meaning the credentials or the user's permissions are wrong.
const FATAL_CODES: &[&str] = &["NOAUTH", "WRONGPASS", "NOPERM"];
/// Codes of a server that is busy, loading, failing over or full: the same command may succeed
/// soon.
const RETRYABLE_CODES: &[&str] = &["LOADING", "BUSY", "TRYAGAIN", "MASTERDOWN", "CLUSTERDOWN", "OOM", "READONLY"];

impl RetryLogic for Redis {
    type Request = Request;
    type Answer = Answer;

    /// No answer, a failed round trip, or any reply refusing the credentials.
    fn request_failure(&self, _request: &Request, answer: &Answer) -> Option<RequestFailure> {
        let error = match answer {
            Answer::TimedOut(timeout) => DeliveryError::unanswered(ErrorClass::Retryable { retry_after: None }, format!("redis: no answer within {timeout:?}")),
            Answer::Failed(error) => DeliveryError::unanswered(classify_error(error), format!("redis: {}", describe(error))),
            Answer::Replies(replies) => {
                let code = replies.iter().find_map(|reply| match reply {
                    Value::ServerError(error) if classify_reply(error.code()) == ErrorClass::Fatal => Some(error.code()),
                    _ => None,
                })?;
                DeliveryError::unanswered(ErrorClass::Fatal, format!("redis refused the credentials: {code}"))
            }
        };
        Some(error.into())
    }

    /// Error replies: the first one per record decides its class.
    fn record_failures(&self, request: &Request, answer: &Answer) -> Result<Vec<RecordFailure>, DeliveryError> {
        let Answer::Replies(replies) = answer else { return Ok(Vec::new()) };
        let mut failures: Vec<RecordFailure> = Vec::new();
        for (&owner, reply) in request.owners.iter().zip(replies) {
            let Value::ServerError(error) = reply else { continue };
            if failures.iter().all(|f| f.index != owner) {
                failures.push(RecordFailure {
                    index: owner,
                    class: classify_reply(error.code()),
                    message: format!("redis answered {}", error.code()),
                    status: None,
                    excerpt: crate::http::excerpt(&format!("{} {}", error.code(), error.details().unwrap_or("")), crate::http::EXCERPT_BYTES),
                });
            }
        }
        Ok(failures)
    }
}

/// Class of an error reply to one command.
fn classify_reply(code: &str) -> ErrorClass {
    if FATAL_CODES.contains(&code) {
        ErrorClass::Fatal
    } else if RETRYABLE_CODES.contains(&code) {
        ErrorClass::Retryable { retry_after: None }
    } else {
        ErrorClass::Permanent
    }
}

/// Class of a failed round trip.
fn classify_error(error: &RedisError) -> ErrorClass {
    if error.kind() == ::redis::ErrorKind::AuthenticationFailed || error.kind() == ::redis::ErrorKind::InvalidClientConfig {
        return ErrorClass::Fatal;
    }
    match error.code() {
        Some(code) if FATAL_CODES.contains(&code) => ErrorClass::Fatal,
        // Anything else without a per-command reply is the connection's problem.
        _ => ErrorClass::Retryable { retry_after: None },
    }
}

/// Kind and server code of an error, without its detail (which may echo keys or values).
fn describe(error: &RedisError) -> String {
    match error.code() {
        Some(code) => format!("{:?} ({code})", error.kind()),
        None if error.is_timeout() => "timeout".into(),
        None if error.is_connection_refusal() => "connection refused".into(),
        None => format!("{:?}", error.kind()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Verdict;

    /// An error reply as the server writes it.
    fn error(code: &str) -> Value {
        ::redis::parse_redis_value(format!("-{code} detail\r\n").as_bytes()).expect("an error reply")
    }

    fn redis() -> Redis {
        super::super::request::tests::redis(super::super::RedisMode::Hash)
    }

    /// Every error reply's class, through the verdict: fatal codes fail the batch, the others
    /// refuse (or retry) the record whose command they answer.
    #[test]
    fn reply_classification_table() {
        let cases = [
            ("WRONGTYPE", ErrorClass::Permanent),
            ("ERR", ErrorClass::Permanent),
            ("NOAUTH", ErrorClass::Fatal),
            ("WRONGPASS", ErrorClass::Fatal),
            ("NOPERM", ErrorClass::Fatal),
            ("LOADING", ErrorClass::Retryable { retry_after: None }),
            ("OOM", ErrorClass::Retryable { retry_after: None }),
            ("READONLY", ErrorClass::Retryable { retry_after: None }),
        ];
        let request = Request { pipeline: ::redis::pipe(), owners: vec![0, 1], guarded: Vec::new(), cardinality: None };
        for (code, expected) in cases {
            assert_eq!(classify_reply(code), expected, "{code}");
            let verdict = redis().classify(&request, &Answer::Replies(vec![Value::Okay, error(code)]));
            match expected {
                ErrorClass::Fatal => assert_eq!(verdict.request_class(), Some(ErrorClass::Fatal), "{code}"),
                class => assert_eq!(verdict.refused(), [(1, class)], "{code}"),
            }
        }
    }

    #[test]
    fn round_trips_without_replies_and_first_reply_per_record() {
        let request = Request { pipeline: ::redis::pipe(), owners: vec![0, 0, 1], guarded: Vec::new(), cardinality: None };
        let redis = redis();
        let retry = Some(ErrorClass::Retryable { retry_after: None });
        assert_eq!(redis.classify(&request, &Answer::TimedOut(Duration::from_secs(1))).request_class(), retry);
        let refused = ::redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(redis.classify(&request, &Answer::Failed(refused)).request_class(), retry);
        let noauth = error("NOAUTH").extract_error().expect_err("an error reply");
        let verdict = redis.classify(&request, &Answer::Failed(noauth));
        assert_eq!(verdict.request_class(), Some(ErrorClass::Fatal));
        assert_eq!(redis.classify(&request, &Answer::Replies(vec![Value::Okay, Value::Okay, Value::Okay])), Verdict::Applied);
        let twice = Answer::Replies(vec![error("LOADING"), error("WRONGTYPE"), Value::Okay]);
        assert_eq!(redis.classify(&request, &twice).refused(), [(0, ErrorClass::Retryable { retry_after: None })], "one failure per record: its first");
    }
}
