//! Writer schemas by fingerprint, loaded from the schema topic on first sight of a fingerprint
//! and shared by every lane.
//!
//! Hot path: a read lock and a lookup by the fingerprint's 8 raw bytes. Only an unknown
//! fingerprint takes the slow path (one reader at a time re-reads the schema topic).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sluice_avro::{fingerprint_bytes, fingerprint_hex, DecodedEvent, EventDecoder, KeyDecoder};
use sluice_core::config::KafkaConfig;
use sluice_kafka::compacted::read_to_end;
use sluice_kafka::KafkaError;

type Fingerprint = [u8; 8];

pub(crate) struct SchemaCache {
    kafka: KafkaConfig,
    topic: String,
    /// Schema JSON by hex fingerprint, as last read from the topic; the lock also makes one
    /// lane at a time read the topic.
    json: tokio::sync::Mutex<HashMap<String, String>>,
    events: RwLock<HashMap<Fingerprint, Arc<EventDecoder>>>,
    keys: RwLock<HashMap<Fingerprint, Arc<KeyDecoder>>>,
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
        }
    }

    /// Decoder for change events written with this fingerprint.
    pub(crate) async fn event_decoder(&self, fingerprint: &Fingerprint) -> Result<Lookup<EventDecoder>, KafkaError> {
        self.lookup(&self.events, fingerprint, EventDecoder::new).await
    }

    /// Decode a change event's value bytes with its writer schema. The inner `Err` says why the
    /// bytes cannot be read (a dead letter's reason); the outer one is the schema topic failing.
    pub(crate) async fn decode_event(&self, payload: &[u8]) -> Result<Result<DecodedEvent, String>, KafkaError> {
        let fingerprint = match fingerprint_bytes(payload) {
            Ok(f) => f,
            Err(error) => return Ok(Err(format!("value: {error}"))),
        };
        let decoder = match self.event_decoder(&fingerprint).await? {
            Lookup::Found(decoder) => decoder,
            Lookup::Unusable(error) => return Ok(Err(format!("value schema: {error}"))),
            Lookup::Missing => return Ok(Err(format!("value schema {} is not on the schema topic", fingerprint_hex(&fingerprint)))),
        };
        Ok(decoder.decode(payload).map_err(|error| format!("value: {error}")))
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
            let (kafka, topic) = (self.kafka.clone(), self.topic.clone());
            let records = tokio::task::spawn_blocking(move || read_to_end(&kafka, &topic, Duration::from_secs(90)))
                .await
                .expect("reader does not panic")?;
            for record in records {
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
}
