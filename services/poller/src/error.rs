//! Why a model stopped, and whether its loop may try again.
//!
//! Guarantee: [`ModelError::is_retryable`] is a total match and "fatal" is the default. Only
//! errors that leave nothing half done and may pass on their own (an unreachable warehouse, a
//! retryable Kafka error, a state record that could not be read back this time) are retried,
//! from the committed position; everything that needs an operator — a gate refusal, a schema
//! contract drift, a stored position that cannot be used, a bad model — stops the model with a
//! message that says what to do.

use sluice_kafka::KafkaError;
use sluice_warehouse::WarehouseError;

use crate::gates::GateError;
use crate::position::PositionError;

/// Why a model stopped.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The warehouse failed (retried when it is unavailable; a bad model is fatal).
    #[error(transparent)]
    Warehouse(#[from] WarehouseError),
    /// Kafka failed (retried when retryable; a fenced producer is fatal).
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    /// The model's rows cannot be encoded as Avro (fatal: a type the codec does not map).
    #[error(transparent)]
    Codec(#[from] sluice_avro::CodecError),
    /// The state could not be read back this time (retried from the committed position).
    #[error("stored poller state is unreadable: {0}")]
    State(String),
    /// The stored position cannot be used: nothing is read until an operator resets it.
    #[error(transparent)]
    Position(#[from] PositionError),
    /// A data-quality gate refused the run: nothing was emitted; an operator must act.
    #[error(transparent)]
    Gate(#[from] GateError),
    /// The model drifted from its checked-in schema: nothing is read until it is fixed.
    #[error(transparent)]
    Contract(#[from] ContractError),
}

impl ModelError {
    /// Whether the loop should back off and try the same page again.
    pub fn is_retryable(&self) -> bool {
        match self {
            ModelError::Warehouse(error) => matches!(error, WarehouseError::Unavailable(_)),
            // A broker away or refusing us (credentials, certificates) may pass; the loop waits it out.
            ModelError::Kafka(error) => matches!(error, KafkaError::Retryable { .. } | KafkaError::Connection { .. }),
            ModelError::State(_) => true,
            ModelError::Codec(_) | ModelError::Position(_) | ModelError::Gate(_) | ModelError::Contract(_) => false,
        }
    }

    /// What went wrong, for a run record (`crate::audit`): the kind of failure, with a gate's
    /// counts or a contract's column differences, never a row value (a gate's sample keys and a
    /// warehouse's message may quote one).
    pub fn summary(&self) -> String {
        match self {
            ModelError::Warehouse(WarehouseError::Unavailable(_)) => "warehouse unavailable".into(),
            ModelError::Warehouse(_) => "the warehouse refused the model (see the poller's log)".into(),
            ModelError::Kafka(KafkaError::Fatal { operation, .. }) => format!("kafka {operation} failed (fatal)"),
            ModelError::Kafka(KafkaError::Retryable { operation, .. }) => format!("kafka {operation} failed (retryable)"),
            ModelError::Kafka(KafkaError::Connection { operation, .. }) => format!("kafka {operation}: cannot connect"),
            ModelError::Codec(_) => "a row cannot be encoded as Avro (see the poller's log)".into(),
            ModelError::State(_) => "stored poller state unreadable".into(),
            ModelError::Position(_) => "stored position unusable".into(),
            ModelError::Gate(gate) => gate.summary(),
            ModelError::Contract(contract) => format!("schema contract drift: {}", contract.differences.join("; ")),
        }
    }

    /// Whether a gate or the schema contract refused the run (nothing of it was emitted).
    pub fn is_refusal(&self) -> bool {
        matches!(self, ModelError::Gate(_) | ModelError::Contract(_))
    }
}

/// Why a model does not match its schema contract (see `contract`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("model {model}: columns drift from its schema contract {path}: {}. Fix: change the model back, or review the change and re-export the contract with `sluice schema export {model}`", differences.join("; "))]
pub struct ContractError {
    pub model: String,
    /// The contract file.
    pub path: String,
    /// One line per removed, retyped or (unless allowed) added column.
    pub differences: Vec<String>,
}
