//! Secrets: written only as references, resolved only by the service that needs them.
//!
//! Guarantees:
//! - A secret is never written inline: a secret field takes `{ env = "VAR" }` or
//!   `{ file = "/path" }`; a plain string is refused with that fix.
//! - A [`SecretRef`] is a reference checked for its shape and nothing else: reading it does not
//!   touch the environment or the file system. [`SecretRef::resolve`] reads it, and its error
//!   names the variable or the file.
//! - A [`Secret`] is a resolved value. Its `Deserialize` resolves at once, which is what a
//!   destination kind's table wants: it is deserialized only by the service that runs the kind
//!   (`sluice-destinations`), so a sink never reads another vendor's key.
//! - Neither prints its value (`Debug` shows the reference only).

use std::fmt;
use std::path::PathBuf;

use serde::de::{self, Deserializer};
use serde::Deserialize;

/// A secret, resolved. Its value is never printed.
#[derive(Clone)]
pub struct Secret {
    reference: String,
    value: String,
}

impl Secret {
    /// The secret's value; keep it out of logs.
    pub fn expose(&self) -> &str {
        &self.value
    }

    /// A secret with a literal value, for tests and generated configs.
    pub fn literal(value: impl Into<String>) -> Secret {
        Secret { reference: "literal".into(), value: value.into() }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({}, redacted)", self.reference)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        SecretRef::deserialize(deserializer)?.resolve().map_err(de::Error::custom)
    }
}

/// Where a secret is kept: an environment variable or a file. Not resolved until
/// [`SecretRef::resolve`].
#[derive(Clone, PartialEq, Eq)]
pub enum SecretRef {
    /// `{ env = "VAR" }`
    Env(String),
    /// `{ file = "/path" }`: the file's text, without trailing line breaks.
    File(PathBuf),
}

/// A secret that cannot be resolved; the message names the variable or file and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// The variable is not set (or not Unicode).
    #[error("environment variable {0} is not set; export it before starting")]
    UnsetVariable(String),
    /// The file cannot be read.
    #[error("cannot read secret file {path}: {reason}")]
    UnreadableFile { path: String, reason: String },
}

impl SecretRef {
    /// Read the secret now.
    pub fn resolve(&self) -> Result<Secret, SecretError> {
        match self {
            SecretRef::Env(var) => match std::env::var(var) {
                Ok(value) => Ok(Secret { reference: format!("env:{var}"), value }),
                Err(_) => Err(SecretError::UnsetVariable(var.clone())),
            },
            SecretRef::File(path) => match std::fs::read_to_string(path) {
                Ok(value) => Ok(Secret { reference: format!("file:{}", path.display()), value: value.trim_end_matches(['\n', '\r']).to_string() }),
                Err(e) => Err(SecretError::UnreadableFile { path: path.display().to_string(), reason: e.to_string() }),
            },
        }
    }
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretRef::Env(var) => write!(f, "SecretRef(env:{var})"),
            SecretRef::File(path) => write!(f, "SecretRef(file:{})", path.display()),
        }
    }
}

impl<'de> Deserialize<'de> for SecretRef {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Reference {
            env: Option<String>,
            file: Option<String>,
        }
        struct Visitor;
        impl<'de> de::Visitor<'de> for Visitor {
            type Value = SecretRef;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a secret reference: { env = \"VAR\" } or { file = \"/path\" }")
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<SecretRef, E> {
                Err(E::custom("secrets are never written inline; reference one: { env = \"VAR\" } or { file = \"/path\" }"))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<SecretRef, A::Error> {
                let reference = Reference::deserialize(de::value::MapAccessDeserializer::new(map))?;
                match (reference.env, reference.file) {
                    (Some(var), None) if !var.trim().is_empty() => Ok(SecretRef::Env(var)),
                    (None, Some(path)) if !path.trim().is_empty() => Ok(SecretRef::File(PathBuf::from(path))),
                    (Some(_), None) | (None, Some(_)) => Err(de::Error::custom("a secret reference names a variable or a file; this one is empty")),
                    _ => Err(de::Error::custom("a secret takes exactly one of `env` or `file`")),
                }
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// A value that is either written in the file or a secret (a Kafka property such as
/// `sasl.password`, a webhook header).
#[derive(Debug, Clone)]
pub enum MaybeSecret {
    /// Written in the file.
    Plain(String),
    /// Resolved from the environment or a file.
    Secret(Secret),
}

impl MaybeSecret {
    /// The value to use; keep it out of logs.
    pub fn expose(&self) -> &str {
        match self {
            MaybeSecret::Plain(s) => s,
            MaybeSecret::Secret(secret) => secret.expose(),
        }
    }
}

impl From<&str> for MaybeSecret {
    fn from(value: &str) -> MaybeSecret {
        MaybeSecret::Plain(value.to_string())
    }
}

impl<'de> Deserialize<'de> for MaybeSecret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> de::Visitor<'de> for Visitor {
            type Value = MaybeSecret;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, or a secret reference: { env = \"VAR\" } or { file = \"/path\" }")
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<MaybeSecret, E> {
                Ok(MaybeSecret::Plain(value.to_string()))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<MaybeSecret, A::Error> {
                Secret::deserialize(de::value::MapAccessDeserializer::new(map)).map(MaybeSecret::Secret)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize, Debug)]
    struct Holder {
        r: SecretRef,
    }

    #[test]
    fn a_reference_is_not_resolved_until_asked() {
        let holder: Holder = toml::from_str("r = { env = \"SLUICE_TEST_SECRET_NEVER_SET\" }").unwrap();
        assert_eq!(holder.r, SecretRef::Env("SLUICE_TEST_SECRET_NEVER_SET".into()));
        let error = holder.r.resolve().unwrap_err();
        assert_eq!(error.to_string(), "environment variable SLUICE_TEST_SECRET_NEVER_SET is not set; export it before starting");
        let error = toml::from_str::<Holder>("r = \"inline\"").unwrap_err();
        assert!(error.message().contains("never written inline"), "{error}");
        let error = toml::from_str::<Holder>("r = { env = \"\" }").unwrap_err();
        assert!(error.message().contains("empty"), "{error}");
        let error = toml::from_str::<Holder>("r = { env = \"A\", file = \"b\" }").unwrap_err();
        assert!(error.message().contains("exactly one"), "{error}");
    }

    #[test]
    fn maybe_secret_takes_text_or_a_reference() {
        #[derive(Deserialize)]
        struct Props {
            p: std::collections::BTreeMap<String, MaybeSecret>,
        }
        std::env::set_var("SLUICE_TEST_MAYBE_SECRET", "s3cret");
        let props: Props = toml::from_str("p = { a = \"x\", b = { env = \"SLUICE_TEST_MAYBE_SECRET\" } }").unwrap();
        assert_eq!((props.p["a"].expose(), props.p["b"].expose()), ("x", "s3cret"));
        assert!(!format!("{:?}", props.p["b"]).contains("s3cret"));
    }
}
