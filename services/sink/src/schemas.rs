//! Writer schemas by fingerprint, loaded from the schema topic on first sight of a fingerprint
//! and shared by every lane.
//!
//! Hot path: a read lock and a lookup by the fingerprint's 8 raw bytes. Only an unknown
//! fingerprint takes the slow path (one reader at a time re-reads the schema topic).
//!
//! A schema-topic read that fails transiently (the broker away, the topic missing or without a
//! leader) is retried until it works: never a stop of the sink, never a dead letter. A
//! fingerprint is [`Lookup::Missing`] only when the topic was read to its end without it.
//!
//! The first event of each writer schema also has its syncs' consent rules checked against the
//! schema's column types ([`SchemaCache::check_consent`]): a rule whose value can never equal
//! the column's stops the sink (not ready, with the config error) before any row is treated as
//! not consenting. The same check runs at load against a model's contract, when it has one.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sluice_avro::{fingerprint_bytes, fingerprint_hex, DecodedEvent, EventDecoder, KeyDecoder};
use sluice_core::config::{ConfigError, KafkaConfig};
use sluice_destinations::validate::ConsentCheck;
use sluice_kafka::compacted::{read_to_end, IfMissing, StoredRecord};
use sluice_kafka::KafkaError;
use tokio_util::sync::CancellationToken;

type Fingerprint = [u8; 8];

pub(crate) struct SchemaCache {
    kafka: KafkaConfig,
    topic: String,
    /// Schema JSON by hex fingerprint, as last read from the topic; the lock also makes one
    /// lane at a time read the topic.
    json: tokio::sync::Mutex<HashMap<String, String>>,
    events: RwLock<HashMap<Fingerprint, Arc<EventDecoder>>>,
    keys: RwLock<HashMap<Fingerprint, Arc<KeyDecoder>>>,
    /// The consent rule of each model's sync (a destination receives a model once).
    consent: HashMap<String, ConsentCheck>,
    /// Writer schemas whose consent rule passed.
    consent_checked: RwLock<HashSet<Fingerprint>>,
    /// The sink's stop: ends a retried read of the topic ([`SchemaCache::read_topic`]).
    stop: CancellationToken,
}

/// A schema lookup: found, missing from the topic, or unusable.
pub(crate) enum Lookup<T> {
    Found(Arc<T>),
    Missing,
    Unusable(String),
}

impl SchemaCache {
    pub(crate) fn new(kafka: KafkaConfig, topic: String) -> SchemaCache {
        SchemaCache {
            kafka,
            topic,
            json: tokio::sync::Mutex::new(HashMap::new()),
            events: RwLock::new(HashMap::new()),
            keys: RwLock::new(HashMap::new()),
            consent: HashMap::new(),
            consent_checked: RwLock::new(HashSet::new()),
            stop: CancellationToken::new(),
        }
    }

    /// End retried reads of the schema topic when `stop` is cancelled (the sink stops).
    pub(crate) fn stopping_with(mut self, stop: CancellationToken) -> SchemaCache {
        self.stop = stop;
        self
    }

    /// Check these syncs' consent rules against the writer schema of each event.
    pub(crate) fn with_consent_checks(mut self, checks: impl IntoIterator<Item = ConsentCheck>) -> SchemaCache {
        self.consent = checks.into_iter().map(|check| (check.model().to_string(), check)).collect();
        self
    }

    /// Check `model`'s consent rule against the writer schema of `fingerprint` (already found by
    /// [`SchemaCache::event_decoder`]), once per schema. `Err`: the rule can never match a row
    /// written with it; the sink must stop rather than remove every row.
    pub(crate) async fn check_consent(&self, model: &str, fingerprint: &Fingerprint) -> Result<(), ConfigError> {
        let Some(check) = self.consent.get(model) else { return Ok(()) };
        if self.consent_checked.read().expect("consent check lock").contains(fingerprint) {
            return Ok(());
        }
        let hex = fingerprint_hex(fingerprint);
        let schema = self.json.lock().await.get(&hex).and_then(|text| serde_json::from_str::<serde_json::Value>(text).ok());
        // A schema that is not JSON never built a decoder; nothing reaches this check without one.
        let Some(schema) = schema else { return Ok(()) };
        check.against(&schema, &format!("the writer schema {hex} of model {model:?}"))?;
        self.consent_checked.write().expect("consent check lock").insert(*fingerprint);
        Ok(())
    }

    /// Decoder for change events written with this fingerprint.
    pub(crate) async fn event_decoder(&self, fingerprint: &Fingerprint) -> Result<Lookup<EventDecoder>, KafkaError> {
        self.lookup(&self.events, fingerprint, EventDecoder::new).await
    }

    /// The writer schema's decoder of a change event's value bytes, with the schema's
    /// fingerprint. The inner `Err` says why the bytes cannot be read (a dead letter's reason);
    /// the outer one is the schema topic failing.
    pub(crate) async fn event_decoder_of(&self, payload: &[u8]) -> Result<Result<(Fingerprint, Arc<EventDecoder>), String>, KafkaError> {
        let fingerprint = match fingerprint_bytes(payload) {
            Ok(f) => f,
            Err(error) => return Ok(Err(format!("value: {error}"))),
        };
        Ok(match self.event_decoder(&fingerprint).await? {
            Lookup::Found(decoder) => Ok((fingerprint, decoder)),
            Lookup::Unusable(error) => Err(format!("value schema: {error}")),
            Lookup::Missing => Err(format!("value schema {} is not on the schema topic", fingerprint_hex(&fingerprint))),
        })
    }

    /// Decode a change event's value bytes with its writer schema (errors as
    /// [`SchemaCache::event_decoder_of`]'s).
    pub(crate) async fn decode_event(&self, payload: &[u8]) -> Result<Result<DecodedEvent, String>, KafkaError> {
        Ok(match self.event_decoder_of(payload).await? {
            Ok((_, decoder)) => decoder.decode(payload).map_err(|error| format!("value: {error}")),
            Err(reason) => Err(reason),
        })
    }

    /// Decoder for keys written with this fingerprint.
    pub(crate) async fn key_decoder(&self, fingerprint: &Fingerprint) -> Result<Lookup<KeyDecoder>, KafkaError> {
        self.lookup(&self.keys, fingerprint, KeyDecoder::new).await
    }

    async fn lookup<T, E: std::fmt::Display>(
        &self,
        cache: &RwLock<HashMap<Fingerprint, Arc<T>>>,
        fingerprint: &Fingerprint,
        build: impl Fn(&str) -> Result<T, E>,
    ) -> Result<Lookup<T>, KafkaError> {
        if let Some(found) = cache.read().expect("schema cache lock").get(fingerprint) {
            return Ok(Lookup::Found(Arc::clone(found)));
        }
        let hex = fingerprint_hex(fingerprint);
        let mut json = self.json.lock().await;
        if !json.contains_key(&hex) {
            for record in self.read_topic().await? {
                if let (Some(key), Some(payload)) = (record.key, record.payload) {
                    if let (Ok(key), Ok(payload)) = (String::from_utf8(key), String::from_utf8(payload)) {
                        json.insert(key, payload);
                    }
                }
            }
            tracing::debug!(schemas = json.len(), "schema topic read");
        }
        let Some(text) = json.get(&hex) else { return Ok(Lookup::Missing) };
        Ok(match build(text) {
            Ok(decoder) => {
                let decoder = Arc::new(decoder);
                cache.write().expect("schema cache lock").insert(*fingerprint, Arc::clone(&decoder));
                Lookup::Found(decoder)
            }
            Err(error) => Lookup::Unusable(error.to_string()),
        })
    }

    /// Every record of the schema topic. A read that fails for a while — the broker away, the
    /// topic missing or without a leader — is retried with backoff (1 s doubling to 30 s) until it
    /// works, so a record whose schema cannot be read yet waits in its lane instead of stopping
    /// the sink or being dead-lettered as unreadable. `Err` for a fatal failure, or once the sink
    /// stops (then the record stays unfinished).
    async fn read_topic(&self) -> Result<Vec<StoredRecord>, KafkaError> {
        let mut backoff = READ_BACKOFF_MIN;
        loop {
            let (kafka, topic) = (self.kafka.clone(), self.topic.clone());
            let error = match tokio::task::spawn_blocking(move || read_to_end(&kafka, &topic, Duration::from_secs(90), IfMissing::Fail)).await.expect("reader does not panic") {
                Ok(records) => return Ok(records),
                Err(error @ KafkaError::Fatal { .. }) => return Err(error),
                Err(error) => error,
            };
            tracing::warn!(topic = %self.topic, %error, retry_in_ms = backoff.as_millis() as u64, "schema topic not readable, retrying");
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = self.stop.cancelled() => return Err(error),
            }
            backoff = (backoff * 2).min(READ_BACKOFF_MAX);
        }
    }
}

/// Backoff of a schema-topic read that failed transiently.
const READ_BACKOFF_MIN: Duration = Duration::from_secs(1);
const READ_BACKOFF_MAX: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 12: a model without a contract whose consent rule compares a boolean column with
    /// `"yes"`: the sink stops at the first event's writer schema, with the config's error.
    #[tokio::test]
    async fn a_consent_rule_that_cannot_match_the_writer_schema_stops_the_sink() {
        let text = "[kafka]\nbootstrap_servers = \"127.0.0.1:1\"\n[warehouse]\nkind = \"duckdb\"\npath = \"w.duckdb\"\n\
            [[models]]\nname = \"customers\"\ntable = \"customers\"\nprimary_key = [\"id\"]\ncolumns = [\"id\", \"opt_in\"]\ndetection = { mode = \"diff\" }\n\
            [[destinations]]\nname = \"d\"\n[destinations.webhook]\nurl = \"http://127.0.0.1:1/hook\"\n\
            [[syncs]]\nmodel = \"customers\"\ndestination = \"d\"\nfields = { id = \"id\" }\nconsent = { column = \"opt_in\", equals = \"yes\" }\n";
        let config = sluice_core::config::Config::parse("sluice.toml", text).unwrap();
        sluice_destinations::validate(&config, &sluice_core::config::Scope::All).expect("no contract: the type is not known at load");
        let schema = |ty: &str| {
            serde_json::json!({"type": "record", "name": "Envelope", "fields": [
                {"name": "before", "type": ["null", {"type": "record", "name": "Row", "fields": [{"name": "id", "type": "long"}, {"name": "opt_in", "type": ty}]}]},
            ]})
            .to_string()
        };
        let cache = SchemaCache::new(config.kafka.clone(), "t".into()).with_consent_checks(config.syncs.iter().filter_map(|s| ConsentCheck::new(&config, s)));
        let (boolean, text_column) = ([1u8; 8], [2u8; 8]);
        cache.json.lock().await.extend([(fingerprint_hex(&boolean), schema("boolean")), (fingerprint_hex(&text_column), schema("string"))]);
        let error = cache.check_consent("customers", &boolean).await.unwrap_err();
        assert_eq!(error.line, Some(17), "the sync's line: {error}");
        assert!(error.to_string().starts_with("sluice.toml:17: sync of model \"customers\" to destination \"d\": consent equals = \"yes\" is a string, which never equals a boolean value"), "{error}");
        assert!(cache.check_consent("customers", &boolean).await.is_err(), "checked again: never marked as passed");
        cache.check_consent("customers", &text_column).await.expect("a text column can equal \"yes\"");
        cache.check_consent("other", &boolean).await.expect("a model without a rule");
    }
}
