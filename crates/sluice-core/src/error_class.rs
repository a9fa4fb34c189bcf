//! Failure classes, named by what the caller must do, and the class a dead letter carries.
//!
//! Every error that crosses a crate boundary on the delivery path can say which [`ErrorClass`]
//! it is. The classes are deliberately few: a service needs to know whether to try again, to set
//! the record aside and go on, or to stop — not the details of every vendor's error codes.
//!
//! A record that ends on a dead-letter topic says why in its `sluice.error.class` header, one of
//! the [`DeadLetterClass`] labels. Those labels are a contract with operators and their tools
//! (`schemas/README.md`): they never change, and [`DeadLetterClass::parse`] reads them back.

use std::time::Duration;

/// What the caller must do with a failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorClass {
    /// Transient (throttling, 5xx, timeouts, connection resets): try the same work again after
    /// `retry_after` when the other side said how long to wait, else after backoff.
    Retryable { retry_after: Option<Duration> },
    /// The record itself is unacceptable (validation errors, malformed data): dead-letter it and
    /// go on with the stream. Retrying cannot help.
    Permanent,
    /// The destination or its configuration is unusable (bad credentials, unknown endpoint):
    /// stop consuming and turn not-ready. Dead-lettering would pour the whole stream into the
    /// dead-letter topic, so it must never be done for this class.
    Fatal,
}

impl ErrorClass {
    /// Stable label for metrics and dead-letter headers.
    pub fn label(&self) -> &'static str {
        match self {
            ErrorClass::Retryable { .. } => "retryable",
            ErrorClass::Permanent => "permanent",
            ErrorClass::Fatal => "fatal",
        }
    }
}

/// Why a record was dead-lettered: the value of its `sluice.error.class` header.
///
/// There is no fatal class on purpose: a fatal failure stops the sink and dead-letters nothing
/// ([`ErrorClass::Fatal`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeadLetterClass {
    /// The destination refused the record ([`ErrorClass::Permanent`]). Label `permanent`.
    Permanent,
    /// The record kept failing as [`ErrorClass::Retryable`] until the retry budget was spent.
    /// Label `retryable`, the class of the failures that spent it.
    RetriesExhausted,
    /// The message is not a readable change event (bad bytes, unknown schema, no key). Label
    /// `decode`.
    Undecodable,
    /// A delete known only by its key — a tombstone whose `d` event compaction removed before
    /// the sink read it — that the destination refused because it matches records on a field
    /// the key does not hold. The row is still at the destination: remove it by hand, or let a
    /// full replace (Meta `usersreplace`, a resync) do it. Label `compacted_delete`.
    CompactedDelete,
}

impl DeadLetterClass {
    /// Every class, in the order the contract lists them.
    pub const ALL: [DeadLetterClass; 4] =
        [DeadLetterClass::Permanent, DeadLetterClass::RetriesExhausted, DeadLetterClass::Undecodable, DeadLetterClass::CompactedDelete];

    /// The header value. Stable: tools filter dead-letter topics by it.
    pub fn label(self) -> &'static str {
        match self {
            DeadLetterClass::Permanent => "permanent",
            DeadLetterClass::RetriesExhausted => "retryable",
            DeadLetterClass::Undecodable => "decode",
            DeadLetterClass::CompactedDelete => "compacted_delete",
        }
    }

    /// The class a header value names (exactly, as [`Self::label`] writes it).
    pub fn parse(label: &str) -> Result<DeadLetterClass, UnknownDeadLetterClass> {
        DeadLetterClass::ALL.into_iter().find(|class| class.label() == label).ok_or_else(|| UnknownDeadLetterClass(label.to_string()))
    }
}

impl std::fmt::Display for DeadLetterClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

impl std::str::FromStr for DeadLetterClass {
    type Err = UnknownDeadLetterClass;

    fn from_str(label: &str) -> Result<DeadLetterClass, UnknownDeadLetterClass> {
        DeadLetterClass::parse(label)
    }
}

/// A `sluice.error.class` value that names no [`DeadLetterClass`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown dead-letter class {0:?}: expected one of `permanent`, `retryable`, `decode`, `compacted_delete`")]
pub struct UnknownDeadLetterClass(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_letter_labels_are_the_header_contract_and_parse_back() {
        // The values of `schemas/README.md`; changing one breaks every operator's filter.
        let table = [
            (DeadLetterClass::Permanent, "permanent"),
            (DeadLetterClass::RetriesExhausted, "retryable"),
            (DeadLetterClass::Undecodable, "decode"),
            (DeadLetterClass::CompactedDelete, "compacted_delete"),
        ];
        assert_eq!(table.map(|(class, _)| class), DeadLetterClass::ALL, "the table covers every class");
        for (class, label) in table {
            assert_eq!(class.label(), label);
            assert_eq!(class.to_string(), label);
            assert_eq!(DeadLetterClass::parse(label), Ok(class));
            assert_eq!(label.parse::<DeadLetterClass>(), Ok(class));
        }
        // The classes that come from a destination keep the destination's label.
        assert_eq!(DeadLetterClass::Permanent.label(), ErrorClass::Permanent.label());
        assert_eq!(DeadLetterClass::RetriesExhausted.label(), ErrorClass::Retryable { retry_after: None }.label());
    }

    #[test]
    fn unknown_dead_letter_labels_are_refused_by_name() {
        for label in ["fatal", "Permanent", " decode", "", "retries_exhausted"] {
            let error = DeadLetterClass::parse(label).expect_err(label);
            assert_eq!(error, UnknownDeadLetterClass(label.to_string()));
            let text = error.to_string();
            assert!(text.contains(&format!("{label:?}")) && text.contains("`permanent`, `retryable`, `decode`, `compacted_delete`"), "{text}");
        }
    }
}
