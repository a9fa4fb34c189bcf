//! What the stage keeps instead of personal data: 128-bit hashes.
//!
//! - An [`Identity`] is the first 128 bits of the SHA-256 of a person's *normalised* identifier
//!   (the sync's or the list's `identifier`: a column and its transforms). Two sides match when
//!   their normalised texts are equal; the text itself is never stored, logged or counted. A
//!   cryptographic hash because the texts are chosen by the public (an email typed into a form):
//!   nobody can craft an identifier that collides with someone else's.
//! - A [`KeyHash`] is the xxh3-128 of a record key's bytes (warehouse primary keys, not chosen
//!   by the public), the stage's name for an audience row or a list row.
//!
//! Both are uniformly distributed already, so the maps keyed by them use [`PassThrough`] rather
//! than hashing a hash again. One bit of each is fixed (127 random bits), so that an `Option`
//! of either costs no extra bytes.

use std::hash::{BuildHasherDefault, Hasher};
use std::num::NonZeroU64;

use sha2::Digest;
use sluice_core::config::IdentifierConfig;
use sluice_destinations::value_text;

use crate::transform::{apply, Image};

/// 128 hash bits, laid out for small tables: 8-byte aligned, and never all zero in the high
/// half (its top bit is set), so `Option` of it costs nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Hash128 {
    high: NonZeroU64,
    low: u64,
}

impl Hash128 {
    fn new(bits: u128) -> Hash128 {
        let high = NonZeroU64::new(((bits >> 64) as u64) | 1 << 63).expect("top bit set");
        Hash128 { high, low: bits as u64 }
    }
}

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

/// A record key (an audience row or a list row), as the hash of its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct KeyHash(Hash128);

impl KeyHash {
    pub(crate) fn of(key: &[u8]) -> KeyHash {
        KeyHash(Hash128::new(xxhash_rust::xxh3::xxh3_128(key)))
    }
}

/// The identity an image names: its identifier column through the transforms, as text. `None`
/// when the value is NULL or empty (nobody).
pub(crate) fn identity_of(spec: &IdentifierConfig, image: &Image<'_>) -> Option<Identity> {
    let value = spec.transforms.iter().fold(image.get(spec.column.get_ref()), |value, t| apply(*t, value));
    value_text(&value).map(|text| Identity::of_text(&text))
}

/// A hasher for keys that are already uniform hashes: it keeps their low 64 bits.
#[derive(Default)]
pub(crate) struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only reached by types other than the hashes; fold them in rather than lose them.
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(word);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = self.0.rotate_left(32) ^ value;
    }
}

/// `HashMap`s keyed by [`Identity`] or [`KeyHash`].
pub(crate) type HashMap<K, V> = std::collections::HashMap<K, V, BuildHasherDefault<PassThrough>>;

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

    #[test]
    fn key_hashes_tell_keys_apart() {
        assert_eq!(KeyHash::of(b"\xc3\x01k1"), KeyHash::of(b"\xc3\x01k1"));
        assert_ne!(KeyHash::of(b"\xc3\x01k1"), KeyHash::of(b"\xc3\x01k2"));
    }
}
