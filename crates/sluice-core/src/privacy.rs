//! Masking personal values in text sluice did not write itself.
//!
//! Vendors echo what they refuse (`"invalid email ada@example.com"`), and a sample key of a
//! model keyed by email is an email. Such text reaches logs, `/readyz`, dead-letter headers and
//! error messages, which operators copy into tickets; the personal values in it must not.
//! [`mask_personal`] is the one function every such path calls (vendor answer excerpts in
//! `sluice-destinations`, the poller's gate samples).
//!
//! Guarantees:
//! - Every email address (`local@domain.tld`) loses its local part but its first character:
//!   `ada.lovelace@example.com` → `a***@example.com` (the domain stays: "every gmail.com
//!   address is refused" is the kind of pattern an operator needs to see).
//! - Every run of 7 or more digits, allowing the separators phone numbers are written with
//!   (space, `-`, `.`, `(`, `)`, a leading `+`), keeps only its last two digits:
//!   `+1 (415) 555-0101` → `***01`. Long numeric ids in vendor text are masked too; that is
//!   the accepted cost of never printing a phone number. Dates (`2026-11-30`) are not.
//! - Everything else is unchanged, so the message still says what went wrong.
//!
//! The raw record itself stays in the dead-letter topic's payload (redrive needs it); reading
//! it is an explicit act (`sluice dlq show --show-values`).

use std::sync::LazyLock;

use regex::Regex;

static EMAIL: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"(?i)\b([a-z0-9])[a-z0-9._%+\-]*@([a-z0-9\-]+(?:\.[a-z0-9\-]+)+)").expect("valid email pattern"));

// A `+` or digit, then digits and separators, ending in a digit; at least 7 digits is checked
// on the match (a regex cannot count digits across separators by itself).
static NUMBER: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"\+?\(?\d[\d\s().\-]{5,}\d").expect("valid number pattern"));

// Dates (`2026-11-30`, in vendor timestamps) have 8 digits and separators but are not phones.
static DATE: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^\d{4}-\d{2}-\d{2}$").expect("valid date pattern"));

/// `text` with its email addresses and phone-like numbers masked (see the module docs).
pub fn mask_personal(text: &str) -> String {
    let text = EMAIL.replace_all(text, "$1***@$2");
    NUMBER
        .replace_all(&text, |found: &regex::Captures<'_>| {
            let run = &found[0];
            let digits: Vec<char> = run.chars().filter(char::is_ascii_digit).collect();
            if digits.len() < 7 || DATE.is_match(run) {
                return run.to_string();
            }
            let tail: String = digits[digits.len() - 2..].iter().collect();
            format!("***{tail}")
        })
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::mask_personal;

    #[test]
    fn emails_keep_their_first_character_and_domain() {
        assert_eq!(mask_personal("invalid email Ada.Lovelace+x@Example.co.uk here"), "invalid email A***@Example.co.uk here");
        assert_eq!(mask_personal(r#"{"id":"c7@example.com"}"#), r#"{"id":"c***@example.com"}"#);
        assert_eq!(mask_personal("two: a@b.io, zed_1@mail.example.org"), "two: a***@b.io, z***@mail.example.org");
    }

    #[test]
    fn phone_numbers_keep_their_last_two_digits() {
        assert_eq!(mask_personal("phone +1 (415) 555-0101 refused"), "phone ***01 refused");
        assert_eq!(mask_personal("tel 0049 30 1234567"), "tel ***67");
        assert_eq!(mask_personal(r#"{"phone":"14155550101"}"#), r#"{"phone":"***01"}"#);
    }

    #[test]
    fn other_text_is_unchanged() {
        for text in ["HTTP 422: record refused (code 100)", "retry after 30 s", "2026-11-30", "at 2026-11-30T07:40:00Z", "batch of 500 records, 12 refused", "v1.2.3", ""] {
            assert_eq!(mask_personal(text), text);
        }
    }
}
