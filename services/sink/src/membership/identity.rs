//! What the stage keeps instead of personal data: 128-bit hashes.
//!
//! - An [`Identity`] is the first 128 bits of the SHA-256 of a person's *normalised* identifier
//!   (the sync's or the list's `identifier`: a column and its transforms). Two sides match when
//!   their normalised texts are equal; the text itself is never stored, logged or counted. A
//!   cryptographic hash because the texts are chosen by the public (an email typed into a form):
//!   nobody can craft an identifier that collides with someone else's.
//! - A [`KeyHash`] ([`crate::hashes`]) is the hash of a record key's bytes, the stage's name for
//!   an audience row or a list row.
//!
//! Both are uniformly distributed already, so the maps keyed by them are [`HashMap`]s that do not
//! hash a hash again. One bit of each is fixed (127 random bits), so that an `Option` of either
//! costs no extra bytes.

use sha2::Digest;
use sluice_core::config::IdentifierConfig;
use sluice_destinations::value_text;

use crate::hashes::Hash128;
use crate::transform::{apply, Image};

/// A person, as the hash of their normalised identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Identity(Hash128);

impl Identity {
    /// The identity of a normalised identifier text.
    pub(crate) fn of_text(text: &str) -> Identity {
        let digest = sha2::Sha256::digest(text.as_bytes());
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        Identity(Hash128::new(u128::from_be_bytes(bytes)))
    }
}

/// The identity an image names: its identifier column through the transforms, as text. `None`
/// when the value is NULL or empty (nobody).
pub(crate) fn identity_of(spec: &IdentifierConfig, image: &Image<'_>) -> Option<Identity> {
    let value = spec.transforms.iter().fold(image.get(spec.column.get_ref()), |value, t| apply(*t, value));
    value_text(&value).map(|text| Identity::of_text(&text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::config::Transform;
    use sluice_core::Value;

    fn spec(transforms: Vec<Transform>) -> IdentifierConfig {
        IdentifierConfig { column: toml::Spanned::new(0..0, "email".to_string()), transforms }
    }

    #[test]
    fn equal_normalised_texts_are_one_identity_and_nulls_are_nobody() {
        let columns = vec!["id".to_string(), "email".to_string()];
        let untidy = vec![Value::Long(1), Value::String("  Ada@Example.COM ".into())];
        let tidy = vec![Value::Long(2), Value::String("ada@example.com".into())];
        let normalised = spec(vec![Transform::NormalizeEmail]);
        let a = identity_of(&normalised, &Image { columns: &columns, row: &untidy });
        let b = identity_of(&normalised, &Image { columns: &columns, row: &tidy });
        assert!(a.is_some());
        assert_eq!(a, b, "the same person once normalised");
        assert_ne!(identity_of(&spec(vec![]), &Image { columns: &columns, row: &untidy }), a, "without the transform they differ");
        assert_eq!(a, Some(Identity::of_text("ada@example.com")));
        for nobody in [Value::Null, Value::String("   ".into())] {
            let row = vec![Value::Long(3), nobody];
            assert_eq!(identity_of(&normalised, &Image { columns: &columns, row: &row }), None);
        }
    }
}
