//! One page of rows read by a cursor poll, turned into change records: each row's op by the
//! rules and the tracked keys, then the previous images of the updated and deleted keys read
//! back from the change topic in one read, then the records. Shared by the plain loop and the
//! look-back window.
//!
//! Guarantees, with the tracked keys (`before_images`, the default):
//! - an update carries the key's last emitted image as `before` (and the changed columns), a
//!   delete (soft-deleted or expired row) carries it as `before`; an image written with another
//!   schema is left out of an update, and a delete then carries the row as read;
//! - a row equal to the key's last emitted image (same row hash) is no change and is skipped;
//! - a previous event that is not where the state says (it cannot be: the state follows every
//!   commit) stops the page with a retryable error, which rebuilds the state from the topic.
//!
//! Without them, an update carries no `before` and a delete the row as read.

use std::sync::Arc;
use std::time::Instant;

use sluice_avro::{decoder_for, EventDecoder, ModelCodec};
use sluice_core::{Op, Row};
use sluice_kafka::producer::OutRecord;

use super::rules::{CursorRules, Known, OpCounts, PollContext};
use crate::changes::image_of;
use crate::context::ModelContext;
use crate::emit::ChangeWriter;
use crate::error::ModelError;
use crate::keys::{key_hash, row_hash};
use crate::tracked::{ImageReader, KeyMap, Keys, Stored, Tracked};

/// What a cursor model keeps to read previous images back: a reader of its change topic and a
/// decoder of its events. Opening it hands the change topic's state to the committer.
pub(super) struct Images {
    reader: Arc<ImageReader>,
    decoder: EventDecoder,
}

impl Images {
    /// Rebuild the change topic's state (with expiry instants when the model expires rows),
    /// give it to the committer to keep current, and open a reader of the topic.
    pub(super) async fn open<W>(ctx: &mut ModelContext<'_, W>) -> Result<Images, ModelError> {
        let started = Instant::now();
        let (kafka, topic) = (ctx.config.kafka.clone(), ctx.change_topic());
        let tracked = Tracked::load(&kafka, &topic, ctx.expiry.is_some()).await?;
        let reader = tokio::task::spawn_blocking(move || ImageReader::new(&kafka, &topic)).await.expect("does not panic")?;
        let images = Images { reader: Arc::new(reader), decoder: decoder_for(&ctx.codec) };
        let mut keys = tracked.into_keys();
        if let Some(expiry) = ctx.expiry {
            super::expire::learn_expiries(&mut keys, &images, &ctx.codec, expiry).await?;
        }
        metrics::gauge!("sluice_poller_tracked_rows", "model" => ctx.name().to_string()).set(keys.len() as f64);
        tracing::info!(
            model = %ctx.name(),
            tracked_rows = keys.len(),
            table_bytes = keys.table_bytes(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "cursor state rebuilt from the change topic"
        );
        ctx.committer.track(keys);
        Ok(images)
    }

    /// The records at `locs` of the change topic.
    pub(super) async fn fetch(&self, locs: Vec<u64>) -> Result<KeyMap<Stored>, ModelError> {
        self.reader.fetch_async(locs).await
    }

    /// The `after` image of a stored event in the current schema.
    pub(super) fn image(&self, codec: &ModelCodec, stored: Option<&Stored>) -> Option<Row> {
        image_of(&self.decoder, codec, stored)
    }
}

/// A change decided, waiting for its previous image.
struct Pending {
    op: Op,
    row: Row,
    /// The record key.
    key: Vec<u8>,
    /// The row's cursor tuple, as `source.position`.
    position: String,
    /// Where the key's latest event sits, for updates and deletes of a live key.
    previous: Option<u64>,
}

/// The changes of one page, decided row by row ([`Page::push`]) and turned into records at
/// the end ([`Page::records`]).
pub(super) struct Page {
    poll: PollContext,
    pending: Vec<Pending>,
    counts: OpCounts,
    hash_buf: Vec<u8>,
}

impl Page {
    /// An empty page of a poll.
    pub(super) fn new(poll: PollContext) -> Page {
        Page { poll, pending: Vec::new(), counts: OpCounts::default(), hash_buf: Vec::with_capacity(256) }
    }

    /// Decide what `row` (record key `key`, cursor tuple `position` as text) becomes, by
    /// `rules` and `keys` (`None` when no state is kept).
    pub(super) fn push(&mut self, rules: &CursorRules, keys: Option<&Keys>, row: Row, key: Vec<u8>, position: String) {
        let entry = keys.map(|keys| keys.get(key_hash(&key)));
        let known = match entry {
            None => Known::Untracked,
            Some(Some(_)) => Known::Live,
            Some(None) => Known::Absent,
        };
        let Some(op) = rules.op(&self.poll, &row, known) else { return };
        let entry = entry.flatten();
        if op == Op::Update && entry.is_some_and(|e| e.row_hash == row_hash(&row, &mut self.hash_buf)) {
            return; // the row as destinations already have it
        }
        self.counts.add(op);
        self.pending.push(Pending { op, row, key, position, previous: entry.map(|e| e.loc()) });
    }

    /// Events of the page by op.
    pub(super) fn counts(&self) -> OpCounts {
        self.counts
    }

    /// The page's records: previous images read back through `images` (one read for the
    /// page), then each change encoded by `writer`.
    pub(super) async fn records(self, writer: &mut ChangeWriter<'_>, images: Option<&Images>, codec: &ModelCodec) -> Result<Vec<OutRecord>, ModelError> {
        let locs: Vec<u64> = self.pending.iter().filter_map(|p| p.previous).collect();
        let previous = match images {
            Some(images) if !locs.is_empty() => images.fetch(locs).await?,
            _ => KeyMap::default(),
        };
        let mut records = Vec::with_capacity(self.pending.len() + 3);
        for change in self.pending {
            let before = match (change.previous, images) {
                (Some(loc), Some(images)) => {
                    let stored = previous.get(&loc).ok_or_else(|| ModelError::State(format!("the previous event at {loc:#x} of the change topic was not found")))?;
                    images.image(codec, Some(stored))
                }
                _ => None,
            };
            writer.set_position(Some(change.position));
            records.extend(match change.op {
                // A delete names the row it removes: its last emitted image, else the row as read.
                Op::Delete => writer.change(Op::Delete, before.or(Some(change.row)), None, Some(change.key))?,
                op => writer.change(op, before, Some(change.row), Some(change.key))?,
            });
        }
        Ok(records)
    }
}
