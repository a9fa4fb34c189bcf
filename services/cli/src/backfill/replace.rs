//! `sluice backfill --destination NAME --replace`: make the destination hold exactly the
//! current members, in one vendor operation that replaces them all (a Meta audience's
//! `usersreplace` session), so members who left while the destination was broken are removed
//! even when their `d` events were compacted away and a plain backfill cannot send them.
//!
//! How, while the live sync keeps running:
//! 1. **Snapshot**: the end offsets `H` of every partition of the destination's change topics;
//!    each key's latest state below `H` (the plain backfill's first pass), mapped exactly as the
//!    sink maps it (`sluice_sink::snapshot`). The members are the records that do not leave.
//!    An unreadable state refuses the whole replace: leaving it out would remove a member.
//! 2. **Replace**: one vendor session of those members, sent from here (a session is one
//!    ordered sequence of requests, which the sink's per-key lanes cannot form). A failed
//!    request abandons the session (never closed, it replaces nothing) and a retryable failure
//!    starts a new one, after the vendor's wait or a backoff.
//! 3. **Catch-up**: once the session closed, the end offsets `H2`; each key's latest state in
//!    `[H, H2)` is written to the side topic (the plain backfill's second pass).
//!
//! Why the result is the current members — the decision on meeting the live sync: the replace
//! can undo a live edit the sink sent while the session was open (it carries the state at `H`).
//! Every such edit has an offset in `[H, H2)`, and the catch-up re-sends its key's latest state
//! there. The order guard delivers a side record whose offset is at least the key's latest
//! (docs/operations.md, "The order guard"), so that state is applied again, after the replace;
//! if the live stream has a newer state of the key, that state's offset is `>= H2`, it was
//! produced after the session closed, and the sink applies it after the replace too. Keys with
//! no change since `H` are in the replace as they are now. The sink needs no change, and a sink
//! that is stopped applies the catch-up when it starts. UNCONFIRMED for Meta: that an edit sent
//! after a session closed is applied after the replace (Meta applies both asynchronously).

use std::time::{Duration, Instant};

use governor::{Quota, RateLimiter};
use rdkafka::message::{Message, OwnedMessage};
use serde_json::json;
use sluice_core::config::Config;
use sluice_core::ErrorClass;
use sluice_destinations::{AnyDestination, DeliveryError, OutboundRecord};
use sluice_kafka::compacted::{scan, Range};
use sluice_kafka::groups;
use sluice_sink::snapshot::{Mapped, Mapper};
use tokio_util::sync::CancellationToken;

use super::{first_pass, key_hash, progress, second_pass, Request, Writer, READ_DEADLINE};
use crate::failure::Failure;
use crate::scope::Topic;

/// Sessions tried before the replace gives up (each retryable failure starts a new one).
const ATTEMPTS: u32 = 5;

/// What a replace did.
#[derive(Debug, Default)]
pub(super) struct ReplaceSummary {
    /// Keys read in the snapshot, and of them the current members sent.
    keys: u64,
    members: u64,
    /// Members the destination refused (no usable identifier, or the vendor's invalid entries).
    refused: u64,
    /// Sessions started (more than one after retryable failures).
    sessions: u32,
    /// Whether a session closed: the destination holds the snapshot's members.
    replaced: bool,
    /// Keys changed during the replace, re-sent through the side topic.
    caught_up: u64,
}

/// Run the replace (module doc).
pub(super) async fn replace(config: &Config, topics: &[Topic], request: &Request, stop: &CancellationToken) -> Result<(ReplaceSummary, Duration), Failure> {
    let started = Instant::now();
    // First, so that a side topic that cannot be made refuses before anything is replaced.
    let producer = super::side_producer(config, topics, request).await?;
    let mut ranges = Vec::new();
    for topic in topics {
        for (partition, low, high) in groups::watermarks(&config.kafka, &topic.name)? {
            ranges.push((topic.name.clone(), Range { partition, from: low, to: high }));
        }
    }
    let mut summary = ReplaceSummary::default();
    let members = snapshot(config, &request.destination, &ranges, &mut summary).await?;
    let dest = config.destination(&request.destination).expect("destination_topics checked it exists");
    let destination = sluice_destinations::build(config, dest).map_err(|error| Failure::Config(error.to_string()))?;
    let Some(refused) = send_session(&destination, &members, stop, &mut summary).await? else {
        return Ok((summary, started.elapsed()));
    };
    summary.refused = refused;
    summary.replaced = true;
    let limiter = RateLimiter::direct(Quota::per_second(request.rate));
    let bar = progress(0, true);
    let writer = Writer { config, producer: &producer, limiter: &limiter, bar: &bar, stop };
    for (topic, snapshot) in &ranges {
        let high = groups::watermarks(&config.kafka, topic)?.into_iter().find(|(p, _, _)| *p == snapshot.partition).map_or(snapshot.to, |(_, _, high)| high);
        let range = Range { partition: snapshot.partition, from: snapshot.to, to: high };
        let plan = read_plan(config, topic, range).await?;
        summary.caught_up += second_pass(&writer, topic, range, plan).await?.0;
    }
    tracing::info!(members = summary.members, sessions = summary.sessions, caught_up = summary.caught_up, "replace done");
    Ok((summary, started.elapsed()))
}

/// Each key's latest state in `range` to send (the plain backfill's first pass).
async fn read_plan(config: &Config, topic: &str, range: Range) -> Result<std::collections::HashMap<u128, i64>, Failure> {
    let (kafka, name) = (config.kafka.clone(), topic.to_string());
    Ok(tokio::task::spawn_blocking(move || first_pass(&kafka, &name, range)).await.expect("reading does not panic")?.send)
}

/// The current members below the snapshot's end offsets, mapped as the sink maps them. An
/// unreadable state refuses the replace (exit 4): leaving it out would remove that member.
async fn snapshot(config: &Config, destination: &str, ranges: &[(String, Range)], summary: &mut ReplaceSummary) -> Result<Vec<OutboundRecord>, Failure> {
    let mapper = Mapper::new(config, destination).map_err(|error| Failure::Config(error.to_string()))?;
    let mut members = Vec::new();
    for (topic, range) in ranges {
        let send = read_plan(config, topic, *range).await?;
        summary.keys += send.len() as u64;
        let (kafka, name, range) = (config.kafka.clone(), topic.clone(), *range);
        let messages: Vec<OwnedMessage> = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            scan(&kafka, &name, &[range], READ_DEADLINE, |message| {
                if message.key().is_some_and(|key| send.get(&key_hash(key)) == Some(&message.offset())) {
                    out.push(message.detach());
                }
            })
            .map(|_| out)
        })
        .await
        .expect("reading does not panic")?;
        for message in messages {
            match mapper.map(topic, &message).await.map_err(|error| Failure::Error(error.to_string()))? {
                Mapped::Record(record) if !record.removes() => members.push(record),
                Mapped::Record(_) | Mapped::Skip => {}
                Mapped::Unreadable(reason) => {
                    return Err(Failure::Refused(format!(
                        "the current state at {topic}/{}/{} is unreadable ({reason}); a replace without it would remove that member: fix it, or run the backfill without --replace",
                        message.partition(),
                        message.offset()
                    )))
                }
            }
        }
    }
    summary.members = members.len() as u64;
    Ok(members)
}

/// Send `members` in one replace session; a retryable failure starts a new session after the
/// vendor's wait (or a backoff). `Some(refused records)` once a session closed; `None` when
/// interrupted first (nothing was replaced).
async fn send_session(destination: &AnyDestination, members: &[OutboundRecord], stop: &CancellationToken, summary: &mut ReplaceSummary) -> Result<Option<u64>, Failure> {
    let mut last: Option<DeliveryError> = None;
    for attempt in 0..ATTEMPTS {
        if stop.is_cancelled() {
            return Ok(None);
        }
        summary.sessions += 1;
        match destination.replace(members, new_session_id()).await {
            Ok(refused) => return Ok(Some(refused.len() as u64)),
            Err(error) => match error.class {
                ErrorClass::Retryable { retry_after } => {
                    let wait = retry_after.unwrap_or(Duration::from_secs(2u64.pow(attempt + 1)));
                    tracing::warn!(attempt = attempt + 1, wait_ms = wait.as_millis() as u64, error = %error, "replace session failed; starting a new one");
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = stop.cancelled() => return Ok(None),
                    }
                    last = Some(error);
                }
                ErrorClass::Permanent | ErrorClass::Fatal => return Err(Failure::Error(format!("the replace session was refused: {error}; nothing was replaced"))),
            },
        }
    }
    Err(Failure::Error(format!("the replace failed {ATTEMPTS} times: {}; nothing was replaced", last.map(|e| e.to_string()).unwrap_or_default())))
}

/// A fresh positive int64 session id: a retried replace never reuses an abandoned session.
fn new_session_id() -> i64 {
    (uuid::Uuid::new_v4().as_u64_pair().0 >> 1) as i64
}

impl ReplaceSummary {
    /// The summary line(s), or JSON.
    pub(super) fn render(&self, request: &Request, elapsed: Duration, interrupted: bool) -> String {
        if request.json {
            return json!({ "destination": request.destination, "replace": true, "keys": self.keys, "members": self.members, "refused": self.refused,
                "sessions": self.sessions, "replaced": self.replaced, "caught_up": self.caught_up, "elapsed_ms": elapsed.as_millis() as u64, "interrupted": interrupted })
            .to_string();
        }
        let outcome = if self.replaced { "replaced" } else { "NOT replaced (interrupted before a session closed)" };
        format!(
            "replace of destination {}: {outcome}\n  {} keys read, {} current members sent in {} session(s), {} refused by the destination\n  {} keys changed meanwhile re-sent through the side topic (the sink applies them after the replace){}\n  {:.1} s",
            request.destination,
            self.keys,
            self.members,
            self.sessions,
            self.refused,
            self.caught_up,
            if interrupted && self.replaced { " (interrupted: run the same command to finish)" } else { "" },
            elapsed.as_secs_f64()
        )
    }
}
