//! The validation's cases: each is a config that parsed (and that `sluice check` accepted
//! before there was a validation) but would fail or misbehave at run time.

use std::path::PathBuf;

use sluice_core::config::{Config, ConfigError, Scope};

use super::validate;

/// Kafka, a PostgreSQL warehouse whose URL comes from `SLUICE_TEST_VALIDATE_WAREHOUSE`, a model
/// `customers` (line 8) and then `rest` (destinations and syncs).
fn config(model_extra: &str, rest: &str) -> Config {
    std::env::set_var("SLUICE_TEST_VALIDATE_WAREHOUSE", "postgres://u:p@h/db");
    let text = format!(
        "[kafka]\nbootstrap_servers = \"127.0.0.1:9092\"\n\n[warehouse]\nkind = \"postgres\"\nurl = {{ env = \"SLUICE_TEST_VALIDATE_WAREHOUSE\" }}\n\n[[models]]\nname = \"customers\"\ntable = \"customers\"\nprimary_key = [\"id\"]\ncolumns = [\"id\", \"email\", \"opt_in\", \"sf_id\"]\ndetection = {{ mode = \"diff\" }}\n{model_extra}\n{rest}"
    );
    Config::parse("sluice.toml", &text).unwrap_or_else(|e| panic!("{e}"))
}

fn secret(var: &str, value: &str) -> String {
    std::env::set_var(var, value);
    format!("{{ env = \"{var}\" }}")
}

fn line_of(error: &ConfigError, text_line: usize) {
    assert_eq!(error.line, Some(text_line), "{error}");
}

/// A destination `d` of the kind table given, and a sync of `customers` to it mapping `fields`.
fn one(kind_table: &str, fields: &str) -> String {
    format!("[[destinations]]\nname = \"d\"\n{kind_table}\n\n[[syncs]]\nmodel = \"customers\"\ndestination = \"d\"\nfields = {fields}\n")
}

#[test]
fn an_identifier_field_no_sync_maps_is_refused_for_each_kind() {
    let token = secret("SLUICE_TEST_VALIDATE_TOKEN", "t0ken");
    let cases = [
        // Meta honours only audience-like modes (the sync's `mode` line comes after `fields`).
        (format!("[destinations.meta]\naccess_token = {token}\naudience_id = \"1\"\nidentifiers = {{ email = \"EMAIL\", phone = \"PHONE\" }}"), "{ email = \"email\" }\nmode = \"audience\"", "field \"phone\" (meta.identifiers)"),
        (
            format!("[destinations.salesforce]\ninstance_url = \"https://x.my.salesforce.com\"\naccess_token = {token}\nsobject = \"Contact\"\nexternal_id_field = \"Warehouse_Id__c\""),
            "{ Email = \"email\", sf_id = \"sf_id\" }",
            "field \"Warehouse_Id__c\" (salesforce.external_id_field)",
        ),
        (format!("[destinations.braze]\nbase_url = \"https://rest.iad-01.braze.com\"\napi_key = {token}"), "{ email = \"email\" }", "field \"external_id\" (braze.identifier)"),
        (format!("[destinations.braze]\nbase_url = \"https://rest.iad-01.braze.com\"\napi_key = {token}\nidentifier_field = \"uid\""), "{ email = \"email\" }", "field \"uid\" (braze.identifier_field)"),
        (format!("[destinations.hubspot]\naccess_token = {token}\nid_property = \"email\""), "{ mail = \"email\" }", "field \"email\" (hubspot.id_property)"),
        (format!("[destinations.redis]\nurl = {}\nmode = \"set\"\nset_key = \"s\"\nmember_field = \"email\"", secret("SLUICE_TEST_VALIDATE_REDIS", "redis://127.0.0.1:6379")), "{ mail = \"email\" }", "field \"email\" (redis.member_field)"),
    ];
    for (table, fields, named) in cases {
        let config = config("", &one(&table, fields));
        let error = validate(&config, &Scope::Sink("d".into())).unwrap_err();
        assert!(error.message.contains(named), "{table}: {error}");
        assert!(error.message.contains("every record would be refused"), "{error}");
        assert!(error.fix.contains("docs/destinations/") && error.fix.contains(".md#keys"), "{error}");
        assert_eq!(error.line, Some(21 + table.lines().count()), "the sync's `fields`: {error}");
        assert!(validate(&config, &Scope::Poller).is_ok(), "the poller does not check destinations");
    }
}

#[test]
fn an_identifier_field_is_satisfied_by_a_mapped_field_or_a_key_column() {
    let token = secret("SLUICE_TEST_VALIDATE_TOKEN", "t0ken");
    let braze = format!("[destinations.braze]\nbase_url = \"https://rest.iad-01.braze.com\"\napi_key = {token}");
    validate(&config("", &one(&braze, "{ external_id = \"id\", email = \"email\" }")), &Scope::All).unwrap_or_else(|e| panic!("{e}"));
    let by_key = format!("[destinations.braze]\nbase_url = \"https://rest.iad-01.braze.com\"\napi_key = {token}\nidentifier_field = \"id\"");
    validate(&config("", &one(&by_key, "{ email = \"email\" }")), &Scope::All).unwrap_or_else(|e| panic!("records carry their key: {e}"));
}

/// A contract file for `customers` with `opt_in` of the given Avro type.
fn contract(name: &str, opt_in: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("sluice-validate-{}-{name}.avsc", std::process::id()));
    let fields = format!(r#"[{{"name":"id","type":"long"}},{{"name":"email","type":["null","string"]}},{{"name":"opt_in","type":{opt_in}}},{{"name":"sf_id","type":"string"}}]"#);
    std::fs::write(&path, format!(r#"{{"type":"record","name":"Row","namespace":"sluice.models.customers","fields":{fields}}}"#)).unwrap();
    path
}

#[test]
fn a_consent_value_of_another_type_than_its_column_is_refused() {
    let path = contract("consent", r#"["null","boolean"]"#);
    let webhook = "[destinations.webhook]\nurl = \"http://127.0.0.1:1/hook\"";
    let sync = |equals: &str| format!("{}consent = {{ column = \"opt_in\", equals = {equals} }}\n", one(webhook, "{ email = \"email\" }"));
    let with_contract = format!("schema_contract = \"{}\"", path.display());
    let error = validate(&config(&with_contract, &sync("\"yes\"")), &Scope::All).unwrap_err();
    assert!(error.message.contains("consent equals = \"yes\" is a string, which never equals a boolean value"), "{error}");
    assert!(error.message.contains("every row would count as not consenting and be removed"), "{error}");
    line_of(&error, 21);
    validate(&config(&with_contract, &sync("true")), &Scope::All).unwrap_or_else(|e| panic!("{e}"));
    validate(&config("", &sync("\"yes\"")), &Scope::All).expect("without a contract the type is unknown: the sink checks it at the first event");
    let error = validate(&config(&with_contract, &sync("1")), &Scope::Sink("d".into())).unwrap_err();
    assert!(error.message.contains("equals = 1 is an integer, which never equals a boolean value"), "{error}");
}

#[test]
fn a_contract_that_disagrees_with_the_columns_or_is_missing_is_refused_for_the_poller() {
    std::env::set_var("SLUICE_TEST_VALIDATE_WAREHOUSE", "postgres://u:p@h/db");
    let webhook = one("[destinations.webhook]\nurl = \"http://127.0.0.1:1/hook\"", "{ email = \"email\" }");
    let path = contract("columns", "\"boolean\"");
    validate(&config(&format!("schema_contract = \"{}\"", path.display()), &webhook), &Scope::Poller).unwrap_or_else(|e| panic!("{e}"));
    let text = std::fs::read_to_string(&path).unwrap().replace("sf_id", "salesforce_id");
    std::fs::write(&path, text).unwrap();
    let error = validate(&config(&format!("schema_contract = \"{}\"", path.display()), &webhook), &Scope::Poller).unwrap_err();
    assert!(error.message.contains("has column \"salesforce_id\", which `columns` does not list"), "{error}");
    line_of(&error, 9);
    let error = validate(&config("schema_contract = \"/nonexistent/customers.avsc\"", &webhook), &Scope::All).unwrap_err();
    assert!(error.message.contains("cannot be read"), "{error}");
    assert!(error.fix.contains("sluice schema export customers"), "{error}");
    validate(&config("schema_contract = \"/nonexistent/customers.avsc\"", &webhook), &Scope::Sink("d".into())).expect("a sink does not read contracts it cannot find");
}

/// Issue 12: a sink needs its own destination's secret and Kafka's, not the warehouse URL nor
/// another vendor's key; the poller needs the warehouse's and no vendor's.
#[test]
fn each_scope_resolves_only_its_own_secrets() {
    let own = secret("SLUICE_TEST_VALIDATE_HUBSPOT", "t0ken");
    std::env::remove_var("SLUICE_TEST_VALIDATE_META_UNSET");
    std::env::remove_var("SLUICE_TEST_VALIDATE_WAREHOUSE_UNSET");
    let text = format!(
        "[kafka]\nbootstrap_servers = \"127.0.0.1:9092\"\n\n[warehouse]\nkind = \"postgres\"\nurl = {{ env = \"SLUICE_TEST_VALIDATE_WAREHOUSE_UNSET\" }}\n\n[[models]]\nname = \"customers\"\ntable = \"customers\"\nprimary_key = [\"id\"]\ncolumns = [\"id\", \"email\"]\ndetection = {{ mode = \"diff\" }}\n\n\
         [[destinations]]\nname = \"crm\"\n[destinations.hubspot]\naccess_token = {own}\n\n\
         [[destinations]]\nname = \"ads\"\n[destinations.meta]\naccess_token = {{ env = \"SLUICE_TEST_VALIDATE_META_UNSET\" }}\naudience_id = \"1\"\nidentifiers = {{ email = \"EMAIL\" }}\n\n\
         [[syncs]]\nmodel = \"customers\"\ndestination = \"crm\"\nfields = {{ email = \"email\" }}\n\n[[syncs]]\nmodel = \"customers\"\ndestination = \"ads\"\nfields = {{ email = \"email\" }}\n"
    );
    let config = Config::parse("sluice.toml", &text).unwrap_or_else(|e| panic!("parsing resolves no warehouse or vendor secret: {e}"));
    validate(&config, &Scope::Sink("crm".into())).unwrap_or_else(|e| panic!("the HubSpot sink needs neither the warehouse URL nor Meta's token: {e}"));
    let error = validate(&config, &Scope::Sink("ads".into())).unwrap_err();
    assert!(error.message.contains("SLUICE_TEST_VALIDATE_META_UNSET is not set"), "{error}");
    line_of(&error, 23);
    let error = validate(&config, &Scope::Poller).unwrap_err();
    assert!(error.message.contains("[warehouse] url: environment variable SLUICE_TEST_VALIDATE_WAREHOUSE_UNSET is not set"), "{error}");
    line_of(&error, 6);
    std::env::set_var("SLUICE_TEST_VALIDATE_WAREHOUSE_UNSET", "postgres://u:p@h/db");
    let poller = validate(&config, &Scope::Poller);
    std::env::remove_var("SLUICE_TEST_VALIDATE_WAREHOUSE_UNSET");
    poller.unwrap_or_else(|e| panic!("the poller needs no vendor's secret: {e}"));
    let error = validate(&config, &Scope::All).unwrap_err();
    assert!(error.message.contains("is not set"), "check resolves everything: {error}");
}

#[test]
fn a_sink_of_an_unknown_or_unused_destination_is_refused() {
    let config = config("", "[[destinations]]\nname = \"idle\"\n[destinations.webhook]\nurl = \"http://127.0.0.1:1/hook\"\n");
    let error = validate(&config, &Scope::Sink("idle".into())).unwrap_err();
    assert!(error.message.contains("no [[syncs]] deliver to destination \"idle\""), "{error}");
    line_of(&error, 16);
    let error = validate(&config, &Scope::Sink("other".into())).unwrap_err();
    assert_eq!((error.message.as_str(), error.fix.as_str()), ("no destination named \"other\"", "name one of the [[destinations]]: idle"));
}

#[test]
fn kind_settings_that_would_fail_every_request_are_refused() {
    let token = secret("SLUICE_TEST_VALIDATE_TOKEN", "t0ken");
    let cases = [
        ("[destinations.webhook]\nurl = \"not a url\"".to_string(), "webhook.url: \"not a url\" is not a URL"),
        ("[destinations.webhook]\nurl = \"ftp://x/hook\"".to_string(), "is not an http(s) URL"),
        ("[destinations.webhook]\nurl = \"http://x/hook\"\ntimeout_ms = 0".to_string(), "webhook.timeout_ms: 0 is out of range; it must be between 1 and 600000"),
        (format!("[destinations.salesforce]\ninstance_url = \"acme.my.salesforce.com\"\naccess_token = {token}\nsobject = \"Contact\"\nexternal_id_field = \"id\""), "salesforce.instance_url"),
        (format!("[destinations.braze]\nbase_url = \"https://rest.iad-01.braze.com\"\napi_key = {token}\nmax_objects_per_request = 500"), "braze.max_objects_per_request: 500 is out of range"),
        (format!("[destinations.hubspot]\naccess_token = {token}\nten_secondly_backoff_ms = 9223372036854775807"), "hubspot.ten_secondly_backoff_ms"),
        (format!("[destinations.meta]\naccess_token = {token}\naudience_id = \"1\"\nidentifiers = {{ email = \"EMAIL\" }}\nbase_url = \"\""), "meta.base_url"),
        (format!("[destinations.redis]\nurl = {}\nttl_secs = 9223372036854775807", secret("SLUICE_TEST_VALIDATE_REDIS", "redis://127.0.0.1:6379")), "redis.ttl_secs"),
    ];
    for (table, expected) in cases {
        let config = config("", &one(&table, "{ email = \"email\", id = \"id\" }"));
        let error = validate(&config, &Scope::All).unwrap_err();
        assert!(error.message.contains(expected), "{table}: {error}");
        assert!(!error.fix.is_empty(), "{error}");
    }
}

/// Issue 12 lists time zones among the values that passed `check` and failed later. A
/// `portal_time_zone` is refused at load unless chrono-tz knows it (see the registry's
/// `inconsistent_kind_settings_are_refused_at_their_line`); every zone it knows computes its next
/// midnight (where HubSpot's daily limit resets) without a panic, across a year of days, DST
/// gaps at midnight included, and within a day and an hour.
#[test]
fn every_accepted_time_zone_has_a_next_midnight() {
    let start = chrono::DateTime::parse_from_rfc3339("2026-01-01T00:30:00Z").unwrap().with_timezone(&chrono::Utc);
    for zone in chrono_tz::TZ_VARIANTS {
        assert!(zone.name().parse::<chrono_tz::Tz>().is_ok());
        for day in (0..366).step_by(3) {
            let now = start + chrono::Duration::hours(day * 24 + day % 24);
            let wait = crate::hubspot::until_next_midnight(now, zone);
            assert!(wait <= std::time::Duration::from_secs(25 * 3600), "{zone} at {now}: {wait:?}");
        }
    }
}
