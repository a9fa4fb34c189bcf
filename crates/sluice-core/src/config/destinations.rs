//! Destinations: the settings every kind shares, and the kind's own table kept as written.
//!
//! A `[[destinations]]` entry holds the common settings (name, batching, retries, rate limits,
//! concurrency, buffering) and exactly one more table, named after its kind
//! (`[destinations.hubspot]`). This crate knows no kinds: it keeps that table unparsed
//! ([`KindTable`]: its name, its span and every key and value with theirs), and the
//! `sluice-destinations` registry parses it into the kind's typed settings. So a service
//! resolves only the secrets of the kind it runs (a sink its destination's; `sluice check`
//! every destination's), and every error about a kind's setting still points at its line
//! ([`KindTable::deserialize`], [`super::Config::kind_error`]).
//!
//! Guaranteed here: an unknown key that is not a table is refused like any unknown field; no
//! table or two tables besides the common settings are refused with the line of the entry or of
//! the second table. Not checked here: whether the table names a known kind, and its contents.

use std::fmt;
use std::ops::Range;

use serde::de::{self, DeserializeOwned, DeserializeSeed, Deserializer, IntoDeserializer, MapAccess};
use serde::Deserialize;
use toml::Spanned;

use super::defaults;
use super::delivery::{DeadLetterBreakerConfig, RateLimitConfig, RetryConfig};

/// A destination: where one sink service delivers.
#[derive(Debug, Clone)]
pub struct DestinationConfig {
    /// Names the service instance, its consumer group and its dead-letter topic.
    pub name: Spanned<String>,
    /// Records per request, at most.
    pub batch_max_records: usize,
    /// How long a partial batch waits for more records before it is sent.
    pub batch_linger_ms: u64,
    /// Retries of retryable failures.
    pub retry: RetryConfig,
    /// JSON bytes per request, at most (a single larger record is still sent alone).
    pub batch_max_bytes: usize,
    /// Requests in flight at most; adaptive concurrency (AIMD) moves between 1 and this.
    pub max_concurrency: usize,
    /// Records consumed but not finished, at most; beyond it the sink pauses its partitions
    /// (staying in its consumer group) instead of buffering without bound.
    pub max_buffered_records: usize,
    /// The destination's rate limits; never exceeded, used fully.
    pub rate_limit: RateLimitConfig,
    /// When the sink halts rather than dead-letter more.
    pub dead_letter_breaker: DeadLetterBreakerConfig,
    /// Write each record's outcome back to the warehouse (`sluice_sync_log`, see
    /// `docs/audit.md`): the sink publishes row-level outcomes to `<prefix>.outcomes.<name>`
    /// and the poller's writeback copies them into the warehouse. Off by default.
    pub writeback: bool,
    /// The kind's table (`[destinations.<kind>]`), unparsed.
    pub kind: KindTable,
    /// Where each common key is written, so an error about one names its line.
    keys: Vec<Spanned<String>>,
}

impl DestinationConfig {
    /// Where a common key (`batch_linger_ms`, `rate_limit`, ...) is written; the entry's name
    /// when it is not written (its default is in force).
    pub fn key_span(&self, key: &str) -> Range<usize> {
        self.keys.iter().find(|k| k.get_ref() == key).map_or_else(|| self.name.span(), |k| k.span())
    }
}

/// The common keys of a `[[destinations]]` entry; any other key must be the kind's table.
pub const COMMON_KEYS: &[&str] =
    &["name", "batch_max_records", "batch_linger_ms", "retry", "batch_max_bytes", "max_concurrency", "max_buffered_records", "rate_limit", "dead_letter_breaker", "writeback"];

/// A destination kind's table as written: its name, where it is, and each top-level key and
/// value with their places, so the kind's parser can say which line is wrong.
#[derive(Debug, Clone)]
pub struct KindTable {
    name: Spanned<String>,
    span: Range<usize>,
    entries: Vec<(Spanned<String>, Spanned<toml::Value>)>,
}

impl KindTable {
    /// The kind's name: the table's key (`hubspot` in `[destinations.hubspot]`).
    pub fn name(&self) -> &str {
        self.name.get_ref()
    }

    /// Where the kind's name is written (the table header, or the inline table's key).
    pub fn name_span(&self) -> Range<usize> {
        self.name.span()
    }

    /// Where a top-level key of the table is written, if it is.
    pub fn key_span(&self, key: &str) -> Option<Range<usize>> {
        self.entries.iter().find(|(k, _)| k.get_ref() == key).map(|(k, _)| k.span())
    }

    /// The table's settings as `T` (a kind's settings struct). An error carries the span of the
    /// key or value it is about; errors about the whole table (a missing key) carry none.
    /// Secrets inside are resolved here, not before.
    pub fn deserialize<T: DeserializeOwned>(&self) -> Result<T, KindTableError> {
        T::deserialize(RawTable { entries: &self.entries })
    }

    /// The span of the table itself, when toml gave one; else its name's.
    pub fn span(&self) -> Range<usize> {
        if self.span.is_empty() {
            self.name.span()
        } else {
            self.span.clone()
        }
    }
}

/// An error deserializing a kind's table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KindTableError {
    /// serde's (or the setting's own) words.
    pub message: String,
    /// The key or value it is about, when there is one.
    pub span: Option<Range<usize>>,
}

impl fmt::Display for KindTableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for KindTableError {}

impl de::Error for KindTableError {
    fn custom<M: fmt::Display>(message: M) -> Self {
        KindTableError { message: message.to_string(), span: None }
    }
}

/// A kind table's entries as a serde map: keys and values are fed to the kind's settings one
/// by one, and an error is given the span of the key or value being read.
struct RawTable<'a> {
    entries: &'a [(Spanned<String>, Spanned<toml::Value>)],
}

impl<'de> Deserializer<'de> for RawTable<'_> {
    type Error = KindTableError;

    fn deserialize_any<V: de::Visitor<'de>>(self, visitor: V) -> Result<V::Value, KindTableError> {
        visitor.visit_map(RawEntries { entries: self.entries.iter(), value: None })
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option unit unit_struct
        newtype_struct seq tuple tuple_struct map struct enum identifier ignored_any
    }
}

struct RawEntries<'a> {
    entries: std::slice::Iter<'a, (Spanned<String>, Spanned<toml::Value>)>,
    value: Option<&'a Spanned<toml::Value>>,
}

impl<'de> MapAccess<'de> for RawEntries<'_> {
    type Error = KindTableError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, KindTableError> {
        let Some((key, value)) = self.entries.next() else { return Ok(None) };
        self.value = Some(value);
        let key_text: de::value::StrDeserializer<'_, KindTableError> = key.get_ref().as_str().into_deserializer();
        seed.deserialize(key_text)
            .map(Some)
            .map_err(|e| KindTableError { message: e.message, span: Some(e.span.unwrap_or_else(|| key.span())) })
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, KindTableError> {
        let value = self.value.take().expect("serde reads a value after its key");
        seed.deserialize(value.get_ref().clone())
            .map_err(|e: toml::de::Error| KindTableError { message: e.message().to_string(), span: Some(value.span()) })
    }
}

impl<'de> Deserialize<'de> for DestinationConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(EntryVisitor)
    }
}

/// Reads a `[[destinations]]` entry: the common keys typed, any other key as the kind.
struct EntryVisitor;

impl<'de> de::Visitor<'de> for EntryVisitor {
    type Value = DestinationConfig;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a destination table: name, common settings and one kind table")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<DestinationConfig, A::Error> {
        let mut name = None;
        let mut batch_max_records = None;
        let mut batch_linger_ms = None;
        let mut retry = None;
        let mut batch_max_bytes = None;
        let mut max_concurrency = None;
        let mut max_buffered_records = None;
        let mut rate_limit = None;
        let mut dead_letter_breaker = None;
        let mut writeback = None;
        let mut kind: Option<KindTable> = None;
        let mut keys = Vec::new();
        while let Some(key) = map.next_key::<Spanned<String>>()? {
            if COMMON_KEYS.contains(&key.get_ref().as_str()) {
                keys.push(key.clone());
            }
            match key.get_ref().as_str() {
                "name" => name = Some(map.next_value()?),
                "batch_max_records" => batch_max_records = Some(map.next_value()?),
                "batch_linger_ms" => batch_linger_ms = Some(map.next_value()?),
                "retry" => retry = Some(map.next_value()?),
                "batch_max_bytes" => batch_max_bytes = Some(map.next_value()?),
                "max_concurrency" => max_concurrency = Some(map.next_value()?),
                "max_buffered_records" => max_buffered_records = Some(map.next_value()?),
                "rate_limit" => rate_limit = Some(map.next_value()?),
                "dead_letter_breaker" => dead_letter_breaker = Some(map.next_value()?),
                "writeback" => writeback = Some(map.next_value()?),
                _ => {
                    // The seed refuses (so toml gives the error this value's line): a non-table,
                    // or a second table.
                    let first = kind.as_ref().map(|k| k.name().to_string());
                    kind = Some(map.next_value_seed(KindSeed { name: key, first })?);
                }
            }
        }
        let name = name.ok_or_else(|| de::Error::missing_field("name"))?;
        let Some(kind) = kind else {
            return Err(de::Error::custom(
                "destination has no kind table; add one, e.g. [destinations.webhook] (the kinds are listed in docs/destinations/README.md)",
            ));
        };
        Ok(DestinationConfig {
            name,
            batch_max_records: batch_max_records.unwrap_or_else(defaults::batch_max_records),
            batch_linger_ms: batch_linger_ms.unwrap_or_else(defaults::batch_linger_ms),
            retry: retry.unwrap_or_default(),
            batch_max_bytes: batch_max_bytes.unwrap_or_else(defaults::batch_max_bytes),
            max_concurrency: max_concurrency.unwrap_or_else(defaults::max_concurrency),
            max_buffered_records: max_buffered_records.unwrap_or_else(defaults::max_buffered_records),
            rate_limit: rate_limit.unwrap_or_default(),
            dead_letter_breaker: dead_letter_breaker.unwrap_or_default(),
            writeback: writeback.unwrap_or(false),
            kind,
            keys,
        })
    }
}

/// The value of a key that is not a common setting: it must be the (first) kind table.
struct KindSeed {
    name: Spanned<String>,
    /// The kind table already read, if any.
    first: Option<String>,
}

impl<'de> DeserializeSeed<'de> for KindSeed {
    type Value = KindTable;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<KindTable, D::Error> {
        let value = Spanned::<KindValue>::deserialize(deserializer)?;
        let span = value.span();
        let KindValue::Table(entries) = value.into_inner() else {
            return Err(de::Error::unknown_field(self.name.get_ref(), COMMON_KEYS));
        };
        if let Some(first) = self.first {
            return Err(de::Error::custom(format!(
                "destination has two kind tables, `{first}` and `{}`; a destination has exactly one kind",
                self.name.get_ref()
            )));
        }
        Ok(KindTable { name: self.name, span, entries })
    }
}

/// A value that may be a kind table: its entries with their spans, or something else.
enum KindValue {
    Table(Vec<(Spanned<String>, Spanned<toml::Value>)>),
    NotATable,
}

impl<'de> Deserialize<'de> for KindValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> de::Visitor<'de> for Visitor {
            type Value = KindValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a kind table")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<KindValue, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<Spanned<String>>()? {
                    entries.push((key, map.next_value::<Spanned<toml::Value>>()?));
                }
                // toml hands a date-time to serde as a one-key map of its own.
                if entries.iter().any(|(key, _)| key.get_ref().starts_with("$__toml_private")) {
                    return Ok(KindValue::NotATable);
                }
                Ok(KindValue::Table(entries))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<KindValue, E> {
                Ok(KindValue::NotATable)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<KindValue, E> {
                Ok(KindValue::NotATable)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<KindValue, E> {
                Ok(KindValue::NotATable)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<KindValue, E> {
                Ok(KindValue::NotATable)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<KindValue, E> {
                Ok(KindValue::NotATable)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<KindValue, A::Error> {
                while seq.next_element::<de::IgnoredAny>()?.is_some() {}
                Ok(KindValue::NotATable)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<DestinationConfig, toml::de::Error> {
        toml::from_str(text)
    }

    #[test]
    fn common_settings_are_typed_and_the_kind_kept_as_written() {
        let d = parse("name = \"d\"\nbatch_max_records = 7\n[hubspot]\naccess_token = { env = \"UNSET_IS_FINE_HERE\" }\nid_property = \"email\"\n").unwrap();
        assert_eq!((d.name.get_ref().as_str(), d.batch_max_records, d.batch_linger_ms), ("d", 7, 100));
        assert_eq!(d.kind.name(), "hubspot");
        assert!(!d.writeback, "writeback is opt-in");
        assert!(parse("name = \"d\"\nwriteback = true\n[webhook]\nurl = \"u\"\n").unwrap().writeback);
        assert!(d.kind.key_span("id_property").is_some() && d.kind.key_span("nope").is_none());
        #[derive(Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        struct Settings {
            #[allow(dead_code)]
            access_token: toml::Value,
            id_property: String,
        }
        assert_eq!(d.kind.deserialize::<Settings>().unwrap().id_property, "email");
    }

    #[test]
    fn kind_table_errors_carry_the_key_or_value_span() {
        let text = "name = \"d\"\n[hubspot]\nid_property = \"email\"\nid_propertyy = 1\n";
        let d = parse(text).unwrap();
        #[derive(Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct Settings {
            id_property: String,
        }
        let error = d.kind.deserialize::<Settings>().unwrap_err();
        assert!(error.message.contains("unknown field `id_propertyy`"), "{error}");
        assert_eq!(&text[error.span.unwrap()], "id_propertyy");
        #[derive(Deserialize, Debug)]
        #[allow(dead_code)]
        struct Typed {
            id_property: u32,
        }
        let error = d.kind.deserialize::<Typed>().unwrap_err();
        assert_eq!(&text[error.span.unwrap()], "\"email\"");
    }

    #[test]
    fn a_non_table_unknown_key_no_kind_and_two_kinds_are_refused() {
        let e = parse("name = \"d\"\nbatch_max_record = 5\n[webhook]\nurl = \"u\"\n").unwrap_err();
        assert!(e.message().contains("unknown field `batch_max_record`"), "{e}");
        let e = parse("name = \"d\"\n").unwrap_err();
        assert!(e.message().contains("no kind table"), "{e}");
        let e = parse("name = \"d\"\n[webhook]\nurl = \"u\"\n[redis]\nurl = \"r\"\n").unwrap_err();
        assert!(e.message().contains("two kind tables, `webhook` and `redis`"), "{e}");
    }
}
