//! What a destination kind provides, and the one delivery loop every kind runs.
//!
//! A kind implements [`Kind`] (its name, settings, construction, request planning and the call
//! that sends one request) and [`RetryLogic`] (how an answer is classified). Everything else is
//! written once, here: the sink-facing [`Destination`] impl, the loop that sends a plan's
//! requests and turns verdicts into the sink's answer, and the counting of refusals, skips and
//! throttles ([`Metrics`]). The `registry!` macro turns the list of
//! kinds in `registry.rs` into the enum of destinations, the enum of settings, the list of kind
//! names, and `parse` / `build` / `check`.
//!
//! Guarantees of the delivery loop: requests go out in the plan's order, one at a time; the first
//! failed request ends the batch with its error (records of earlier requests were applied, and
//! a retry re-sends them, which every kind makes idempotent); the failures returned are sorted
//! by index with one entry per record (the first reported), so the sink never retries or
//! dead-letters a record twice.
//!
//! A kind whose vendor can replace all of its members at once ([`Kind::check_replace`]) plans
//! that session in [`Kind::plan_replace`]; [`replace`] runs it through the same loop.

use std::future::Future;

use serde::de::DeserializeOwned;
use sluice_core::config::{Config, ConfigError, DestinationConfig, SyncMode};

use crate::destination::{DeliveryError, Destination, RecordFailure};
use crate::metrics::Metrics;
use crate::modes::ModeRefusal;
use crate::plan::{Plan, RefusalReason};
use crate::record::OutboundRecord;
use crate::retry::{RetryLogic, Verdict};
use crate::settings::{Invalid, Validate};

/// A destination kind: one folder `src/<kind>/` (see the crate docs for its files).
pub trait Kind: RetryLogic + Send + Sync + Sized {
    /// The kind's name: the key of its table (`[destinations.<NAME>]`), its `kind` label, and
    /// the one place the name is written.
    const NAME: &'static str;

    /// The kind's settings (`config.rs`).
    type Config: DeserializeOwned + Validate + std::fmt::Debug + Send + Sync;

    /// Whether a sync in `mode` can be honoured with these settings: `Err` says why not and what
    /// to use instead. Every kind declares its modes here (and its doc page has the table of
    /// what each does on insert, update, delete and revoked consent); the registry refuses a
    /// sync in any other mode when the config is checked ([`crate::modes`]).
    fn check_mode(config: &Self::Config, mode: SyncMode) -> Result<(), ModeRefusal>;

    /// Build from validated settings; nothing connects. `metrics` carries the configured
    /// destination's name.
    fn new(config: &Self::Config, metrics: Metrics) -> Result<Self, Invalid>;

    /// The destination's metrics.
    fn metrics(&self) -> &Metrics;

    /// Most records one request may carry (the vendor's limit, or `usize::MAX` for none).
    fn request_limit(&self) -> usize;

    /// The batch as requests, and the records not sent (`request.rs`).
    fn plan(&self, batch: &[OutboundRecord]) -> Plan<Self::Request>;

    /// Send one request and read the whole answer. `Err` only when there is no answer to
    /// classify (a transport failure, already classified).
    fn call(&self, request: &Self::Request) -> impl Future<Output = Result<Self::Answer, DeliveryError>> + Send;

    /// Record what an answer reports besides its verdict (quota gauges, vendor counts).
    fn observe(&self, _request: &Self::Request, _answer: &Self::Answer) {}

    /// Whether these settings allow a **full replace**: one vendor operation after which the
    /// destination holds exactly the members sent (`sluice backfill --replace`). Most vendors
    /// have none; a kind that has one overrides this and [`Kind::plan_replace`].
    fn check_replace(_config: &Self::Config) -> Result<(), ModeRefusal> {
        Err(ModeRefusal::new(
            format!("the {} destination's API has no operation that replaces all of its members", Self::NAME),
            "run `sluice backfill` without --replace: it re-sends every current state and every delete that is still in the change topics",
        ))
    }

    /// The requests of one full replace whose result is exactly the members among `members`
    /// (records that leave are not members and are not sent), under the vendor session
    /// `session_id`; `None` when the kind has no full replace ([`Kind::check_replace`]).
    fn plan_replace(&self, _members: &[OutboundRecord], _session_id: i64) -> Option<Plan<Self::Request>> {
        None
    }
}

/// Run one full replace of `kind`'s members ([`Kind::plan_replace`]) through the delivery loop:
/// its requests in order, the first failure ending the session (the caller starts a new session:
/// a vendor session left open is never closed, so it never replaces anything).
pub async fn replace<K: Kind>(kind: &K, members: &[OutboundRecord], session_id: i64) -> Result<Vec<RecordFailure>, DeliveryError> {
    let Some(plan) = kind.plan_replace(members, session_id) else {
        return Err(DeliveryError::unanswered(sluice_core::ErrorClass::Permanent, format!("the {} destination has no full replace", K::NAME)));
    };
    deliver_plan(kind, plan).await
}

impl<K: Kind> Destination for K {
    fn kind(&self) -> &'static str {
        K::NAME
    }

    fn max_batch_records(&self) -> usize {
        self.request_limit()
    }

    async fn send(&self, batch: &[OutboundRecord]) -> Result<Vec<RecordFailure>, DeliveryError> {
        deliver(self, batch).await
    }
}

/// Plan a batch, send its requests in order, and classify each answer.
async fn deliver<K: Kind>(kind: &K, batch: &[OutboundRecord]) -> Result<Vec<RecordFailure>, DeliveryError> {
    deliver_plan(kind, kind.plan(batch)).await
}

/// Send a plan's requests in order and classify each answer.
async fn deliver_plan<K: Kind>(kind: &K, plan: Plan<K::Request>) -> Result<Vec<RecordFailure>, DeliveryError> {
    let metrics = kind.metrics();
    for reason in &plan.skipped {
        metrics.delete_skipped(*reason);
    }
    for field in &plan.missing {
        metrics.identifier_missing(field);
    }
    for refusal in &plan.refused {
        metrics.records_refused(refusal.reason, 1);
    }
    let mut failures: Vec<RecordFailure> = plan.refused.into_iter().map(|r| r.into_failure()).collect();
    for request in &plan.requests {
        let answer = kind.call(request).await?;
        kind.observe(request, &answer);
        match kind.classify(request, &answer) {
            Verdict::Applied => {}
            Verdict::Partial(refused) => {
                let retryable = refused.iter().filter(|f| matches!(f.class, sluice_core::ErrorClass::Retryable { .. })).count();
                metrics.records_refused(RefusalReason::VendorRetryable, retryable);
                metrics.records_refused(RefusalReason::Vendor, refused.len() - retryable);
                failures.extend(refused);
            }
            Verdict::Failed(failure) => {
                if let Some(signal) = failure.throttle {
                    metrics.throttled(signal);
                }
                // The signal travels with the error: the sink retries throttles differently.
                return Err(DeliveryError { throttle: failure.throttle, ..failure.error });
            }
        }
    }
    failures.sort_by_key(|f| f.index);
    failures.dedup_by_key(|f| f.index);
    Ok(failures)
}

/// A destination's kind table parsed into `K`'s settings and validated; errors name the
/// destination, the kind, the key and its line, and the fix.
pub(crate) fn settings<K: Kind>(config: &Config, destination: &DestinationConfig) -> Result<K::Config, ConfigError> {
    let settings: K::Config = config.kind_settings(destination)?;
    settings.validate().map_err(|invalid| config.kind_error(destination, invalid.key, &invalid.message, &invalid.fix))?;
    Ok(settings)
}

/// Every sync into `destination` in a mode `K` honours with `settings`; the error names the
/// sync's line, the mode, the kind, why, and the fix.
pub(crate) fn modes<K: Kind>(config: &Config, destination: &DestinationConfig, settings: &K::Config) -> Result<(), ConfigError> {
    crate::modes::check_syncs(config, destination, K::NAME, |mode| K::check_mode(settings, mode))
}

/// `K` built from its settings, labelled with the destination's name.
pub(crate) fn construct<K: Kind>(config: &Config, destination: &DestinationConfig, settings: &K::Config) -> Result<K, ConfigError> {
    K::new(settings, Metrics::new(destination.name.get_ref(), K::NAME))
        .map_err(|invalid| config.kind_error(destination, invalid.key, &invalid.message, &invalid.fix))
}

/// The error for a kind table no kind claims, listing the kinds there are (and the nearest,
/// when the name looks like a typo of one).
pub(crate) fn unknown_kind(config: &Config, destination: &DestinationConfig, known: &[&str]) -> ConfigError {
    let name = destination.kind.name();
    let nearest = known.iter().filter(|k| edit_distance(k, name) <= 2).min_by_key(|k| edit_distance(k, name));
    let list = format!("name the destination's table after one of the kinds: {}", known.join(", "));
    let fix = match nearest {
        Some(kind) => format!("did you mean `{kind}`? {list}"),
        None => list,
    };
    config.error_at(destination.kind.name_span(), format!("destination {:?}: unknown kind `{name}`", destination.name.get_ref()), fix)
}

/// Levenshtein distance, for "did you mean".
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1).min(row[j] + 1).min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// Declares the kinds, from one list in `registry.rs`: `module::Type` per kind, where
/// `Type: Kind` lives in `src/<module>/mod.rs`. Generates the kind modules, [`AnyDestination`]
/// and its [`Destination`] impl, `KindConfig`, `KIND_NAMES`, `parse`, `build` and `check`.
///
/// [`AnyDestination`]: crate::AnyDestination
macro_rules! registry {
    ($($module:ident :: $kind:ident),+ $(,)?) => {
        $(pub mod $module;)+

        /// Every destination kind, for services that pick one from config (enum dispatch: the
        /// trait's async methods make it unusable as a trait object, and the set of kinds is
        /// closed).
        pub enum AnyDestination {
            $(
                #[doc = concat!("The `", stringify!($module), "` destination.")]
                $kind($module::$kind),
            )+
        }

        /// Every kind's settings, parsed from a destination's table and validated.
        #[derive(Debug)]
        pub enum KindConfig {
            $(
                #[doc = concat!("Settings of the `", stringify!($module), "` destination.")]
                $kind(<$module::$kind as $crate::kind::Kind>::Config),
            )+
        }

        impl KindConfig {
            /// Whether these settings allow a full replace ([`Kind::check_replace`]).
            ///
            /// [`Kind::check_replace`]: $crate::kind::Kind::check_replace
            pub fn check_replace(&self) -> Result<(), $crate::modes::ModeRefusal> {
                match self {
                    $(KindConfig::$kind(settings) => <$module::$kind as $crate::kind::Kind>::check_replace(settings),)+
                }
            }

            /// The mapped fields every record must carry ([`Validate::identifier_fields`]).
            ///
            /// [`Validate::identifier_fields`]: $crate::settings::Validate::identifier_fields
            pub fn identifier_fields(&self) -> Vec<$crate::settings::IdentifierField> {
                match self {
                    $(KindConfig::$kind(settings) => $crate::settings::Validate::identifier_fields(settings),)+
                }
            }
        }

        /// Each kind's name and the keys of its table, from its settings struct (for the
        /// reference test).
        #[cfg(test)]
        pub(crate) fn kind_fields() -> Vec<(&'static str, Vec<&'static str>)> {
            vec![$((
                <$module::$kind as $crate::kind::Kind>::NAME,
                $crate::validate::reference::fields_of::<<$module::$kind as $crate::kind::Kind>::Config>(),
            )),+]
        }

        /// Every kind's settings variants with the sync modes each honours (its `mode_cases`,
        /// beside its `check_mode`), for the registry's matrix test.
        #[cfg(test)]
        pub(crate) fn mode_cases() -> Vec<(&'static str, $crate::kind::ModeCase)> {
            let mut cases = Vec::new();
            $(cases.extend($module::mode_cases().into_iter().map(|case| (<$module::$kind as $crate::kind::Kind>::NAME, case)));)+
            cases
        }

        /// The name of every kind, in registry order (the tables a destination may have).
        pub const KIND_NAMES: &[&str] = &[$(<$module::$kind as $crate::kind::Kind>::NAME),+];

        /// Parse and validate a destination's kind table (its secrets resolved); errors name the
        /// file, line, destination, kind and key, and the fix. An unknown kind lists the known.
        pub fn parse(
            config: &sluice_core::config::Config,
            destination: &sluice_core::config::DestinationConfig,
        ) -> Result<KindConfig, sluice_core::config::ConfigError> {
            let name = destination.kind.name();
            $(
                if name == <$module::$kind as $crate::kind::Kind>::NAME {
                    return $crate::kind::settings::<$module::$kind>(config, destination).map(KindConfig::$kind);
                }
            )+
            Err($crate::kind::unknown_kind(config, destination, KIND_NAMES))
        }

        /// Build the destination a config describes, once every sync into it is in a mode its
        /// kind honours ([`crate::modes`]). Nothing connects here; errors are config errors, as
        /// from [`parse`].
        pub fn build(
            config: &sluice_core::config::Config,
            destination: &sluice_core::config::DestinationConfig,
        ) -> Result<AnyDestination, sluice_core::config::ConfigError> {
            Ok(match parse(config, destination)? {
                $(
                    KindConfig::$kind(settings) => {
                        $crate::kind::modes::<$module::$kind>(config, destination, &settings)?;
                        AnyDestination::$kind($crate::kind::construct::<$module::$kind>(config, destination, &settings)?)
                    }
                )+
            })
        }

        /// Check every destination's kind table of a config, building each (nothing
        /// connects). [`validate`](crate::validate()) does this and more, for a scope.
        pub fn check(config: &sluice_core::config::Config) -> Result<(), sluice_core::config::ConfigError> {
            for destination in &config.destinations {
                build(config, destination)?;
            }
            Ok(())
        }

        impl AnyDestination {
            /// Replace every member of the destination with the members among `members`, in
            /// one vendor session `session_id` ([`Kind::plan_replace`]); refused (permanent)
            /// for kinds without a full replace. Records refused by the vendor are returned.
            ///
            /// [`Kind::plan_replace`]: $crate::kind::Kind::plan_replace
            pub async fn replace(
                &self,
                members: &[$crate::record::OutboundRecord],
                session_id: i64,
            ) -> Result<Vec<$crate::destination::RecordFailure>, $crate::destination::DeliveryError> {
                match self {
                    $(AnyDestination::$kind(d) => $crate::kind::replace(d, members, session_id).await,)+
                }
            }
        }

        impl $crate::destination::Destination for AnyDestination {
            fn kind(&self) -> &'static str {
                match self {
                    $(AnyDestination::$kind(d) => $crate::destination::Destination::kind(d),)+
                }
            }

            fn max_batch_records(&self) -> usize {
                match self {
                    $(AnyDestination::$kind(d) => $crate::destination::Destination::max_batch_records(d),)+
                }
            }

            async fn send(
                &self,
                batch: &[$crate::record::OutboundRecord],
            ) -> Result<Vec<$crate::destination::RecordFailure>, $crate::destination::DeliveryError> {
                match self {
                    $(AnyDestination::$kind(d) => $crate::destination::Destination::send(d, batch).await,)+
                }
            }
        }
    };
}

pub(crate) use registry;

/// The start of a test config: Kafka, a warehouse and a destination named `d` whose kind table
/// follows on line 10.
#[cfg(test)]
pub(crate) const TEST_CONFIG_HEAD: &str =
    "[kafka]\nbootstrap_servers = \"127.0.0.1:9092\"\n\n[warehouse]\nkind = \"duckdb\"\npath = \"w.duckdb\"\n\n[[destinations]]\nname = \"d\"\n";

/// A secret reference for kind tables in tests; [`test_config`] sets its variable.
#[cfg(test)]
pub(crate) const TEST_SECRET: &str = "{ env = \"SLUICE_TEST_DESTINATIONS_SECRET\" }";

/// One settings variant of a kind and the sync modes it honours with them: a row of the
/// registry's matrix test. Each kind lists its own in `mode_cases()` in its `mod.rs`, beside
/// `check_mode`, so the matrix grows with the kinds and names no kind itself.
#[cfg(test)]
pub(crate) struct ModeCase {
    /// The kind table (`[destinations.<kind>]` and its keys).
    pub table: String,
    /// The modes these settings honour; every other one must be refused.
    pub honours: &'static [SyncMode],
}

#[cfg(test)]
impl ModeCase {
    /// A kind table and the modes it honours.
    pub(crate) fn new(table: impl Into<String>, honours: &'static [SyncMode]) -> ModeCase {
        ModeCase { table: table.into(), honours }
    }
}

/// A config whose one destination `d` has `kind_table` (written from line 10 on); the secret
/// variables the kind tests reference are set.
#[cfg(test)]
pub(crate) fn test_config(kind_table: &str) -> Config {
    std::env::set_var("SLUICE_TEST_DESTINATIONS_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
    Config::parse("sluice.toml", &format!("{TEST_CONFIG_HEAD}{kind_table}")).unwrap_or_else(|e| panic!("{e}"))
}

/// A kind's settings parsed and validated from `kind_table`, as the registry would.
#[cfg(test)]
pub(crate) fn test_settings<K: Kind>(kind_table: &str) -> Result<K::Config, ConfigError> {
    let config = test_config(kind_table);
    settings::<K>(&config, &config.destinations[0])
}

#[cfg(test)]
mod tests {
    #[test]
    fn edit_distance_counts_single_edits() {
        assert_eq!(super::edit_distance("hubspot", "hubspt"), 1);
        assert_eq!(super::edit_distance("meta", "beta"), 1);
        assert_eq!(super::edit_distance("redis", "salesforce"), 9);
    }
}
