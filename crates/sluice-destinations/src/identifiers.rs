//! Identifier normalisation and SHA-256 hashing: Meta Custom Audiences' schema keys, the email
//! form CRMs match on, and the rule every destination and the sink's transforms share.
//!
//! Guarantees:
//! - **Identifiers are never invented.** A value that is nothing once normalised (a blank or
//!   whitespace email, a phone of "n/a", an invalid email without `@`) gives `None`: it is
//!   missing, never sent as an empty identifier or as the hash of the empty string, and the
//!   caller counts it (`sluice_destination_identifiers_missing_total`). A value that already is
//!   the SHA-256 of the empty string ([`EMPTY_SHA256`], what hashing nothing gives) is missing
//!   too.
//! - Every hashed value is SHA-256 of the *normalised* UTF-8 string, lowercase hex, no salt, as
//!   Meta documents (Marketing API customer-file guide; the official Python/Ruby business SDKs).
//!   A value that already is a lowercase hex SHA-256 (hashed by a sync's `sha256` transform) is
//!   sent as it is, not hashed twice.
//! - Normalisation is total and deterministic: the same person always hashes the same, whatever
//!   the warehouse's casing, padding or punctuation.
//! - `MADID` and `EXTERN_ID` are normalised but not hashed (Meta's SDK and Segment send them
//!   as is).
//!
//! Not done: adding a missing phone country code. Meta wants phone numbers with their country
//! code; the warehouse must hold them so (E.164 without `+` works: `+1 650-555-1234`).

use sha2::{Digest, Sha256};

/// A Meta customer-file schema key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MetaKey {
    Email,
    Phone,
    Gen,
    DobY,
    DobM,
    DobD,
    Ln,
    Fn,
    Fi,
    Ct,
    St,
    Zip,
    Country,
    Madid,
    ExternId,
}

impl MetaKey {
    /// Every key with its schema name.
    pub const ALL: &'static [(MetaKey, &'static str)] = &[
        (MetaKey::Email, "EMAIL"),
        (MetaKey::Phone, "PHONE"),
        (MetaKey::Gen, "GEN"),
        (MetaKey::DobY, "DOBY"),
        (MetaKey::DobM, "DOBM"),
        (MetaKey::DobD, "DOBD"),
        (MetaKey::Ln, "LN"),
        (MetaKey::Fn, "FN"),
        (MetaKey::Fi, "FI"),
        (MetaKey::Ct, "CT"),
        (MetaKey::St, "ST"),
        (MetaKey::Zip, "ZIP"),
        (MetaKey::Country, "COUNTRY"),
        (MetaKey::Madid, "MADID"),
        (MetaKey::ExternId, "EXTERN_ID"),
    ];

    /// The key of a schema name (`EMAIL`, ...), case-insensitively.
    pub fn parse(name: &str) -> Option<MetaKey> {
        MetaKey::ALL.iter().find(|(_, n)| n.eq_ignore_ascii_case(name.trim())).map(|(k, _)| *k)
    }

    /// The schema name Meta expects.
    pub fn name(self) -> &'static str {
        MetaKey::ALL.iter().find(|(k, _)| *k == self).map(|(_, n)| *n).expect("every key is listed")
    }

    /// Whether values of this key are sent as SHA-256.
    pub fn is_hashed(self) -> bool {
        !matches!(self, MetaKey::Madid | MetaKey::ExternId)
    }
}

/// SHA-256 of the empty string: what hashing a missing value gives, so never an identifier.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Whether `value` is a lowercase hex SHA-256 (64 characters of `0-9a-f`).
pub fn is_sha256_hex(value: &str) -> bool {
    value.len() == 64 && value.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// An identifier that has no normal form of its own (an external id, a set member): the value
/// as it is, or `None` when it is blank (empty or whitespace only) or the hash of nothing.
pub fn present(raw: &str) -> Option<String> {
    (!raw.trim().is_empty() && raw != EMPTY_SHA256).then(|| raw.to_string())
}

/// Lowercase hex SHA-256 of a string's UTF-8 bytes.
pub fn sha256_hex(value: &str) -> String {
    let digest = Sha256::digest(value.as_bytes());
    let mut out = String::with_capacity(64);
    for byte in digest.iter() {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// The value Meta expects for `key`: normalised, then hashed when the key is hashed. A value
/// already hashed (a lowercase hex SHA-256) is sent as it is. `None` when nothing usable is
/// left, including the hash of the empty string.
pub fn meta_value(key: MetaKey, raw: &str) -> Option<String> {
    if key.is_hashed() && is_sha256_hex(raw.trim()) {
        return present(raw.trim());
    }
    let normalised = normalise(key, raw)?;
    Some(if key.is_hashed() { sha256_hex(&normalised) } else { normalised })
}

/// Normalise a raw value for `key` per Meta's rules; `None` when nothing usable is left.
pub fn normalise(key: MetaKey, raw: &str) -> Option<String> {
    let out = match key {
        // The SDK strips whitespace, NUL, vertical tab and dots at both ends.
        MetaKey::Email => {
            let email = raw.trim_matches(|c: char| c.is_whitespace() || c == '\0' || c == '\x0B' || c == '.').to_lowercase();
            if !email.contains('@') || email.starts_with('@') || email.ends_with('@') {
                return None;
            }
            email
        }
        // Digits only, no leading zeros; the country code must already be part of the number.
        MetaKey::Phone => raw.chars().filter(char::is_ascii_digit).collect::<String>().trim_start_matches('0').to_string(),
        MetaKey::Gen => match raw.trim().to_lowercase().chars().next() {
            Some('m') => "m".into(),
            Some('f') => "f".into(),
            _ => return None,
        },
        MetaKey::DobY => {
            let year: String = raw.chars().filter(char::is_ascii_digit).collect();
            if year.len() != 4 {
                return None;
            }
            year
        }
        MetaKey::DobM => two_digits(raw, 1, 12)?,
        MetaKey::DobD => two_digits(raw, 1, 31)?,
        // Letters only (accented letters kept, in UTF-8), lowercase: no spaces, hyphens or
        // punctuation ("Mary-Jane" → "maryjane").
        MetaKey::Fn | MetaKey::Ln | MetaKey::Ct => letters_only(raw),
        MetaKey::Fi => letters_only(raw).chars().next().map(String::from)?,
        // US: the 2-letter code; elsewhere lowercase without punctuation or whitespace.
        MetaKey::St => raw.to_lowercase().chars().filter(|c| c.is_alphanumeric()).collect(),
        // US ZIP+4 keeps the first five digits (the part before `-`); no whitespace.
        MetaKey::Zip => {
            let zip = raw.trim().to_lowercase();
            let zip = match zip.split_once('-') {
                Some((head, _)) if head.trim().chars().all(|c| c.is_ascii_digit()) => head.to_string(),
                _ => zip,
            };
            zip.chars().filter(|c| !c.is_whitespace()).collect()
        }
        MetaKey::Country => {
            let country: String = raw.trim().to_lowercase().chars().filter(|c| c.is_ascii_alphabetic()).collect();
            if country.len() != 2 {
                return None;
            }
            country
        }
        MetaKey::Madid => raw.trim().to_lowercase(),
        MetaKey::ExternId => raw.trim().to_string(),
    };
    (!out.is_empty() && out != EMPTY_SHA256).then_some(out)
}

fn letters_only(raw: &str) -> String {
    raw.to_lowercase().chars().filter(|c| c.is_alphabetic()).collect()
}

fn two_digits(raw: &str, min: u32, max: u32) -> Option<String> {
    let digits: String = raw.chars().filter(char::is_ascii_digit).collect();
    let n: u32 = digits.parse().ok()?;
    (min..=max).contains(&n).then(|| format!("{n:02}"))
}

/// Email as CRMs want it for matching: trimmed and lowercased (HubSpot and Braze do not
/// document case-insensitive matching, so sending one form avoids duplicates); `None` when
/// nothing is left.
pub fn canonical_email(raw: &str) -> Option<String> {
    let email = raw.trim().to_lowercase();
    (!email.is_empty()).then_some(email)
}

/// A phone number as ad platforms hash it: digits only, without leading zeros (E.164 without
/// `+`; the country code must already be part of it); `None` when no digit is left.
pub fn canonical_phone(raw: &str) -> Option<String> {
    normalise(MetaKey::Phone, raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hashes computed independently (Python `hashlib.sha256(s.encode()).hexdigest()`).
    #[test]
    fn known_sha256_vectors() {
        assert_eq!(sha256_hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_eq!(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn normalise_and_hash_table() {
        let cases: &[(MetaKey, &str, Option<&str>)] = &[
            (MetaKey::Email, "  Jane.Doe@Example.COM \t", Some("86e0b9e56c17cc4d12387e1949b85053fbe73bc3ce5a1188713a9d300cc6133d")),
            (MetaKey::Email, "jane.doe@example.com", Some("86e0b9e56c17cc4d12387e1949b85053fbe73bc3ce5a1188713a9d300cc6133d")),
            (MetaKey::Email, "not-an-email", None),
            (MetaKey::Email, "   ", None),
            (MetaKey::Phone, "+1 (650) 555-1234", Some("6069d14bf122fdfd931dc7beb58e5dfbba395b1faf05bdcd42d12358d63d8599")),
            (MetaKey::Phone, "0016505551234", Some("6069d14bf122fdfd931dc7beb58e5dfbba395b1faf05bdcd42d12358d63d8599")),
            (MetaKey::Phone, "n/a", None),
            (MetaKey::Fn, " Mary ", Some("6915771be1c5aa0c886870b6951b03d7eafc121fea0e80a5ea83beb7c449f4ec")),
            (MetaKey::Fn, "Mary-Jane", Some("f08f448a5e7a9dc3619bb7c129f6a7d5fc6af002cea17ad71dfdc1c68f4d4e0e")),
            (MetaKey::Fi, "mary", Some("62c66a7a5dd70c3146618063c344e531e6d4b59e379808443ce962b3abd63c5a")),
            (MetaKey::Gen, "Male", Some("62c66a7a5dd70c3146618063c344e531e6d4b59e379808443ce962b3abd63c5a")),
            (MetaKey::Gen, "F", Some("252f10c83610ebca1a059c0bae8255eba2f95be4d1d7bcfa89d7248a82d9f111")),
            (MetaKey::Gen, "x", None),
            (MetaKey::Country, " US ", Some("79adb2a2fce5c6ba215fe5f27f532d4e7edbac4b6a5e09e1ef3a08084a904621")),
            (MetaKey::Country, "USA", None),
            (MetaKey::Zip, "94025-1234", Some("b9a9cf3cd3723a2e91b7c23ecf68456e872b6e5d86e5cab7f3d45a7302da32c7")),
            (MetaKey::DobY, "1990", Some("a7be8e1fe282a37cd666e0632b17d933fa13f21addf4798fc0455bc166e2488c")),
            (MetaKey::DobM, "4", Some("6cd5b6e51936a442b973660c21553dd22bd72ddc8751132a943475288113b4c0")),
            (MetaKey::DobM, "13", None),
            (MetaKey::DobD, "07", Some("19b100ab7725c612f3d80ff203ca53cea5cadaafae3bf0f88f0fb4089fe08815")),
            (MetaKey::Ct, "Menlo Park", Some("0007a3d64c01e23d5075203c5977c14e4f7e01a3fc570686fcc50b5e1dd42685")),
            (MetaKey::St, "CA", Some("6959097001d10501ac7d54c0bdb8db61420f658f2922cc26e46d536119a31126")),
            (MetaKey::Madid, " AB-CD ", Some("ab-cd")),
            (MetaKey::ExternId, " W-1 ", Some("W-1")),
        ];
        for (key, raw, expected) in cases {
            assert_eq!(meta_value(*key, raw).as_deref(), *expected, "{key:?} {raw:?}");
        }
    }

    /// Normalising twice changes nothing, so values the warehouse already normalised hash the
    /// same as raw ones.
    #[test]
    fn normalisation_is_idempotent() {
        let raw = ["  Jane.Doe@Example.COM.", "+44 (0) 20 7946 0958", "Mary-Jane", "José", "94025-1234", " SW1A 1AA ", "Female", "7", "US", "AB-cd"];
        for (key, _) in MetaKey::ALL {
            for value in raw {
                if let Some(once) = normalise(*key, value) {
                    assert_eq!(normalise(*key, &once).as_deref(), Some(once.as_str()), "{key:?} {value:?}");
                }
            }
        }
    }

    /// The case: a phone of "n/a", hashed by a sync, must not become a member.
    #[test]
    fn nothing_is_never_an_identifier() {
        assert_eq!(sha256_hex(""), EMPTY_SHA256);
        for key in [MetaKey::Email, MetaKey::Phone, MetaKey::Fn, MetaKey::ExternId] {
            assert_eq!(meta_value(key, EMPTY_SHA256), None, "{key:?}: the hash of nothing is missing");
            assert_eq!(meta_value(key, "   "), None, "{key:?}: blank is missing");
        }
        assert_eq!(meta_value(MetaKey::Phone, "n/a"), None);
        let hashed = sha256_hex("16505551234");
        assert_eq!(meta_value(MetaKey::Phone, &hashed).as_deref(), Some(hashed.as_str()), "already hashed: sent as it is, not hashed twice");
        assert_eq!(canonical_email("  \t"), None);
        assert_eq!(canonical_email(" A@B.c ").as_deref(), Some("a@b.c"));
        assert_eq!(canonical_phone("n/a"), None);
        assert_eq!(canonical_phone("000"), None, "zeros only: no number left");
        assert_eq!(present(" "), None);
        assert_eq!(present(EMPTY_SHA256), None);
        assert_eq!(present(" W-1").as_deref(), Some(" W-1"), "kept as it is");
    }

    #[test]
    fn names_keep_accented_letters() {
        assert_eq!(normalise(MetaKey::Ln, "José O'Neil").as_deref(), Some("joséoneil"));
    }

    #[test]
    fn keys_parse_from_schema_names() {
        for (key, name) in MetaKey::ALL {
            assert_eq!(MetaKey::parse(name), Some(*key));
            assert_eq!(key.name(), *name);
        }
        assert_eq!(MetaKey::parse("email"), Some(MetaKey::Email));
        assert_eq!(MetaKey::parse("EMAIL_SHA256"), None);
    }
}
