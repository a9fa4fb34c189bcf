//! Expiry in cursor mode (`expire = { column, after_ms }`): the sweep that deletes the keys
//! whose row expired while nothing read it.
//!
//! Why a sweep: a cursor reads rows that change. A purchase that expires fourteen days after it
//! was made changes nothing in the warehouse, so no poll would ever read it again; yet from that
//! instant the row is absent (see `rules`), and its key must leave the change topic — and every
//! destination — as an ordinary delete, without any clock in the sinks.
//!
//! How: the change topic's state that cursor mode keeps (see `page::Images`) holds, per live key,
//! when its row stops being live (rebuilt from each event's `sluice.expires_at_ms` header; for a
//! key whose latest event predates the model's `expire`, learnt once at start by reading its
//! image back, [`learn_expiries`]). Between polls that caught up, [`sweep`] takes the keys whose
//! instant passed and emits each as `d` (`before` = its last emitted image, read back) +
//! tombstone, in Kafka transactions of `batch_rows` together with the model's state record, the
//! cursor position unchanged — the same path as a reconciliation's deletes
//! ([`crate::changes::emit`]).
//!
//! Exactly once, across crashes: a swept key leaves the state only when the transaction holding
//! its delete committed (the committer applies committed records), and the state after a
//! restart is rebuilt from the topic; so a crash between two transactions of a sweep leaves a
//! committed prefix, and the next sweep emits only the rest. A row updated before its sweep
//! carries its new expiry with its update; a row read expired by a poll is deleted by that poll.
//! No data-quality gate applies: expiry is the model's configuration, not a surprise.

use std::time::Instant;

use sluice_avro::ModelCodec;
use tracing::Instrument;

use super::page::Images;
use crate::changes::{emit, DiffPlan};
use crate::clock::now_ms;
use crate::context::ModelContext;
use crate::error::ModelError;
use crate::expiry::Expiry;
use crate::tracked::Keys;

/// Images read back per round while learning expiries (bounds memory on a large topic).
const LEARN_CHUNK: usize = 10_000;

/// Learn the expiry of every live key whose latest event carries none (written before the model
/// had `expire`) by reading its image back. A key whose image is in another schema keeps no
/// expiry (it is not swept until its row changes), and is counted in the log line.
pub(super) async fn learn_expiries(keys: &mut Keys, images: &Images, codec: &ModelCodec, expiry: Expiry) -> Result<(), ModelError> {
    let unknown = keys.without_expiry();
    if unknown.is_empty() {
        return Ok(());
    }
    let mut unreadable = 0usize;
    for chunk in unknown.chunks(LEARN_CHUNK) {
        let stored = images.fetch(chunk.iter().map(|&(_, loc)| loc).collect()).await?;
        for &(hash, loc) in chunk {
            match images.image(codec, stored.get(&loc)) {
                Some(row) => keys.set_expiry(hash, expiry.expires_at(&row)),
                None => unreadable += 1,
            }
        }
    }
    tracing::info!(model = %codec.model(), learnt = unknown.len() - unreadable, unreadable, "expiries of keys written before the model had expire learnt from their images");
    Ok(())
}

/// Delete the live keys whose row expired by now (see the module doc). Nothing to do, nothing
/// committed.
pub(super) async fn sweep<W>(ctx: &mut ModelContext<'_, W>) -> Result<(), ModelError> {
    let now = now_ms();
    let Some(keys) = ctx.committer.keys_mut() else { return Ok(()) };
    let due = keys.due(now);
    if due.is_empty() {
        return Ok(());
    }
    let tracked = keys.len() as u64;
    let name = ctx.name();
    let run_id = uuid::Uuid::new_v4().to_string();
    let span = tracing::info_span!("poller.expire", model = %name, run_id = %run_id);
    async {
        let started = Instant::now();
        let plan = DiffPlan { rows: tracked, tracked, inserts: Vec::new(), updates: Vec::new(), unchanged: Vec::new(), deletes: due };
        let deletes = emit(ctx, plan, &run_id).await?;
        metrics::counter!("sluice_poller_expired_total", "model" => name.to_string()).increment(deletes);
        metrics::histogram!("sluice_poller_run_seconds", "model" => name.to_string(), "mode" => "expire").record(started.elapsed().as_secs_f64());
        tracing::info!(
            model = %name,
            deletes,
            tracked,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "expiry sweep done: keys whose rows expired were deleted"
        );
        Ok::<(), ModelError>(())
    }
    .instrument(span)
    .await
}
