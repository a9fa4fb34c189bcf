//! Meta Custom Audiences: membership add and remove.
//!
//! Requests: `POST` (add) and `DELETE` (remove) `<base_url>/<api_version>/<audience_id>/users`,
//! JSON body `{"payload":{"schema":["EMAIL","PHONE"],"data":[["<sha256>",""],...]},
//! "session":{"session_id":n,"batch_seq":1,"last_batch_flag":true,"estimated_num_total":k}}`,
//! at most 10,000 rows. The token travels as `?access_token=` (documented) or as a bearer header
//! (`token_placement`). Every configured field is normalised and hashed by
//! [`crate::identifiers`] (a value already hashed by the sync is sent as it is); a missing value
//! is `""`, and a value that normalises to nothing (a phone of "n/a", the hash of the empty
//! string) is missing too, and counted: it never becomes a member. A record with no usable
//! value is refused. `session_id` is derived from the batch, so a retried batch re-sends the
//! same session.
//!
//! Actions, by `mode` (the sync modes each honours are in [`Meta::check_mode`]): `audience`:
//! Upsert/Update/Create/Event add, Delete removes; `suppression`: Upsert/Update/Create/Event
//! remove, Delete is skipped. An identifier change
//! (the `before` image hashes differently) removes the old row and adds the new one. Within a
//! batch the last action per row wins (membership is a set), so one request never both adds
//! and removes a row; removes are sent before adds.
//!
//! Full replace (`audience` mode only, [`Meta::check_replace`]): one `usersreplace` session
//! (`POST <base_url>/<api_version>/<audience_id>/usersreplace`, same body) of every current
//! member, `batch_seq` from 1, `last_batch_flag` on the last request and `estimated_num_total`
//! the session's row count; when Meta closes the session the audience is exactly those rows, so
//! members who left while nothing was synced are removed too. A suppression list cannot be
//! replaced: its rows say who to remove, not who the audience holds.
//!
//! Answers (`classify.rs`):
//! - 200 `{num_received, num_invalid_entries, invalid_entry_samples}`: both counts become
//!   metrics (`sluice_destination_vendor_rows_received_total`, `..._invalid_total`). A sample
//!   whose key is a value we sent refuses the records of that row (permanent); invalid entries
//!   that cannot be traced to a row are logged as a count and counted
//!   (`sluice_destination_vendor_rows_untraceable_total`): Meta reports samples, not row
//!   indices, so they cannot be dead-lettered.
//! - Error envelope `{"error":{"code","error_subcode",...}}`, usually with HTTP 400, classified by
//!   code: throttles (4 `app`, 17 `user`, 32 `page`, 613 `ad_account`, 80000-80014
//!   `business_use_case`: the throttle signals) and temporary errors (1, 2, 2650) are retryable,
//!   with `estimated_time_to_regain_access` from `X-Business-Use-Case-Usage` as the wait; 190
//!   (token), 200/294 (permissions), 368 and a flagged or unreachable audience are fatal; other
//!   codes refuse the request (permanent).

mod classify;
mod config;
mod request;

pub use config::{AudienceMode, MetaConfig, TokenPlacement};

use sluice_core::config::SyncMode;

use crate::http::{bearer, Answer, Auth, Endpoint};
use crate::identifiers::MetaKey;
use crate::modes::{one_of, ModeRefusal};
use crate::{DeliveryError, Invalid, Kind, Metrics, OutboundRecord, Plan};

/// The Meta Custom Audiences destination.
pub struct Meta {
    /// The audience's `users` edge; the token in the query or as a bearer header.
    endpoint: Endpoint,
    /// The audience's `usersreplace` edge, authenticated the same way.
    replace_endpoint: Endpoint,
    /// (mapped field, schema key), in schema order.
    columns: Vec<(String, MetaKey)>,
    mode: AudienceMode,
    max_rows: usize,
    metrics: Metrics,
}

impl Kind for Meta {
    const NAME: &'static str = "meta";
    type Config = MetaConfig;

    /// `audience` mode: `audience` and `mirror` (the same here: add on entering, remove on
    /// leaving or revoked consent). `suppression` mode: `upsert` (a row's presence removes the
    /// person; a delete is skipped). Nothing else: an audience that ignored deletes would keep
    /// people who left, and Meta holds members, not events.
    fn check_mode(config: &MetaConfig, mode: SyncMode) -> Result<(), ModeRefusal> {
        let supported: &[SyncMode] = match config.mode {
            AudienceMode::Audience => &[SyncMode::Audience, SyncMode::Mirror],
            AudienceMode::Suppression => &[SyncMode::Upsert],
        };
        one_of(mode, supported, || match (config.mode, mode) {
            (_, SyncMode::Append) => "a Custom Audience holds members, not events".into(),
            (AudienceMode::Audience, _) => format!("an audience must remove the people who leave it, and mode \"{mode}\" never removes anyone whose row is deleted"),
            (AudienceMode::Suppression, _) => "in suppression mode a row's presence removes the person and a suppression ending never adds anyone back, so only upsert fits".into(),
        })
    }

    fn new(config: &MetaConfig, metrics: Metrics) -> Result<Meta, Invalid> {
        let edge = |name: &str| -> Result<Endpoint, Invalid> {
            Endpoint::new(
                config.timeout_ms,
                format!("{}/{}/{}/{name}", config.base_url.trim_end_matches('/'), config.api_version.trim_matches('/'), config.audience_id.trim()),
                match config.token_placement {
                    TokenPlacement::Query => Auth::Query("access_token", config.access_token.expose().to_string()),
                    TokenPlacement::Bearer => Auth::Bearer(bearer(config.access_token.expose(), "access_token")?),
                },
            )
        };
        Ok(Meta {
            endpoint: edge("users")?,
            replace_endpoint: edge("usersreplace")?,
            columns: config.columns()?,
            mode: config.mode,
            max_rows: config.max_rows_per_request,
            metrics,
        })
    }

    fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn request_limit(&self) -> usize {
        self.max_rows
    }

    fn plan(&self, batch: &[OutboundRecord]) -> Plan<request::Request> {
        self.plan_requests(batch)
    }

    async fn call(&self, request: &request::Request) -> Result<Answer, DeliveryError> {
        let endpoint = match request.operation {
            request::Operation::Add | request::Operation::Remove => &self.endpoint,
            request::Operation::Replace => &self.replace_endpoint,
        };
        endpoint.send_json(Self::NAME, request.operation.method(), &self.body(request)).await
    }

    /// An audience can be replaced (`usersreplace`); a suppression list cannot: its rows are
    /// the people to remove, so no set of them says who the audience holds.
    fn check_replace(config: &MetaConfig) -> Result<(), ModeRefusal> {
        if Self::check_replace_mode(config.mode) {
            return Ok(());
        }
        Err(ModeRefusal::new(
            "a Meta destination in suppression mode removes the people of its rows; its rows do not say who the audience holds, so it cannot be replaced",
            "run `sluice backfill` without --replace",
        ))
    }

    fn plan_replace(&self, members: &[OutboundRecord], session_id: i64) -> Option<Plan<request::Request>> {
        Self::check_replace_mode(self.mode).then(|| self.plan_replace_session(members, session_id))
    }

    /// Meta's own counts of an accepted request, and the invalid rows no record can answer for.
    fn observe(&self, request: &request::Request, answer: &Answer) {
        if !classify::accepted(answer) {
            return;
        }
        let operation = request.operation.label();
        let invalid = answer.body["num_invalid_entries"].as_u64().unwrap_or(0);
        self.metrics.vendor_rows(operation, answer.body["num_received"].as_u64().unwrap_or(0), invalid);
        let traced = classify::invalid_entries(request, answer).traced_rows;
        self.metrics.vendor_rows_untraceable(operation, invalid.saturating_sub(traced));
    }
}

impl Meta {
    /// Whether a destination in `mode` has a full replace (the rule of [`Meta::check_replace`]).
    fn check_replace_mode(mode: AudienceMode) -> bool {
        mode == AudienceMode::Audience
    }
}

/// The settings variants of this kind and the sync modes each honours: its rows of the
/// registry's matrix test, which checks every other mode is refused with the reason.
#[cfg(test)]
pub(crate) fn mode_cases() -> Vec<crate::kind::ModeCase> {
    use crate::kind::{ModeCase, TEST_SECRET};
    use sluice_core::config::SyncMode::*;
    let meta = format!("[destinations.meta]\naccess_token = {TEST_SECRET}\naudience_id = \"1\"\nidentifiers = {{ email = \"EMAIL\" }}");
    vec![
        ModeCase::new(meta.clone(), &[Audience, Mirror]),
        ModeCase::new(format!("{meta}\nmode = \"suppression\""), &[Upsert]),
    ]
}
