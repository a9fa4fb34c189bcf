//! Which sync modes a destination can honour, declared by each kind, and the refusal of the
//! others when the config is checked.
//!
//! Guarantee: a sync whose mode its destination cannot honour never starts. Each kind answers
//! [`Kind::check_mode`](crate::Kind::check_mode) for its settings (a Meta audience and a Meta
//! suppression list honour different modes); the registry asks it for every sync of the
//! destination in `build` and `check`, so `sluice check` and the sink's start refuse the same
//! configs, with the sync's file and line, the mode, the kind, why, and the fix. Nothing is ever
//! silently treated as `upsert`.

use sluice_core::config::{Config, ConfigError, DestinationConfig, SyncMode};

/// Why a kind cannot honour a mode with its settings, and what to do instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModeRefusal {
    /// Why the mode cannot be honoured, in the vendor's terms.
    pub reason: String,
    /// What to configure instead.
    pub fix: String,
}

impl ModeRefusal {
    /// A refusal with its reason and fix.
    pub fn new(reason: impl Into<String>, fix: impl Into<String>) -> ModeRefusal {
        ModeRefusal { reason: reason.into(), fix: fix.into() }
    }
}

/// `Ok` when `mode` is one of `supported`, else a refusal with `reason` and a fix listing the
/// supported modes: the shape most kinds' `check_mode` take.
pub fn one_of(mode: SyncMode, supported: &[SyncMode], reason: impl FnOnce() -> String) -> Result<(), ModeRefusal> {
    if supported.contains(&mode) {
        return Ok(());
    }
    let names: Vec<String> = supported.iter().map(|m| format!("\"{m}\"")).collect();
    Err(ModeRefusal::new(reason(), format!("use mode = {} for this destination, or sync to a destination that can honour \"{mode}\"", names.join(" or "))))
}

/// Check every sync into `destination` against its kind's modes.
pub(crate) fn check_syncs(
    config: &Config,
    destination: &DestinationConfig,
    kind: &str,
    check: impl Fn(SyncMode) -> Result<(), ModeRefusal>,
) -> Result<(), ConfigError> {
    let name = destination.name.get_ref();
    for sync in config.syncs_to(name) {
        let mode = sync.mode();
        if let Err(refusal) = check(mode) {
            return Err(config.error_at(
                sync.mode_span(),
                format!(
                    "sync of model {:?} to destination {name:?}: mode \"{mode}\" is not supported by the {kind} destination: {}",
                    sync.model.get_ref(),
                    refusal.reason
                ),
                refusal.fix,
            ));
        }
    }
    Ok(())
}
