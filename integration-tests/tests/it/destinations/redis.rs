//! Redis against the real server.

use std::collections::{BTreeMap, BTreeSet};

use sluice_core::config::Secret;
use sluice_core::ErrorClass;
use sluice_destinations::redis::{Redis, RedisConfig, RedisMode};
use sluice_destinations::{Action, Destination, Kind};
use sluice_integration_tests::unique;

use super::{indices, metrics, record, retry_after, with_previous};
use sluice_integration_tests::suppression::{redis_url, require_redis};

use crate::sync_modes::fixture::{sync, Case, Check, Vendor};

fn redis_destination(url: &str, mode: RedisMode, prefix: &str) -> Redis {
    Redis::new(&RedisConfig {
        url: Secret::literal(url),
        mode,
        key_template: format!("{prefix}:{{model}}:{{key}}"),
        set_key: format!("{prefix}:suppressed"),
        member_field: "email".into(),
        ttl_secs: Some(600),
        timeout_ms: 3_000,
    },
        metrics::<Redis>(),
    )
    .unwrap()
}

async fn cleanup(connection: &mut redis::aio::MultiplexedConnection, prefix: &str) {
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}:*")).query_async(connection).await.unwrap();
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL").arg(keys).query_async(connection).await.unwrap();
    }
}

#[tokio::test]
async fn redis_hash_mode_writes_fields_clears_nulls_and_deletes() {
    let mut connection = require_redis().await;
    let prefix = unique("it_redis_hash");
    let destination = redis_destination(&redis_url(), RedisMode::Hash, &prefix);
    let batch = [
        record(1, Action::Upsert, serde_json::json!({"email": "a@x.com", "ltv": 37.5, "tier": "gold"})),
        record(2, Action::Upsert, serde_json::json!({"email": "b@x.com", "ltv": 1})),
    ];
    assert!(destination.send(&batch).await.unwrap().is_empty());
    let one: BTreeMap<String, String> = redis::cmd("HGETALL").arg(format!("{prefix}:customers:1")).query_async(&mut connection).await.unwrap();
    assert_eq!(one, BTreeMap::from([("email".into(), "a@x.com".into()), ("ltv".into(), "37.5".into()), ("tier".into(), "gold".into())]));
    let ttl: i64 = redis::cmd("TTL").arg(format!("{prefix}:customers:1")).query_async(&mut connection).await.unwrap();
    assert!((1..=600).contains(&ttl), "ttl {ttl}");

    let batch = [record(1, Action::Upsert, serde_json::json!({"tier": null, "ltv": 40})), record(2, Action::Delete, serde_json::json!({}))];
    assert!(destination.send(&batch).await.unwrap().is_empty());
    let one: BTreeMap<String, String> = redis::cmd("HGETALL").arg(format!("{prefix}:customers:1")).query_async(&mut connection).await.unwrap();
    assert_eq!(one, BTreeMap::from([("email".into(), "a@x.com".into()), ("ltv".into(), "40".into())]));
    let exists: i64 = redis::cmd("EXISTS").arg(format!("{prefix}:customers:2")).query_async(&mut connection).await.unwrap();
    assert_eq!(exists, 0, "the delete removed the hash");
    cleanup(&mut connection, &prefix).await;
}

#[tokio::test]
async fn redis_set_mode_adds_moves_and_removes_members_with_a_ttl() {
    let mut connection = require_redis().await;
    let prefix = unique("it_redis_set");
    let destination = redis_destination(&redis_url(), RedisMode::Set, &prefix);
    let set = format!("{prefix}:suppressed");
    let batch = [record(1, Action::Upsert, serde_json::json!({"email": "a@x.com"})), record(2, Action::Upsert, serde_json::json!({"email": "b@x.com"}))];
    assert!(destination.send(&batch).await.unwrap().is_empty());
    let batch = [
        with_previous(record(1, Action::Upsert, serde_json::json!({"email": "a2@x.com"})), serde_json::json!({"email": "a@x.com"})),
        with_previous(record(2, Action::Delete, serde_json::json!({})), serde_json::json!({"email": "b@x.com"})),
    ];
    assert!(destination.send(&batch).await.unwrap().is_empty());
    let mut members: Vec<String> = redis::cmd("SMEMBERS").arg(&set).query_async(&mut connection).await.unwrap();
    members.sort();
    assert_eq!(members, ["a2@x.com"], "old identifier moved, deleted member removed");
    let ttl: i64 = redis::cmd("TTL").arg(&set).query_async(&mut connection).await.unwrap();
    assert!((1..=600).contains(&ttl), "ttl {ttl}");
    cleanup(&mut connection, &prefix).await;
}

#[tokio::test]
async fn redis_wrongtype_refuses_only_that_record() {
    let mut connection = require_redis().await;
    let prefix = unique("it_redis_wrongtype");
    let destination = redis_destination(&redis_url(), RedisMode::Hash, &prefix);
    let _: () = redis::cmd("SET").arg(format!("{prefix}:customers:2")).arg("a string").query_async(&mut connection).await.unwrap();
    let batch = [
        record(1, Action::Upsert, serde_json::json!({"email": "a@x.com"})),
        record(2, Action::Upsert, serde_json::json!({"email": "b@x.com"})),
        record(3, Action::Upsert, serde_json::json!({"email": "c@x.com"})),
    ];
    let failures = destination.send(&batch).await.unwrap();
    assert_eq!(indices(&failures), [1]);
    assert_eq!(failures[0].class, ErrorClass::Permanent);
    assert!(failures[0].message.contains("WRONGTYPE"), "{}", failures[0].message);
    for n in [1, 3] {
        let email: Option<String> = redis::cmd("HGET").arg(format!("{prefix}:customers:{n}")).arg("email").query_async(&mut connection).await.unwrap();
        assert!(email.is_some(), "record {n} applied despite its neighbour's failure");
    }
    cleanup(&mut connection, &prefix).await;
}

#[tokio::test]
async fn redis_unreachable_is_retryable_and_bad_credentials_are_fatal() {
    require_redis().await;
    let batch = [record(1, Action::Upsert, serde_json::json!({"email": "a@x.com"}))];
    let down = redis_destination("redis://127.0.0.1:1", RedisMode::Hash, "unused");
    assert_eq!(retry_after(&down.send(&batch).await.unwrap_err()), None);
    let address = redis_url().trim_start_matches("redis://").to_string();
    let wrong = redis_destination(&format!("redis://{}:wrong@{address}", unique("nouser")), RedisMode::Hash, "unused");
    let error = wrong.send(&batch).await.unwrap_err();
    assert_eq!(error.class, ErrorClass::Fatal, "{}", error.message);
    assert!(!error.message.contains("wrong"), "the password never appears: {}", error.message);
}

// ---- sync modes: this kind's cases of `sync_modes`, end to end -----------------------------

/// Hash mode in the four modes it honours (`update` holds Ada, `create` holds Cy under other
/// values, before the run), set mode in its three.
pub(crate) async fn sync_mode_cases(prefix: &str) -> Vec<Case> {
    let mut out = Vec::new();
    let mut redis = require_redis().await;
    for mode in ["upsert", "update", "create", "mirror"] {
        let keys = format!("{prefix}:hash-{mode}");
        let seeded: &[i64] = match mode {
            "update" => &[1],
            "create" => &[3],
            _ => &[],
        };
        for id in seeded {
            let _: () = redis::cmd("HSET").arg(format!("{keys}:customers:{id}")).arg("name").arg("Seeded").arg("plan").arg("seed").query_async(&mut redis).await.expect("HSET");
        }
        out.push(Case {
            name: format!("redis-hash-{mode}"),
            vendor: Box::new(Store::Hashes(keys.clone())),
            table: format!("[destinations.redis]\nurl = {{ env = \"SLUICE_MODES_REDIS_URL\" }}\nkey_template = \"{keys}:{{model}}:{{key}}\""),
            sync: sync(mode, r#"fields = { email = "email", name = "name", plan = "plan" }"#, true),
            keyed_by_email: false,
        });
    }
    for mode in ["upsert", "audience", "mirror"] {
        let set = format!("{prefix}:set-{mode}");
        out.push(Case {
            name: format!("redis-set-{mode}"),
            vendor: Box::new(Store::Set(set.clone())),
            table: format!("[destinations.redis]\nurl = {{ env = \"SLUICE_MODES_REDIS_URL\" }}\nmode = \"set\"\nset_key = \"{set}\"\nmember_field = \"email\""),
            sync: sync(mode, r#"fields = { email = { column = "email", transforms = ["normalize_email"] } }"#, true),
            keyed_by_email: true,
        });
    }
    out
}

/// Where a case's records land in the real Redis.
enum Store {
    /// Hash mode: hashes under this key prefix.
    Hashes(String),
    /// Set mode: this set.
    Set(String),
}

impl Vendor for Store {
    fn check<'a>(&'a self, name: &'a str, redis: &'a mut redis::aio::MultiplexedConnection) -> Check<'a> {
        Box::pin(async move {
            match self {
                Store::Hashes(prefix) => check_redis_hash(name, &hashes(redis, prefix).await),
                Store::Set(set) => check_redis_set(name, &members(redis, set).await),
            }
        })
    }
}

async fn hashes(redis: &mut redis::aio::MultiplexedConnection, prefix: &str) -> BTreeMap<i64, BTreeMap<String, String>> {
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}:customers:*")).query_async(redis).await.expect("KEYS");
    let mut out = BTreeMap::new();
    for key in keys {
        let id: i64 = key.rsplit(':').next().unwrap().parse().expect("numeric key");
        let fields: BTreeMap<String, String> = redis::cmd("HGETALL").arg(&key).query_async(redis).await.expect("HGETALL");
        out.insert(id, fields);
    }
    out
}

async fn members(redis: &mut redis::aio::MultiplexedConnection, set: &str) -> BTreeSet<String> {
    redis::cmd("SMEMBERS").arg(set).query_async(redis).await.expect("SMEMBERS")
}

fn fields(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn customer(email: &str, name: &str, plan: &str) -> BTreeMap<String, String> {
    fields(&[("email", email), ("name", name), ("plan", plan)])
}

/// Hashes: `upsert` writes and keeps deleted rows; `update` writes only the hash that existed;
/// `create` only the ones that did not (the seeded one and Ada's first version stay); `mirror`
/// deletes. Revoked consent deletes except under `create`.
fn check_redis_hash(name: &str, hashes: &BTreeMap<i64, BTreeMap<String, String>>) {
    let ada = customer("ada@example.com", "Ada L", "pro");
    let cy = customer("cy@example.com", "Cy", "free");
    let dee = customer("dee@example.com", "Dee", "free");
    let nobody = customer("   ", "Nobody", "free");
    let eve = customer("eve@example.com", "Eve", "free");
    let expected: BTreeMap<i64, BTreeMap<String, String>> = match name {
        "redis-hash-upsert" => [(1, ada), (3, cy), (4, dee), (5, nobody), (6, eve)].into(),
        "redis-hash-update" => [(1, ada)].into(),
        "redis-hash-create" => [
            (1, customer("ada@example.com", "Ada", "free")),
            (2, customer("bob@example.com", "Bob", "free")),
            (3, fields(&[("name", "Seeded"), ("plan", "seed")])),
            (4, dee),
            (5, nobody),
            (6, eve),
        ]
        .into(),
        "redis-hash-mirror" => [(1, ada), (3, cy), (5, nobody), (6, eve)].into(),
        other => panic!("no expectation for {other}"),
    };
    assert_eq!(hashes, &expected, "{name}");
}

/// Sets: members added; `audience` and `mirror` remove whoever leaves (Dee deleted, Bob's
/// consent revoked), `upsert` only on revoked consent. The blank email is never a member.
fn check_redis_set(name: &str, members: &BTreeSet<String>) {
    let expected: &[&str] = match name {
        "redis-set-upsert" => &["ada@example.com", "cy@example.com", "dee@example.com", "eve@example.com"],
        "redis-set-audience" | "redis-set-mirror" => &["ada@example.com", "cy@example.com", "eve@example.com"],
        other => panic!("no expectation for {other}"),
    };
    assert_eq!(members, &expected.iter().map(|m| m.to_string()).collect(), "{name}");
}
