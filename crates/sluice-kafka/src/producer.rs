//! The transactional producer behind the poller's exactly-once guarantee.
//!
//! One transaction = the events of a batch of rows + the progress record covering them. Either
//! all become visible to `read_committed` consumers or none do, so a crash at any point neither
//! loses a change (progress never runs ahead of events) nor invents one (events never outlive
//! the progress that would skip them on restart).

use std::time::Duration;

use futures::future::join_all;
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use tracing::Instrument as _;
use sluice_core::config::KafkaConfig;

use crate::connection::ConnectionContext;
use crate::{client_config, KafkaError};

/// A record to produce.
#[derive(Debug, Clone)]
pub struct OutRecord {
    pub topic: String,
    /// The partition to write to; `None`: the partitioner's choice by key (the change topics'
    /// rule). Side records name theirs (`crate::side`).
    pub partition: Option<i32>,
    pub key: Option<Vec<u8>>,
    /// `None` is a tombstone.
    pub payload: Option<Vec<u8>>,
    pub headers: OwnedHeaders,
}

/// A transactional, idempotent (`acks=all`) producer.
pub struct TransactionalProducer {
    producer: FutureProducer<ConnectionContext>,
    timeout: Duration,
}

impl TransactionalProducer {
    /// Create the producer and initialise its transactions; this fences any older producer with
    /// the same `transactional_id` and aborts its open transaction. Rejected credentials or
    /// certificates end the wait at once ([`KafkaError::Connection`]).
    pub async fn new(kafka: &KafkaConfig, transactional_id: &str) -> Result<TransactionalProducer, KafkaError> {
        let context = ConnectionContext::default();
        let producer: FutureProducer<ConnectionContext> = client_config(kafka)
            .set("transactional.id", transactional_id)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("transaction.timeout.ms", "60000")
            .set("linger.ms", "5")
            .set("compression.type", "lz4")
            .create_with_context(context.clone())
            .map_err(|e| KafkaError::classify("create producer", e))?;
        let timeout = Duration::from_secs(30);
        let init = producer.clone();
        let initialised = tokio::task::spawn_blocking(move || init.init_transactions(timeout));
        context
            .or_problem("init transactions", async {
                initialised.await.expect("init_transactions does not panic").map_err(|e| KafkaError::classify("init transactions", e))
            })
            .await?;
        Ok(TransactionalProducer { producer, timeout })
    }

    /// Produce `records` in one transaction and commit it; returns where each record landed
    /// (partition, offset), in the order of `records` — committed, so a reader can find them
    /// there. On any failure the transaction is aborted and nothing of it becomes visible.
    /// Traced as `kafka.produce`, a child of the current span (the poller's run).
    pub async fn send_transaction(&self, records: Vec<OutRecord>) -> Result<Vec<(i32, i64)>, KafkaError> {
        let span = tracing::info_span!("kafka.produce", otel.kind = "producer", records = records.len());
        self.transaction(records).instrument(span).await
    }

    async fn transaction(&self, records: Vec<OutRecord>) -> Result<Vec<(i32, i64)>, KafkaError> {
        self.producer.begin_transaction().map_err(|e| KafkaError::classify("begin transaction", e))?;
        match self.produce_and_commit(records).await {
            Ok(locations) => Ok(locations),
            Err(error) => {
                let abort = self.producer.clone();
                let timeout = self.timeout;
                let aborted = tokio::task::spawn_blocking(move || abort.abort_transaction(timeout)).await;
                if let Ok(Err(abort_error)) = aborted {
                    tracing::warn!(error = %abort_error, "abort of failed transaction failed");
                }
                Err(error)
            }
        }
    }

    async fn produce_and_commit(&self, records: Vec<OutRecord>) -> Result<Vec<(i32, i64)>, KafkaError> {
        let mut deliveries = Vec::with_capacity(records.len());
        for record in &records {
            let mut future_record = FutureRecord::to(&record.topic).headers(record.headers.clone());
            if let Some(partition) = record.partition {
                future_record = future_record.partition(partition);
            }
            if let Some(key) = &record.key {
                future_record = future_record.key(key);
            }
            if let Some(payload) = &record.payload {
                future_record = future_record.payload(payload);
            }
            // Keep many records in flight; when librdkafka's queue is full, wait for room
            // instead of failing or buffering without bound.
            loop {
                match self.producer.send_result(future_record) {
                    Ok(delivery) => {
                        deliveries.push(delivery);
                        break;
                    }
                    Err((rdkafka::error::KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        future_record = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((error, _)) => return Err(KafkaError::classify("produce", error)),
                }
            }
        }
        let mut locations = Vec::with_capacity(deliveries.len());
        for delivery in join_all(deliveries).await {
            match delivery {
                Ok(Ok(delivered)) => locations.push((delivered.partition, delivered.offset)),
                Ok(Err((error, _))) => return Err(KafkaError::classify("deliver", error)),
                Err(_canceled) => {
                    return Err(KafkaError::classify("deliver", rdkafka::error::KafkaError::Canceled));
                }
            }
        }
        let commit = self.producer.clone();
        let timeout = self.timeout;
        tokio::task::spawn_blocking(move || commit.commit_transaction(timeout))
            .await
            .expect("commit_transaction does not panic")
            .map_err(|e| KafkaError::classify("commit transaction", e))?;
        Ok(locations)
    }
}
