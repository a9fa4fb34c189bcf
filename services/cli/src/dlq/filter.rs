//! Which dead letters a `sluice dlq` command acts on: `--error-class`, `--since`, `--until`,
//! `--key`, all of them (an absent option matches everything).

use sluice_core::DeadLetterClass;

use super::letters::Letter;

/// The filter options, as typed.
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct FilterArgs {
    /// Only dead letters of this class: permanent, retryable, decode, compacted_delete.
    #[arg(long)]
    pub error_class: Option<String>,
    /// Only dead letters that (last) failed at or after this RFC 3339 time.
    #[arg(long)]
    pub since: Option<String>,
    /// Only dead letters that (last) failed before this RFC 3339 time.
    #[arg(long)]
    pub until: Option<String>,
    /// Only dead letters of this key: a JSON object of key columns, e.g. '{"id":42}' (every
    /// column given must be equal; the key is decoded with its writer schema).
    #[arg(long)]
    pub key: Option<String>,
}

/// A parsed filter.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Filter {
    class: Option<DeadLetterClass>,
    since_ms: Option<i64>,
    until_ms: Option<i64>,
    key: Option<serde_json::Map<String, serde_json::Value>>,
}

impl Filter {
    /// Parse the options; the error names the option and what it expects.
    pub(crate) fn parse(args: &FilterArgs) -> Result<Filter, String> {
        let class = args
            .error_class
            .as_deref()
            .map(|label| {
                DeadLetterClass::parse(label).map_err(|_| {
                    let known: Vec<&str> = DeadLetterClass::ALL.iter().map(|c| c.label()).collect();
                    format!("--error-class {label:?} is not a dead-letter class (one of: {})", known.join(", "))
                })
            })
            .transpose()?;
        let time = |option: &str, text: &Option<String>| -> Result<Option<i64>, String> {
            text.as_deref()
                .map(|t| chrono::DateTime::parse_from_rfc3339(t).map(|t| t.timestamp_millis()).map_err(|_| format!("--{option} {t:?} is not an RFC 3339 time (2024-05-01T12:00:00Z)")))
                .transpose()
        };
        let key = args
            .key
            .as_deref()
            .map(|text| match serde_json::from_str::<serde_json::Value>(text) {
                Ok(serde_json::Value::Object(map)) if !map.is_empty() => Ok(map),
                _ => Err(format!("--key {text:?} is not a JSON object of key columns, e.g. '{{\"id\":42}}'")),
            })
            .transpose()?;
        Ok(Filter { class, since_ms: time("since", &args.since)?, until_ms: time("until", &args.until)?, key })
    }

    /// Whether `--key` was given (the keys must then be decoded).
    pub(crate) fn needs_key(&self) -> bool {
        self.key.is_some()
    }

    /// Whether `letter` matches; `key` is its decoded key (needed only with `--key`: a letter
    /// whose key could not be decoded matches no `--key`).
    pub(crate) fn matches(&self, letter: &Letter, key: Option<&serde_json::Map<String, serde_json::Value>>) -> bool {
        let class = self.class.is_none_or(|c| letter.class() == c.label());
        let at = letter.failed_at_ms();
        let since = self.since_ms.is_none_or(|since| at.is_some_and(|at| at >= since));
        let until = self.until_ms.is_none_or(|until| at.is_some_and(|at| at < until));
        let key = self.key.as_ref().is_none_or(|wanted| key.is_some_and(|key| wanted.iter().all(|(column, value)| key.get(column) == Some(value))));
        class && since && until && key
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use sluice_kafka::headers::dlq;

    use super::super::letters::tests::letter;
    use super::*;

    fn filter(class: Option<&str>, since: Option<&str>, until: Option<&str>, key: Option<&str>) -> Result<Filter, String> {
        Filter::parse(&FilterArgs { error_class: class.map(String::from), since: since.map(String::from), until: until.map(String::from), key: key.map(String::from) })
    }

    #[test]
    fn every_given_option_must_match() {
        // 2024-05-01T12:00:00Z = 1714564800000.
        let l = letter(0, 1, &[(dlq::ERROR_CLASS, "permanent"), (dlq::LAST_FAILURE_MS, "1714564800000")]);
        let key = json!({"id": 42, "region": "eu"});
        let key = key.as_object();
        assert!(filter(None, None, None, None).unwrap().matches(&l, None));
        assert!(filter(Some("permanent"), Some("2024-05-01T12:00:00Z"), Some("2024-05-01T12:00:01Z"), Some(r#"{"id":42}"#)).unwrap().matches(&l, key));
        assert!(!filter(Some("retryable"), None, None, None).unwrap().matches(&l, key));
        assert!(!filter(None, Some("2024-05-01T12:00:01Z"), None, None).unwrap().matches(&l, key), "since is inclusive of the later time only");
        assert!(!filter(None, None, Some("2024-05-01T12:00:00Z"), None).unwrap().matches(&l, key), "until is exclusive");
        assert!(!filter(None, None, None, Some(r#"{"id":43}"#)).unwrap().matches(&l, key));
        assert!(!filter(None, None, None, Some(r#"{"id":42}"#)).unwrap().matches(&l, None), "an undecodable key matches no --key");
    }

    #[test]
    fn bad_options_are_named() {
        assert!(filter(Some("fatal"), None, None, None).unwrap_err().contains("--error-class \"fatal\" is not a dead-letter class (one of: permanent, retryable, decode, compacted_delete)"));
        assert!(filter(None, Some("yesterday"), None, None).unwrap_err().contains("--since \"yesterday\" is not an RFC 3339 time"));
        assert!(filter(None, None, Some("2024-05-01"), None).unwrap_err().contains("--until"));
        for bad in ["42", "{}", "{oops"] {
            assert!(filter(None, None, None, Some(bad)).unwrap_err().contains("is not a JSON object of key columns"), "{bad}");
        }
    }
}
