//! Writer schemas by fingerprint, loaded from the schema topic on first sight of a fingerprint.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use sluice_avro::{EventDecoder, KeyDecoder};
use sluice_core::config::KafkaConfig;
use sluice_kafka::compacted::read_to_end;
use sluice_kafka::KafkaError;

pub(crate) struct SchemaCache {
    kafka: KafkaConfig,
    topic: String,
    /// Schema JSON by fingerprint, as last read from the topic.
    json: HashMap<String, String>,
    events: HashMap<String, Arc<EventDecoder>>,
    keys: HashMap<String, Arc<KeyDecoder>>,
}

impl SchemaCache {
    pub(crate) fn new(kafka: KafkaConfig, topic: String) -> SchemaCache {
        SchemaCache { kafka, topic, json: HashMap::new(), events: HashMap::new(), keys: HashMap::new() }
    }

    /// The schema text of `fingerprint`, reading the schema topic again if it is not known yet.
    async fn schema_json(&mut self, fingerprint: &str) -> Result<Option<String>, KafkaError> {
        if !self.json.contains_key(fingerprint) {
            let (kafka, topic) = (self.kafka.clone(), self.topic.clone());
            let records = tokio::task::spawn_blocking(move || read_to_end(&kafka, &topic, Duration::from_secs(90)))
                .await
                .expect("reader does not panic")?;
            for record in records {
                if let (Some(key), Some(payload)) = (record.key, record.payload) {
                    if let (Ok(key), Ok(payload)) = (String::from_utf8(key), String::from_utf8(payload)) {
                        self.json.insert(key, payload);
                    }
                }
            }
            tracing::debug!(schemas = self.json.len(), "schema topic read");
        }
        Ok(self.json.get(fingerprint).cloned())
    }

    /// Decoder for change events of this fingerprint; `Ok(None)` when no such schema exists,
    /// `Ok(Some(Err))` when it exists but cannot be used.
    pub(crate) async fn event_decoder(&mut self, fingerprint: &str) -> Result<Option<Result<Arc<EventDecoder>, String>>, KafkaError> {
        if !self.events.contains_key(fingerprint) {
            let Some(json) = self.schema_json(fingerprint).await? else { return Ok(None) };
            match EventDecoder::new(&json) {
                Ok(decoder) => self.events.insert(fingerprint.to_string(), Arc::new(decoder)),
                Err(error) => return Ok(Some(Err(error.to_string()))),
            };
        }
        Ok(self.events.get(fingerprint).cloned().map(Ok))
    }

    /// Decoder for keys of this fingerprint; same contract as [`Self::event_decoder`].
    pub(crate) async fn key_decoder(&mut self, fingerprint: &str) -> Result<Option<Result<Arc<KeyDecoder>, String>>, KafkaError> {
        if !self.keys.contains_key(fingerprint) {
            let Some(json) = self.schema_json(fingerprint).await? else { return Ok(None) };
            match KeyDecoder::new(&json) {
                Ok(decoder) => self.keys.insert(fingerprint.to_string(), Arc::new(decoder)),
                Err(error) => return Ok(Some(Err(error.to_string()))),
            };
        }
        Ok(self.keys.get(fingerprint).cloned().map(Ok))
    }
}
