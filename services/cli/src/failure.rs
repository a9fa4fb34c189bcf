//! How a command of the `sluice` CLI fails: the exit code it returns for each kind of failure,
//! one table for every command (docs/operations.md, "Exit codes"), and the error printed on
//! stderr (and as JSON on stdout with `--json`, so scripts read one stream).

use std::process::ExitCode;

use serde_json::json;
use sluice_kafka::KafkaError;

/// Exit code: an error talking to Kafka (or another runtime failure).
pub(crate) const EXIT_ERROR: u8 = 1;
/// Exit code: a bad config or bad arguments (unknown destination or model, a malformed filter).
pub(crate) const EXIT_CONFIG: u8 = 2;
/// Exit code: nothing matched what was asked for (`sluice dlq show` with no dead letter).
pub(crate) const EXIT_NOTHING_MATCHED: u8 = 3;
/// Exit code: refused (`sluice replay --execute`: the group has live members; `sluice resync`:
/// the model's first snapshot is not complete, or a key gate or its contract refuses it).
pub(crate) const EXIT_REFUSED: u8 = 4;

/// Why a command stopped.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Bad config or arguments: exit 2.
    Config(String),
    /// Nothing matched: exit 3.
    NothingMatched(String),
    /// Refused (live group members, a model not ready to resync): exit 4.
    Refused(String),
    /// Kafka or another runtime error: exit 1.
    Error(String),
}

impl Failure {
    /// The process exit code of this failure.
    pub(crate) fn code(&self) -> u8 {
        match self {
            Failure::Config(_) => EXIT_CONFIG,
            Failure::NothingMatched(_) => EXIT_NOTHING_MATCHED,
            Failure::Refused(_) => EXIT_REFUSED,
            Failure::Error(_) => EXIT_ERROR,
        }
    }

    /// What went wrong, for the operator.
    pub(crate) fn message(&self) -> &str {
        match self {
            Failure::Config(m) | Failure::NothingMatched(m) | Failure::Refused(m) | Failure::Error(m) => m,
        }
    }

    /// Print the failure (stderr, and a JSON object on stdout with `json`) and return its code.
    pub(crate) fn exit(&self, json: bool) -> ExitCode {
        eprintln!("error: {}", self.message());
        if json {
            println!("{}", json!({ "error": self.message(), "exit_code": self.code() }));
        }
        ExitCode::from(self.code())
    }
}

impl From<KafkaError> for Failure {
    fn from(error: KafkaError) -> Failure {
        Failure::Error(error.to_string())
    }
}
