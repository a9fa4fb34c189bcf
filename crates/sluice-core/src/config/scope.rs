//! Which part of a configuration a process uses: the poller's, one sink's, or all of it
//! (`sluice check`).
//!
//! A scope decides which secrets are resolved and which destinations are checked in depth: the
//! poller needs Kafka and the warehouse, a sink Kafka and its own destination, never another
//! vendor's key nor the warehouse URL. What is knowable from the file alone (shapes, names,
//! numbers, references) is checked in every scope, by [`super::Config::parse`].

use std::fmt;
use std::str::FromStr;

/// The part of the configuration a process uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Everything: the poller and every destination's sink (`sluice check` by default).
    All,
    /// `sluice-poller` (and the CLI's warehouse tools): Kafka, the warehouse, the models.
    Poller,
    /// `sluice-sink --destination NAME`: Kafka, that destination and its syncs.
    Sink(String),
}

impl Scope {
    /// Whether the poller's part (the warehouse, the models' contracts) is in scope.
    pub fn has_poller(&self) -> bool {
        matches!(self, Scope::All | Scope::Poller)
    }

    /// Whether the destination of that name is in scope.
    pub fn has_destination(&self, name: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Poller => false,
            Scope::Sink(own) => own == name,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::All => f.write_str("all"),
            Scope::Poller => f.write_str("poller"),
            Scope::Sink(name) => write!(f, "sink:{name}"),
        }
    }
}

/// A scope written wrongly on the command line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown service {0:?}; use `all`, `poller` or `sink:<destination>`")]
pub struct UnknownScope(pub String);

impl FromStr for Scope {
    type Err = UnknownScope;

    fn from_str(s: &str) -> Result<Scope, UnknownScope> {
        match s {
            "all" => Ok(Scope::All),
            "poller" => Ok(Scope::Poller),
            _ => match s.strip_prefix("sink:") {
                Some(name) if !name.is_empty() => Ok(Scope::Sink(name.to_string())),
                _ => Err(UnknownScope(s.to_string())),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_and_print() {
        for text in ["all", "poller", "sink:crm"] {
            assert_eq!(text.parse::<Scope>().unwrap().to_string(), text);
        }
        assert!("sink:".parse::<Scope>().is_err() && "sinks".parse::<Scope>().is_err());
        let sink = Scope::Sink("crm".into());
        assert!(sink.has_destination("crm") && !sink.has_destination("ads") && !sink.has_poller());
        assert!(Scope::Poller.has_poller() && !Scope::Poller.has_destination("crm"));
        assert!(Scope::All.has_poller() && Scope::All.has_destination("crm"));
    }
}
