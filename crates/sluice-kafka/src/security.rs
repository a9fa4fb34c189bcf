//! The `[kafka]` connection settings as librdkafka properties: the only place they are mapped.
//! The config crate refuses these keys in `[kafka] properties`
//! ([`sluice_core::config::SECURITY_PROPERTIES`]), so what is set here is what applies.

use std::path::Path;

use sluice_core::config::KafkaConfig;

/// `bootstrap.servers`, `security.protocol` and the TLS and SASL properties of `kafka`.
pub(crate) fn properties(kafka: &KafkaConfig) -> Vec<(&'static str, String)> {
    let protocol = kafka.security_protocol();
    let mut out = vec![("bootstrap.servers", kafka.bootstrap_servers.clone()), ("security.protocol", protocol.name().to_string())];
    if protocol.uses_tls() {
        let tls = kafka.tls.as_ref().map(|t| t.get_ref());
        let path = |file: &Path| file.to_string_lossy().into_owned();
        if let Some(tls) = tls {
            if let Some(ca) = &tls.ca_file {
                out.push(("ssl.ca.location", path(ca.get_ref())));
            }
            if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
                out.push(("ssl.certificate.location", path(cert.get_ref())));
                out.push(("ssl.key.location", path(key.get_ref())));
            }
            if let Some(password) = &tls.key_password {
                out.push(("ssl.key.password", password.expose().to_string()));
            }
        }
        // Set either way: librdkafka's default has changed between versions.
        let verify_hostname = tls.is_none_or(|t| t.verify_hostname);
        out.push(("ssl.endpoint.identification.algorithm", if verify_hostname { "https" } else { "none" }.to_string()));
    }
    if let (true, Some(sasl)) = (protocol.uses_sasl(), &kafka.sasl) {
        let sasl = sasl.get_ref();
        out.push(("sasl.mechanism", sasl.mechanism.name().to_string()));
        out.push(("sasl.username", sasl.username.clone()));
        out.push(("sasl.password", sasl.password.expose().to_string()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_core::config::{Config, SECURITY_PROPERTIES};

    fn kafka(lines: &str) -> KafkaConfig {
        // A directory per call: tests run in parallel, and a file being rewritten reads empty.
        static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("sluice-kafka-security-{}-{call}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for file in ["ca.pem", "client.pem", "client.key"] {
            std::fs::write(dir.join(file), "-----BEGIN X-----\n-----END X-----\n").unwrap();
        }
        std::env::set_var("SLUICE_TEST_SECURITY_SECRET", "s3cret");
        let text = format!(
            "[kafka]\nbootstrap_servers = \"b1:9095,b2:9095\"\n{}\n[warehouse]\nkind = \"duckdb\"\npath = \"w.duckdb\"\n",
            lines.replace("DIR", dir.to_str().unwrap())
        );
        Config::parse("t.toml", &text).expect("valid").kafka
    }

    fn get<'a>(properties: &'a [(&'static str, String)], key: &str) -> Option<&'a str> {
        properties.iter().find(|(k, _)| *k == key).map(|(_, v)| v.as_str())
    }

    #[test]
    fn every_typed_setting_maps_to_its_property_and_only_owned_keys_are_set() {
        let all = kafka(
            "security_protocol = \"sasl_ssl\"\n\
             tls = { ca_file = \"DIR/ca.pem\", cert_file = \"DIR/client.pem\", key_file = \"DIR/client.key\", key_password = { env = \"SLUICE_TEST_SECURITY_SECRET\" } }\n\
             sasl = { mechanism = \"SCRAM-SHA-512\", username = \"sluice\", password = { env = \"SLUICE_TEST_SECURITY_SECRET\" } }",
        );
        let properties = properties(&all);
        assert_eq!(get(&properties, "bootstrap.servers"), Some("b1:9095,b2:9095"));
        assert_eq!(get(&properties, "security.protocol"), Some("sasl_ssl"));
        assert!(get(&properties, "ssl.ca.location").unwrap().ends_with("/ca.pem"));
        assert!(get(&properties, "ssl.certificate.location").unwrap().ends_with("/client.pem"));
        assert!(get(&properties, "ssl.key.location").unwrap().ends_with("/client.key"));
        assert_eq!(get(&properties, "ssl.key.password"), Some("s3cret"));
        assert_eq!(get(&properties, "ssl.endpoint.identification.algorithm"), Some("https"));
        assert_eq!(get(&properties, "sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(get(&properties, "sasl.username"), Some("sluice"));
        assert_eq!(get(&properties, "sasl.password"), Some("s3cret"));
        for (key, _) in &properties {
            assert!(SECURITY_PROPERTIES.iter().any(|(owned, _)| owned == key), "{key} is set here but [kafka] properties could set it too");
        }
    }

    #[test]
    fn plaintext_sets_no_tls_or_sasl_and_tls_verifies_hostnames_unless_told() {
        let plain = properties(&kafka(""));
        assert_eq!(plain, [("bootstrap.servers", "b1:9095,b2:9095".to_string()), ("security.protocol", "plaintext".to_string())]);
        let system_trust = properties(&kafka("security_protocol = \"ssl\""));
        assert_eq!(get(&system_trust, "ssl.ca.location"), None, "no ca_file: the system trust store");
        assert_eq!(get(&system_trust, "ssl.endpoint.identification.algorithm"), Some("https"));
        let unverified = properties(&kafka("security_protocol = \"ssl\"\ntls = { ca_file = \"DIR/ca.pem\", verify_hostname = false }"));
        assert_eq!(get(&unverified, "ssl.endpoint.identification.algorithm"), Some("none"));
        let scram256 = properties(&kafka(
            "security_protocol = \"sasl_plaintext\"\nsasl = { mechanism = \"SCRAM-SHA-256\", username = \"u\", password = { env = \"SLUICE_TEST_SECURITY_SECRET\" }, allow_unencrypted = true }",
        ));
        assert_eq!(get(&scram256, "sasl.mechanism"), Some("SCRAM-SHA-256"));
        assert_eq!(get(&scram256, "ssl.endpoint.identification.algorithm"), None, "no TLS, no TLS settings");
    }
}
