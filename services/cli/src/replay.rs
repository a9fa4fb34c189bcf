//! `sluice replay --destination NAME --to earliest|latest|<RFC 3339 time>|<topic:partition:offset>`:
//! move one destination's consumer group, and only that one, on the change topics of its syncs
//! (or of one model's sync, `--model`), so its sink re-applies (or skips) changes.
//!
//! Guarantees:
//! - Without `--execute` nothing changes: the plan is printed (per partition: current → new
//!   offset, the records the sink will re-read and how many of them the order guard will
//!   supersede, the records a forward move skips), predicted exactly as the sink's guard will
//!   decide (`sluice_sink::predict_replay`).
//! - Only the destination's group (`<prefix>.sink.<destination>`) is written to; every other
//!   group, and the topics, are left as they are.
//! - Kafka moves the offsets of an empty group only. With live members the command refuses
//!   (exit 4) and says how to stop them; `--force` waits up to `--wait-secs` for them to leave
//!   (a killed sink stays a member until its session times out) and refuses if they have not.
//! - A backward move records the group's frontier (the offset it had reached) with the new
//!   offsets, so the restarted sink re-applies each key once, at the state the destination
//!   already has, and never an older one (docs/operations.md).
//!
//! Exit codes: 0 done (or plan shown), 1 error (Kafka), 2 bad config or arguments (unknown
//! destination or model, a `--to` that names no partition of the destination), 4 refused: the
//! group has live members.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::json;
use sluice_core::config::{Config, SyncMode};
use sluice_core::naming;
use sluice_kafka::compacted::{scan, Range};
use sluice_kafka::groups::{self, CommitError, Committed, NewOffset, Partition};
use sluice_kafka::KafkaError;
use sluice_sink::{predict_replay, ReplayCounts};

/// Exit code: a bad config or bad arguments.
const EXIT_CONFIG: u8 = 2;
/// Exit code: the group has live members.
const EXIT_LIVE_MEMBERS: u8 = 4;
/// How long one read of a partition may take while planning.
const READ_DEADLINE: Duration = Duration::from_secs(3600);

/// Where to move the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// The first offset of every partition.
    Earliest,
    /// The end of every partition: skip everything not yet delivered.
    Latest,
    /// The first record at or after this time (ms since the epoch), per partition.
    Time { ms: i64, text: String },
    /// One partition, to one offset.
    Offset { topic: String, partition: i32, offset: i64 },
}

impl std::str::FromStr for Target {
    type Err = String;

    fn from_str(text: &str) -> Result<Target, String> {
        match text {
            "earliest" => return Ok(Target::Earliest),
            "latest" => return Ok(Target::Latest),
            _ => {}
        }
        if let Ok(time) = chrono::DateTime::parse_from_rfc3339(text) {
            return Ok(Target::Time { ms: time.timestamp_millis(), text: text.to_string() });
        }
        // Topic names hold dots but never colons: the last two fields are numbers.
        let mut parts = text.rsplitn(3, ':');
        if let (Some(offset), Some(partition), Some(topic)) = (parts.next(), parts.next(), parts.next()) {
            if let (Ok(partition), Ok(offset)) = (partition.parse::<i32>(), offset.parse::<i64>()) {
                if !topic.is_empty() && partition >= 0 && offset >= 0 {
                    return Ok(Target::Offset { topic: topic.to_string(), partition, offset });
                }
            }
        }
        Err(format!(
            "--to {text:?} is not `earliest`, `latest`, an RFC 3339 time (2024-05-01T12:00:00Z) or `<topic>:<partition>:<offset>`"
        ))
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Earliest => f.write_str("earliest"),
            Target::Latest => f.write_str("latest"),
            Target::Time { text, .. } => f.write_str(text),
            Target::Offset { topic, partition, offset } => write!(f, "{topic}:{partition}:{offset}"),
        }
    }
}

/// What the operator asked for.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub destination: String,
    pub target: Target,
    pub model: Option<String>,
    pub execute: bool,
    pub force: bool,
    pub wait: Duration,
    pub json: bool,
}

/// Why the command stopped, with its exit code.
#[derive(Debug)]
enum Failure {
    Config(String),
    Refused(String),
    Error(String),
}

impl Failure {
    fn code(&self) -> u8 {
        match self {
            Failure::Config(_) => EXIT_CONFIG,
            Failure::Refused(_) => EXIT_LIVE_MEMBERS,
            Failure::Error(_) => 1,
        }
    }

    fn message(&self) -> &str {
        match self {
            Failure::Config(m) | Failure::Refused(m) | Failure::Error(m) => m,
        }
    }
}

impl From<KafkaError> for Failure {
    fn from(error: KafkaError) -> Failure {
        Failure::Error(error.to_string())
    }
}

/// One change topic of the destination: its name and whether its sync supersedes (not `append`).
struct Topic {
    name: String,
    supersede: bool,
}

/// The move of one partition.
#[derive(Debug, Clone)]
struct PartitionPlan {
    partition: Partition,
    committed: Committed,
    new: i64,
    counts: ReplayCounts,
    /// Records a forward move skips (never delivered).
    skipped: u64,
}

impl PartitionPlan {
    /// The frontier the new commit carries: the old one, when the move goes below it.
    fn carried(&self) -> Option<i64> {
        self.committed.frontier().filter(|&frontier| frontier > self.new)
    }
}

/// The plan, and whether it was carried out.
struct Report {
    group: String,
    partitions: Vec<PartitionPlan>,
    executed: bool,
}

/// Run `sluice replay` with the config at `config_path`.
pub(crate) async fn run(config_path: std::path::PathBuf, request: Request) -> ExitCode {
    let config = match Config::load(&config_path) {
        Ok(config) => config,
        Err(error) => return fail(&request, &Failure::Config(error.to_string())),
    };
    let json = request.json;
    let outcome = {
        let request = request.clone();
        tokio::task::spawn_blocking(move || replay(&config, &request)).await.expect("replay does not panic")
    };
    match outcome {
        Ok(report) => {
            if json {
                println!("{}", report_json(&request, &report));
            } else {
                print!("{}", report_text(&request, &report));
            }
            ExitCode::SUCCESS
        }
        Err(failure) => fail(&request, &failure),
    }
}

fn fail(request: &Request, failure: &Failure) -> ExitCode {
    eprintln!("error: {}", failure.message());
    if request.json {
        println!("{}", json!({ "error": failure.message(), "exit_code": failure.code() }));
    }
    ExitCode::from(failure.code())
}

/// Plan, and with `--execute` move the group. Blocking.
fn replay(config: &Config, request: &Request) -> Result<Report, Failure> {
    let topics = topics(config, request)?;
    let group = naming::sink_group(&config.kafka.topic_prefix, &request.destination);
    if request.execute {
        wait_until_empty(config, &group, request)?;
    }
    let partitions = plan(config, &group, &topics, &request.target)?;
    if request.execute {
        commit(config, &group, &partitions)?;
    }
    Ok(Report { group, partitions, executed: request.execute })
}

/// The destination's change topics (of `--model`'s sync only, when given); a clear error for a
/// destination or model that does not exist or is not synced there.
fn topics(config: &Config, request: &Request) -> Result<Vec<Topic>, Failure> {
    let destination = &request.destination;
    if config.destination(destination).is_none() {
        let known: Vec<&str> = config.destinations.iter().map(|d| d.name.get_ref().as_str()).collect();
        return Err(Failure::Config(format!("destination {destination:?} is not in the config (its destinations: {})", known.join(", "))));
    }
    let syncs: Vec<_> = config.syncs_to(destination).collect();
    let models: Vec<&str> = syncs.iter().map(|s| s.model.get_ref().as_str()).collect();
    if let Some(model) = &request.model {
        if config.model(model).is_none() {
            return Err(Failure::Config(format!("model {model:?} is not in the config")));
        }
        if !models.contains(&model.as_str()) {
            return Err(Failure::Config(format!("model {model:?} has no sync to destination {destination:?} (its models: {})", models.join(", "))));
        }
    }
    let topics: Vec<Topic> = syncs
        .iter()
        .filter(|s| request.model.as_ref().is_none_or(|m| m == s.model.get_ref()))
        .map(|s| Topic { name: naming::change_topic(&config.kafka.topic_prefix, s.model.get_ref()), supersede: s.mode() != SyncMode::Append })
        .collect();
    if topics.is_empty() {
        return Err(Failure::Config(format!("no [[syncs]] deliver to destination {destination:?}")));
    }
    if let Target::Offset { topic, .. } = &request.target {
        if !topics.iter().any(|t| &t.name == topic) {
            let names: Vec<&str> = topics.iter().map(|t| t.name.as_str()).collect();
            return Err(Failure::Config(format!("--to names topic {topic:?}, which is not a change topic of destination {destination:?} (its topics: {})", names.join(", "))));
        }
    }
    Ok(topics)
}

/// Refuse while the group has members; with `--force`, wait up to `--wait-secs` for them to go.
fn wait_until_empty(config: &Config, group: &str, request: &Request) -> Result<(), Failure> {
    let started = Instant::now();
    loop {
        let members = groups::members(&config.kafka, group)?;
        if members.is_empty() {
            return Ok(());
        }
        if !request.force || started.elapsed() >= request.wait {
            return Err(Failure::Refused(live_members_message(group, &request.destination, &members, request)));
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn live_members_message(group: &str, destination: &str, members: &[groups::Member], request: &Request) -> String {
    let listed: Vec<String> = members.iter().map(|m| format!("{}@{}", m.client_id, m.host)).collect();
    let waited = if request.force { format!(" (waited {} s)", request.wait.as_secs()) } else { String::new() };
    format!(
        "group {group} has {} live member(s){waited}: {}. Kafka moves the offsets of an empty group only: stop every sink of destination {destination:?} first \
         (SIGTERM drains it: `systemctl stop`, `kubectl scale --replicas=0`, `docker compose stop`), then run this again. \
         A killed sink stays a member until its session times out (session.timeout.ms, 45 s by default): --force waits for that, up to --wait-secs.",
        members.len(),
        listed.join(", ")
    )
}

/// The move of every partition of `topics` that the target names.
fn plan(config: &Config, group: &str, topics: &[Topic], target: &Target) -> Result<Vec<PartitionPlan>, Failure> {
    let kafka = &config.kafka;
    let mut plans = Vec::new();
    for topic in topics {
        let marks = groups::watermarks(kafka, &topic.name)?;
        let partitions: Vec<Partition> = marks.iter().map(|&(p, _, _)| (topic.name.clone(), p)).collect();
        let committed = groups::committed(kafka, group, &partitions)?;
        let by_time = match target {
            Target::Time { ms, .. } => groups::offsets_for_time(kafka, &topic.name, *ms)?,
            _ => HashMap::new(),
        };
        for (partition, low, high) in marks {
            let new = match target {
                Target::Earliest => low,
                Target::Latest => high,
                Target::Time { .. } => by_time.get(&partition).copied().unwrap_or(high),
                Target::Offset { topic: t, partition: p, offset } if *t == topic.name && *p == partition => {
                    if !(low..=high).contains(offset) {
                        return Err(Failure::Config(format!("--to offset {offset} is outside {t}:{p}, which holds offsets {low}..{high}")));
                    }
                    *offset
                }
                Target::Offset { .. } => continue,
            };
            let committed = committed.get(&(topic.name.clone(), partition)).copied().unwrap_or_default();
            plans.push(plan_partition(kafka, topic, partition, low, committed, new)?);
        }
    }
    if let (Target::Offset { topic, partition, .. }, true) = (target, plans.is_empty()) {
        return Err(Failure::Config(format!("--to names partition {partition} of {topic}, which does not exist")));
    }
    Ok(plans)
}

fn plan_partition(kafka: &sluice_core::config::KafkaConfig, topic: &Topic, partition: i32, low: i64, committed: Committed, new: i64) -> Result<PartitionPlan, Failure> {
    let frontier = committed.frontier();
    let counts = match frontier {
        Some(frontier) => predict_replay(kafka, &topic.name, partition, new, frontier, topic.supersede, READ_DEADLINE)?,
        None => ReplayCounts::default(),
    };
    // A group that never committed starts at the beginning.
    let current = committed.offset.unwrap_or(low);
    let skipped = if new > current {
        let mut n = 0;
        scan(kafka, &topic.name, &[Range { partition, from: current, to: new }], READ_DEADLINE, |_| n += 1)?;
        n
    } else {
        0
    };
    Ok(PartitionPlan { partition: (topic.name.clone(), partition), committed, new, counts, skipped })
}

/// Commit the planned offsets, with the frontier they carry, after checking nothing moved since
/// the plan was made.
fn commit(config: &Config, group: &str, partitions: &[PartitionPlan]) -> Result<(), Failure> {
    let list: Vec<Partition> = partitions.iter().map(|p| p.partition.clone()).collect();
    let now = groups::committed(&config.kafka, group, &list)?;
    if partitions.iter().any(|p| now.get(&p.partition).copied().unwrap_or_default() != p.committed) {
        return Err(Failure::Error(format!("the offsets of group {group} moved while the plan was made (a sink ran meanwhile); nothing was changed: run the command again")));
    }
    let offsets: Vec<NewOffset> = partitions.iter().map(|p| NewOffset { partition: p.partition.clone(), offset: p.new, frontier: p.carried() }).collect();
    match groups::commit_empty(&config.kafka, group, &offsets) {
        Ok(()) => Ok(()),
        Err(CommitError::LiveMembers { members, .. }) => Err(Failure::Refused(format!(
            "a sink joined group {group} while the offsets were being moved ({} member(s)); nothing was changed: stop it and run the command again",
            members.len()
        ))),
        Err(CommitError::Kafka(error)) => Err(error.into()),
    }
}

fn totals(report: &Report) -> (u64, u64, u64) {
    report.partitions.iter().fold((0, 0, 0), |(records, superseded, skipped), p| (records + p.counts.records, superseded + p.counts.superseded, skipped + p.skipped))
}

fn report_json(request: &Request, report: &Report) -> serde_json::Value {
    let partitions: Vec<serde_json::Value> = report
        .partitions
        .iter()
        .map(|p| {
            json!({
                "topic": p.partition.0, "partition": p.partition.1, "current": p.committed.offset, "new": p.new,
                "frontier": p.committed.frontier(), "records": p.counts.records, "superseded": p.counts.superseded,
                "reapplied": p.counts.reapplied(), "skipped": p.skipped,
            })
        })
        .collect();
    let (records, superseded, skipped) = totals(report);
    json!({
        "destination": request.destination, "group": report.group, "to": request.target.to_string(), "executed": report.executed,
        "partitions": partitions, "records": records, "superseded": superseded, "reapplied": records - superseded, "skipped": skipped,
    })
}

fn report_text(request: &Request, report: &Report) -> String {
    let row = |topic: &str, part: &str, current: &str, new: &str, records: &str, superseded: &str, skipped: &str| {
        format!("{topic:<40} {part:>5} {current:>10} {new:>10} {records:>9} {superseded:>10} {skipped:>8}")
    };
    let mut lines = vec![
        format!("replay of destination {} (group {}) to {}", request.destination, report.group, request.target),
        row("topic", "part", "current", "new", "re-read", "superseded", "skipped"),
    ];
    for p in &report.partitions {
        let current = p.committed.offset.map_or("-".to_string(), |o| o.to_string());
        let numbers = [p.partition.1 as i64, p.new, p.counts.records as i64, p.counts.superseded as i64, p.skipped as i64].map(|n| n.to_string());
        lines.push(row(&p.partition.0, &numbers[0], &current, &numbers[1], &numbers[2], &numbers[3], &numbers[4]));
    }
    let (records, superseded, skipped) = totals(report);
    lines.push(format!(
        "{records} records re-read: {superseded} superseded by the order guard (the destination has a newer state of their key), {} re-applied; {skipped} skipped (never delivered)",
        records - superseded
    ));
    lines.push(if report.executed {
        format!("done: group {} moved; start the sink of destination {} to replay", report.group, request.destination)
    } else {
        "plan only: nothing changed; add --execute to move the group".to_string()
    });
    lines.join("\n") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_and_bad_ones_say_what_is_expected() {
        assert_eq!("earliest".parse(), Ok(Target::Earliest));
        assert_eq!("latest".parse(), Ok(Target::Latest));
        assert_eq!(
            "2024-05-01T12:00:00Z".parse(),
            Ok(Target::Time { ms: 1_714_564_800_000, text: "2024-05-01T12:00:00Z".into() })
        );
        assert_eq!("sluice.changes.customers:2:40".parse(), Ok(Target::Offset { topic: "sluice.changes.customers".into(), partition: 2, offset: 40 }));
        for bad in ["yesterday", "t:x:1", ":0:1", "t:-1:4", "2024-05-01"] {
            let error = bad.parse::<Target>().unwrap_err();
            assert!(error.contains("is not `earliest`, `latest`, an RFC 3339 time"), "{bad}: {error}");
        }
    }

    #[test]
    fn a_backward_move_carries_the_frontier_and_a_forward_one_does_not() {
        let plan = |offset, carried, new| PartitionPlan {
            partition: ("t".into(), 0),
            committed: Committed { offset: Some(offset), carried },
            new,
            counts: ReplayCounts::default(),
            skipped: 0,
        };
        assert_eq!(plan(50, None, 10).carried(), Some(50));
        assert_eq!(plan(20, Some(50), 10).carried(), Some(50), "a replay of a replay keeps the highest");
        assert_eq!(plan(50, None, 60).carried(), None);
    }
}
