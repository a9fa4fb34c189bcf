//! What `sluice dlq` prints: text for people, JSON (`--json`) for scripts. No row values unless
//! `show --show-values`.

use std::collections::BTreeMap;

use serde_json::{json, Value as Json};
use sluice_kafka::headers::dlq;

use super::decode::{mask_event, mask_key, Decoders, MASK};
use super::letters::LetterId;
use super::redrive::Decision;
use super::Selected;

/// One group of `list`: dead letters of one class, status and message.
#[derive(Debug, Default)]
struct Group {
    count: u64,
    first_ms: Option<i64>,
    last_ms: Option<i64>,
    max_attempts: u64,
}

/// `list`: the groups, largest first.
pub(crate) fn list(as_json: bool, destination: &str, selected: &[Selected<'_>], purged: usize) -> String {
    let mut groups: BTreeMap<(String, &str, String), Group> = BTreeMap::new();
    for s in selected {
        let g = groups.entry((s.letter.class().to_string(), s.status.label(), s.letter.message().to_string())).or_default();
        g.count += 1;
        let at = s.letter.failed_at_ms();
        g.first_ms = g.first_ms.min(at).or(at);
        g.last_ms = g.last_ms.max(at);
        g.max_attempts = g.max_attempts.max(s.letter.attempts());
    }
    let mut rows: Vec<_> = groups.into_iter().collect();
    rows.sort_by(|a, b| b.1.count.cmp(&a.1.count).then_with(|| a.0.cmp(&b.0)));
    if as_json {
        let groups: Vec<Json> = rows
            .iter()
            .map(|((class, status, message), g)| json!({ "class": class, "status": status, "message": message, "count": g.count, "first_failure": time(g.first_ms), "last_failure": time(g.last_ms), "max_attempts": g.max_attempts }))
            .collect();
        return json!({ "destination": destination, "total": selected.len(), "purged": purged, "groups": groups }).to_string();
    }
    let mut lines = vec![format!("dead letters of destination {destination}: {} ({purged} purged, not shown)", selected.len())];
    lines.push(format!("{:>7}  {:<16} {:<10} {:<24} {:<24} message", "count", "class", "status", "first failure", "last failure"));
    for ((class, status, message), g) in &rows {
        lines.push(format!("{:>7}  {class:<16} {status:<10} {:<24} {:<24} {message}", g.count, time(g.first_ms), time(g.last_ms)));
    }
    lines.join("\n")
}

/// `show`: each selected dead letter with its headers and decoded record.
pub(crate) fn show(as_json: bool, selected: &[Selected<'_>], total: usize, decoders: &mut Decoders, show_values: bool) -> String {
    let letters: Vec<Json> = selected.iter().map(|s| letter_json(s, decoders, show_values)).collect();
    if as_json {
        return json!({ "total": total, "shown": letters.len(), "letters": letters }).to_string();
    }
    let mut out = Vec::new();
    for l in &letters {
        out.push(format!("dead letter {} ({}), failed {}", l["letter"].as_str().unwrap_or("?"), l["status"].as_str().unwrap_or("?"), l["failed_at"].as_str().unwrap_or("-")));
        for (name, value) in l["headers"].as_object().into_iter().flatten() {
            out.push(format!("  {name}: {}", value.as_str().unwrap_or_default()));
        }
        out.push(format!("  key: {}", l["key"]));
        out.push(format!("  record: {}", l["record"]));
    }
    if total > letters.len() {
        out.push(format!("({} more; narrow the filter or raise --limit)", total - letters.len()));
    }
    out.join("\n")
}

fn letter_json(s: &Selected<'_>, decoders: &mut Decoders, show_values: bool) -> Json {
    let headers: serde_json::Map<String, Json> = s
        .letter
        .headers
        .iter()
        .map(|(name, value)| {
            let text = String::from_utf8_lossy(value).to_string();
            // The destination's answer may echo the record.
            let text = if name == dlq::RESPONSE_EXCERPT && !show_values && !text.is_empty() { MASK.to_string() } else { text };
            (name.clone(), Json::String(text))
        })
        .collect();
    let key = match (&s.key, &s.letter.key) {
        (Some(key), _) => Json::Object(if show_values { key.clone() } else { mask_key(key) }),
        (None, Some(bytes)) => decoders.key(bytes).map_or_else(|e| json!({ "undecodable": e }), |k| Json::Object(if show_values { k } else { mask_key(&k) })),
        (None, None) => Json::Null,
    };
    let record = match &s.letter.payload {
        Some(bytes) => decoders.event(bytes).map_or_else(|e| json!({ "undecodable": e }), |e| if show_values { e } else { mask_event(&e) }),
        None => json!("tombstone (a delete known only by its key)"),
    };
    json!({ "letter": s.letter.id.to_string(), "status": s.status.label(), "class": s.letter.class(), "attempts": s.letter.attempts(), "failed_at": time(s.letter.failed_at_ms()), "headers": headers, "key": key, "record": record })
}

/// What a redrive did.
#[derive(Debug, Default)]
pub(crate) struct Redrive {
    pub redriven: Vec<LetterId>,
    pub superseded: Vec<(LetterId, i64)>,
    pub unredrivable: Vec<(LetterId, String)>,
}

impl Redrive {
    pub(crate) fn of(decisions: &[(LetterId, Decision)]) -> Redrive {
        let mut report = Redrive::default();
        for (id, decision) in decisions {
            match decision {
                Decision::Redrive(_) => report.redriven.push(*id),
                Decision::Superseded { newer } => report.superseded.push((*id, *newer)),
                Decision::Unredrivable(reason) => report.unredrivable.push((*id, reason.clone())),
            }
        }
        report
    }
}

/// `redrive`: counts, and which were superseded or could not be redriven.
pub(crate) fn redrive(as_json: bool, destination: &str, operation: &str, r: &Redrive) -> String {
    let selected = r.redriven.len() + r.superseded.len() + r.unredrivable.len();
    if as_json {
        let superseded: Vec<Json> = r.superseded.iter().map(|(id, newer)| json!({ "letter": id.to_string(), "newer_offset": newer })).collect();
        let unredrivable: Vec<Json> = r.unredrivable.iter().map(|(id, reason)| json!({ "letter": id.to_string(), "reason": reason })).collect();
        let redriven: Vec<String> = r.redriven.iter().map(ToString::to_string).collect();
        return json!({ "destination": destination, "operation": operation, "selected": selected, "redriven": r.redriven.len(), "superseded": r.superseded.len(),
            "unredrivable": r.unredrivable.len(), "redriven_letters": redriven, "superseded_letters": superseded, "unredrivable_letters": unredrivable })
        .to_string();
    }
    let mut lines = vec![format!(
        "redrive {operation} of destination {destination}: {selected} pending dead letters selected; {} re-sent through the side topic, {} superseded (a newer change of their key exists: not re-sent), {} not redrivable",
        r.redriven.len(),
        r.superseded.len(),
        r.unredrivable.len()
    )];
    lines.extend(r.superseded.iter().map(|(id, newer)| format!("  superseded {id}: a newer change at offset {newer}")));
    lines.extend(r.unredrivable.iter().map(|(id, reason)| format!("  not redrivable {id}: {reason}")));
    if !r.redriven.is_empty() {
        lines.push("the sink applies them (a failure comes back as a new dead letter with its attempts raised); `sluice dlq list` shows their status".into());
    }
    lines.join("\n")
}

/// `purge`: what was (or would be) purged and how many are kept.
pub(crate) fn purge(as_json: bool, destination: &str, purged: &[LetterId], kept: usize, executed: bool) -> String {
    if as_json {
        let letters: Vec<String> = purged.iter().map(ToString::to_string).collect();
        return json!({ "destination": destination, "executed": executed, "purged": purged.len(), "kept": kept, "letters": letters }).to_string();
    }
    let verb = if executed { "purged" } else { "would purge (add --execute to record it)" };
    format!("destination {destination}: {verb} {} dead letters; {kept} kept", purged.len())
}

fn time(ms: Option<i64>) -> String {
    ms.and_then(chrono::DateTime::from_timestamp_millis).map_or("-".to_string(), |t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}
