//! Decoding dead letters' keys and values with the writer schemas of the schema topic, for
//! `--key` and `show`; and masking the values (`show` prints no personal data unless
//! `--show-values`).

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{Map, Value as Json};
use sluice_avro::{fingerprint_of, EventDecoder, KeyDecoder};
use sluice_core::config::KafkaConfig;
use sluice_kafka::compacted::{read_to_end, IfMissing};
use sluice_kafka::KafkaError;

/// What a masked value prints as.
pub(crate) const MASK: &str = "***";

/// Writer schemas by fingerprint, with decoders made on first use.
pub(crate) struct Decoders {
    json: HashMap<String, String>,
    keys: HashMap<String, KeyDecoder>,
    events: HashMap<String, EventDecoder>,
}

impl Decoders {
    /// Every writer schema on the schema topic `topic`. Blocking.
    pub(crate) fn load(kafka: &KafkaConfig, topic: &str) -> Result<Decoders, KafkaError> {
        let json = read_to_end(kafka, topic, Duration::from_secs(600), IfMissing::Empty)?
            .into_iter()
            .filter_map(|r| Some((String::from_utf8(r.key?).ok()?, String::from_utf8(r.payload?).ok()?)))
            .collect();
        Ok(Decoders { json, keys: HashMap::new(), events: HashMap::new() })
    }

    fn schema(&self, bytes: &[u8]) -> Result<(String, &str), String> {
        let fingerprint = fingerprint_of(bytes).map_err(|e| format!("not a sluice record: {e}"))?;
        let json = self.json.get(&fingerprint).ok_or_else(|| format!("writer schema {fingerprint} is not on the schema topic"))?;
        Ok((fingerprint, json))
    }

    /// The key's columns as a JSON object.
    pub(crate) fn key(&mut self, bytes: &[u8]) -> Result<Map<String, Json>, String> {
        let (fingerprint, json) = self.schema(bytes)?;
        if !self.keys.contains_key(&fingerprint) {
            let decoder = KeyDecoder::new(json).map_err(|e| e.to_string())?;
            self.keys.insert(fingerprint.clone(), decoder);
        }
        let fields = self.keys[&fingerprint].decode(bytes).map_err(|e| e.to_string())?;
        Ok(fields.into_iter().map(|(name, value)| (name, value.to_json())).collect())
    }

    /// The change event: `op`, `before` and `after` rows as JSON objects, `changed` columns.
    pub(crate) fn event(&mut self, bytes: &[u8]) -> Result<Json, String> {
        let (fingerprint, json) = self.schema(bytes)?;
        if !self.events.contains_key(&fingerprint) {
            let decoder = EventDecoder::new(json).map_err(|e| e.to_string())?;
            self.events.insert(fingerprint.clone(), decoder);
        }
        let decoded = self.events[&fingerprint].decode(bytes).map_err(|e| e.to_string())?;
        let row = |row: &Option<Vec<sluice_core::Value>>| match row {
            Some(values) => Json::Object(decoded.columns.iter().cloned().zip(values.iter().map(sluice_core::Value::to_json)).collect()),
            None => Json::Null,
        };
        Ok(serde_json::json!({
            "op": decoded.event.op.code(),
            "before": row(&decoded.event.before),
            "after": row(&decoded.event.after),
            "changed": decoded.event.changed,
            "ts_ms": decoded.event.ts_ms,
        }))
    }
}

/// A key with its values masked, but for numbers (surrogate ids, which identify a record and say
/// nothing about a person; text keys may be email addresses).
pub(crate) fn mask_key(key: &Map<String, Json>) -> Map<String, Json> {
    key.iter().map(|(k, v)| (k.clone(), if v.is_number() || v.is_null() { v.clone() } else { Json::String(MASK.into()) })).collect()
}

/// A decoded event with every row value masked (column names kept, nulls kept).
pub(crate) fn mask_event(event: &Json) -> Json {
    let mut masked = event.clone();
    for image in ["before", "after"] {
        if let Some(row) = masked[image].as_object_mut() {
            for value in row.values_mut() {
                if !value.is_null() {
                    *value = Json::String(MASK.into());
                }
            }
        }
    }
    masked
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn masking_keeps_names_nulls_and_numeric_ids() {
        let key = json!({"id": 42, "email": "a@b.c"});
        assert_eq!(Json::Object(mask_key(key.as_object().unwrap())), json!({"id": 42, "email": MASK}));
        let event = json!({"op": "u", "before": null, "after": {"id": 42, "email": "a@b.c", "deleted_at": null}});
        assert_eq!(mask_event(&event), json!({"op": "u", "before": null, "after": {"id": MASK, "email": MASK, "deleted_at": null}}));
    }
}
