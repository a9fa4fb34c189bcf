//! The delivery decisions, against a scripted destination and a recording dead-letter sink,
//! under paused time: waits are exact and take no real time.

use std::time::Duration;

use sluice_core::config::{RetryConfig, ThrottleRetry};
use sluice_core::ErrorClass::{self, Fatal, Permanent};
use tokio::time::Instant;

use super::{SinkError, Stop};
use crate::testing::{batch, clock_ms, deliverer, failed, message, refused, throttled, Answer, Sent, Written};

const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

fn retry(initial_backoff_ms: u64, max_backoff_ms: u64, max_attempts: usize) -> RetryConfig {
    RetryConfig { initial_backoff_ms, max_backoff_ms, max_attempts, retry_on_statuses: Vec::new(), throttle: ThrottleRetry::Wait }
}

fn retryable(wait: Option<Duration>) -> ErrorClass {
    ErrorClass::Retryable { retry_after: wait }
}

fn ids(offsets: &[i64]) -> Vec<String> {
    offsets.iter().map(|o| format!("t/0/{o}")).collect()
}

/// The waits between consecutive requests.
fn gaps(sent: &[Sent]) -> Vec<Duration> {
    sent.windows(2).map(|w| w[1].at - w[0].at).collect()
}

/// The source offsets of dead letters, in the order written.
fn offsets(dead: &[Written]) -> Vec<i64> {
    dead.iter().map(|d| d.header("sluice.original.offset").expect("offset header").parse().unwrap()).collect()
}

fn pairs(headers: &[(&str, &str)]) -> Vec<(String, String)> {
    headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[tokio::test(start_paused = true)]
async fn all_applied_is_one_request_and_no_dead_letter() {
    let d = deliverer(RetryConfig::default(), [Ok(vec![])]);
    let (messages, records) = batch(3);
    d.deliver(&messages, &records).await.expect("delivered");
    assert_eq!(d.target.sent_ids(), [ids(&[0, 1, 2])]);
    assert!(d.dead_letters.written().is_empty());
}

#[tokio::test(start_paused = true)]
async fn records_refused_inside_a_successful_answer_are_dead_lettered_alone_with_their_context() {
    let answer = Ok(vec![refused(1, Permanent, Some(207), "bad email"), refused(3, Permanent, Some(207), "unknown list")]);
    let d = deliverer(RetryConfig::default(), [answer]);
    let (messages, records) = batch(4);
    // Away from the clock's origin, so a time of zero would show.
    tokio::time::advance(Duration::from_secs(5)).await;
    d.deliver(&messages, &records).await.expect("delivered");

    assert_eq!(d.target.sent_ids(), [ids(&[0, 1, 2, 3])], "one request, nothing sent again");
    let dead = d.dead_letters.written();
    assert_eq!(offsets(&dead), [1, 3], "only the refused records");
    let at = clock_ms(d.target.sent()[0].at).to_string();
    let expected = pairs(&[
        ("traceparent", TRACEPARENT),
        ("sluice.error.class", "permanent"),
        ("sluice.error.message", "bad email"),
        ("sluice.error.response.status", "207"),
        ("sluice.error.response.excerpt", "{\"index\":1}"),
        ("sluice.error.attempts", "1"),
        ("sluice.error.first_failure_ms", &at),
        ("sluice.error.last_failure_ms", &at),
        ("sluice.error.destination", "crm"),
        ("sluice.original.topic", "t"),
        ("sluice.original.partition", "0"),
        ("sluice.original.offset", "1"),
        ("sluice.original.timestamp_ms", "1001"),
    ]);
    assert_eq!(dead[0].headers, expected, "the original headers kept, then the whole context");
    assert_eq!((dead[0].key.as_deref(), dead[0].payload.as_deref()), (Some(&b"k1"[..]), Some(&b"v1"[..])), "bytes untouched");
    assert_eq!(dead[1].header("sluice.error.message"), Some("unknown list"));
    assert_eq!(dead[1].header("sluice.error.response.excerpt"), Some("{\"index\":3}"));
}

#[tokio::test(start_paused = true)]
async fn retryable_records_alone_are_sent_again_after_the_longest_wait_asked() {
    let first = Ok(vec![refused(1, retryable(None), Some(207), "locked"), refused(3, retryable(Some(Duration::from_secs(2))), Some(207), "slow down")]);
    // The second request carries records 1 and 3: its index 1 is record 3.
    let second = Ok(vec![refused(1, Permanent, Some(207), "bad email")]);
    let d = deliverer(retry(100, 1000, 5), [first, second]);
    let (messages, records) = batch(4);
    d.deliver(&messages, &records).await.expect("delivered");

    assert_eq!(d.target.sent_ids(), [ids(&[0, 1, 2, 3]), ids(&[1, 3])], "only the retryable subset again");
    let sent = d.target.sent();
    assert_eq!(gaps(&sent), [Duration::from_secs(2)], "the longest Retry-After of the records, exactly");
    let dead = d.dead_letters.written();
    assert_eq!(offsets(&dead), [3], "the subset's index 1 is record 3");
    assert_eq!(dead[0].header("sluice.error.class"), Some("permanent"));
    assert_eq!(dead[0].header("sluice.error.message"), Some("bad email"));
    assert_eq!(dead[0].header("sluice.error.attempts"), Some("2"));
    assert_eq!(dead[0].header("sluice.error.first_failure_ms"), Some(clock_ms(sent[0].at).to_string().as_str()));
    assert_eq!(dead[0].header("sluice.error.last_failure_ms"), Some(clock_ms(sent[1].at).to_string().as_str()));
}

#[tokio::test(start_paused = true)]
async fn a_request_refused_as_a_whole_is_isolated_and_only_the_bad_records_dead_lettered() {
    let answers = [
        failed(Permanent, Some(400), "batch refused"),
        Ok(vec![]),
        failed(Permanent, Some(422), "bad email"),
        // Alone, a record still gets the whole retry logic.
        failed(retryable(None), Some(503), "unavailable"),
        Ok(vec![]),
        failed(Permanent, Some(422), "bad phone"),
    ];
    let d = deliverer(retry(100, 1000, 3), answers);
    let (messages, records) = batch(4);
    d.deliver(&messages, &records).await.expect("delivered");

    assert_eq!(d.target.sent_ids(), [ids(&[0, 1, 2, 3]), ids(&[0]), ids(&[1]), ids(&[2]), ids(&[2]), ids(&[3])]);
    assert_eq!(d.target.unused(), 0);
    let dead = d.dead_letters.written();
    assert_eq!(offsets(&dead), [1, 3]);
    for (letter, reason) in dead.iter().zip(["bad email", "bad phone"]) {
        assert_eq!(letter.header("sluice.error.class"), Some("permanent"));
        assert_eq!(letter.header("sluice.error.message"), Some(reason));
        assert_eq!(letter.header("sluice.error.response.status"), Some("422"), "the status of the record's own request");
        assert_eq!(letter.header("sluice.error.attempts"), Some("1"));
    }
}

#[tokio::test(start_paused = true)]
async fn fatal_failures_stop_and_dead_letter_nothing() {
    // A fatal record failure next to a permanent one: the permanent one is not dead-lettered
    // either (it is delivered again after the restart).
    let d = deliverer(RetryConfig::default(), [Ok(vec![refused(0, Permanent, Some(207), "bad email"), refused(1, Fatal, Some(401), "token expired")])]);
    let (messages, records) = batch(2);
    let stop = d.deliver(&messages, &records).await.expect_err("stops");
    assert!(matches!(&stop, Stop::Failed(SinkError::Fatal { message, status: Some(401) }) if message == "token expired"), "{stop:?}");
    assert_eq!(d.target.sent_ids(), [ids(&[0, 1])]);
    assert!(d.dead_letters.written().is_empty());

    // A fatal answer while isolating, after a record was already found bad.
    let answers = [failed(Permanent, Some(400), "batch refused"), failed(Permanent, Some(422), "bad email"), failed(Fatal, Some(403), "forbidden")];
    let d = deliverer(RetryConfig::default(), answers);
    let (messages, records) = batch(3);
    let stop = d.deliver(&messages, &records).await.expect_err("stops");
    assert!(matches!(&stop, Stop::Failed(SinkError::Fatal { status: Some(403), .. })), "{stop:?}");
    assert_eq!(d.target.sent_ids(), [ids(&[0, 1, 2]), ids(&[0]), ids(&[1])], "nothing sent after the fatal answer");
    assert!(d.dead_letters.written().is_empty());
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_waited_exactly_and_spends_no_retry_budget() {
    let throttled = || failed(retryable(Some(Duration::from_secs(7))), Some(429), "rate limited");
    let mut answers: Vec<Answer> = (0..5).map(|_| throttled()).collect();
    answers.push(failed(retryable(None), Some(503), "unavailable"));
    answers.push(Ok(vec![]));
    // Two attempts in all: one backoff step, and five throttles do not use it up.
    let d = deliverer(retry(100, 1000, 2), answers);
    let (messages, records) = batch(2);
    d.deliver(&messages, &records).await.expect("delivered");

    let sent = d.target.sent();
    assert_eq!(sent.len(), 7);
    assert!(sent.iter().all(|s| s.ids == ids(&[0, 1])));
    let gaps = gaps(&sent);
    assert_eq!(gaps[..5], [Duration::from_secs(7); 5], "each Retry-After waited exactly");
    assert!(gaps[5] <= Duration::from_millis(101), "then one backoff step, at most its ceiling (plus the timer's millisecond): {:?}", gaps[5]);
    assert!(d.dead_letters.written().is_empty(), "throttling never dead-letters");
}

#[tokio::test(start_paused = true)]
async fn failures_without_a_wait_back_off_with_jitter_then_dead_letter_as_retries_exhausted() {
    let answers: Vec<Answer> = (0..5).map(|_| failed(retryable(None), Some(503), "unavailable")).collect();
    let d = deliverer(retry(100, 300, 5), answers);
    let (messages, records) = batch(2);
    d.deliver(&messages, &records).await.expect("delivered (to the dead-letter topic)");

    let sent = d.target.sent();
    assert_eq!(sent.len(), 5, "max_attempts requests");
    assert!(sent.iter().all(|s| s.ids == ids(&[0, 1])));
    // Full jitter under ceilings exponential from 100 ms, capped at 300 ms: never above the
    // ceiling (plus the timer's millisecond), so never above the cap.
    let ceilings = [100, 200, 300, 300].map(Duration::from_millis);
    let gaps = gaps(&sent);
    for (gap, ceiling) in gaps.iter().zip(ceilings) {
        assert!(*gap <= ceiling + Duration::from_millis(1), "gap {gap:?} above its ceiling {ceiling:?}");
    }
    assert!(gaps.iter().zip(ceilings).any(|(gap, ceiling)| *gap < ceiling), "jittered: {gaps:?}");

    let dead = d.dead_letters.written();
    assert_eq!(offsets(&dead), [0, 1]);
    let (first, last) = (clock_ms(sent[0].at).to_string(), clock_ms(sent[4].at).to_string());
    for letter in &dead {
        assert_eq!(letter.header("sluice.error.class"), Some("retryable"));
        assert_eq!(letter.header("sluice.error.message"), Some("retries exhausted: unavailable"));
        assert_eq!(letter.header("sluice.error.response.status"), Some("503"));
        assert_eq!(letter.header("sluice.error.response.excerpt"), Some("{\"error\":\"unavailable\"}"));
        assert_eq!(letter.header("sluice.error.attempts"), Some("5"));
        assert_eq!(letter.header("sluice.error.first_failure_ms"), Some(first.as_str()));
        assert_eq!(letter.header("sluice.error.last_failure_ms"), Some(last.as_str()));
    }
}

/// Issue 12: twelve throttles in a row without a wait header dead-lettered the record as
/// `retryable` after 10 attempts. A throttle is the vendor saying "later": under the default
/// `retry.throttle = "wait"` it spends no budget however long it lasts (here four times the
/// budget, Salesforce's and Meta's signals alternating), each wait a backoff inside the cap;
/// under `"budget"` it dead-letters like a failure once the budget is spent.
#[tokio::test(start_paused = true)]
async fn throttles_without_a_wait_never_dead_letter_by_default() {
    let throttles = || {
        (0..12).map(|n| if n % 2 == 0 { throttled("request_limit_exceeded", None, 403) } else { throttled("business_use_case", None, 400) })
    };
    let d = deliverer(retry(100, 300, 3), throttles().chain([Ok(vec![])]));
    let (messages, records) = batch(2);
    d.deliver(&messages, &records).await.expect("delivered");
    let sent = d.target.sent();
    assert_eq!(sent.len(), 13, "every throttle retried, then applied");
    assert!(gaps(&sent).iter().all(|gap| *gap <= Duration::from_millis(301)), "backoffs inside the cap: {:?}", gaps(&sent));
    assert!(d.dead_letters.written().is_empty(), "a throttle never dead-letters");

    let config = RetryConfig { throttle: ThrottleRetry::Budget, ..retry(100, 300, 3) };
    let d = deliverer(config, throttles());
    d.deliver(&messages, &records).await.expect("delivered (to the dead-letter topic)");
    assert_eq!(d.target.sent().len(), 3, "max_attempts, throttles included");
    let dead = d.dead_letters.written();
    assert_eq!(offsets(&dead), [0, 1]);
    assert_eq!(dead[0].header("sluice.error.class"), Some("retryable"));
    assert_eq!(dead[0].header("sluice.error.attempts"), Some("3"));
}

/// A wait the destination names is honoured as named, also above `max_backoff_ms`.
#[tokio::test(start_paused = true)]
async fn a_named_wait_above_the_cap_is_honoured() {
    let d = deliverer(retry(100, 1000, 3), [throttled("http_429", Some(Duration::from_secs(90)), 429), Ok(vec![])]);
    let (messages, records) = batch(1);
    d.deliver(&messages, &records).await.expect("delivered");
    assert_eq!(gaps(&d.target.sent()), [Duration::from_secs(90)]);
}

#[tokio::test(start_paused = true)]
async fn retry_on_statuses_turns_a_permanent_status_retryable() {
    let config = RetryConfig { retry_on_statuses: vec![409], ..retry(100, 1000, 3) };
    let answers = [failed(Permanent, Some(409), "locked"), Ok(vec![refused(1, Permanent, Some(409), "locked")]), Ok(vec![])];
    let d = deliverer(config.clone(), answers);
    let (messages, records) = batch(2);
    d.deliver(&messages, &records).await.expect("delivered");
    assert_eq!(d.target.sent_ids(), [ids(&[0, 1]), ids(&[0, 1]), ids(&[1])], "retried, neither isolated nor dead-lettered");
    assert!(d.dead_letters.written().is_empty());

    // Without the setting the same answer is permanent: isolated, and the record dead-lettered.
    let d = deliverer(retry(100, 1000, 3), [failed(Permanent, Some(409), "locked"), failed(Permanent, Some(409), "locked"), Ok(vec![])]);
    d.deliver(&messages, &records).await.expect("delivered");
    assert_eq!(d.target.sent_ids(), [ids(&[0, 1]), ids(&[0]), ids(&[1])]);
    assert_eq!(offsets(&d.dead_letters.written()), [0]);

    // A fatal failure stays fatal whatever its status.
    let d = deliverer(config, [failed(Fatal, Some(409), "gone")]);
    let stop = d.deliver(&messages, &records).await.expect_err("stops");
    assert!(matches!(stop, Stop::Failed(SinkError::Fatal { status: Some(409), .. })), "{stop:?}");
}

#[tokio::test(start_paused = true)]
async fn shutdown_during_a_wait_interrupts_and_dead_letters_nothing() {
    // Record 0 is refused for good, record 1 is asked to wait a minute.
    let answer = Ok(vec![refused(0, Permanent, Some(207), "bad email"), refused(1, retryable(Some(Duration::from_secs(60))), Some(207), "later")]);
    let d = deliverer(RetryConfig::default(), [answer]);
    let (messages, records) = batch(2);
    let shutdown = d.shutdown.clone();
    let start = Instant::now();
    let (result, ()) = tokio::join!(d.deliver(&messages, &records), async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        shutdown.cancel();
    });
    assert!(matches!(result, Err(Stop::Interrupted)), "{result:?}");
    assert_eq!(start.elapsed(), Duration::from_secs(1), "the wait is cut short");
    assert_eq!(d.target.sent_ids(), [ids(&[0, 1])]);
    assert!(d.dead_letters.written().is_empty(), "unfinished records are delivered again after restart, not dead-lettered");
}

/// After the stop no request starts: not a first attempt, and not one waiting for a rate-limit
/// permit (at one request a minute, the second batch would wait 60 s): it ends at the stop,
/// unsent, nothing dead-lettered.
#[tokio::test(start_paused = true)]
async fn after_the_stop_no_request_starts_and_a_rate_limit_wait_ends() {
    let mut d = deliverer(RetryConfig::default(), [Ok(vec![])]);
    d.limits = crate::limits::RateLimits::new(&sluice_core::config::RateLimitConfig { requests_per_second: Some(1.0 / 60.0), records_per_second: None }).unwrap();
    let (messages, records) = batch(2);
    d.deliver(&messages[..1], &records[..1]).await.expect("the first request goes at once");
    let shutdown = d.shutdown.clone();
    let start = Instant::now();
    let (result, ()) = tokio::join!(d.deliver(&messages[1..], &records[1..]), async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        shutdown.cancel();
    });
    assert!(matches!(result, Err(Stop::Interrupted)), "{result:?}");
    assert_eq!(start.elapsed(), Duration::from_secs(1), "the permit wait ends at the stop");
    assert_eq!(d.target.sent_ids(), [ids(&[0])], "the second request never started");

    let d = deliverer(RetryConfig::default(), Vec::<Answer>::new());
    d.shutdown.cancel();
    let result = d.deliver(&messages, &records).await;
    assert!(matches!(result, Err(Stop::Interrupted)), "{result:?}");
    assert!(d.target.sent().is_empty() && d.dead_letters.written().is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_dead_letter_that_cannot_be_written_stops_the_sink() {
    let d = deliverer(RetryConfig::default(), [Ok(vec![refused(0, Permanent, Some(207), "bad email")])]);
    d.dead_letters.fail_writes();
    let (messages, records) = batch(2);
    let stop = d.deliver(&messages, &records).await.expect_err("stops");
    assert!(matches!(stop, Stop::Failed(SinkError::Kafka(_))), "{stop:?}");
    assert!(d.dead_letters.written().is_empty());
}

#[tokio::test(start_paused = true)]
async fn unreadable_messages_are_dead_lettered_as_decode() {
    let d = deliverer(RetryConfig::default(), Vec::<Answer>::new());
    tokio::time::advance(Duration::from_secs(3)).await;
    d.dead_letter_unreadable(&message("k", 7), "value: not Avro").await.expect("written");
    assert!(d.target.sent().is_empty());
    let now = clock_ms(Instant::now()).to_string();
    let dead = d.dead_letters.written();
    assert_eq!(dead.len(), 1);
    let expected = pairs(&[
        ("traceparent", TRACEPARENT),
        ("sluice.error.class", "decode"),
        ("sluice.error.message", "value: not Avro"),
        ("sluice.error.response.excerpt", ""),
        ("sluice.error.attempts", "0"),
        ("sluice.error.first_failure_ms", &now),
        ("sluice.error.last_failure_ms", &now),
        ("sluice.error.destination", "crm"),
        ("sluice.original.topic", "t"),
        ("sluice.original.partition", "0"),
        ("sluice.original.offset", "7"),
        ("sluice.original.timestamp_ms", "1007"),
    ]);
    assert_eq!(dead[0].headers, expected, "no status header: nothing answered");
}
