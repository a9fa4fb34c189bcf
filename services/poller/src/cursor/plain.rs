//! Cursor mode without a look-back window: pages of `batch_rows` rows strictly after the
//! committed cursor tuple, each committed with the page's last tuple as the new position, so a
//! restart continues strictly after the last committed page. A short page, or a poll that finds
//! nothing after a full one, completes the first snapshot.

use sluice_core::Value;
use sluice_warehouse::{cursor_indexes, cursor_of, Warehouse};
use tracing::Instrument;

use super::page::{Images, Page};
use super::rules::{CursorRules, PollContext};
use super::{commit_page, complete_snapshot, Between};
use crate::clock::now_ms;
use crate::context::ModelContext;
use crate::emit::ChangeWriter;
use crate::error::ModelError;
use crate::position::tuple_text;

/// Poll `ctx`'s model after the cursor tuple `start` (`None`: from the beginning) until
/// shutdown or a fatal error; previous images read through `images` when kept.
pub(super) async fn poll<W: Warehouse>(
    ctx: &mut ModelContext<'_, W>,
    start: Option<Vec<Value>>,
    images: Option<&Images>,
    between: &mut Between<'_>,
) -> Result<(), ModelError> {
    let name = ctx.name();
    let mut position = start;
    let cursor = cursor_indexes(ctx.model, ctx.codec.row_schema()).expect("cursor mode has a cursor");
    let rules = CursorRules::new(ctx.model, &ctx.codec, ctx.expiry);
    loop {
        let run_id = uuid::Uuid::new_v4().to_string();
        let span = tracing::info_span!("poller.run", model = %name, run_id = %run_id);
        let caught_up = async {
            let batch = ctx.model.batch_rows;
            let rows = ctx.warehouse.fetch_after(ctx.model, ctx.codec.row_schema(), position.as_deref(), batch).await?;
            if rows.is_empty() {
                complete_snapshot(ctx).await?;
                return Ok::<bool, ModelError>(true);
            }
            let page_full = rows.len() == batch;
            let snapshot_done = ctx.state().snapshot_done;
            let mut page = Page::new(PollContext { snapshot_done, run_start: position.as_ref().map(|p| p[0].clone()), now_ms: now_ms() });
            let mut last_position = None;
            for row in rows {
                let row_position = cursor_of(&cursor, &row);
                let mut key = Vec::with_capacity(32);
                ctx.codec.encode_key(&row, &mut key)?;
                page.push(&rules, ctx.committer.keys(), row, key, tuple_text(&row_position));
                last_position = Some(row_position);
            }
            let new_position = last_position.expect("rows is not empty");
            let counts = page.counts();
            let mut writer = ChangeWriter::new(ctx.config, name, &ctx.codec, &run_id);
            let records = page.records(&mut writer, images, &ctx.codec).await?;
            // A short page means the scan reached the end: the snapshot is complete.
            commit_page(ctx, &run_id, records, &counts, tuple_text(&new_position), snapshot_done || !page_full).await?;
            position = Some(new_position);
            if !snapshot_done && ctx.state().snapshot_done {
                tracing::info!(model = %name, events_total = ctx.state().events_total, "initial snapshot complete");
            }
            tracing::info!(
                model = %name,
                events = counts.total(),
                snapshot = counts.reads,
                inserts = counts.creates,
                updates = counts.updates,
                deletes = counts.deletes,
                "transaction committed"
            );
            Ok(!page_full)
        }
        .instrument(span)
        .await?;
        if caught_up {
            if !between.caught_up(ctx).await? {
                return Ok(());
            }
        } else if between.shutdown.is_cancelled() {
            return Ok(());
        }
    }
}
