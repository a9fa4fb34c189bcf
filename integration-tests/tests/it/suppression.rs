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

/// Suppression that holds (issue 10): the stage keeps a buyer out of every sync that names the
/// list, whatever else changes about them, until the list lets them go; consent is decided in
/// the same stage.
mod holds {
    use std::future::Future;
    use std::time::Duration;

    use sluice_integration_tests::membership::{Options, Run};

    const WAIT: Duration = Duration::from_secs(60);
    /// Customers: one who buys, one who never does, one who revokes consent, one who never gave it.
    const BUYER: i64 = 1;
    const PROSPECT: i64 = 2;
    const REVOKER: i64 = 3;
    const NEVER: i64 = 4;
    const PURCHASE: i64 = 100;

    /// Wait until `condition` holds; past [`WAIT`], fail saying where each customer stands.
    async fn until<F: Future<Output = bool>>(run: &Run, what: &str, mut condition: impl FnMut() -> F) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !condition().await {
            if tokio::time::Instant::now() >= deadline {
                let mut state = Vec::new();
                for id in [BUYER, PROSPECT, REVOKER, NEVER] {
                    state.push(format!("{id}: meta {}, redis {}, braze {:?}", run.in_meta(id), run.in_redis(id).await, run.braze_subscription(id)));
                }
                panic!("timed out after {WAIT:?} waiting for: {what}; customers now: {}", state.join("; "));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether customer `id` is a member at all three destinations (`false`: at none of them).
    async fn everywhere(run: &Run, id: i64, member: bool) -> bool {
        let braze = if member { "subscribed" } else { "unsubscribed" };
        run.in_meta(id) == member && run.in_redis(id).await == member && run.braze_subscription(id).as_deref() == Some(braze)
    }

    /// The scenario; `meta_restarts`: the Meta sink is a process, SIGKILLed after the purchase
    /// took effect and started again after the attribute change was committed in the warehouse,
    /// so the suppression must come back from the topics (the rebuild, and the purchase
    /// record's redelivery when its offset was not committed yet).
    ///
    /// Each step is one call on `run`; an expiry-based release is one more step: the purchases
    /// model with `expire = { column = "purchased_at", after_ms = ... }` (`Options::purchases_extra`)
    /// and, instead of `delete_purchase`, waiting for the same re-add.
    async fn suppression_holds(meta_restarts: bool) {
        let mut run = Run::start(Options { meta_as_process: meta_restarts, ..Options::default() }).await;
        for (id, name, opt_in) in [(BUYER, "Ada", true), (PROSPECT, "Bob", true), (REVOKER, "Cy", true), (NEVER, "Di", false)] {
            run.add_customer(id, name, opt_in).await;
        }
        until(&run, "consented customers are members everywhere", || async {
            everywhere(&run, BUYER, true).await && everywhere(&run, PROSPECT, true).await && everywhere(&run, REVOKER, true).await
        })
        .await;
        run.processed(NEVER, "Di", WAIT).await;
        assert!(!run.in_meta(NEVER) && !run.in_redis(NEVER).await && run.braze_user(NEVER).is_none(), "no consent, never a member");

        // A purchase: the buyer leaves every prospecting destination.
        run.purchase(PURCHASE, BUYER).await;
        until(&run, "the buyer removed everywhere", || everywhere(&run, BUYER, false)).await;
        if meta_restarts {
            run.kill_meta();
        }

        // An attribute change while suppressed: still absent, and nothing adds them on the wire.
        run.rename(BUYER, "Ada Lovelace").await;
        if meta_restarts {
            run.start_meta(true);
        }
        run.processed(BUYER, "Ada Lovelace", WAIT).await;
        assert!(everywhere(&run, BUYER, false).await, "an attribute change does not bring a suppressed buyer back");
        let meta = run.meta_operations(BUYER);
        assert_eq!(meta.first().map(String::as_str), Some("POST"), "added once as a prospect: {meta:?}");
        assert!(meta[1..].iter().all(|op| op == "DELETE"), "while suppressed, only removals reach Meta: {meta:?}");
        let unsubscribed = run.braze_objects(BUYER).into_iter().skip_while(|o| o.get("email_subscribe").is_some_and(|v| v == "subscribed")).collect::<Vec<_>>();
        assert!(!unsubscribed.is_empty() && unsubscribed.iter().all(|o| o["email_subscribe"] == "unsubscribed"), "only unsubscribes reach Braze: {unsubscribed:?}");

        // The purchase row goes: the buyer comes back, with their current attributes.
        run.delete_purchase(PURCHASE).await;
        until(&run, "the buyer back everywhere", || everywhere(&run, BUYER, true)).await;
        assert_eq!(run.braze_user(BUYER).unwrap()["first_name"], "Ada Lovelace", "re-added with the attributes of now");
        let meta = run.meta_operations(BUYER);
        assert_eq!(meta.last().map(String::as_str), Some("POST"), "re-added at Meta: {meta:?}");

        // Consent revoked: removed everywhere it applies.
        run.set_consent(REVOKER, false).await;
        until(&run, "the revoker removed everywhere", || everywhere(&run, REVOKER, false)).await;

        // The prospect who never bought stayed in throughout; the one who never consented never came in.
        assert!(everywhere(&run, PROSPECT, true).await);
        assert_eq!(run.meta_operations(PROSPECT), ["POST"], "the prospect was never removed");
        assert!(run.braze_objects(PROSPECT).iter().all(|o| o["email_subscribe"] == "subscribed"));
        assert!(run.meta_operations(NEVER).iter().all(|op| op == "DELETE"), "never added: {:?}", run.meta_operations(NEVER));
        assert!(!run.in_redis(NEVER).await && run.braze_user(NEVER).is_none());

        sluice_integration_tests::assert_nothing_dead_lettered(run.finish().await);
    }

    /// A side record (a backfill, a redrive) of a synced row goes through the membership stage
    /// like the live record it copies: a suppressed buyer's last consented state, sent again,
    /// does not bring them back; a prospect's is applied again as a member.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_backfilled_record_of_a_suppressed_buyer_keeps_them_out() {
        let run = Run::start(Options::default()).await;
        for (id, name) in [(BUYER, "Ada"), (PROSPECT, "Bob")] {
            run.add_customer(id, name, true).await;
        }
        until(&run, "both customers are members everywhere", || async { everywhere(&run, BUYER, true).await && everywhere(&run, PROSPECT, true).await }).await;
        run.purchase(PURCHASE, BUYER).await;
        until(&run, "the buyer removed everywhere", || everywhere(&run, BUYER, false)).await;
        let (buyer_ops, prospect_ops) = (run.meta_operations(BUYER).len(), run.meta_operations(PROSPECT).len());

        run.backfill(BUYER, WAIT).await;
        run.backfill(PROSPECT, WAIT).await;
        assert!(everywhere(&run, BUYER, false).await, "a backfill of the buyer's consented state does not bring them back");
        let buyer = run.meta_operations(BUYER);
        assert!(buyer.len() > buyer_ops && buyer[buyer_ops..].iter().all(|op| op == "DELETE"), "the side record was decided as leaving: {buyer:?}");
        assert!(everywhere(&run, PROSPECT, true).await);
        let prospect = run.meta_operations(PROSPECT);
        assert_eq!(&prospect[prospect_ops..], ["POST"], "the prospect's side record applied again as a member: {prospect:?}");

        // Released: the buyer's next backfill is a member again.
        run.delete_purchase(PURCHASE).await;
        until(&run, "the buyer back everywhere", || everywhere(&run, BUYER, true)).await;
        run.backfill(BUYER, WAIT).await;
        assert!(everywhere(&run, BUYER, true).await);
        assert_eq!(run.meta_operations(BUYER).last().map(String::as_str), Some("POST"));

        sluice_integration_tests::assert_nothing_dead_lettered(run.finish().await);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn suppression_holds_through_attribute_changes_release_and_consent() {
        suppression_holds(false).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn suppression_holds_across_a_sink_killed_between_purchase_and_attribute_change() {
        suppression_holds(true).await;
    }
}
