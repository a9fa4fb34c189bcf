//! The dead-letter writer: puts a rejected record, untouched, on the destination's dead-letter
//! topic with headers describing why, and returns only once the broker has it.

use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sluice_core::config::KafkaConfig;

use crate::connection::ConnectionContext;
use crate::{client_config, KafkaError};

/// A record to dead-letter: the original bytes and the context headers.
pub struct DeadLetter<'a> {
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
    /// The original record's headers, kept, followed by the `sluice.error.*` context.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Idempotent, `acks=all` producer for one dead-letter topic.
pub struct DeadLetterWriter {
    /// Its context logs rejected credentials or certificates with the listener and the fix.
    producer: FutureProducer<ConnectionContext>,
    topic: String,
}

impl DeadLetterWriter {
    pub fn new(kafka: &KafkaConfig, topic: String) -> Result<DeadLetterWriter, KafkaError> {
        let producer = client_config(kafka)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", "60000")
            .create_with_context(ConnectionContext::default())
            .map_err(|e| KafkaError::classify("create dead-letter producer", e))?;
        Ok(DeadLetterWriter { producer, topic })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Write one dead letter and wait for the broker's acknowledgement.
    pub async fn write(&self, letter: DeadLetter<'_>) -> Result<(), KafkaError> {
        let headers = letter.headers.iter().fold(OwnedHeaders::new(), |h, (key, value)| {
            h.insert(Header { key, value: Some(value.as_slice()) })
        });
        let mut record = FutureRecord::to(&self.topic).headers(headers);
        if let Some(key) = letter.key {
            record = record.key(key);
        }
        if let Some(payload) = letter.payload {
            record = record.payload(payload);
        }
        self.producer
            .send(record, Duration::from_secs(30))
            .await
            .map(|_| ())
            .map_err(|(error, _)| KafkaError::classify("write dead letter", error))
    }
}
