//! `sluice inspect --model M --key '{"id":42}' [--show-values] [--json]`: the row-level
//! debugger. For one key: its history on the model's change topic (each record's op, time,
//! changed columns and run id), where each destination's consumer group stands relative to it
//! (the key's records below the group's committed frontier are applied, the rest pending), and
//! the key's dead letters per destination with their class, reason and status (read and
//! selected by the `dlq` module, as `sluice dlq show --key` does).
//!
//! Guarantees: it only reads (`read_committed`), so it disturbs no service; the history is
//! every committed record of the key still on the topic, in offset order (compaction may have
//! removed older ones: the topic keeps the latest per key); row values are masked (column names
//! and nulls kept, as `dlq show` masks them) unless `--show-values`, and the reasons dead
//! letters carry hold no personal data (`schemas/README.md`).
//!
//! Changed columns: an update's `changed` list as the poller wrote it; otherwise the columns
//! whose values differ between the record's `before` and `after`, or, without `before`,
//! between the previous record's `after` and this one's (a snapshot read after an insert); none
//! for the key's first image, a delete or a tombstone.
//!
//! The whole change topic is read to find the key (a key's partition depends on the producer's
//! partitioner, which the command does not assume): seconds for millions of records.
//!
//! Exit codes (`crate::failure`): 0 shown, 1 Kafka error, 2 bad config, unknown model or a key
//! that does not parse (or does not name exactly the model's key columns), 3 no record of the
//! key on the topic.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;

use serde_json::{json, Map, Value as Json};
use sluice_core::config::{Config, ModelConfig};
use sluice_core::naming;
use sluice_kafka::groups;
use sluice_kafka::headers;

use crate::dlq::decode::{mask_event, Decoders};
use crate::dlq::letters::{read_all, Letter};
use crate::dlq::{letters_of_key, KeyLetter};
use crate::failure::Failure;

/// What the operator asked for.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub model: String,
    /// The key as typed: a JSON object of the model's key columns.
    pub key: String,
    pub show_values: bool,
    pub json: bool,
}

/// One record of the key on its change topic.
#[derive(Debug, Clone)]
struct Entry {
    partition: i32,
    offset: i64,
    /// `c`, `u`, `d`, `r`, or `tombstone`.
    op: String,
    ts_ms: Option<i64>,
    run_id: Option<String>,
    changed: Vec<String>,
    /// The decoded event (`op`, `before`, `after`, `changed`, `ts_ms`); `Null` for a tombstone.
    event: Json,
}

/// Where one destination stands relative to the key.
#[derive(Debug, Clone)]
struct Standing {
    destination: String,
    group: String,
    /// Per partition of the key's records: the committed offset and the frontier it carries.
    positions: Vec<(i32, groups::Committed)>,
    applied: Vec<i64>,
    pending: Vec<i64>,
    letters: Vec<KeyLetter>,
}

/// Run `sluice inspect` and return its exit code.
pub(crate) async fn run(config: PathBuf, request: Request) -> ExitCode {
    match inspect(&config, &request).await {
        Ok(output) => {
            println!("{output}");
            ExitCode::SUCCESS
        }
        Err(failure) => failure.exit(request.json),
    }
}

async fn inspect(path: &std::path::Path, request: &Request) -> Result<String, Failure> {
    let config = crate::scope::load(path)?;
    let model = config.model(&request.model).ok_or_else(|| {
        let known: Vec<&str> = config.models.iter().map(|m| m.name.get_ref().as_str()).collect();
        Failure::Config(format!("model {:?} is not in the config (its models: {})", request.model, known.join(", ")))
    })?;
    let key = parse_key(model, &request.key)?;
    let topic = naming::change_topic(&config.kafka.topic_prefix, &request.model);
    let history = history(&config, &topic, &key).await?;
    if history.is_empty() {
        return Err(Failure::NothingMatched(format!("no record of key {} on {topic} (model {})", Json::Object(key), request.model)));
    }
    let mut standings = Vec::new();
    for sync in config.syncs.iter().filter(|s| s.model.get_ref() == &request.model) {
        standings.push(standing(&config, sync.destination.get_ref(), &topic, &history, &request.key).await?);
    }
    tracing::info!(model = %request.model, records = history.len(), destinations = standings.len(), "inspect");
    let report = Report { model: &request.model, key: &key, topic: &topic, history: &history, standings: &standings, show_values: request.show_values };
    Ok(if request.json { report.json().to_string() } else { report.text() })
}

/// The key as a JSON object naming exactly the model's key columns (exit 2 otherwise).
fn parse_key(model: &ModelConfig, text: &str) -> Result<Map<String, Json>, Failure> {
    let columns: BTreeSet<&str> = model.primary_key.iter().map(String::as_str).collect();
    let example = columns.iter().map(|c| format!("\"{c}\":…")).collect::<Vec<_>>().join(",");
    let bad = |why: &str| Failure::Config(format!("--key {text:?} {why}: give a JSON object of model {}'s key columns, e.g. '{{{example}}}'", model.name.get_ref()));
    let key = match serde_json::from_str::<Json>(text) {
        Ok(Json::Object(map)) => map,
        _ => return Err(bad("is not a JSON object")),
    };
    let given: BTreeSet<&str> = key.keys().map(String::as_str).collect();
    if given != columns {
        return Err(bad(&format!("names {given:?}, not the key columns {columns:?}")));
    }
    Ok(key)
}

/// Every committed record of `key` on `topic`, in offset order, decoded.
async fn history(config: &Config, topic: &str, key: &Map<String, Json>) -> Result<Vec<Entry>, Failure> {
    let (kafka, topic, key) = (config.kafka.clone(), topic.to_string(), key.clone());
    let schemas = naming::schema_topic(&config.kafka.topic_prefix);
    tokio::task::spawn_blocking(move || {
        let mut decoders = Decoders::load(&kafka, &schemas)?;
        let records = read_all(&kafka, &topic)?;
        let mine = records.iter().filter(|r| r.key.as_deref().and_then(|k| decoders.key(k).ok()).as_ref() == Some(&key));
        let mut entries: Vec<Entry> = Vec::new();
        for record in mine.collect::<Vec<_>>() {
            let entry = entry(record, &mut decoders, entries.last()).map_err(|e| Failure::Error(format!("{topic} {}: {e}", record.id)))?;
            entries.push(entry);
        }
        Ok(entries)
    })
    .await
    .expect("reading does not panic")
}

/// One record as an [`Entry`]; `previous` is the key's record before it.
fn entry(record: &Letter, decoders: &mut Decoders, previous: Option<&Entry>) -> Result<Entry, String> {
    let run_id = record.header(headers::RUN_ID).map(str::to_string);
    let Some(payload) = &record.payload else {
        let (partition, offset) = (record.id.partition, record.id.offset);
        return Ok(Entry { partition, offset, op: "tombstone".into(), ts_ms: record.timestamp_ms, run_id, changed: Vec::new(), event: Json::Null });
    };
    let event = decoders.event(payload)?;
    let op = event["op"].as_str().unwrap_or("?").to_string();
    let changed = match event["changed"].as_array() {
        Some(listed) => listed.iter().filter_map(|c| c.as_str().map(str::to_string)).collect(),
        None if event["before"].is_object() => differing(&event["before"], &event["after"]),
        None => previous.map_or_else(Vec::new, |p| differing(&p.event["after"], &event["after"])),
    };
    Ok(Entry { partition: record.id.partition, offset: record.id.offset, op, ts_ms: event["ts_ms"].as_i64(), run_id, changed, event })
}

/// The columns whose values differ between two row images (none unless both are rows).
fn differing(before: &Json, after: &Json) -> Vec<String> {
    match (before.as_object(), after.as_object()) {
        (Some(before), Some(after)) => after.iter().filter(|(column, value)| before.get(*column) != Some(value)).map(|(c, _)| c.clone()).collect(),
        _ => Vec::new(),
    }
}

/// Where `destination`'s group stands on the key's partitions, and its dead letters of the key.
async fn standing(config: &Config, destination: &str, topic: &str, history: &[Entry], key: &str) -> Result<Standing, Failure> {
    let group = naming::sink_group(&config.kafka.topic_prefix, destination);
    let partitions: BTreeSet<i32> = history.iter().map(|e| e.partition).collect();
    let wanted: Vec<groups::Partition> = partitions.iter().map(|&p| (topic.to_string(), p)).collect();
    let (kafka, g) = (config.kafka.clone(), group.clone());
    let committed = tokio::task::spawn_blocking(move || groups::committed(&kafka, &g, &wanted)).await.expect("reading does not panic")?;
    let positions: Vec<(i32, groups::Committed)> =
        partitions.iter().map(|&p| (p, committed.get(&(topic.to_string(), p)).cloned().unwrap_or(groups::Committed { offset: None, carried: None }))).collect();
    let frontier = |p: i32| positions.iter().find(|(q, _)| *q == p).and_then(|(_, c)| c.frontier());
    let (applied, pending): (Vec<&Entry>, Vec<&Entry>) = history.iter().partition(|e| frontier(e.partition).is_some_and(|f| e.offset < f));
    let letters = letters_of_key(config, destination, topic, key).await?;
    Ok(Standing {
        destination: destination.to_string(),
        group,
        positions,
        applied: applied.iter().map(|e| e.offset).collect(),
        pending: pending.iter().map(|e| e.offset).collect(),
        letters,
    })
}

/// What `inspect` prints.
struct Report<'a> {
    model: &'a str,
    key: &'a Map<String, Json>,
    topic: &'a str,
    history: &'a [Entry],
    standings: &'a [Standing],
    show_values: bool,
}

fn time(ms: Option<i64>) -> String {
    ms.and_then(chrono::DateTime::from_timestamp_millis).map_or_else(|| "-".to_string(), |t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

impl Report<'_> {
    fn values(&self, entry: &Entry) -> Json {
        match self.show_values {
            true => entry.event.clone(),
            false => mask_event(&entry.event),
        }
    }

    fn json(&self) -> Json {
        let history: Vec<Json> = self
            .history
            .iter()
            .map(|e| {
                let values = self.values(e);
                json!({ "partition": e.partition, "offset": e.offset, "op": e.op, "ts_ms": e.ts_ms, "time": time(e.ts_ms), "run_id": e.run_id,
                        "changed": e.changed, "before": values["before"], "after": values["after"] })
            })
            .collect();
        let destinations: Vec<Json> = self.standings.iter().map(standing_json).collect();
        json!({ "model": self.model, "key": self.key, "topic": self.topic, "history": history, "destinations": destinations, "values_shown": self.show_values })
    }

    fn text(&self) -> String {
        let mut out = format!("key {} of model {} on {}: {} records\n", Json::Object(self.key.clone()), self.model, self.topic, self.history.len());
        for e in self.history {
            let run = e.run_id.as_deref().unwrap_or("-");
            out += &format!("  {}:{:<6} {:<9} {}  run {run}  changed: {}\n", e.partition, e.offset, e.op, time(e.ts_ms), e.changed.join(", "));
            if !e.event.is_null() {
                out += &format!("      after: {}\n", self.values(e)["after"]);
            }
        }
        for s in self.standings {
            let at: Vec<String> = s.positions.iter().map(|(p, c)| format!("partition {p} at {}", c.offset.map_or("nothing committed".to_string(), |o| o.to_string()))).collect();
            out += &format!("destination {} (group {}): {}; {} applied, {} pending\n", s.destination, s.group, at.join(", "), s.applied.len(), s.pending.len());
            for l in &s.letters {
                let offset = l.original_offset.map_or("-".to_string(), |o| o.to_string());
                out += &format!("  dead letter {} of offset {offset}: {} ({}), attempts {}, at {}: {}\n", l.id, l.class, l.status, l.attempts, time(l.failed_at_ms), l.message);
            }
        }
        out.trim_end().to_string()
    }
}

fn standing_json(s: &Standing) -> Json {
    let positions: Vec<Json> = s.positions.iter().map(|(p, c)| json!({ "partition": p, "committed_offset": c.offset, "frontier": c.frontier() })).collect();
    let letters: Vec<Json> = s
        .letters
        .iter()
        .map(|l| json!({ "letter": l.id, "class": l.class, "status": l.status, "message": l.message, "attempts": l.attempts,
                          "original_offset": l.original_offset, "failed_at": time(l.failed_at_ms) }))
        .collect();
    json!({ "destination": s.destination, "group": s.group, "positions": positions, "applied": s.applied, "pending": s.pending, "dead_letters": letters })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_columns_compare_images() {
        let before = json!({"id": 1, "email": "a", "v": 1});
        let after = json!({"id": 1, "email": "a", "v": 2});
        assert_eq!(differing(&before, &after), vec!["v".to_string()]);
        assert!(differing(&Json::Null, &after).is_empty(), "a first image has nothing to compare with");
    }

    #[test]
    fn a_key_must_name_exactly_the_key_columns() {
        let config = Config::parse(
            "t.toml",
            "[kafka]\nbootstrap_servers = \"x:1\"\n[warehouse]\nkind = \"postgres\"\nurl = { env = \"SLUICE_IT_NONE\" }\n[[models]]\nname = \"m\"\ntable = \"t\"\nprimary_key = [\"id\"]\ncolumns = [\"id\", \"email\"]\ndetection = { mode = \"diff\" }\n",
        )
        .unwrap();
        let model = config.model("m").unwrap();
        assert_eq!(parse_key(model, r#"{"id":42}"#).unwrap(), json!({"id": 42}).as_object().unwrap().clone());
        for bad in ["42", "{oops", r#"{"ID":42}"#, r#"{"id":1,"x":2}"#] {
            let failure = parse_key(model, bad).unwrap_err();
            assert_eq!(failure.code(), crate::failure::EXIT_CONFIG, "{bad}");
            assert!(failure.message().contains("give a JSON object of model m's key columns"), "{bad}: {}", failure.message());
        }
    }
}
