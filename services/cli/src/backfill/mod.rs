//! `sluice backfill --destination NAME [--model MODEL | --replace] [--rate N/s]`: bring a new or repaired
//! destination up to the current state of every row, from the compacted change topics, while
//! the live sync keeps running.
//!
//! How: per partition of each change topic (of the destination's syncs, or of `--model`'s), up
//! to the end offset seen at the start, a first pass finds each key's latest state (and any later
//! tombstone) — an index of 128-bit key hashes, 40–70 bytes per key in memory — and a second pass
//! writes each key's latest state, untouched, to the destination's side topic (partition = its
//! original partition, `sluice_kafka::side`), at most `--rate` records per second so the
//! destination's rate limit keeps room for live traffic. A key whose latest record is a `d`
//! event is sent as that delete (a repaired destination drops the row); a key known only by a
//! tombstone (its `d` event compacted away) is not sent and is counted.
//!
//! Why no key goes backwards: the sink decides every side record with its order guard, in its
//! consume loop, together with the live records of its key (docs/operations.md, "The order
//! guard"): a backfilled state older than one the destination has, or that the live stream
//! delivered meanwhile, is superseded; one newer than the live consumer's position is applied,
//! and the live records of its key below it are then superseded. The backfill itself only
//! writes states that were current when it read them; it never decides.
//!
//! With `--replace` (kinds with a full replace, e.g. a Meta audience: [`replace`]), the
//! current members are sent in one vendor session that replaces every member, then every key
//! changed meanwhile is re-sent through the side topic.
//!
//! Exit codes (`crate::failure`): 0 done, 1 Kafka error, 2 bad config or arguments, 130
//! interrupted (Ctrl-C: what was written is applied; run it again to finish — re-sent states are
//! re-applied at most once more each).

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use futures::stream::{FuturesUnordered, StreamExt};
use governor::{Quota, RateLimiter};
use rdkafka::message::{Headers, Message};
use serde_json::json;
use sluice_core::config::Config;
use sluice_kafka::compacted::{scan, Range};
use sluice_kafka::groups;
use sluice_kafka::side::{Original, SideProducer, SideRecord};
use sluice_kafka::KafkaError;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::failure::Failure;
use crate::scope::{self, Topic};

mod replace;

/// The default `--rate`: well under every vendor's documented limit, so live traffic keeps most
/// of it.
pub(crate) const DEFAULT_RATE: u32 = 200;
/// Side records awaiting the broker's acknowledgement at once.
const IN_FLIGHT: usize = 500;
/// How long one pass over a partition may take.
pub(super) const READ_DEADLINE: Duration = Duration::from_secs(6 * 3600);

/// What the operator asked for.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub destination: String,
    pub model: Option<String>,
    /// Side records per second, at most.
    pub rate: NonZeroU32,
    pub json: bool,
    /// `--replace`: one full replace of the destination's members ([`check_replace`]).
    pub replace: bool,
}

/// What a run did: per change topic (a plain backfill), or the replace's summary.
enum Summary {
    States(Vec<(String, TopicSummary)>),
    Replace(replace::ReplaceSummary),
}

/// The latest state and tombstone of a key in one partition (offsets).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Latest {
    state: Option<i64>,
    /// Whether that state is a `d` event.
    delete: bool,
    tombstone: Option<i64>,
}

/// One partition's plan: which offset to send per key, and the counts.
#[derive(Debug, Default)]
pub(super) struct PartitionPlan {
    pub(super) send: HashMap<u128, i64>,
    keys: u64,
    /// Keys whose latest record is a tombstone without its `d` event: not sent.
    compacted_deletes: u64,
    read: u64,
}

/// What the backfill did, per change topic.
#[derive(Debug, Default, Clone)]
struct TopicSummary {
    keys: u64,
    sent: u64,
    deletes: u64,
    compacted_deletes: u64,
    read: u64,
}

/// Decide a partition's index: each key's latest state, unless a later tombstone deleted it.
fn plan_of(index: HashMap<u128, Latest>, read: u64) -> PartitionPlan {
    let mut plan = PartitionPlan { keys: index.len() as u64, read, ..PartitionPlan::default() };
    for (key, latest) in index {
        match latest {
            // The latest state, unless a later tombstone deleted the key: then its `d` event,
            // when compaction left it (the state before the tombstone is that `d` event).
            Latest { state: Some(state), delete, tombstone } if delete || tombstone.is_none_or(|t| t < state) => {
                plan.send.insert(key, state);
            }
            // Only the tombstone is left.
            _ => plan.compacted_deletes += 1,
        }
    }
    plan
}

/// The `sluice.op` header of a change record.
fn op_of(message: &impl Message) -> Option<&[u8]> {
    message.headers()?.iter().find(|h| h.key == sluice_kafka::headers::OP)?.value
}

pub(super) fn key_hash(key: &[u8]) -> u128 {
    xxhash_rust::xxh3::xxh3_128(key)
}

/// Run `sluice backfill` with the config at `config_path`.
pub(crate) async fn run(config_path: std::path::PathBuf, request: Request) -> ExitCode {
    let _telemetry = sluice_telemetry::setup_telemetry("sluice", false, sluice_telemetry::Spans::Always);
    let span = tracing::info_span!("backfill", destination = %request.destination, rate = request.rate.get());
    let stop = CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("stopping: what was written is applied; run the same command to finish");
                stop.cancel();
            }
        }
    });
    let result = async {
        let config = scope::load(&config_path)?;
        let topics = scope::destination_topics(&config, &request.destination, request.model.as_deref())?;
        if request.replace {
            check_replace(&config, &request.destination)?;
            return replace::replace(&config, &topics, &request, &stop).await.map(|(summary, elapsed)| (Summary::Replace(summary), elapsed));
        }
        backfill(&config, &topics, &request, &stop).await.map(|(summary, elapsed)| (Summary::States(summary), elapsed))
    }
    .instrument(span)
    .await;
    match result {
        Ok((summary, elapsed)) => {
            let text = match summary {
                Summary::States(summary) => render(&request, &summary, elapsed, stop.is_cancelled()),
                Summary::Replace(summary) => summary.render(&request, elapsed, stop.is_cancelled()),
            };
            println!("{text}");
            if stop.is_cancelled() {
                ExitCode::from(130)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(failure) => failure.exit(request.json),
    }
}

/// The destination's side topic (created if missing, [`scope::ensure_side_topic`]) and a
/// producer to it.
async fn side_producer(config: &Config, topics: &[Topic], request: &Request) -> Result<SideProducer, Failure> {
    let side_topic = scope::ensure_side_topic(config, &request.destination, topics, &[]).await?;
    Ok(SideProducer::new(&config.kafka, side_topic)?)
}

async fn backfill(config: &Config, topics: &[Topic], request: &Request, stop: &CancellationToken) -> Result<(Vec<(String, TopicSummary)>, Duration), Failure> {
    let started = Instant::now();
    let producer = side_producer(config, topics, request).await?;
    // The first pass over every partition, so the progress bar knows its length.
    let mut plans = Vec::new();
    for topic in topics {
        for (partition, low, high) in groups::watermarks(&config.kafka, &topic.name)? {
            let kafka = config.kafka.clone();
            let name = topic.name.clone();
            let plan = tokio::task::spawn_blocking(move || first_pass(&kafka, &name, Range { partition, from: low, to: high })).await.expect("reading does not panic")?;
            plans.push((topic.name.clone(), Range { partition, from: low, to: high }, plan));
        }
    }
    let total: u64 = plans.iter().map(|(_, _, p)| p.send.len() as u64).sum();
    let bar = progress(total, request.json);
    let limiter = RateLimiter::direct(Quota::per_second(request.rate));
    let mut summary: Vec<(String, TopicSummary)> = topics.iter().map(|t| (t.name.clone(), TopicSummary::default())).collect();
    for (topic, range, plan) in plans {
        if stop.is_cancelled() {
            break;
        }
        let at = summary.iter_mut().find(|(name, _)| *name == topic).map(|(_, s)| s).expect("a topic of the destination");
        at.keys += plan.keys;
        at.compacted_deletes += plan.compacted_deletes;
        at.read += plan.read;
        let writer = Writer { config, producer: &producer, limiter: &limiter, bar: &bar, stop };
        let (sent, deletes) = second_pass(&writer, &topic, range, plan.send).await?;
        at.sent += sent;
        at.deletes += deletes;
    }
    bar.finish_and_clear();
    let sent: u64 = summary.iter().map(|(_, s)| s.sent).sum();
    tracing::info!(sent, total, interrupted = stop.is_cancelled(), elapsed_ms = started.elapsed().as_millis() as u64, "backfill done");
    Ok((summary, started.elapsed()))
}

/// Whether `--replace` can run for `destination`: its kind has a full replace with these
/// settings ([`sluice_destinations::KindConfig::check_replace`]), and no sync into it names
/// suppression lists (the replace set would need the sink's membership stage, which the
/// backfill does not run yet). Errors are config errors (exit 2) with the reason and the fix.
fn check_replace(config: &Config, destination: &str) -> Result<(), Failure> {
    let dest = config.destination(destination).expect("destination_topics checked it exists");
    let settings = sluice_destinations::parse(config, dest).map_err(|error| Failure::Config(error.to_string()))?;
    settings
        .check_replace()
        .map_err(|refusal| Failure::Config(format!("destination {destination:?} cannot be replaced: {}; {}", refusal.reason, refusal.fix)))?;
    if let Some(sync) = config.syncs_to(destination).find(|sync| !sync.suppressed_by.is_empty()) {
        return Err(Failure::Config(format!(
            "destination {destination:?} cannot be replaced yet: the sync of model {:?} names suppression lists, and --replace does not apply them; run it without --replace",
            sync.model.get_ref()
        )));
    }
    Ok(())
}

/// Each key's latest state and tombstone in `range`. Blocking.
pub(super) fn first_pass(kafka: &sluice_core::config::KafkaConfig, topic: &str, range: Range) -> Result<PartitionPlan, KafkaError> {
    let mut index: HashMap<u128, Latest> = HashMap::new();
    let read = scan(kafka, topic, &[range], READ_DEADLINE, |message| {
        let Some(key) = message.key() else { return };
        let latest = index.entry(key_hash(key)).or_default();
        if message.payload().is_none() {
            latest.tombstone = Some(message.offset());
        } else {
            latest.state = Some(message.offset());
            latest.delete = op_of(message) == Some(b"d".as_slice());
        }
    })?;
    Ok(plan_of(index, read))
}

/// What every partition's second pass writes with: the side topic's producer, the one rate
/// limiter of the whole backfill, the progress bar and the interrupt.
pub(super) struct Writer<'a> {
    pub(super) config: &'a Config,
    pub(super) producer: &'a SideProducer,
    pub(super) limiter: &'a governor::DefaultDirectRateLimiter,
    pub(super) bar: &'a indicatif::ProgressBar,
    pub(super) stop: &'a CancellationToken,
}

/// Write the planned states of one partition to the side topic, at the limiter's rate, many in
/// flight. Returns (sent, of which deletes).
pub(super) async fn second_pass(writer: &Writer<'_>, topic: &str, range: Range, send: HashMap<u128, i64>) -> Result<(u64, u64), Failure> {
    let Writer { config, producer, limiter, bar, stop } = *writer;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<SideRecord>(IN_FLIGHT);
    let reader = {
        let (kafka, topic, stop) = (config.kafka.clone(), topic.to_string(), stop.clone());
        tokio::task::spawn_blocking(move || {
            scan(&kafka, &topic, &[range], READ_DEADLINE, |message| {
                let (Some(key), Some(payload)) = (message.key(), message.payload()) else { return };
                if stop.is_cancelled() || send.get(&key_hash(key)) != Some(&message.offset()) {
                    return;
                }
                let original = Original { topic: topic.clone(), partition: message.partition(), offset: message.offset(), timestamp_ms: message.timestamp().to_millis() };
                let mut record = SideRecord::new(original, key.to_vec(), Some(payload.to_vec()), "backfill");
                record.kept = message.headers().map(|h| h.iter().map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec())).collect()).unwrap_or_default();
                // The receiver is gone only when the writer failed; its error is reported.
                tx.blocking_send(record).ok();
            })
        })
    };
    let (mut sent, mut deletes) = (0u64, 0u64);
    let mut flying = FuturesUnordered::new();
    loop {
        tokio::select! {
            Some(done) = flying.next(), if !flying.is_empty() => {
                let is_delete: bool = done?;
                sent += 1;
                deletes += u64::from(is_delete);
                bar.inc(1);
            }
            next = rx.recv(), if flying.len() < IN_FLIGHT => match next {
                Some(record) => {
                    limiter.until_ready().await;
                    let is_delete = record.kept.iter().any(|(k, v)| k == sluice_kafka::headers::OP && v == b"d");
                    flying.push(async move { producer.send(&record).await.map(|()| is_delete) });
                }
                None => break,
            },
        }
    }
    while let Some(done) = flying.next().await {
        deletes += u64::from(done?);
        sent += 1;
        bar.inc(1);
    }
    reader.await.expect("reading does not panic")?;
    Ok((sent, deletes))
}

fn progress(total: u64, quiet: bool) -> indicatif::ProgressBar {
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    let style = indicatif::ProgressStyle::with_template("backfill [{bar:40}] {pos}/{len} keys ({per_sec}, eta {eta})").expect("valid template").progress_chars("=> ");
    indicatif::ProgressBar::new(total).with_style(style)
}

fn render(request: &Request, summary: &[(String, TopicSummary)], elapsed: Duration, interrupted: bool) -> String {
    let sent: u64 = summary.iter().map(|(_, s)| s.sent).sum();
    let rate = sent as f64 / elapsed.as_secs_f64().max(0.001);
    if request.json {
        let topics: Vec<serde_json::Value> = summary
            .iter()
            .map(|(t, s)| json!({ "topic": t, "keys": s.keys, "sent": s.sent, "deletes": s.deletes, "compacted_deletes": s.compacted_deletes, "records_read": s.read }))
            .collect();
        return json!({ "destination": request.destination, "topics": topics, "sent": sent, "elapsed_ms": elapsed.as_millis() as u64, "rate_per_sec": rate.round(), "interrupted": interrupted }).to_string();
    }
    let mut lines = vec![format!("backfill of destination {}{}", request.destination, if interrupted { " (interrupted)" } else { "" })];
    for (topic, s) in summary {
        lines.push(format!(
            "  {topic}: {} keys, {} current states sent ({} of them deletes), {} deleted keys not sent (their `d` event was compacted away), {} records read",
            s.keys, s.sent, s.deletes, s.compacted_deletes, s.read
        ));
    }
    lines.push(format!("{sent} sent in {:.1} s ({rate:.0}/s); the sink applies each unless it already has a newer state of its key (sluice_sink_records_total{{outcome=\"superseded\"}})", elapsed.as_secs_f64()));
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_key_is_sent_at_its_latest_state_and_deleted_keys_only_with_their_d_event() {
        let index = HashMap::from([
            (1, Latest { state: Some(10), delete: false, tombstone: None }),
            // A `d` event followed by its tombstone: the delete is sent.
            (2, Latest { state: Some(11), delete: true, tombstone: Some(12) }),
            // Deleted, then created again.
            (3, Latest { state: Some(20), delete: false, tombstone: Some(5) }),
            // Only the tombstone is left.
            (4, Latest { state: None, delete: false, tombstone: Some(7) }),
            // An older state and a tombstone after it: its `d` event was compacted away.
            (5, Latest { state: Some(3), delete: false, tombstone: Some(9) }),
        ]);
        let plan = plan_of(index, 40);
        assert_eq!(plan.send, HashMap::from([(1, 10), (2, 11), (3, 20)]));
        assert_eq!((plan.keys, plan.compacted_deletes, plan.read), (5, 2, 40));
    }
}
