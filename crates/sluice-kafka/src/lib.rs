//! Kafka plumbing shared by the poller, the sinks and the CLI: client configuration, topic
//! creation, headers, the transactional producer, the dead-letter writer and compacted-topic
//! readers.
//!
//! Guarantees this crate provides to its callers:
//! - [`producer::TransactionalProducer`]: a batch of records and the progress record that
//!   covers it become visible to `read_committed` consumers together or not at all; a second
//!   producer with the same transactional id fences the first.
//! - [`dead_letter::DeadLetterWriter::write`] returns only after the broker acknowledged the
//!   record with `acks=all` (idempotent producer), so callers can move offsets past it.
//! - [`background::BackgroundProducer::send`] never waits; what it loses is counted and logged.
//! - [`compacted::read_to_end`] returns every committed record of a topic up to the high
//!   watermarks observed when it started; [`compacted::scan`] visits every committed record of
//!   ranges of its partitions, in offset order.
//! - [`groups::commit_empty`] moves a consumer group's offsets only while the group is empty.
//! - [`side::SideProducer`] writes a side record to the partition its sink expects.
//! - Every client is configured by [`client_config`], the one place the `[kafka]` settings
//!   (bootstrap servers, TLS, SASL, extra properties) become librdkafka properties; a rejected
//!   credential or certificate is reported as a [`connection::ConnectionProblem`] naming the
//!   listener and the cause, and startup steps retry it while the service is not ready
//!   ([`connection::retry_until_connected`]).

pub mod admin;
pub mod background;
pub mod compacted;
pub mod connection;
pub mod dead_letter;
pub mod groups;
pub mod headers;
pub mod producer;
mod security;
pub mod side;

use rdkafka::ClientConfig;
use sluice_core::config::KafkaConfig;

use crate::connection::ConnectionProblem;

/// Kafka failures, classified by what the caller must do.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    /// Transient (broker unavailable, timeouts, a transaction that must be aborted and retried).
    #[error("kafka operation {operation} failed (retryable): {source}")]
    Retryable { operation: &'static str, source: rdkafka::error::KafkaError },
    /// The producer was fenced, misconfigured or hit a fatal error: stop.
    #[error("kafka operation {operation} failed (fatal): {source}")]
    Fatal { operation: &'static str, source: rdkafka::error::KafkaError },
    /// The brokers could not be reached or refused the connection (credentials, certificate):
    /// retryable, but usually only after an operator fixed something.
    #[error("kafka operation {operation} failed: {problem}")]
    Connection { operation: &'static str, problem: ConnectionProblem },
}

impl KafkaError {
    /// Classify an rdkafka error of `operation` (retryable, fatal, connection).
    pub fn classify(operation: &'static str, source: rdkafka::error::KafkaError) -> KafkaError {
        use rdkafka::error::RDKafkaErrorCode as Code;
        let fatal = match &source {
            // Abortable transaction errors are retried by aborting and redoing the batch.
            rdkafka::error::KafkaError::Transaction(e) => e.is_fatal(),
            other => matches!(
                other.rdkafka_error_code(),
                Some(Code::Fenced | Code::ProducerFenced | Code::InvalidProducerEpoch | Code::TopicAuthorizationFailed
                    | Code::ClusterAuthorizationFailed | Code::TransactionalIdAuthorizationFailed | Code::UnknownTopicOrPartition
                    | Code::InvalidConfig | Code::Fatal)
            ),
        };
        if fatal {
            KafkaError::Fatal { operation, source }
        } else {
            KafkaError::Retryable { operation, source }
        }
    }

    /// What an operator can do about it, for logs and `/readyz`.
    pub fn fix(&self) -> &'static str {
        use rdkafka::error::{KafkaError as Rd, RDKafkaErrorCode as Code};
        match self {
            KafkaError::Connection { problem, .. } => problem.cause.fix(),
            KafkaError::Retryable { source: Rd::ClientConfig(..) | Rd::ClientCreation(_), .. }
            | KafkaError::Fatal { source: Rd::ClientConfig(..) | Rd::ClientCreation(_), .. } => {
                "check the [kafka] settings: a property librdkafka refuses, or a TLS file it cannot load \
                 (tls.ca_file, tls.cert_file, tls.key_file and tls.key_password must be a PEM certificate, its key and the key's password)"
            }
            other => match other.source_code() {
                Some(Code::TopicAuthorizationFailed | Code::ClusterAuthorizationFailed | Code::TransactionalIdAuthorizationFailed | Code::GroupAuthorizationFailed) => {
                    "grant the principal sluice connects as (sasl.username, or the client certificate's subject) the ACLs it needs: README, \"Kafka security\""
                }
                _ => "check [kafka] bootstrap_servers and that the brokers run and are reachable from here",
            },
        }
    }

    fn source_code(&self) -> Option<rdkafka::error::RDKafkaErrorCode> {
        match self {
            KafkaError::Retryable { source, .. } | KafkaError::Fatal { source, .. } => source.rdkafka_error_code(),
            KafkaError::Connection { .. } => None,
        }
    }
}

/// Base client configuration: bootstrap servers, security settings, then the user's extra
/// properties (which cannot touch the security settings: the config refuses those keys).
pub fn client_config(kafka: &KafkaConfig) -> ClientConfig {
    let mut config = ClientConfig::new();
    for (key, value) in security::properties(kafka) {
        config.set(key, value);
    }
    for (key, value) in kafka.properties.get_ref() {
        config.set(key, value.expose());
    }
    config
}
