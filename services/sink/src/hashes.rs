//! The 128-bit hashes the sink keeps instead of record keys, and the tables keyed by them: one
//! definition for the order guard's index and the membership stage's state (both import it;
//! it imports neither).
//!
//! - A [`KeyHash`] is the xxh3-128 of a record key's bytes (warehouse primary keys, not chosen
//!   by the public), with one bit fixed: 127 random bits, so two keys collide with probability
//!   about n²/2¹²⁸ (3·10⁻²⁵ at ten million keys). Never the key itself: no key is kept in memory,
//!   logged or put in a label.
//! - [`Hash128`] is the layout: 8-byte aligned, 16 bytes, and never all zero in its high half
//!   (its top bit is set), so an `Option` of it costs no extra bytes.
//!
//! The hashes are uniformly distributed already, so the tables keyed by them use
//! [`PassThrough`] rather than hashing a hash again.

use std::hash::{BuildHasherDefault, Hasher};
use std::num::NonZeroU64;

/// 128 hash bits, laid out for small tables (module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Hash128 {
    high: NonZeroU64,
    low: u64,
}

impl Hash128 {
    /// The layout of 128 hash bits; the top bit is set.
    pub(crate) fn new(bits: u128) -> Hash128 {
        let high = NonZeroU64::new(((bits >> 64) as u64) | 1 << 63).expect("top bit set");
        Hash128 { high, low: bits as u64 }
    }
}

/// A record key (a row of a change topic), as the hash of its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct KeyHash(Hash128);

impl KeyHash {
    pub(crate) fn of(key: &[u8]) -> KeyHash {
        KeyHash(Hash128::new(xxhash_rust::xxh3::xxh3_128(key)))
    }
}

/// A hasher for keys that are already uniform hashes: it keeps their bits as they are.
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

/// `HashMap`s keyed by a hash ([`KeyHash`], or an identity built on [`Hash128`]).
pub(crate) type HashMap<K, V> = std::collections::HashMap<K, V, BuildHasherDefault<PassThrough>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_hashes_tell_keys_apart_and_cost_no_more_as_options() {
        assert_eq!(KeyHash::of(b"\xc3\x01k1"), KeyHash::of(b"\xc3\x01k1"));
        assert_ne!(KeyHash::of(b"\xc3\x01k1"), KeyHash::of(b"\xc3\x01k2"));
        assert_eq!(std::mem::size_of::<Option<KeyHash>>(), 16);
    }
}
