//! The one validation of a configuration, for a [`Scope`]: what `sluice check` runs (every
//! scope by default) and what each service runs at load for its own scope, so a config that
//! `check` accepts starts every service, and a service refuses at load what would fail later.
//!
//! [`Config::parse`] already checked everything knowable from the file but the destinations'
//! kind tables (names, references, numbers, cron). [`validate`] adds, for the scope:
//! - the scope's secrets: the warehouse's for the poller ([`Config::check_secrets`]), each
//!   destination's in its kind table; nothing else is resolved, so a sink starts without the
//!   warehouse URL or another vendor's key;
//! - the poller: each model's schema contract readable, and naming exactly the model's columns
//!   (the poller would refuse the model at its first run otherwise);
//! - each destination in scope: its kind table parsed, validated and built (nothing connects);
//!   at least one sync delivering to it; every field the kind addresses records by
//!   ([`IdentifierField`]) mapped by every such sync; each consent value of the type of its
//!   column, when the model's contract gives the type ([`ConsentCheck`]; the sink checks again
//!   against the writer schema of every event it decodes, so a model without a contract is
//!   caught at the first event).
//!
//! Errors are [`ConfigError`]s: file, line, what is wrong and the fix, pointing at
//! `docs/configuration.md` where it says more.
//!
//! [`IdentifierField`]: crate::IdentifierField

mod consent;

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use serde_json::Value as Json;
use sluice_core::config::{Config, ConfigError, DestinationConfig, ModelConfig, Scope};

pub use consent::{row_field_type, ConsentCheck};

/// Check `config` for `scope` (see the module docs); the first error found.
pub fn validate(config: &Config, scope: &Scope) -> Result<(), ConfigError> {
    if let Scope::Sink(name) = scope {
        if config.destination(name).is_none() {
            let names: Vec<&str> = config.destinations.iter().map(|d| d.name.get_ref().as_str()).collect();
            return Err(ConfigError {
                file: config.path().to_path_buf(),
                line: None,
                message: format!("no destination named {name:?}"),
                fix: format!("name one of the [[destinations]]: {}", names.join(", ")),
            });
        }
    }
    config.check_secrets(scope)?;
    if scope.has_poller() {
        for model in &config.models {
            check_contract(config, model)?;
        }
    }
    for destination in config.destinations.iter().filter(|d| scope.has_destination(d.name.get_ref())) {
        check_destination(config, destination)?;
    }
    Ok(())
}

/// Load a config file and [`validate`] it for `scope`: what every service does at start.
pub fn load(path: impl AsRef<Path>, scope: &Scope) -> Result<Config, ConfigError> {
    let config = Config::load(path)?;
    validate(&config, scope)?;
    Ok(config)
}

/// [`load`] for a service's `main`: on error the message goes to stderr and the exit status is
/// 2 (bad usage), before anything is started.
pub fn load_for_service(path: impl AsRef<Path>, scope: &Scope) -> Result<Arc<Config>, ExitCode> {
    load(path, scope).map(Arc::new).map_err(|error| {
        eprintln!("error: {error}");
        ExitCode::from(2)
    })
}

/// A destination's kind table, its syncs, their identifier fields and consent rules.
fn check_destination(config: &Config, destination: &DestinationConfig) -> Result<(), ConfigError> {
    let settings = crate::parse(config, destination)?;
    crate::build(config, destination)?;
    let name = destination.name.get_ref();
    if config.syncs_to(name).next().is_none() {
        return Err(config.error_at(
            destination.name.span(),
            format!("no [[syncs]] deliver to destination {name:?}, so its sink would not start"),
            "add a [[syncs]] entry with destination = \"...\" naming it, or remove the destination",
        ));
    }
    let kind = destination.kind.name();
    for sync in config.syncs_to(name) {
        let Some(model) = config.model(sync.model.get_ref()) else { continue };
        for identifier in settings.identifier_fields() {
            if sync.fields.get_ref().contains_key(&identifier.field) || model.primary_key.contains(&identifier.field) {
                continue;
            }
            return Err(config.error_at(
                sync.fields.span(),
                format!(
                    "sync of model {:?} to destination {name:?}: {kind} addresses records by field {:?} ({kind}.{}), which this sync does not map, so every record would be refused",
                    model.name.get_ref(),
                    identifier.field,
                    identifier.key
                ),
                format!(
                    "map it, e.g. fields = {{ {} = \"<column>\", ... }}, or point {kind}.{} at a mapped field (see docs/destinations/{kind}.md#keys)",
                    identifier.field, identifier.key
                ),
            ));
        }
        if let (Some(check), Some(contract)) = (ConsentCheck::new(config, sync), readable_contract(model)) {
            if row_field_type(&contract, check.column()).is_some() {
                check.against(&contract, &format!("its schema contract {}", model.schema_contract.as_deref().unwrap_or_default()))?;
            }
        }
    }
    Ok(())
}

/// The model's contract, when it has one that can be read and parsed (the sink's check of a
/// consent type uses it when it can; the poller's scope refuses one that cannot be read).
fn readable_contract(model: &ModelConfig) -> Option<Json> {
    let text = std::fs::read_to_string(model.schema_contract.as_ref()?).ok()?;
    serde_json::from_str(&text).ok()
}

/// A model's schema contract: readable, JSON, and naming the model's `columns` (the poller
/// refuses a model whose columns drift from it, so a config that disagrees would never run).
fn check_contract(config: &Config, model: &ModelConfig) -> Result<(), ConfigError> {
    let Some(path) = &model.schema_contract else { return Ok(()) };
    let name = model.name.get_ref();
    let fail = |message: String, fix: String| Err(config.error_at(model.name.span(), format!("model {name:?}: schema_contract {path:?} {message}"), fix));
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => return fail(format!("cannot be read ({e}); it is relative to the working directory"), format!("export it with `sluice schema export {name}`, or fix the path")),
    };
    let contract: Json = match serde_json::from_str(&text) {
        Ok(json) => json,
        Err(e) => return fail(format!("is not JSON ({e})"), format!("re-export it with `sluice schema export {name}`")),
    };
    let Some(fields) = contract["fields"].as_array() else {
        return fail("has no `fields`: it is not a row schema".into(), format!("re-export it with `sluice schema export {name}`"));
    };
    let named: Vec<&str> = fields.iter().filter_map(|f| f["name"].as_str()).collect();
    if let Some(removed) = named.iter().find(|n| !model.columns.iter().any(|c| c == *n)) {
        return fail(format!("has column {removed:?}, which `columns` does not list, so the poller would refuse the model"), "list it in `columns`, or review the change and re-export the contract".into());
    }
    if !model.allow_additions {
        if let Some(added) = model.columns.iter().find(|c| !named.contains(&c.as_str())) {
            return fail(
                format!("does not have column {added:?}, which `columns` lists, so the poller would refuse the model"),
                "re-export the contract (`sluice schema export`), or set allow_additions = true".into(),
            );
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod reference;
#[cfg(test)]
mod tests;
