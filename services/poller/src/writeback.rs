//! The warehouse writeback: copies the row-level outcomes that sinks of destinations with
//! `writeback = true` publish on `<prefix>.outcomes.<destination>` into the warehouse's sync-log
//! table (`[writeback] table`, `sluice_sync_log` by default; `docs/audit.md`). It runs as a task
//! of the poller, which holds the warehouse connection, so sinks never need warehouse
//! credentials.
//!
//! Guarantees:
//! - **At-least-once, idempotent.** Outcomes are read by the consumer group
//!   `<prefix>.writeback`; a batch's offsets are committed only after the warehouse accepted
//!   the batch, which is upserted by (destination, record id) in one statement
//!   ([`sluice_warehouse::writeback`]). A crash or a failed write reads the batch again and
//!   writes the same rows: never a duplicate row, never a lost outcome (while the outcomes
//!   topic keeps it: 7 days).
//! - **Never slows delivery.** Sinks publish outcomes fire-and-forget; this task is the only
//!   reader. When the warehouse is away or the table locked, the batch is retried with backoff
//!   (capped at [`MAX_BACKOFF`]) until it is written, reading nothing more meanwhile: the
//!   writeback falls behind and catches up, and the models' runs go on.
//! - **Says so**: `sluice_writeback_behind_seconds` (age of the oldest outcome read and not
//!   yet written, 0 when caught up; refreshed at least every [`MAX_BACKOFF`] while it retries),
//!   `sluice_writeback_pending_records`, `sluice_writeback_rows_written_total{destination}`,
//!   `sluice_writeback_write_failures_total` and `sluice_writeback_undecodable_total` (an
//!   outcome that is not a `SyncOutcome`: logged with its offset and skipped, as it can never be
//!   written; it stays on its topic).
//!
//! A batch is at most `[writeback] batch_max_records` outcomes and waits at most
//! `batch_linger_ms` for more once it has one.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use sluice_avro::audit::decode_sync_outcome;
use sluice_core::config::Config;
use sluice_core::naming;
use sluice_warehouse::{AnyWarehouse, SyncLog, SyncLogRow, SyncLogTable};
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;

/// The longest wait between two attempts at one batch.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Outcomes read and not yet written, with the next offset of each partition they came from.
#[derive(Default)]
struct Batch {
    /// Messages read, decodable or not.
    read: usize,
    rows: Vec<SyncLogRow>,
    next_offsets: HashMap<(String, i32), i64>,
}

impl Batch {
    fn add(&mut self, message: &BorrowedMessage<'_>) {
        self.read += 1;
        self.next_offsets.insert((message.topic().to_string(), message.partition()), message.offset() + 1);
        match message.payload().map(decode_sync_outcome) {
            Some(Ok(outcome)) => self.rows.push(outcome),
            Some(Err(error)) => undecodable(message, &error.to_string()),
            None => undecodable(message, "no value"),
        }
    }

    /// Age of the oldest outcome held, for the behind gauge.
    fn behind_seconds(&self) -> f64 {
        self.rows.iter().map(|r| r.at_ms).min().map_or(0.0, |oldest| (now_ms() - oldest).max(0) as f64 / 1000.0)
    }

    fn offsets(&self) -> TopicPartitionList {
        let mut list = TopicPartitionList::new();
        for ((topic, partition), next) in &self.next_offsets {
            list.add_partition_offset(topic, *partition, Offset::Offset(*next)).expect("a valid offset");
        }
        list
    }
}

fn undecodable(message: &BorrowedMessage<'_>, reason: &str) {
    metrics::counter!("sluice_writeback_undecodable_total").increment(1);
    tracing::error!(topic = message.topic(), partition = message.partition(), offset = message.offset(), %reason, "outcome is not a SyncOutcome; skipped");
}

/// The writeback of `config`'s destinations with `writeback = true`, until `shutdown`.
pub struct Writeback {
    consumer: StreamConsumer,
    warehouse: Arc<AnyWarehouse>,
    table: SyncLogTable,
    max_records: usize,
    linger: Duration,
}

impl Writeback {
    /// `None` when no destination has `writeback = true`. The outcomes topics must exist.
    pub fn new(config: &Config, warehouse: Arc<AnyWarehouse>) -> Result<Option<Writeback>, sluice_kafka::KafkaError> {
        let prefix = &config.kafka.topic_prefix;
        let topics: Vec<String> = config.writeback_destinations().map(|d| naming::outcomes_topic(prefix, d.name.get_ref())).collect();
        if topics.is_empty() {
            return Ok(None);
        }
        let consumer: StreamConsumer = sluice_kafka::client_config(&config.kafka)
            .set("group.id", naming::writeback_group(prefix))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .map_err(|e| sluice_kafka::KafkaError::classify("create writeback consumer", e))?;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer.subscribe(&names).map_err(|e| sluice_kafka::KafkaError::classify("subscribe to outcomes", e))?;
        let parts = config.writeback.table_parts().expect("validated at load");
        let table = SyncLogTable::new(&parts);
        let linger = Duration::from_millis(config.writeback.batch_linger_ms.min(sluice_core::config::bounds::WRITEBACK_BATCH_LINGER_MS.max as u64));
        Ok(Some(Writeback { consumer, warehouse, table, max_records: config.writeback.batch_max_records, linger }))
    }

    /// Read, write, commit, until `shutdown`; a batch not written by then is read again by the
    /// next start.
    pub async fn run(self, shutdown: CancellationToken) {
        tracing::info!(table = self.table.name(), "warehouse writeback started");
        loop {
            let Some(batch) = self.collect(&shutdown).await else { break };
            metrics::gauge!("sluice_writeback_pending_records").set(batch.rows.len() as f64);
            if !self.write(&batch, &shutdown).await {
                break;
            }
            if let Err(error) = self.consumer.commit(&batch.offsets(), CommitMode::Async) {
                // The rows are written: the next commit (or a re-read, idempotent) covers them.
                tracing::warn!(%error, "committing the writeback's offsets failed; they are committed with the next batch");
            }
            metrics::gauge!("sluice_writeback_pending_records").set(0.0);
            metrics::gauge!("sluice_writeback_behind_seconds").set(0.0);
        }
        tracing::info!("warehouse writeback stopped");
    }

    /// The next batch: the first outcome, then more until the batch is full or `linger` passed.
    /// `None` on shutdown.
    async fn collect(&self, shutdown: &CancellationToken) -> Option<Batch> {
        let mut batch = Batch::default();
        let mut deadline = None;
        while batch.read < self.max_records {
            let linger = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                _ = linger => break,
                received = self.consumer.recv() => match received {
                    Ok(message) => {
                        batch.add(&message);
                        deadline.get_or_insert_with(|| tokio::time::Instant::now() + self.linger);
                    }
                    Err(error) => {
                        tracing::warn!(%error, "reading outcomes failed; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                },
            }
        }
        Some(batch)
    }

    /// Write `batch` until the warehouse takes it; false on shutdown first.
    async fn write(&self, batch: &Batch, shutdown: &CancellationToken) -> bool {
        if batch.rows.is_empty() {
            return true;
        }
        let mut backoff = ExponentialBuilder::default().with_min_delay(Duration::from_millis(200)).with_max_delay(MAX_BACKOFF).with_jitter().without_max_times().build();
        loop {
            metrics::gauge!("sluice_writeback_behind_seconds").set(batch.behind_seconds());
            match self.warehouse.write_sync_log(&self.table, &batch.rows).await {
                Ok(()) => {
                    written(&batch.rows);
                    return true;
                }
                Err(error) => {
                    metrics::counter!("sluice_writeback_write_failures_total").increment(1);
                    let delay = backoff.next().unwrap_or(MAX_BACKOFF);
                    tracing::warn!(table = self.table.name(), rows = batch.rows.len(), %error, delay_ms = delay.as_millis() as u64, "writing outcomes to the warehouse failed; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return false,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
}

fn written(rows: &[SyncLogRow]) {
    let mut by_destination: HashMap<&str, u64> = HashMap::new();
    for row in rows {
        *by_destination.entry(row.destination.as_str()).or_default() += 1;
    }
    for (destination, n) in by_destination {
        metrics::counter!("sluice_writeback_rows_written_total", "destination" => destination.to_string()).increment(n);
    }
}
