//! Suppression lists: models whose live rows keep people out of the syncs that name them.
//!
//! ```toml
//! [[suppression_lists]]
//! name = "recent_buyers"
//! model = "purchases"                                   # a row on it suppresses its person
//! identifier = { column = "email", transforms = ["normalize_email"] }
//!
//! [[syncs]]
//! model = "customers"
//! destination = "meta-prospects"
//! mode = "audience"
//! suppressed_by = ["recent_buyers"]
//! identifier = { column = "email", transforms = ["normalize_email"] }
//! ```
//!
//! Guaranteed at load ([`super::Config::load`]), each refusal naming its line and the fix:
//! list names are unique and usable as metric labels; a list's model exists and has its
//! identifier column; a sync naming lists names existing ones, once each, has an `identifier`
//! (a column of its own model) normalised with exactly the transforms of every list it names (else
//! nobody would ever match), and has a mode in which a row can leave its destination
//! (`audience`, `mirror` or `upsert`; see [`SUPPRESSIBLE_MODES`]); a sync naming no list has
//! no `identifier`. What a list does at run time is the sink's membership stage
//! (`docs/sink.md`).

use std::collections::HashSet;

use serde::Deserialize;
use toml::Spanned;

use super::{is_identifier, Config, ConfigError, SyncMode, Transform};

/// A model whose live rows keep people out of the syncs that name the list in `suppressed_by`.
/// A row on the list (inserted, updated, read by a snapshot) suppresses the person its
/// identifier names; the row's delete (deleted in the warehouse, or expired by the poller)
/// releases them once no other row of the list names them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuppressionListConfig {
    /// Named by syncs' `suppressed_by`, and the `list` label of its metrics.
    pub name: Spanned<String>,
    /// The model whose rows are the list's entries; it is polled like any model.
    pub model: Spanned<String>,
    /// Which column of a row names the person, and how it is normalised.
    pub identifier: IdentifierConfig,
}

/// A column that identifies a person, and the transforms that normalise it. Two sides match
/// when their normalised texts are equal (the sink keeps only a hash of it). A NULL or empty
/// value identifies nobody.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentifierConfig {
    pub column: Spanned<String>,
    /// Applied in order, as in field mappings (`normalize_email`, `normalize_phone`, `sha256`...).
    #[serde(default)]
    pub transforms: Vec<Transform>,
}

/// The sync modes a suppression list can apply to: those in which a row that stops being a
/// member is taken out of the destination (removed or unsubscribed) and a row that becomes one
/// again is written back. `append` sends a history of events (there is no membership to keep),
/// `create` never removes, and `update` never writes back a record it removed.
pub const SUPPRESSIBLE_MODES: [SyncMode; 3] = [SyncMode::Audience, SyncMode::Mirror, SyncMode::Upsert];

impl Config {
    /// The suppression list of that name.
    pub fn suppression_list(&self, name: &str) -> Option<&SuppressionListConfig> {
        self.suppression_lists.iter().find(|l| l.name.get_ref() == name)
    }

    /// Checks of `[[suppression_lists]]` and of syncs' `suppressed_by` and `identifier`; runs
    /// after models, destinations and syncs were checked, so their references hold.
    pub(super) fn validate_suppression(&self) -> Result<(), ConfigError> {
        let mut names = HashSet::new();
        for list in &self.suppression_lists {
            let name = list.name.get_ref();
            if !is_identifier(name) {
                return Err(self.error_at(list.name.span(), format!("suppression list name {name:?} is not a plain name"), "use letters, digits, '_' and '-' only"));
            }
            if !names.insert(name.as_str()) {
                return Err(self.error_at(list.name.span(), format!("suppression list {name:?} is defined twice"), "give each list a unique name"));
            }
            let Some(model) = self.model(list.model.get_ref()) else {
                return Err(self.error_at(list.model.span(), format!("suppression list {name:?} names unknown model {:?}", list.model.get_ref()), "define it under [[models]] or fix the name"));
            };
            let column = &list.identifier.column;
            if !model.columns.contains(column.get_ref()) {
                return Err(self.error_at(
                    column.span(),
                    format!("suppression list {name:?}: identifier column {:?} is not a column of model {:?}", column.get_ref(), model.name.get_ref()),
                    "name one of the model's `columns`, or add it there",
                ));
            }
        }
        for sync in &self.syncs {
            self.validate_sync_suppression(sync)?;
        }
        Ok(())
    }

    fn validate_sync_suppression(&self, sync: &super::SyncConfig) -> Result<(), ConfigError> {
        let which = format!("sync of model {:?} to {:?}", sync.model.get_ref(), sync.destination.get_ref());
        let Some(first) = sync.suppressed_by.first() else {
            return match &sync.identifier {
                Some(identifier) => Err(self.error_at(
                    identifier.column.span(),
                    format!("{which}: `identifier` is only used to match suppression lists, and the sync names none"),
                    "remove it, or name the lists in suppressed_by = [\"...\"]",
                )),
                None => Ok(()),
            };
        };
        if !SUPPRESSIBLE_MODES.contains(&sync.mode()) {
            return Err(self.error_at(
                first.span(),
                format!("{which}: suppression lists keep people out of a destination, which mode {:?} cannot do", sync.mode().name()),
                "use mode = \"audience\", \"mirror\" or \"upsert\" (a row can leave and come back), or remove suppressed_by",
            ));
        }
        let Some(identifier) = &sync.identifier else {
            return Err(self.error_at(
                first.span(),
                format!("{which} names suppression lists but has no `identifier` to match them with"),
                "add identifier = { column = \"email\", transforms = [\"normalize_email\"] } (the same transforms as the lists')",
            ));
        };
        let model = self.model(sync.model.get_ref()).expect("validated: a sync's model exists");
        if !model.columns.contains(identifier.column.get_ref()) {
            return Err(self.error_at(
                identifier.column.span(),
                format!("{which}: identifier column {:?} is not a column of model {:?}", identifier.column.get_ref(), model.name.get_ref()),
                "name one of the model's `columns`, or add it there",
            ));
        }
        let mut named = HashSet::new();
        for name in &sync.suppressed_by {
            let Some(list) = self.suppression_list(name.get_ref()) else {
                return Err(self.error_at(name.span(), format!("{which}: suppressed_by names unknown suppression list {:?}", name.get_ref()), "define it under [[suppression_lists]] or fix the name"));
            };
            if !named.insert(name.get_ref()) {
                return Err(self.error_at(name.span(), format!("{which}: suppressed_by names {:?} twice", name.get_ref()), "name each list once"));
            }
            if list.identifier.transforms != identifier.transforms {
                return Err(self.error_at(
                    identifier.column.span(),
                    format!(
                        "{which}: identifier transforms {:?} differ from suppression list {:?}'s {:?}, so the same person would not match",
                        names_of(&identifier.transforms),
                        name.get_ref(),
                        names_of(&list.identifier.transforms)
                    ),
                    "normalise both sides with the same transforms (normalise inside the model's SQL if the columns need different work)",
                ));
            }
        }
        Ok(())
    }
}

fn names_of(transforms: &[Transform]) -> Vec<&'static str> {
    transforms.iter().map(|t| t.name()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The text starts with a newline, so `[kafka]` is line 2.
    const GOOD: &str = r#"
[kafka]
bootstrap_servers = "127.0.0.1:9092"

[warehouse]
kind = "duckdb"
path = "w.duckdb"

[[models]]
name = "customers"
table = "customers"
primary_key = ["id"]
columns = ["id", "email", "opt_in", "updated_at"]
detection = { mode = "cursor", cursor_column = "updated_at" }

[[models]]
name = "purchases"
table = "purchases"
primary_key = ["id"]
columns = ["id", "email", "updated_at"]
detection = { mode = "cursor", cursor_column = "updated_at" }

[[destinations]]
name = "meta"
[destinations.webhook]
url = "http://127.0.0.1:1/hook"

[[suppression_lists]]
name = "recent_buyers"
model = "purchases"
identifier = { column = "email", transforms = ["normalize_email"] }

[[syncs]]
model = "customers"
destination = "meta"
mode = "audience"
fields = { email = "email" }
consent = { column = "opt_in" }
suppressed_by = ["recent_buyers"]
identifier = { column = "email", transforms = ["normalize_email"] }
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse("sluice.toml", text)
    }

    #[test]
    fn a_sync_with_a_list_loads() {
        let config = parse(GOOD).expect("valid");
        let list = config.suppression_list("recent_buyers").expect("the list");
        assert_eq!(list.model.get_ref(), "purchases");
        assert_eq!(list.identifier.transforms, [Transform::NormalizeEmail]);
        let sync = &config.syncs[0];
        assert!(sync.is_suppressed());
        assert_eq!(sync.suppressed_by.iter().map(|n| n.get_ref().as_str()).collect::<Vec<_>>(), ["recent_buyers"]);
        assert!(sync.columns().contains(&"email".to_string()));
    }

    #[test]
    fn every_refusal_names_its_line_and_fix() {
        let cases: &[(&str, &str, &str, usize, &str)] = &[
            ("name = \"recent_buyers\"", "name = \"recent buyers\"", "suppression list name \"recent buyers\" is not a plain name", 29, "letters, digits"),
            ("model = \"purchases\"\nidentifier", "model = \"purchase\"\nidentifier", "names unknown model \"purchase\"", 30, "define it under [[models]]"),
            (
                "identifier = { column = \"email\", transforms = [\"normalize_email\"] }\n\n[[syncs]]",
                "identifier = { column = \"mail\", transforms = [\"normalize_email\"] }\n\n[[syncs]]",
                "suppression list \"recent_buyers\": identifier column \"mail\" is not a column of model \"purchases\"",
                31,
                "name one of the model's `columns`",
            ),
            ("suppressed_by = [\"recent_buyers\"]", "suppressed_by = [\"buyers\"]", "suppressed_by names unknown suppression list \"buyers\"", 39, "define it under [[suppression_lists]]"),
            ("suppressed_by = [\"recent_buyers\"]", "suppressed_by = [\"recent_buyers\", \"recent_buyers\"]", "suppressed_by names \"recent_buyers\" twice", 39, "name each list once"),
            ("mode = \"audience\"", "mode = \"append\"", "which mode \"append\" cannot do", 39, "use mode = \"audience\", \"mirror\" or \"upsert\""),
            ("mode = \"audience\"", "mode = \"update\"", "which mode \"update\" cannot do", 39, "use mode"),
            ("mode = \"audience\"", "mode = \"create\"", "which mode \"create\" cannot do", 39, "use mode"),
            (
                "suppressed_by = [\"recent_buyers\"]\nidentifier = { column = \"email\", transforms = [\"normalize_email\"] }\n",
                "suppressed_by = [\"recent_buyers\"]\n",
                "names suppression lists but has no `identifier`",
                39,
                "add identifier = {",
            ),
            (
                "suppressed_by = [\"recent_buyers\"]\nidentifier = { column = \"email\", transforms = [\"normalize_email\"] }\n",
                "identifier = { column = \"email\", transforms = [\"normalize_email\"] }\n",
                "`identifier` is only used to match suppression lists, and the sync names none",
                39,
                "remove it",
            ),
            (
                "suppressed_by = [\"recent_buyers\"]\nidentifier = { column = \"email\"",
                "suppressed_by = [\"recent_buyers\"]\nidentifier = { column = \"e_mail\"",
                "identifier column \"e_mail\" is not a column of model \"customers\"",
                40,
                "name one of the model's `columns`",
            ),
            (
                "suppressed_by = [\"recent_buyers\"]\nidentifier = { column = \"email\", transforms = [\"normalize_email\"] }",
                "suppressed_by = [\"recent_buyers\"]\nidentifier = { column = \"email\", transforms = [\"normalize_email\", \"sha256\"] }",
                "identifier transforms [\"normalize_email\", \"sha256\"] differ from suppression list \"recent_buyers\"'s [\"normalize_email\"]",
                40,
                "the same transforms",
            ),
            ("[[suppression_lists]]", "[[suppression_lists]]\nname = \"recent_buyers\"\nmodel = \"purchases\"\nidentifier = { column = \"email\" }\n\n[[suppression_lists]]", "suppression list \"recent_buyers\" is defined twice", 34, "unique name"),
            ("identifier = { column = \"email\", transforms = [\"normalize_email\"] }\n\n[[syncs]]", "identifier = { column = \"email\", transform = [\"normalize_email\"] }\n\n[[syncs]]", "unknown field `transform`", 31, "spelling"),
        ];
        for (from, to, message, line, fix) in cases {
            assert!(GOOD.contains(from), "case {message:?}: {from:?} is in GOOD");
            let e = parse(&GOOD.replacen(from, to, 1)).expect_err(message);
            assert!(e.message.contains(message), "{e}\n  expected: {message}");
            assert_eq!(e.line, Some(*line), "{e}");
            assert!(e.fix.contains(fix), "{e}\n  expected fix: {fix}");
        }
    }

    #[test]
    fn upsert_and_mirror_syncs_take_lists() {
        for mode in ["upsert", "mirror"] {
            parse(&GOOD.replace("mode = \"audience\"", &format!("mode = \"{mode}\""))).unwrap_or_else(|e| panic!("{mode}: {e}"));
        }
        assert_eq!(SUPPRESSIBLE_MODES.map(SyncMode::name), ["audience", "mirror", "upsert"]);
    }
}
