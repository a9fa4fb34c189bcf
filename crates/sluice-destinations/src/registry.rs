//! The destination kinds: the one list of them. Everything that enumerates kinds (the kind
//! modules, [`AnyDestination`], `KindConfig`, `KIND_NAMES`, `parse`, `build`) is generated from
//! it; a kind's name is written once, as its `Kind::NAME`.

crate::kind::registry! {
    webhook::Webhook,
    redis::Redis,
    hubspot::HubSpot,
    braze::Braze,
    meta::Meta,
    salesforce::Salesforce,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kind::test_config as config;
    use crate::Destination;

    use crate::kind::TEST_SECRET as SECRET;

    #[test]
    fn build_picks_the_configured_kind_with_its_vendor_limit() {
        std::env::set_var("SLUICE_TEST_REDIS_URL_UNSET_OK", "redis://127.0.0.1:6379");
        let cases = [
            (format!("[destinations.webhook]\nurl = \"http://127.0.0.1:1/hook\"\nsigning_secret = {SECRET}"), "webhook", usize::MAX),
            ("[destinations.redis]\nurl = { env = \"SLUICE_TEST_REDIS_URL_UNSET_OK\" }".to_string(), "redis", usize::MAX),
            (format!("[destinations.hubspot]\naccess_token = {SECRET}"), "hubspot", 100),
            (format!("[destinations.braze]\nbase_url = \"http://127.0.0.1:1\"\napi_key = {SECRET}"), "braze", 75),
            (format!("[destinations.meta]\naccess_token = {SECRET}\naudience_id = \"1\"\nidentifiers = {{ email = \"EMAIL\" }}"), "meta", 10_000),
            (
                format!("[destinations.salesforce]\ninstance_url = \"http://127.0.0.1:1\"\naccess_token = {SECRET}\nsobject = \"Contact\"\nexternal_id_field = \"W__c\""),
                "salesforce",
                200,
            ),
        ];
        for (table, kind, max) in cases {
            let config = config(&table);
            let destination = build(&config, &config.destinations[0]).unwrap_or_else(|e| panic!("{kind}: {e}"));
            assert_eq!((destination.kind(), destination.max_batch_records()), (kind, max));
            assert!(KIND_NAMES.contains(&kind), "{kind} is registered");
        }
        let mut names = KIND_NAMES.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), KIND_NAMES.len(), "kind names are distinct: {KIND_NAMES:?}");
    }

    /// Settings that parse but cannot work, each refused at its key's line (the kind table
    /// starts on line 10 of the test config) with the destination, kind and key named.
    #[test]
    fn inconsistent_kind_settings_are_refused_at_their_line() {
        std::env::set_var("SLUICE_TEST_DESTINATIONS_SHORT", "whsec_c2hvcnQ=");
        std::env::set_var("SLUICE_TEST_REDIS_URL_UNSET_OK", "redis://127.0.0.1:6379");
        let redis_url = "{ env = \"SLUICE_TEST_REDIS_URL_UNSET_OK\" }";
        let cases = [
            (format!("[destinations.redis]\nurl = {redis_url}\nmode = \"set\""), "redis.set_key: ", 10),
            (format!("[destinations.redis]\nurl = {redis_url}\nkey_template = \"x:{{model}}\""), "{key}", 12),
            (format!("[destinations.redis]\nurl = {SECRET}"), "redis.url: is not a Redis URL", 11),
            (format!("[destinations.meta]\naccess_token = {SECRET}\naudience_id = \"1\"\nidentifiers = {{}}"), "meta.identifiers: ", 13),
            (format!("[destinations.braze]\nbase_url = \"b\"\napi_key = {SECRET}\nmode = \"suppression\"\nunsubscribe_email = false"), "suppression", 13),
            ("[destinations.hubspot]\naccess_token = \"inline\"".to_string(), "never written inline", 11),
            (format!("[destinations.hubspot]\naccess_token = {SECRET}\nportal_time_zone = \"Mars/Olympus\""), "IANA", 12),
            (format!("[destinations.meta]\naccess_token = {SECRET}\naudience_id = \"1\"\nidentifiers = {{ email = \"EMAIL_SHA256\" }}"), "EMAIL", 13),
            ("[destinations.webhook]\nurl = \"http://x\"\nsigning_secret = { env = \"SLUICE_TEST_DESTINATIONS_SHORT\" }".to_string(), "24 to 64", 12),
        ];
        for (table, expected, line) in cases {
            let config = config(&table);
            let error = build(&config, &config.destinations[0]).err().unwrap_or_else(|| panic!("refused: {table}"));
            assert!(error.message.starts_with("destination \"d\": "), "{error}");
            assert!(error.message.contains(expected), "{table}: {error}");
            assert_eq!(error.line, Some(line), "{error}");
            assert!(!error.fix.is_empty(), "{error}");
        }
    }

    #[test]
    fn a_typo_in_the_kind_key_names_the_line_and_the_nearest_kind() {
        let config = config(&format!("[destinations.hubspt]\naccess_token = {SECRET}"));
        let error = check(&config).unwrap_err();
        assert_eq!(error.line, Some(10), "{error}");
        assert!(error.message.contains("unknown kind `hubspt`"), "{error}");
        assert!(error.fix.contains("did you mean `hubspot`"), "{error}");
    }

    #[test]
    fn an_unknown_kind_lists_the_known_ones() {
        let config = config("batch_max_records = 5\n[destinations.mailchimp]\napi_key = \"k\"");
        let error = check(&config).unwrap_err();
        assert_eq!(error.line, Some(11), "{error}");
        assert_eq!(error.message, "destination \"d\": unknown kind `mailchimp`");
        assert_eq!(error.fix, format!("name the destination's table after one of the kinds: {}", KIND_NAMES.join(", ")));
        assert!(KIND_NAMES.contains(&"webhook") && KIND_NAMES.contains(&"salesforce"), "{}", error.fix);
    }

    #[test]
    fn two_kinds_are_refused_at_the_second() {
        let text = format!("{}[destinations.webhook]\nurl = \"u\"\n\n[destinations.redis]\nurl = {SECRET}\n", crate::kind::TEST_CONFIG_HEAD);
        let error = sluice_core::config::Config::parse("sluice.toml", &text).unwrap_err();
        assert!(error.message.contains("two kind tables, `webhook` and `redis`"), "{error}");
        assert_eq!(error.line, Some(13), "{error}");
    }

    #[test]
    fn a_typo_inside_a_kind_table_names_the_key_and_its_line() {
        let config = config(&format!("[destinations.hubspot]\naccess_token = {SECRET}\nid_propertyy = \"email\"\nportal_time_zone = \"UTC\""));
        let error = check(&config).unwrap_err();
        assert_eq!(error.line, Some(12), "{error}");
        assert!(error.message.starts_with("destination \"d\": hubspot: unknown field `id_propertyy`"), "{error}");
        assert!(error.fix.contains("spelling"), "{error}");
        assert!(error.to_string().starts_with("sluice.toml:12: "), "{error}");
    }

    #[test]
    fn a_missing_key_points_at_the_kind_table() {
        let config = config("[destinations.salesforce]\nsobject = \"Contact\"");
        let error = check(&config).unwrap_err();
        assert_eq!(error.line, Some(10), "{error}");
        assert!(error.message.contains("missing field"), "{error}");
    }

    /// Every kind's settings variants (each kind's `mode_cases`) against every sync mode: the
    /// modes each honours are accepted, every other one is refused at the sync's `mode` line,
    /// naming the model, the destination, the mode and the kind, with the kind's reason and a
    /// fix. This is the matrix of `docs/destinations/README.md`.
    #[test]
    fn each_kind_accepts_its_modes_and_refuses_the_others_with_the_reason() {
        use sluice_core::config::SyncMode::{self, *};
        let cases = mode_cases();
        for kind in KIND_NAMES {
            assert!(cases.iter().any(|(k, _)| k == kind), "{kind} lists its mode cases");
        }
        for (kind, case) in cases {
            let (table, supported) = (case.table, case.honours);
            for mode in SyncMode::ALL {
                let model = "[[models]]\nname = \"customers\"\ntable = \"customers\"\nprimary_key = [\"id\"]\ncolumns = [\"id\", \"email\"]\ndetection = { mode = \"diff\" }";
                let text = format!("{table}\n\n{model}\n\n[[syncs]]\nmodel = \"customers\"\ndestination = \"d\"\nmode = \"{mode}\"\nfields = {{ email = \"email\" }}\n");
                let config = config(&text);
                let mode_line = crate::kind::TEST_CONFIG_HEAD.lines().count() + text.lines().position(|l| l.starts_with("mode = \"") && !l.contains("set\"") && !l.contains("suppression")).unwrap() + 1;
                let outcome = check(&config);
                if supported.contains(&mode) {
                    outcome.unwrap_or_else(|e| panic!("{kind} honours {mode}:\n{table}\n{e}"));
                    continue;
                }
                let error = outcome.expect_err(&format!("{kind} refuses {mode}:\n{table}"));
                let head = format!("sync of model \"customers\" to destination \"d\": mode \"{mode}\" is not supported by the {kind} destination: ");
                assert!(error.message.starts_with(&head) && error.message.len() > head.len() + 20, "{kind} {mode}: with the kind's reason: {error}");
                assert_eq!(error.line, Some(mode_line), "{kind} {mode}: at the sync's mode line: {error}");
                // The fix names what works instead: the on_delete setting a mirror needs, or
                // exactly the modes the kind honours.
                let honoured: Vec<String> = supported.iter().map(|m| format!("\"{m}\"")).collect();
                let lists_them = error.fix == format!("use mode = {} for this destination, or sync to a destination that can honour \"{mode}\"", honoured.join(" or "));
                assert!(lists_them || (mode == Mirror && error.fix.contains("remove on_delete")), "{kind} {mode}: {error}");
            }
        }
    }

    #[test]
    fn an_unwritten_mode_is_upsert_and_is_refused_at_the_destination_line() {
        let model = "[[models]]\nname = \"m\"\ntable = \"m\"\nprimary_key = [\"id\"]\ncolumns = [\"id\", \"email\"]\ndetection = { mode = \"diff\" }";
        let table = format!("[destinations.meta]\naccess_token = {SECRET}\naudience_id = \"1\"\nidentifiers = {{ email = \"EMAIL\" }}");
        let config = config(&format!("{table}\n{model}\n[[syncs]]\nmodel = \"m\"\ndestination = \"d\"\nfields = {{ email = \"email\" }}\n"));
        let error = check(&config).unwrap_err();
        assert!(error.message.contains("mode \"upsert\" is not supported by the meta destination"), "{error}");
        assert_eq!(error.line, Some(22), "the sync's destination line: {error}");

        assert_eq!(error.fix, "use mode = \"audience\" or \"mirror\" for this destination, or sync to a destination that can honour \"upsert\"");
    }
}
