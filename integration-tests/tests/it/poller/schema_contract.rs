//! Schema contracts against real PostgreSQL: `sluice schema export` writes the model's row
//! schema; a model whose columns or types drift from it is refused with the differences;
//! additions pass only with `allow_additions = true`.


use std::sync::Arc;

use super::common::*;
use sluice_core::config::Config;
use sluice_integration_tests::eventually;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_model_drifting_from_its_contract_is_refused_with_the_differences() {
    let dir = std::env::temp_dir().join(sluice_integration_tests::unique("contracts"));
    let path = dir.join("members.avsc");
    let f = fixture("diff", None, &format!("schema_contract = \"{}\"", path.display())).await;
    seed(&f, 1..=3).await;
    sluice_poller::contract::export_model(&f.config, &f.model, &path).await.unwrap();
    let exported: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let names: Vec<&str> = exported["fields"].as_array().unwrap().iter().map(|f| f["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["id", "email", "tier", "ltv"]);
    assert_eq!(exported["fields"][0]["type"], "long");

    // Matching the contract: the model runs.
    snapshot(&f, 3).await;

    // Someone retypes a column upstream: refused, nothing read.
    f.db.batch_execute(&format!("ALTER TABLE {} ALTER COLUMN tier TYPE int USING length(tier)", f.table)).await.unwrap();
    let text = run_error(&f.config).await;
    assert!(
        text.contains(&format!(
            "model {}: columns drift from its schema contract {}: column \"tier\" changed type from [\"null\",\"string\"] to [\"null\",\"int\"]. Fix: change the model back, or review the change and re-export the contract with `sluice schema export {}`",
            f.model,
            path.display(),
            f.model
        )),
        "{text}"
    );
    assert_eq!(decode_all(&f).len(), 3, "nothing emitted");

    // A contract from before `ltv` joined the model: an addition, refused unless allowed.
    f.db.batch_execute(&format!("ALTER TABLE {} ALTER COLUMN tier TYPE text", f.table)).await.unwrap();
    let mut contract = exported.clone();
    contract["fields"].as_array_mut().unwrap().retain(|f| f["name"] != "ltv");
    std::fs::write(&path, contract.to_string()).unwrap();
    let text = run_error(&f.config).await;
    assert!(
        text.contains(r#"column "ltv" added (["null",{"logicalType":"decimal","precision":10,"scale":2,"type":"bytes"}]; set allow_additions = true to accept additions)"#),
        "{text}"
    );
    let allowing = Arc::new(
        Config::parse("integration-test.toml", &f.config_text.replace("schema_contract =", "allow_additions = true\nschema_contract =")).unwrap(),
    );
    let (stop, poller) = start_poller(&allowing, &[]);
    upsert(&f, 4, "free", "1.00").await;
    eventually("the model runs with the addition allowed", WAIT, || count(&decode_all(&f), "c") == 1).await;
    stop_poller(stop, poller).await;
    std::fs::remove_dir_all(dir).ok(); // best-effort cleanup of a temp dir
}
