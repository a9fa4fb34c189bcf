//! Destinations: where mapped change records are applied.
//!
//! A destination knows its vendor's API and nothing of Kafka or warehouses. It takes a batch of
//! [`OutboundRecord`]s (already mapped: only configured fields, consent applied) and answers
//! with one of:
//! - `Ok(vec![])`: the vendor confirmed every record;
//! - `Ok(failures)`: the request succeeded but some records were not applied (refused before
//!   sending, HubSpot 207 `errors`, Braze 2xx `errors`, Salesforce per-record results, Meta
//!   invalid entries, Redis error replies): only those are retried or dead-lettered, by their
//!   [`RecordFailure::class`];
//! - `Err(DeliveryError)`: the whole request failed, with an [`ErrorClass`](sluice_core::ErrorClass)
//!   saying what the caller must do (retry, reject the records, or stop).
//!
//! # One folder per kind, the same files in the same roles
//!
//! Every kind is a folder `src/<kind>/`; a newcomer who has read one has read them all:
//!
//! | file | role |
//! |---|---|
//! | `mod.rs` | module doc = the vendor contract (requests, actions, answers); the destination struct and its [`Kind`] impl: name, construction, `call` (one request on the wire), `observe` (gauges, vendor counts) |
//! | `config.rs` | the settings struct (serde, `deny_unknown_fields`, a doc comment on every field, defaults beside it) and its [`Validate`] impl; a parse-with-defaults test |
//! | `request.rs` | batch → [`Plan`]: the requests, each knowing which records its items carry, and the records refused or skipped before sending; plan tests |
//! | `classify.rs` | the vendor's answer → [`Verdict`], as the two hooks of [`RetryLogic`]; the table test of the whole policy |
//!
//! Shared by all: [`kind`] (the [`Kind`] trait, the one delivery loop, the registry macro),
//! [`modes`] (the sync modes each kind declares it honours, and the refusal of the others when
//! the config is checked), [`retry`] (the classifier shape), [`plan`], [`settings`], [`metrics`]
//! (one set of metric names for every kind), [`http`] (the status policy and the HTTP
//! plumbing), [`identifiers`] (normalisation and hashing: a value that normalises to nothing is
//! missing, never an identifier). Kinds are registered in one place, `registry.rs`, from which the
//! kind modules, [`AnyDestination`], `KindConfig`, `KIND_NAMES`, [`parse`], [`build`] and
//! [`check`] are generated; adding a kind is the recipe "Adding a destination" in
//! `docs/destinations/README.md`.
//!
//! The kinds, their vendor calls, limits and throttle signals are listed in
//! `docs/destinations/README.md` (one page per kind); each kind's module doc is its contract.
//!
//! Identifiers: a destination keyed by a field reads it from the record's current image, else
//! its `before` image ([`OutboundRecord::previous`], which is what a delete carries), else the
//! primary key ([`OutboundRecord::text`]). No destination logs personal data: logs and metrics
//! carry counts and classes only.

pub mod destination;
pub mod http;
pub mod identifiers;
pub mod kind;
pub mod metrics;
pub mod modes;
pub mod plan;
pub mod record;
pub mod retry;
pub mod settings;
pub mod validate;

// `registry.rs` declares the kind modules; loaded by path so that they resolve beside it, as
// `src/<kind>/`.
#[path = "registry.rs"]
mod registry;

pub use destination::{DeliveryError, Destination, RecordFailure};
pub use kind::Kind;
pub use metrics::Metrics;
pub use modes::ModeRefusal;
pub use plan::{OnDelete, Plan};
pub use record::{batch_digest, value_text, Action, OutboundRecord};
pub use registry::*;
pub use retry::{RequestFailure, RetryLogic, Verdict};
pub use settings::{IdentifierField, Invalid, Validate};
pub use validate::{load, load_for_service, validate};
