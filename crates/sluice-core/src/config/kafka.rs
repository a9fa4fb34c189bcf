//! `[kafka]` security: how clients encrypt (TLS) and authenticate (SASL/SCRAM) to the brokers.
//!
//! Guarantees:
//! - Typed and checked at load: the protocol, the TLS files (each exists, is readable and is
//!   PEM; an encrypted key has a password), the SASL mechanism and credentials, and that the
//!   settings agree with each other (no `tls` on a plaintext connection, no SASL without
//!   `sasl`, no SASL over an unencrypted connection unless `sasl.allow_unencrypted = true`).
//!   Every error names the file, the line and the fix.
//! - Secrets (the SASL password, the key's password) are references only ([`Secret`]).
//! - The librdkafka properties these settings own ([`SECURITY_PROPERTIES`]) cannot be set through
//!   `[kafka] properties` as well, so there is one way to say each thing and no silent override.
//!   `sluice_kafka::client_config` is the one place that turns these settings into properties.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

use super::{Config, ConfigError, KafkaConfig, Secret};

/// `security_protocol`: what the connection to every broker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    /// Unencrypted, unauthenticated (the default; a local or fully private broker).
    #[default]
    Plaintext,
    /// TLS: the broker's certificate is verified; a client certificate when `tls` has one.
    Ssl,
    /// TLS plus SASL authentication (`sasl`).
    SaslSsl,
    /// SASL over an unencrypted connection: SCRAM keeps the password off the wire, but every
    /// record travels in clear and the session can be hijacked. Refused unless
    /// `sasl.allow_unencrypted = true`.
    SaslPlaintext,
}

impl SecurityProtocol {
    /// The value as written in the config.
    pub fn name(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslSsl => "sasl_ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
        }
    }

    /// Whether the connection is TLS.
    pub fn uses_tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }

    /// Whether clients authenticate with SASL.
    pub fn uses_sasl(self) -> bool {
        matches!(self, SecurityProtocol::SaslSsl | SecurityProtocol::SaslPlaintext)
    }
}

/// `tls = { ... }`: the trust anchor, the optional client certificate, hostname checking.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the CA(s) that signed the brokers' certificates; without it, the system's
    /// trust store (the `ca-certificates` package) is used, as for a public managed service.
    #[serde(default)]
    pub ca_file: Option<Spanned<PathBuf>>,
    /// PEM client certificate, for brokers that require one (mutual TLS); needs `key_file`.
    #[serde(default)]
    pub cert_file: Option<Spanned<PathBuf>>,
    /// PEM private key of `cert_file`.
    #[serde(default)]
    pub key_file: Option<Spanned<PathBuf>>,
    /// Password of an encrypted `key_file`, by reference.
    #[serde(default)]
    pub key_password: Option<Secret>,
    /// Check that the broker's certificate names the host connected to (default true). Turn
    /// off only for brokers whose certificates name no usable host; the chain is still verified.
    #[serde(default = "yes")]
    pub verify_hostname: bool,
}

fn yes() -> bool {
    true
}

/// `sasl.mechanism`: the SASL mechanisms sluice speaks (SCRAM, built into librdkafka with OpenSSL).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum SaslMechanism {
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
}

impl SaslMechanism {
    /// The mechanism's name, as written in the config and as librdkafka and brokers call it.
    pub fn name(self) -> &'static str {
        match self {
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
        }
    }
}

/// `sasl = { ... }`: who sluice authenticates as.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SaslConfig {
    pub mechanism: SaslMechanism,
    pub username: String,
    /// By reference: `{ env = "SLUICE_KAFKA_PASSWORD" }` or `{ file = "/run/secrets/kafka" }`.
    /// Read once at start: after changing it, restart the service.
    pub password: Secret,
    /// Allow `security_protocol = "sasl_plaintext"` (default false).
    #[serde(default)]
    pub allow_unencrypted: bool,
}

/// The librdkafka properties the typed settings own, each with the setting to use instead.
/// `[kafka] properties` may not set them: a second way to say the same thing would silently
/// win or lose, and a secret written there would be inline. `sluice_kafka::client_config` sets
/// no other security property (a test there checks it).
pub const SECURITY_PROPERTIES: &[(&str, &str)] = &[
    ("bootstrap.servers", "bootstrap_servers"),
    ("metadata.broker.list", "bootstrap_servers"),
    ("security.protocol", "security_protocol"),
    ("ssl.ca.location", "tls.ca_file"),
    ("ssl.ca.pem", "tls.ca_file"),
    ("ssl.certificate.location", "tls.cert_file"),
    ("ssl.certificate.pem", "tls.cert_file"),
    ("ssl.key.location", "tls.key_file"),
    ("ssl.key.pem", "tls.key_file"),
    ("ssl.key.password", "tls.key_password"),
    ("ssl.keystore.location", "tls.cert_file and tls.key_file (PEM)"),
    ("ssl.keystore.password", "tls.key_password"),
    ("ssl.endpoint.identification.algorithm", "tls.verify_hostname"),
    ("enable.ssl.certificate.verification", "tls.ca_file (the broker's certificate is always verified)"),
    ("sasl.mechanism", "sasl.mechanism"),
    ("sasl.mechanisms", "sasl.mechanism"),
    ("sasl.username", "sasl.username"),
    ("sasl.password", "sasl.password"),
];

impl KafkaConfig {
    /// Whether clients check that the brokers' certificates name the hosts they connect to.
    pub fn verifies_hostnames(&self) -> bool {
        self.security_protocol().uses_tls() && self.tls.as_ref().is_none_or(|tls| tls.get_ref().verify_hostname)
    }

    /// The same settings without the hostname check (the certificate chain is still verified):
    /// how a failed verification is told apart into "untrusted" and "for another host".
    pub fn without_hostname_check(&self) -> KafkaConfig {
        let mut kafka = self.clone();
        match &mut kafka.tls {
            Some(tls) => tls.get_mut().verify_hostname = false,
            None => {
                let tls = TlsConfig { ca_file: None, cert_file: None, key_file: None, key_password: None, verify_hostname: false };
                kafka.tls = Some(Spanned::new(0..0, tls));
            }
        }
        kafka
    }
}

impl Config {
    /// The `[kafka]` security checks of [`Config::load`] (see the module docs).
    pub(super) fn validate_kafka_security(&self) -> Result<(), ConfigError> {
        let kafka = &self.kafka;
        for key in kafka.properties.get_ref().keys() {
            if let Some((_, instead)) = SECURITY_PROPERTIES.iter().find(|(owned, _)| owned.eq_ignore_ascii_case(key)) {
                return Err(self.error_at(
                    kafka.properties.span(),
                    format!("kafka.properties sets {key:?}, which the [kafka] setting `{instead}` owns"),
                    format!("remove it from properties and set `{instead}` (secrets by reference, e.g. {{ env = \"VAR\" }})"),
                ));
            }
        }
        let protocol = kafka.security_protocol();
        if let Some(tls) = &kafka.tls {
            if !protocol.uses_tls() {
                return Err(self.error_at(
                    tls.span(),
                    format!("kafka.tls is set but security_protocol is \"{}\", which does not use TLS", protocol.name()),
                    "set security_protocol = \"ssl\" (or \"sasl_ssl\" with [kafka] sasl), or remove tls",
                ));
            }
            self.validate_tls(tls)?;
        }
        match (&kafka.sasl, protocol.uses_sasl()) {
            (Some(sasl), false) => {
                return Err(self.error_at(
                    sasl.span(),
                    format!("kafka.sasl is set but security_protocol is \"{}\", which does not authenticate", protocol.name()),
                    "set security_protocol = \"sasl_ssl\", or remove sasl",
                ));
            }
            (None, true) => {
                return Err(self.error_at(
                    kafka.security_protocol.as_ref().expect("only a written protocol uses SASL").span(),
                    format!("security_protocol = \"{}\" needs kafka.sasl", protocol.name()),
                    "add sasl = { mechanism = \"SCRAM-SHA-512\", username = \"...\", password = { env = \"SLUICE_KAFKA_PASSWORD\" } }",
                ));
            }
            (Some(sasl), true) => self.validate_sasl(sasl, protocol)?,
            (None, false) => {}
        }
        Ok(())
    }

    fn validate_sasl(&self, sasl: &Spanned<SaslConfig>, protocol: SecurityProtocol) -> Result<(), ConfigError> {
        let settings = sasl.get_ref();
        if settings.username.trim().is_empty() || settings.password.expose().is_empty() {
            return Err(self.error_at(
                sasl.span(),
                "kafka.sasl has an empty username or password",
                "set the SCRAM user's name and reference its password, e.g. password = { env = \"SLUICE_KAFKA_PASSWORD\" }",
            ));
        }
        match (protocol, settings.allow_unencrypted) {
            (SecurityProtocol::SaslPlaintext, false) => Err(self.error_at(
                sasl.span(),
                "security_protocol = \"sasl_plaintext\" sends every record unencrypted (SCRAM protects only the password)",
                "use security_protocol = \"sasl_ssl\"; on a network you trust, set sasl.allow_unencrypted = true to accept it",
            )),
            (SecurityProtocol::SaslSsl, true) => Err(self.error_at(
                sasl.span(),
                "sasl.allow_unencrypted = true has no effect with security_protocol = \"sasl_ssl\"",
                "remove allow_unencrypted (it only permits \"sasl_plaintext\")",
            )),
            _ => Ok(()),
        }
    }

    fn validate_tls(&self, tls: &Spanned<TlsConfig>) -> Result<(), ConfigError> {
        let settings = tls.get_ref();
        match (&settings.cert_file, &settings.key_file) {
            (Some(_), None) | (None, Some(_)) => {
                return Err(self.error_at(
                    tls.span(),
                    "kafka.tls needs both cert_file and key_file for a client certificate, or neither",
                    "set both (PEM certificate and its private key), or remove the one given",
                ));
            }
            _ => {}
        }
        if settings.key_password.is_some() && settings.key_file.is_none() {
            return Err(self.error_at(tls.span(), "kafka.tls.key_password is set without a key_file", "remove key_password, or add cert_file and key_file"));
        }
        for (key, file) in [("ca_file", &settings.ca_file), ("cert_file", &settings.cert_file), ("key_file", &settings.key_file)] {
            let Some(file) = file else { continue };
            let text = read_pem(file.get_ref()).map_err(|problem| {
                self.error_at(
                    file.span(),
                    format!("kafka.tls.{key} {}: {problem}", file.get_ref().display()),
                    format!("point {key} at a readable PEM file (relative paths are from the working directory); convert a Java keystore with `keytool -exportcert -rfc` or `openssl pkcs12 -nodes`"),
                )
            })?;
            let encrypted = text.contains("ENCRYPTED PRIVATE KEY") || text.contains("Proc-Type: 4,ENCRYPTED");
            if key == "key_file" && encrypted && settings.key_password.is_none() {
                return Err(self.error_at(
                    file.span(),
                    format!("kafka.tls.key_file {} is encrypted and no key_password is set", file.get_ref().display()),
                    "add key_password = { env = \"SLUICE_KAFKA_KEY_PASSWORD\" }",
                ));
            }
        }
        Ok(())
    }
}

/// The file's text, if it is readable PEM.
fn read_pem(path: &Path) -> Result<String, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot be read ({e})"))?;
    match String::from_utf8(bytes) {
        Ok(text) if text.contains("-----BEGIN ") => Ok(text),
        _ => Err("is not PEM (no \"-----BEGIN\" block; a JKS or PKCS#12 keystore?)".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::GOOD;
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        std::env::set_var("SLUICE_TEST_WAREHOUSE_URL", "postgres://u:p@h/db");
        std::env::set_var("SLUICE_TEST_KAFKA_PASSWORD", "scram-secret");
        std::env::set_var("SLUICE_TEST_KEY_PASSWORD", "key-secret");
        Config::parse("sluice.toml", text)
    }

    /// GOOD with these lines added to `[kafka]` (which starts on line 2, so the first added
    /// line is line 4).
    fn with_kafka(lines: &str) -> String {
        GOOD.replacen("bootstrap_servers = \"127.0.0.1:9092\"\n", &format!("bootstrap_servers = \"127.0.0.1:9092\"\n{lines}\n"), 1)
    }

    /// PEM files in a temp dir: a CA, a certificate, a plain key, an encrypted key, a keystore.
    fn files() -> PathBuf {
        // A directory per call: tests run in parallel, and a file being rewritten reads empty.
        static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("sluice-kafka-tls-{}-{call}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("ca.pem"), "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n").unwrap();
        std::fs::write(dir.join("client.pem"), "-----BEGIN CERTIFICATE-----\nMIIC\n-----END CERTIFICATE-----\n").unwrap();
        std::fs::write(dir.join("client.key"), "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n").unwrap();
        std::fs::write(dir.join("locked.key"), "-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIF\n-----END ENCRYPTED PRIVATE KEY-----\n").unwrap();
        std::fs::write(dir.join("store.jks"), [0xfe, 0xed, 0xfe, 0xed, 0, 0, 0, 2]).unwrap();
        dir
    }

    #[test]
    fn plaintext_is_the_default_and_needs_nothing() {
        let config = parse(GOOD).expect("valid");
        assert_eq!(config.kafka.security_protocol(), SecurityProtocol::Plaintext);
        assert!(config.kafka.tls.is_none() && config.kafka.sasl.is_none());
    }

    #[test]
    fn sasl_ssl_with_scram_and_a_ca_loads_with_secrets_by_reference() {
        let dir = files();
        let text = with_kafka(&format!(
            "security_protocol = \"sasl_ssl\"\ntls = {{ ca_file = \"{}\" }}\nsasl = {{ mechanism = \"SCRAM-SHA-512\", username = \"sluice\", password = {{ env = \"SLUICE_TEST_KAFKA_PASSWORD\" }} }}",
            dir.join("ca.pem").display()
        ));
        let config = parse(&text).expect("valid");
        let kafka = &config.kafka;
        assert_eq!(kafka.security_protocol(), SecurityProtocol::SaslSsl);
        let sasl = kafka.sasl.as_ref().unwrap().get_ref();
        assert_eq!(sasl.mechanism, SaslMechanism::ScramSha512);
        assert_eq!(sasl.password.expose(), "scram-secret");
        assert!(kafka.tls.as_ref().unwrap().get_ref().verify_hostname, "hostnames are verified by default");
        assert!(!format!("{kafka:?}").contains("scram-secret"), "the password never prints");

        let inline = text.replace("{ env = \"SLUICE_TEST_KAFKA_PASSWORD\" }", "\"scram-secret\"");
        let e = parse(&inline).unwrap_err();
        assert!(e.message.contains("never written inline"), "{e}");
        assert_eq!(e.line, Some(6), "{e}");
    }

    #[test]
    fn a_client_certificate_needs_its_key_and_an_encrypted_key_its_password() {
        let dir = files();
        let tls = |extra: &str| with_kafka(&format!("security_protocol = \"ssl\"\ntls = {{ ca_file = \"{}\", {extra} }}", dir.join("ca.pem").display()));
        let cert = format!("cert_file = \"{}\"", dir.join("client.pem").display());
        let ok = parse(&tls(&format!("{cert}, key_file = \"{}\"", dir.join("client.key").display()))).expect("valid");
        assert!(ok.kafka.tls.unwrap().get_ref().key_file.is_some());

        let e = parse(&tls(&cert)).unwrap_err();
        assert_eq!(e.to_string(), "sluice.toml:5: kafka.tls needs both cert_file and key_file for a client certificate, or neither\n  fix: set both (PEM certificate and its private key), or remove the one given");

        let locked = format!("{cert}, key_file = \"{}\"", dir.join("locked.key").display());
        let e = parse(&tls(&locked)).unwrap_err();
        assert!(e.message.contains("is encrypted and no key_password is set"), "{e}");
        assert_eq!(e.line, Some(5), "{e}");
        parse(&tls(&format!("{locked}, key_password = {{ env = \"SLUICE_TEST_KEY_PASSWORD\" }}"))).expect("an encrypted key with its password");
    }

    #[test]
    fn tls_files_must_be_readable_pem() {
        let dir = files();
        let missing = dir.join("nope.pem");
        let e = parse(&with_kafka(&format!("security_protocol = \"ssl\"\ntls = {{ ca_file = \"{}\" }}", missing.display()))).unwrap_err();
        assert!(e.message.starts_with(&format!("kafka.tls.ca_file {}: cannot be read (", missing.display())), "{e}");
        assert_eq!(e.line, Some(5), "{e}");
        assert!(e.fix.contains("readable PEM file"), "{e}");
        let e = parse(&with_kafka(&format!("security_protocol = \"ssl\"\ntls = {{ ca_file = \"{}\" }}", dir.join("store.jks").display()))).unwrap_err();
        assert!(e.message.contains("is not PEM"), "{e}");
    }

    #[test]
    fn settings_must_agree_with_the_protocol() {
        let dir = files();
        let ca = format!("tls = {{ ca_file = \"{}\" }}", dir.join("ca.pem").display());
        let sasl = "sasl = { mechanism = \"SCRAM-SHA-256\", username = \"sluice\", password = { env = \"SLUICE_TEST_KAFKA_PASSWORD\" } }";

        let e = parse(&with_kafka(&ca)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "sluice.toml:4: kafka.tls is set but security_protocol is \"plaintext\", which does not use TLS\n  fix: set security_protocol = \"ssl\" (or \"sasl_ssl\" with [kafka] sasl), or remove tls"
        );
        let e = parse(&with_kafka(&format!("security_protocol = \"ssl\"\n{sasl}"))).unwrap_err();
        assert!(e.message.contains("kafka.sasl is set but security_protocol is \"ssl\""), "{e}");
        assert_eq!(e.line, Some(5), "{e}");
        let e = parse(&with_kafka("security_protocol = \"sasl_ssl\"")).unwrap_err();
        assert_eq!(e.line, Some(4), "{e}");
        assert!(e.message.contains("needs kafka.sasl"), "{e}");
        assert!(e.fix.contains("SCRAM-SHA-512"), "{e}");

        // SASL over an unencrypted connection only when asked for, and the opt-in means nothing elsewhere.
        let e = parse(&with_kafka(&format!("security_protocol = \"sasl_plaintext\"\n{sasl}"))).unwrap_err();
        assert!(e.message.contains("sends every record unencrypted"), "{e}");
        assert!(e.fix.contains("sasl.allow_unencrypted = true"), "{e}");
        let allowed = "sasl = { mechanism = \"SCRAM-SHA-256\", username = \"sluice\", password = { env = \"SLUICE_TEST_KAFKA_PASSWORD\" }, allow_unencrypted = true }";
        let config = parse(&with_kafka(&format!("security_protocol = \"sasl_plaintext\"\n{allowed}"))).expect("explicitly allowed");
        assert_eq!(config.kafka.security_protocol(), SecurityProtocol::SaslPlaintext);
        let e = parse(&with_kafka(&format!("security_protocol = \"sasl_ssl\"\n{allowed}"))).unwrap_err();
        assert!(e.message.contains("has no effect"), "{e}");
    }

    #[test]
    fn unknown_mechanisms_and_protocols_are_refused_with_the_choices() {
        let e = parse(&with_kafka("security_protocol = \"sasl_ssl\"\nsasl = { mechanism = \"PLAIN\", username = \"u\", password = { env = \"SLUICE_TEST_KAFKA_PASSWORD\" } }")).unwrap_err();
        assert!(e.message.contains("unknown variant `PLAIN`, expected `SCRAM-SHA-512` or `SCRAM-SHA-256`"), "{e}");
        assert_eq!(e.line, Some(5), "{e}");
        let e = parse(&with_kafka("security_protocol = \"tls\"")).unwrap_err();
        assert!(e.message.contains("unknown variant `tls`"), "{e}");
        assert!(e.fix.contains("one of the values"), "{e}");
    }

    #[test]
    fn properties_cannot_set_what_a_typed_setting_owns() {
        let e = parse(&with_kafka("properties = { \"linger.ms\" = \"5\", \"SASL.PASSWORD\" = \"hunter2\" }")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "sluice.toml:4: kafka.properties sets \"SASL.PASSWORD\", which the [kafka] setting `sasl.password` owns\n  fix: remove it from properties and set `sasl.password` (secrets by reference, e.g. { env = \"VAR\" })"
        );
        let e = parse(&with_kafka("[kafka.properties]\n\"security.protocol\" = \"SSL\"")).unwrap_err();
        assert!(e.message.contains("`security_protocol` owns"), "{e}");
        let config = parse(&with_kafka("properties = { \"ssl.cipher.suites\" = \"ECDHE-RSA-AES256-GCM-SHA384\" }")).expect("tuning stays possible");
        assert_eq!(config.kafka.properties.get_ref().len(), 1);
    }
}
