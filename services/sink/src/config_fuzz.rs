//! No configuration input panics the loader, and whatever it accepts becomes the runtime
//! objects without panicking (issue 12).
//!
//! A hand-rolled, seeded generator (reproducible: the seed and the input are printed on a
//! failure) feeds [`Config::parse`] + [`validate`] with (1) structured mutations of a valid
//! config that uses every section and every destination kind — a value replaced by an
//! extreme (`inf`, `nan`, `-0`, `1e-300`, `1e300`, huge integers, empty and unicode strings,
//! tables, dates...), lines dropped, duplicated or truncated — and (2) arbitrary TOML-ish text.
//! Each input must give `Ok` or an error, never a panic; each config accepted for `Scope::All`
//! must build every destination, rate limiter, retry backoff, `Duration` and `Instant` the
//! services derive from it. `SLUICE_FUZZ_CASES` and `SLUICE_FUZZ_SEED` run more or other cases.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

use sluice_core::config::{Config, Scope};
use sluice_destinations::{build, validate};

use crate::deliver::Retries;
use crate::limits::{AdaptiveConcurrency, RateLimits};

/// A valid config using every section, every kind and most keys; mutations start from it.
const BASE: &str = r#"
[kafka]
bootstrap_servers = "127.0.0.1:9092"
topic_prefix = "fuzz"
partitions = 3
replication_factor = 1
properties = { "session.timeout.ms" = "6000", "sasl.oauthbearer.client.secret" = { env = "SLUICE_FUZZ_TOKEN" } }

[warehouse]
name = "w"
kind = "postgres"
url = { env = "SLUICE_FUZZ_WAREHOUSE" }

[[models]]
name = "customers"
table = "public.customers"
primary_key = ["id"]
columns = ["id", "email", "phone", "opt_in", "score", "external_id", "updated_at", "created_at", "deleted_at"]
detection = { mode = "cursor", cursor_column = "updated_at", created_column = "created_at", lookback_ms = 60000, deleted_column = "deleted_at", reconcile_interval_ms = 3600000 }
poll_interval_ms = 1000
cron = "0 */15 * * * *"
notify_channel = "customers_changed"
batch_rows = 10000
allow_additions = false

[[models]]
name = "orders"
query = "select id, email, total from orders"
primary_key = ["id"]
columns = ["id", "email", "total"]
detection = { mode = "diff" }
gates = { max_change_pct = 20.0, min_rows = 1, max_rows = 1000000 }

[[destinations]]
name = "hook"
batch_max_records = 500
batch_max_bytes = 4194304
batch_linger_ms = 100
max_concurrency = 8
max_buffered_records = 10000
retry = { initial_backoff_ms = 200, max_backoff_ms = 30000, max_attempts = 10, retry_on_statuses = [409] }
rate_limit = { requests_per_second = 10.0, records_per_second = 1000.0 }
[destinations.webhook]
url = "http://127.0.0.1:1/hook"
headers = { "x-team" = "data", authorization = { env = "SLUICE_FUZZ_TOKEN" } }
timeout_ms = 10000
signing_secret = { env = "SLUICE_FUZZ_SIGNING" }

[[destinations]]
name = "cache"
[destinations.redis]
url = { env = "SLUICE_FUZZ_REDIS" }
mode = "set"
key_template = "sluice:{model}:{key}"
set_key = "suppressed"
member_field = "email"
ttl_secs = 86400
timeout_ms = 1000

[[destinations]]
name = "crm"
rate_limit = { requests_per_second = 0.5 }
[destinations.hubspot]
base_url = "https://api.hubapi.com"
access_token = { env = "SLUICE_FUZZ_TOKEN" }
object_type = "contacts"
id_property = "email"
id_field = "email"
max_inputs_per_request = 100
portal_time_zone = "America/New_York"
ten_secondly_backoff_ms = 10000
multi_status = true
on_delete = "skip"
timeout_ms = 10000

[[destinations]]
name = "engage"
[destinations.braze]
base_url = "https://rest.iad-01.braze.com"
api_key = { env = "SLUICE_FUZZ_TOKEN" }
identifier = "external_id"
identifier_field = "external_id"
mode = "attributes"
max_objects_per_request = 75
unsubscribe_email = true
subscription_group_ids = ["g1"]
timeout_ms = 10000

[[destinations]]
name = "ads"
[destinations.meta]
base_url = "https://graph.facebook.com"
api_version = "v21.0"
access_token = { env = "SLUICE_FUZZ_TOKEN" }
token_placement = "query"
audience_id = "23851234567890"
identifiers = { email = "EMAIL", phone = "PHONE" }
mode = "audience"
max_rows_per_request = 10000
timeout_ms = 10000

[[destinations]]
name = "sf"
[destinations.salesforce]
instance_url = "https://acme.my.salesforce.com"
access_token = { env = "SLUICE_FUZZ_TOKEN" }
api_version = "v62.0"
sobject = "Contact"
external_id_field = "Warehouse_Id__c"
max_records_per_request = 200
retryable_error_codes = ["UNABLE_TO_LOCK_ROW"]
allocation_exhausted_wait_secs = 3600
on_delete = "reject"
timeout_ms = 10000

[[syncs]]
model = "customers"
destination = "hook"
mode = "upsert"
fields = { email = "email", label = { template = "{id}: {email}" }, source = { value = "warehouse" }, score = { column = "score", transforms = ["trim"], type = "float" } }
consent = { column = "opt_in", equals = true }

[[syncs]]
model = "customers"
destination = "cache"
fields = { email = { column = "email", transforms = ["normalize_email"] } }

[[syncs]]
model = "customers"
destination = "crm"
fields = { email = "email" }

[[syncs]]
model = "customers"
destination = "engage"
fields = { external_id = "external_id", email = "email" }

[[syncs]]
model = "customers"
destination = "ads"
mode = "audience"
fields = { email = "email", phone = { column = "phone", transforms = ["normalize_phone"] } }
consent = { column = "opt_in" }

[[syncs]]
model = "customers"
destination = "sf"
fields = { Warehouse_Id__c = "id", Email = "email" }

[[syncs]]
model = "orders"
destination = "hook"
mode = "append"
fields = { total = "total" }
"#;

/// Values that have broken parsers and conversions before, or could.
const EXTREMES: &[&str] = &[
    "inf", "-inf", "+inf", "nan", "-nan", "0", "-0", "-0.0", "0.0", "1", "-1", "0.5", "1e-300", "1e-20", "1e300", "5e-324", "1.7976931348623157e308",
    "18446744073709551615", "9223372036854775807", "-9223372036854775808", "4294967296", "2147483648", "65536", "86400001", "1e9", "1e6", "999999999999",
    "\"\"", "\" \"", "\"é🦀\\u0000\"", "\"\\n\"", "\"x\"", "\"0 0 31 2 *\"", "\"* * * * * * *\"", "\"@yearly\"", "\"L W # ?\"", "\"*/0 * * * *\"", "\"60 * * * *\"",
    "\"0 0 0 29 2 *\"", "\"http://\"", "\"https://[::1]:99999/x\"", "\"Mars/Olympus\"", "\"utc\"", "\"EMAIL_SHA256\"", "\"email\"", "\"{key}\"", "\"{\"", "\"}{\"",
    "true", "false", "[]", "[0]", "[\"a\", 1]", "{}", "{ env = \"SLUICE_FUZZ_UNSET\" }", "{ file = \"/nonexistent\" }", "{ env = \"\" }",
    "1979-05-27T07:32:00Z", "1979-05-27", "07:32:00",
];

/// Values inside or at the edge of the ranges, so that many mutations are accepted and reach
/// the runtime conversions.
const PLAUSIBLE: &[&str] = &[
    "1", "2", "3", "8", "75", "100", "200", "1000", "10000", "0.001", "0.0000116", "0.5", "1.0", "999999.0", "1000000", "1000000000", "600000", "86400000",
    "604800000", "2592000000", "3600", "86400", "3153600000", "1024", "268435456", "\"*/5 * * * *\"", "\"0 0 1 1 *\"", "\"0 0 29 2 *\"", "\"59 59 23 31 12 *\"",
    "\"Europe/Paris\"", "\"https://example.com/x\"", "\"v1\"", "\"a\"", "true", "false", "[]", "[429, 599]",
];

/// A small, seedable generator (xorshift64*): reproducible without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

/// Byte ranges of the scalar values written after `= ` (a string, a number, a word, an
/// array), including inside inline tables: the sites a mutation replaces.
fn value_sites(text: &str) -> Vec<(usize, usize)> {
    let bytes = text.as_bytes();
    let mut sites = Vec::new();
    let mut i = 0;
    while let Some(found) = text[i..].find("= ") {
        let start = i + found + 2;
        let end = match bytes.get(start) {
            Some(b'"') => text[start + 1..].find('"').map_or(text.len(), |e| start + e + 2),
            Some(b'[') => text[start..].find(']').map_or(text.len(), |e| start + e + 1),
            Some(b'{') | None => {
                i = start;
                continue;
            }
            Some(_) => text[start..].find([',', '}', '\n', ' ']).map_or(text.len(), |e| start + e),
        };
        sites.push((start, end));
        i = start;
    }
    sites
}

/// One or two mutations of `BASE`, most of them a value replaced.
fn mutate(rng: &mut Rng) -> String {
    let mut text = BASE.to_string();
    for _ in 0..(1 + usize::from(rng.below(3) == 0)) {
        let sites = value_sites(&text);
        if sites.is_empty() || text.lines().count() == 0 {
            break;
        }
        match rng.below(14) {
            0..=9 => {
                let (start, end) = sites[rng.below(sites.len())];
                // Half the time an extreme of any type; else a plausible value of the same type
                // as the one replaced, so that many mutants are accepted and built.
                let value = if rng.below(2) == 0 {
                    rng.pick(EXTREMES)
                } else {
                    let quoted = text[start..end].starts_with('"');
                    let same: Vec<&str> = PLAUSIBLE.iter().copied().filter(|v| v.starts_with('"') == quoted).collect();
                    rng.pick(&same)
                };
                text.replace_range(start..end, value);
            }
            10 => {
                let lines: Vec<&str> = text.lines().collect();
                let drop = rng.below(lines.len());
                text = lines.iter().enumerate().filter(|(i, _)| *i != drop).map(|(_, l)| *l).collect::<Vec<_>>().join("\n");
            }
            11 => {
                let lines: Vec<&str> = text.lines().collect();
                let line = lines[rng.below(lines.len())].to_string();
                let at = rng.below(lines.len());
                let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
                out.insert(at, line);
                text = out.join("\n");
            }
            12 => {
                let mut cut = rng.below(text.len());
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                text.truncate(cut);
            }
            _ => {
                let keys = ["requests_per_second", "batch_linger_ms", "cron", "timeout_ms", "ttl_secs", "max_concurrency", "batch_rows", "lookback_ms", "partitions", "equals"];
                let lines: Vec<&str> = text.lines().collect();
                let at = rng.below(lines.len());
                let line = format!("{} = {}", rng.pick(&keys), rng.pick(EXTREMES));
                let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
                out.insert(at, line);
                text = out.join("\n");
            }
        }
    }
    text
}

/// Arbitrary TOML-ish text from keys, punctuation, values and odd characters.
fn noise(rng: &mut Rng) -> String {
    const TOKENS: &[&str] = &[
        "[", "]", "[[", "]]", "{", "}", "=", " = ", ",", "\n", "\"", ".", "kafka", "warehouse", "models", "destinations", "syncs", "name", "kind", "url",
        "webhook", "redis", "hubspot", "braze", "meta", "salesforce", "rate_limit", "requests_per_second", "detection", "mode", "fields", "consent",
        "bootstrap_servers", "postgres", "duckdb", "path", "columns", "primary_key", "\"x\"", "1", "inf", "nan", "-0", "1e300", "é", "🦀", "\u{0}", "#", "'",
        "'''", "\"\"\"", "\\", "\t", "true", "$__toml_private_datetime",
    ];
    let mut text = String::new();
    for _ in 0..rng.below(80) {
        if rng.below(6) == 0 {
            text.push_str(rng.pick(EXTREMES));
        } else {
            text.push_str(rng.pick(TOKENS));
        }
    }
    text
}

/// Parse and validate in every scope; when `All` accepts, build what the services build.
fn exercise(text: &str) -> bool {
    let Ok(config) = Config::parse("fuzz.toml", text) else { return false };
    // Every scope runs to an answer; only `All`'s decides what is built below.
    for scope in [Scope::Poller, Scope::Sink("hook".into()), Scope::Sink("nowhere".into())] {
        if let Err(error) = validate(&config, &scope) {
            assert!(!error.message.is_empty(), "{scope}: an error says what is wrong");
        }
    }
    if validate(&config, &Scope::All).is_err() {
        return false;
    }
    runtime(&config);
    true
}

/// What the poller and the sinks derive from an accepted config, each conversion as they do it.
fn runtime(config: &Config) {
    config.warehouse.location().expect("the warehouse of an accepted config locates");
    assert!(i16::try_from(config.kafka.replication_factor).is_ok() && config.kafka.partitions > 0);
    let now = Instant::now();
    for model in &config.models {
        if let Some(cron) = model.cron_schedule().expect("an accepted cron parses") {
            cron.find_next_occurrence(&chrono::Utc::now(), false).expect("an accepted cron fires");
        }
        let _ = now + Duration::from_millis(model.poll_interval_ms);
        assert!(model.batch_rows.checked_add(3).is_some());
        if let sluice_core::config::Detection::Cursor { lookback_ms, reconcile_interval_ms, .. } = &model.detection {
            let _ = now + Duration::from_millis(reconcile_interval_ms.unwrap_or(1));
            assert!(i64::try_from(lookback_ms.unwrap_or(0)).ok().and_then(|ms| ms.checked_mul(1000)).is_some());
        }
    }
    for destination in &config.destinations {
        build(config, destination).expect("an accepted destination builds");
        RateLimits::new(&destination.rate_limit).expect("accepted rates make a limiter");
        let mut retries = Retries::new(&destination.retry);
        for _ in 0..destination.retry.max_attempts.min(30) {
            if let Some(delay) = retries.backoff.next() {
                let _ = tokio::time::Instant::now() + delay;
            }
        }
        let _ = tokio::time::Instant::now() + Duration::from_millis(destination.batch_linger_ms);
        let concurrency = AdaptiveConcurrency::new(destination.max_concurrency);
        assert!(concurrency.limit() >= 1);
        let _lanes: Vec<u8> = Vec::with_capacity(destination.max_concurrency);
    }
}

#[test]
fn no_config_input_panics_and_accepted_configs_build() {
    std::env::set_var("SLUICE_FUZZ_TOKEN", "t0ken");
    std::env::set_var("SLUICE_FUZZ_WAREHOUSE", "postgres://u:p@127.0.0.1/db");
    std::env::set_var("SLUICE_FUZZ_REDIS", "redis://127.0.0.1:6379");
    std::env::set_var("SLUICE_FUZZ_SIGNING", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
    std::env::remove_var("SLUICE_FUZZ_UNSET");
    assert!(exercise(BASE), "the base config is valid: {:?}", Config::parse("fuzz.toml", BASE).map(|c| validate(&c, &Scope::All)));
    let cases: usize = std::env::var("SLUICE_FUZZ_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(1500);
    let seed: u64 = std::env::var("SLUICE_FUZZ_SEED").ok().and_then(|n| n.parse().ok()).unwrap_or(0x5EED_C0F1);
    let mut rng = Rng(seed | 1);
    let (mut accepted, mut refused) = (0, 0);
    for case in 0..cases {
        let text = if case % 3 == 2 { noise(&mut rng) } else { mutate(&mut rng) };
        match catch_unwind(AssertUnwindSafe(|| exercise(&text))) {
            Ok(true) => accepted += 1,
            Ok(false) => refused += 1,
            Err(_) => panic!("case {case} (seed {seed}) panicked on this input:\n{text}"),
        }
    }
    // Both outcomes occur, so the mutations reach the runtime conversions and the refusals.
    assert!(accepted > cases / 25 && refused > cases / 25, "accepted {accepted}, refused {refused}");
}
