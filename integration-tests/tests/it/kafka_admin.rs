//! `Admin::ensure` against the real broker: it returns once the topics it was given have leaders,
//! whether it created them or found them, and its wait is bounded: past the bound the error is
//! retryable (the services retry their start while not ready), never a hang.

use std::time::{Duration, Instant};

use sluice_core::config::KafkaConfig;
use sluice_integration_tests::{kafka_bootstrap, require_kafka, unique};
use sluice_kafka::admin::{Admin, TopicRole};
use sluice_kafka::KafkaError;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ensure_returns_once_its_topics_have_leaders_and_a_wait_past_its_bound_is_retryable() {
    require_kafka();
    let prefix = unique("admin");
    let kafka = KafkaConfig::plaintext(kafka_bootstrap(), prefix.clone());
    let admin = Admin::new(&kafka).expect("admin client");
    let topic = format!("{prefix}.changes.t");
    admin.ensure(&[(topic.clone(), TopicRole::Changes, 3)]).await.expect("created, with leaders");
    admin.ensure(&[(topic.clone(), TopicRole::Changes, 3)]).await.expect("found, with leaders");
    admin.await_visible_within(vec![topic.clone()], Duration::ZERO).await.expect("a topic ensure returned has its leaders");

    // The broker runs with auto.create.topics.enable=false: this topic never gets a leader.
    let bound = Duration::from_secs(2);
    let started = Instant::now();
    let error = admin.await_visible_within(vec![format!("{prefix}.never")], bound).await.expect_err("a topic that does not exist has no leader");
    assert!(matches!(error, KafkaError::Retryable { .. }), "retryable, so the services retry their start: {error}");
    assert!(started.elapsed() >= bound, "it waited its bound first");
}
