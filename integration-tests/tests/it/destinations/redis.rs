//! Redis against the real server.

use std::collections::BTreeMap;
use std::time::Duration;

use sluice_core::config::Secret;
use sluice_core::ErrorClass;
use sluice_destinations::redis::{Redis, RedisConfig, RedisMode};
use sluice_destinations::{Action, Destination, Kind};
use sluice_integration_tests::unique;

use super::{indices, metrics, record, retry_after, with_previous};

fn redis_url() -> String {
    std::env::var("SLUICE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// A connection to the test Redis, or a failure saying how to start it.
async fn require_redis() -> redis::aio::MultiplexedConnection {
    let client = redis::Client::open(redis_url()).expect("redis url");
    match tokio::time::timeout(Duration::from_secs(5), client.get_multiplexed_tokio_connection()).await {
        Ok(Ok(connection)) => connection,
        Ok(Err(error)) => panic!(
            "Redis is not reachable at {} ({error}). Start it with `ops/redis.sh start` (or `ops/services.sh up`), \
             or point SLUICE_TEST_REDIS_URL at a server.",
            redis_url()
        ),
        Err(_) => panic!("Redis at {} did not answer within 5 s. Start it with `ops/services.sh up`.", redis_url()),
    }
}

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
