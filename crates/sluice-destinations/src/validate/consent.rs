//! A consent rule's value against the type of its column.
//!
//! The sink compares a row's consent column with `equals`; a value of another type never
//! matches (`equals = "yes"` on a boolean column), so every row would count as not consenting
//! and be removed from the destination. The type comes from an Avro schema: a model's schema
//! contract at load, the writer schema of each event in the sink. Both give the same
//! [`ConfigError`], at the line of the sync.
//!
//! What fits: a boolean column takes a boolean; an `int`/`long` column an integer; a
//! `float`/`double` column a number; a text column (strings, JSON, UUIDs, decimals as text) a
//! string. Columns of other types (bytes, dates, timestamps, fixed decimals) cannot be compared
//! with a value written in the file.

use std::path::PathBuf;

use serde_json::Value as Json;
use sluice_core::config::{Config, ConfigError, SyncConfig};

/// One sync's consent rule, ready to be checked against schemas.
#[derive(Debug, Clone)]
pub struct ConsentCheck {
    model: String,
    destination: String,
    column: String,
    equals: toml::Value,
    file: PathBuf,
    line: Option<usize>,
}

impl ConsentCheck {
    /// The check of a sync's consent rule; `None` when it has none.
    pub fn new(config: &Config, sync: &SyncConfig) -> Option<ConsentCheck> {
        let rule = sync.consent.as_ref()?;
        let place = config.error_at(sync.model.span(), "", "");
        Some(ConsentCheck {
            model: sync.model.get_ref().clone(),
            destination: sync.destination.get_ref().clone(),
            column: rule.column.clone(),
            equals: rule.equals.clone(),
            file: place.file,
            line: place.line,
        })
    }

    /// The model whose rows the rule reads.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// The consent column.
    pub fn column(&self) -> &str {
        &self.column
    }

    /// Check `equals` against the column's type in `schema` (a row schema, or a writer schema
    /// whose `before` holds the row record); `source` names the schema in the error. A schema
    /// without the column is refused too: no row of it could consent.
    pub fn against(&self, schema: &Json, source: &str) -> Result<(), ConfigError> {
        let problem = match row_field_type(schema, &self.column) {
            None => format!("column {:?} is not in {source}, so no row could consent", self.column),
            Some(ty) => match mismatch(&self.equals, ty) {
                None => return Ok(()),
                Some(problem) => format!("{problem} (column {:?} in {source})", self.column),
            },
        };
        Err(ConfigError {
            file: self.file.clone(),
            line: self.line,
            message: format!(
                "sync of model {:?} to destination {:?}: consent equals = {} {problem}: every row would count as not consenting and be removed",
                self.model, self.destination, self.equals
            ),
            fix: format!("write `equals` as a value of the column's type, e.g. equals = true for a boolean column (see {})", "docs/configuration.md#consent"),
        })
    }
}

/// The Avro type of `column` in a row schema (a record named `Row`, as a contract) or a writer
/// schema (the envelope: the `Row` record is the type of `before`).
pub fn row_field_type<'a>(schema: &'a Json, column: &str) -> Option<&'a Json> {
    let row = if schema["name"] == "Row" {
        schema
    } else {
        let before = schema["fields"].as_array()?.iter().find(|f| f["name"] == "before")?;
        before["type"].as_array()?.iter().find(|t| t["type"] == "record")?
    };
    row["fields"].as_array()?.iter().find(|f| f["name"] == column).map(|f| &f["type"])
}

/// What a column holds, as far as a consent comparison cares.
enum Kind {
    Boolean,
    Integer,
    Float,
    Text,
    /// Nothing a file value equals (bytes, logical types); named for the message.
    Other(String),
}

fn kind_of(ty: &Json) -> Kind {
    match ty {
        Json::String(name) => match name.as_str() {
            "boolean" => Kind::Boolean,
            "int" | "long" => Kind::Integer,
            "float" | "double" => Kind::Float,
            "string" => Kind::Text,
            other => Kind::Other(other.to_string()),
        },
        // A nullable column: its one non-null branch.
        Json::Array(branches) => {
            let mut others = branches.iter().filter(|b| **b != "null");
            match (others.next(), others.next()) {
                (Some(only), None) => kind_of(only),
                _ => Kind::Other(ty.to_string()),
            }
        }
        Json::Object(object) => match object.get("logicalType").and_then(Json::as_str) {
            Some(logical) => Kind::Other(logical.to_string()),
            None => object.get("type").map_or(Kind::Other(ty.to_string()), kind_of),
        },
        other => Kind::Other(other.to_string()),
    }
}

/// Why `equals` can never equal a value of Avro type `ty`, if it cannot.
fn mismatch(equals: &toml::Value, ty: &Json) -> Option<String> {
    let fits = match (kind_of(ty), equals) {
        (Kind::Boolean, toml::Value::Boolean(_)) | (Kind::Integer, toml::Value::Integer(_)) | (Kind::Text, toml::Value::String(_)) => true,
        (Kind::Float, toml::Value::Float(f)) => f.is_finite(),
        (Kind::Float, toml::Value::Integer(_)) => true,
        (Kind::Other(name), _) => return Some(format!("cannot be compared with a column of type {name}")),
        _ => false,
    };
    let column = match kind_of(ty) {
        Kind::Boolean => "boolean",
        Kind::Integer => "integer",
        Kind::Float => "number",
        Kind::Text => "text",
        Kind::Other(_) => "other",
    };
    let article = if matches!(equals.type_str(), "integer" | "array") { "an" } else { "a" };
    (!fits).then(|| format!("is {article} {}, which never equals a {column} value", equals.type_str()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_fit_their_column_types() {
        let cases = [
            (toml::Value::Boolean(true), json!(["null", "boolean"]), true),
            (toml::Value::String("yes".into()), json!("boolean"), false),
            (toml::Value::String("true".into()), json!(["null", "boolean"]), false),
            (toml::Value::Integer(1), json!("long"), true),
            (toml::Value::Integer(1), json!("boolean"), false),
            (toml::Value::Integer(1), json!("double"), true),
            (toml::Value::Float(1.5), json!("double"), true),
            (toml::Value::Float(1.5), json!("long"), false),
            (toml::Value::String("opt-in".into()), json!({"type": "string"}), true),
            (toml::Value::String("2024-01-01".into()), json!({"type": "int", "logicalType": "date"}), false),
        ];
        for (equals, ty, fits) in cases {
            assert_eq!(mismatch(&equals, &ty).is_none(), fits, "{equals} against {ty}: {:?}", mismatch(&equals, &ty));
        }
        assert_eq!(mismatch(&toml::Value::String("yes".into()), &json!("boolean")).unwrap(), "is a string, which never equals a boolean value");
    }

    #[test]
    fn a_column_type_is_found_in_a_contract_and_in_a_writer_schema() {
        let row = json!({"type": "record", "name": "Row", "fields": [{"name": "before", "type": "long"}, {"name": "opt_in", "type": "boolean"}]});
        assert_eq!(row_field_type(&row, "opt_in"), Some(&json!("boolean")));
        assert_eq!(row_field_type(&row, "before"), Some(&json!("long")), "a column named `before` in a contract");
        let envelope = json!({"type": "record", "name": "Envelope", "fields": [{"name": "before", "type": ["null", row.clone()]}, {"name": "after", "type": ["null", "Row"]}]});
        assert_eq!(row_field_type(&envelope, "opt_in"), Some(&json!("boolean")));
        assert_eq!(row_field_type(&envelope, "missing"), None);
    }
}
