//! What every kind's settings (`<kind>/config.rs`) share: the validation step and its error,
//! and the defaults common to all kinds.
//!
//! A kind's settings struct is serde with `deny_unknown_fields` (typos are loud), a doc comment
//! on every field and its defaults next to it; [`Validate`] then refuses what parses but cannot
//! work, naming the key, so the registry can point at its line.

/// The settings of a kind, checked before anything connects.
pub trait Validate {
    /// `Err` names the key at fault, what is wrong and how to fix it.
    fn validate(&self) -> Result<(), Invalid>;
}

/// A setting that parses but cannot work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// The top-level key of the kind's table at fault (empty: the table as a whole).
    pub key: &'static str,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub fix: String,
}

impl Invalid {
    /// An invalid setting.
    pub fn new(key: &'static str, message: impl Into<String>, fix: impl Into<String>) -> Invalid {
        Invalid { key, message: message.into(), fix: fix.into() }
    }
}

/// A text setting that must not be empty.
pub(crate) fn nonempty(key: &'static str, value: &str, fix: &str) -> Result<(), Invalid> {
    if value.trim().is_empty() {
        return Err(Invalid::new(key, "is empty", fix));
    }
    Ok(())
}

/// A count that must be positive.
pub(crate) fn positive(key: &'static str, value: usize, fix: &str) -> Result<(), Invalid> {
    if value == 0 {
        return Err(Invalid::new(key, "must be positive", fix));
    }
    Ok(())
}

/// Per-request timeout of every kind, unless its table says otherwise.
pub(crate) fn default_timeout_ms() -> u64 {
    10_000
}

/// For `#[serde(default = ...)]` of flags that are on unless turned off.
pub(crate) fn yes() -> bool {
    true
}
