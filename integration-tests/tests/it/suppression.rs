//! Suppression after purchase, end to end (issue 5): purchases committed in PostgreSQL take each
//! buyer out of the Meta prospecting audience (normalised, SHA-256 hashed), into the Redis
//! suppression set (normalised) and out of Braze marketing email, with nothing dead-lettered.
//! Correctness only; the latency of the same pipeline is `bench-suppression`'s job
//! (`ops/bench-suppression.sh`).

use std::collections::HashSet;
use std::time::Duration;

use sluice_integration_tests::suppression::{sha256_hex, Scenario, Settings};

const PURCHASES: i64 = 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_purchase_suppresses_the_buyer_at_meta_redis_and_braze() {
    let mut scenario = Scenario::start(Settings { poll_interval_ms: 500, linger_ms: 20, buyers: PURCHASES as usize }).await;
    let mut purchases = vec![scenario.warm_up.clone().expect("warmed up")];
    for id in 1..=PURCHASES {
        purchases.push(scenario.purchase(id).await);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    if let Err(missing) = scenario.wait_for(&purchases, Duration::from_secs(60)).await {
        panic!("purchases not suppressed everywhere after 60 s: {missing:?}");
    }

    let members = scenario.redis_members().await;
    for p in &purchases {
        // Meta's rule for EMAIL (and Braze's and the Redis sync's): trimmed, lowercased.
        let normalised = p.email.trim().to_lowercase();
        assert_ne!(p.email, normalised, "the warehouse holds an untidy form");
        assert_eq!(p.normalised, normalised);
        assert!(!scenario.in_meta_audience(&normalised), "purchase {}: buyer removed from the Meta audience", p.id);
        assert!(members.contains(&normalised), "purchase {}: normalised email in the Redis set", p.id);
        let user = scenario.braze.user(&normalised).unwrap_or_else(|| panic!("purchase {}: Braze user kept", p.id));
        assert_eq!(user["email_subscribe"], "unsubscribed", "purchase {}", p.id);
        assert_eq!(
            user["subscription_groups"],
            serde_json::json!([{"subscription_group_id": "sg-marketing", "subscription_state": "unsubscribed"}]),
            "purchase {}",
            p.id
        );
    }
    for prospect in scenario.prospects() {
        assert!(scenario.in_meta_audience(&prospect), "a prospect who never bought stays in the audience");
    }
    assert_eq!(members.len(), purchases.len(), "exactly the buyers are suppressed on site");

    // What went over the wire to Meta: removals only, EMAIL as the SHA-256 of the normalised form.
    let expected: HashSet<String> = purchases.iter().map(|p| sha256_hex(&p.email.trim().to_lowercase())).collect();
    let mut removed = HashSet::new();
    for request in scenario.meta.requests() {
        assert_eq!(request.method, "DELETE", "a purchase never adds anyone to the audience");
        assert_eq!(request.body["payload"]["schema"], serde_json::json!(["EMAIL"]));
        for row in request.body["payload"]["data"].as_array().unwrap() {
            removed.insert(row[0].as_str().unwrap().to_string());
        }
    }
    assert_eq!(removed, expected, "every buyer removed, by the hash of their normalised email; nobody else");
    // Braze gets attribute objects only (events and purchases it would double-count on a retry).
    assert!(scenario.braze.requests().iter().all(|r| r.body.get("events").is_none() && r.body.get("purchases").is_none()));

    let outcome = scenario.finish().await;
    for (destination, dead) in outcome.dead_letters {
        assert_eq!(dead, 0, "nothing dead-lettered at {destination}");
    }
}
