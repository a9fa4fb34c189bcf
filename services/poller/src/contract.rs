//! Schema contracts: a model's columns and types, as checked in under `schemas/models/`, are
//! compared with what the warehouse describes before the model is read. Any removed or retyped
//! column refuses the model with the full list of differences; added columns are refused too
//! unless the model says `allow_additions = true`. Why refuse: a destination mapping written
//! against yesterday's shape must not silently receive something else.

use std::path::Path;

use serde_json::Value as Json;
use sluice_core::config::ModelConfig;
use sluice_core::RowSchema;

/// Why a model does not match its contract (defined with the model errors it is one of).
pub use crate::error::ContractError;
use crate::error::ModelError;

fn field_types(schema: &Json) -> Vec<(String, Json)> {
    schema["fields"]
        .as_array()
        .map(|fields| fields.iter().map(|f| (f["name"].as_str().unwrap_or_default().to_string(), f["type"].clone())).collect())
        .unwrap_or_default()
}

fn describe(ty: &Json) -> String {
    ty.to_string()
}

/// Compare the model's current row schema with its contract text. Returns the differences.
pub fn differences(contract: &Json, current: &Json, allow_additions: bool) -> Vec<String> {
    let expected = field_types(contract);
    let actual = field_types(current);
    let mut out = Vec::new();
    for (name, ty) in &expected {
        match actual.iter().find(|(n, _)| n == name) {
            None => out.push(format!("column {name:?} removed")),
            Some((_, now)) if now != ty => out.push(format!("column {name:?} changed type from {} to {}", describe(ty), describe(now))),
            Some(_) => {}
        }
    }
    for (name, ty) in &actual {
        if !expected.iter().any(|(n, _)| n == name) && !allow_additions {
            out.push(format!("column {name:?} added ({}; set allow_additions = true to accept additions)", describe(ty)));
        }
    }
    out
}

/// Check `schema` against the model's contract, if it has one.
pub fn check(model: &ModelConfig, schema: &RowSchema) -> Result<(), ModelError> {
    let Some(path) = &model.schema_contract else { return Ok(()) };
    let name = model.name.get_ref();
    let text = std::fs::read_to_string(path).map_err(|e| ContractError {
        model: name.clone(),
        path: path.clone(),
        differences: vec![format!("cannot read the contract ({e}); export it with `sluice schema export {name}`")],
    })?;
    let contract: Json = serde_json::from_str(&text).map_err(|e| ContractError {
        model: name.clone(),
        path: path.clone(),
        differences: vec![format!("the contract is not JSON ({e})")],
    })?;
    let current = sluice_avro::row_schema_json(name, schema)?;
    let differences = differences(&contract, &current, model.allow_additions);
    if differences.is_empty() {
        Ok(())
    } else {
        metrics::counter!("sluice_poller_contract_refusals_total", "model" => name.clone()).increment(1);
        tracing::error!(model = %name, contract = %path, differences = differences.len(), "model refused: it drifts from its schema contract");
        Err(ContractError { model: name.clone(), path: path.clone(), differences }.into())
    }
}

/// Write the model's current row schema to `path` (creating its directory), pretty-printed.
pub fn export(model: &str, schema: &RowSchema, path: &Path) -> anyhow::Result<()> {
    let json = sluice_avro::row_schema_json(model, schema)?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, serde_json::to_string_pretty(&json)? + "\n")?;
    Ok(())
}

/// Write the model's key and value writer schemas to `<dir>/<model>.key.avsc` and
/// `<dir>/<model>.value.avsc`: exactly the text the poller publishes on the schema topic (plus a
/// newline), so a consumer elsewhere can decode with them. Returns each path and fingerprint.
pub fn export_writer(model: &str, schema: RowSchema, dir: &Path) -> anyhow::Result<Vec<(std::path::PathBuf, String)>> {
    let codec = sluice_avro::ModelCodec::new(model, schema)?;
    std::fs::create_dir_all(dir)?;
    let mut written = Vec::new();
    for (kind, published) in ["key", "value"].into_iter().zip(codec.schemas()) {
        let path = dir.join(format!("{model}.{kind}.avsc"));
        std::fs::write(&path, published.json + "\n")?;
        written.push((path, published.fingerprint));
    }
    Ok(written)
}

/// Describe `model` in the configured warehouse (what `sluice schema export` writes from).
async fn describe_model(config: &sluice_core::config::Config, model: &str) -> anyhow::Result<RowSchema> {
    use anyhow::Context as _;
    use sluice_warehouse::Warehouse as _;
    let model_config = config.model(model).with_context(|| format!("no model named {model:?} in the config"))?;
    let warehouse = sluice_warehouse::AnyWarehouse::connect(&config.warehouse).await?;
    Ok(warehouse.describe(model_config).await?)
}

/// Describe `model` in the configured warehouse and write its row schema to `path`
/// (`sluice schema export`).
pub async fn export_model(config: &sluice_core::config::Config, model: &str, path: &Path) -> anyhow::Result<()> {
    export(model, &describe_model(config, model).await?, path)
}

/// Describe `model` in the configured warehouse and write its writer schemas to `dir`
/// (`sluice schema export --writer`); see [`export_writer`].
pub async fn export_writer_model(config: &sluice_core::config::Config, model: &str, dir: &Path) -> anyhow::Result<Vec<(std::path::PathBuf, String)>> {
    export_writer(model, describe_model(config, model).await?, dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lists_removed_retyped_and_added_columns() {
        let contract = json!({"fields": [{"name": "id", "type": "long"}, {"name": "tier", "type": ["null", "string"]}, {"name": "gone", "type": "int"}]});
        let current = json!({"fields": [{"name": "id", "type": "long"}, {"name": "tier", "type": ["null", "int"]}, {"name": "extra", "type": "string"}]});
        assert_eq!(
            differences(&contract, &current, false),
            vec![
                r#"column "tier" changed type from ["null","string"] to ["null","int"]"#.to_string(),
                r#"column "gone" removed"#.to_string(),
                r#"column "extra" added ("string"; set allow_additions = true to accept additions)"#.to_string(),
            ]
        );
        assert_eq!(differences(&contract, &current, true).len(), 2, "additions accepted when allowed");
    }
}
