//! Kafka over TLS and SASL_SSL (SCRAM-SHA-512), against the secured broker `ops/kafka-secure.sh`
//! starts (`ops/services.sh up` does): its certificates are made at its first start (a test CA
//! with openssl, the broker's keystore and truststore with keytool) under
//! `.state/kafka-secure/tls`, its SCRAM user when its storage is formatted.
//!
//! - The walking skeleton runs end to end over SASL_SSL/SCRAM-SHA-512 and over TLS with a
//!   client certificate (encrypted key): every row delivered exactly once, in order, the
//!   rejected one dead-lettered — exactly as over plaintext.
//! - A wrong password and an untrusted CA leave the service *processes* up and not ready, with
//!   `/readyz` naming the listener and the cause; neither exits. Fixing the CA file on disk turns
//!   them ready without a restart.
//! - A host the broker's certificate does not name is refused, with that cause (not "untrusted");
//!   a listener that requires a client certificate refuses a client without one, with that fix.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use sluice_core::config::KafkaConfig;
use sluice_core::naming;
use sluice_integration_tests::process::{free_address, get};
use sluice_integration_tests::receiver;
use sluice_integration_tests::{binary, eventually, read_topic_with, start_poller, start_sink, unique};
use sluice_kafka::connection::{check_connection, Cause};
use sluice_kafka::KafkaError;
use sluice_telemetry::ops::Health;

use crate::walking_skeleton::{fixture_with, insert, names_by_id, update_and_add};

const WAIT: Duration = Duration::from_secs(90);

/// The secured broker's listeners and client files (see `ops/kafka/secure.sh`).
struct SecureBroker {
    /// SSL listener: TLS, client certificate required.
    ssl: String,
    /// SASL_SSL listener: TLS + SCRAM.
    sasl_ssl: String,
    /// `.state/kafka-secure/tls`: `ca.pem`, `client.pem`, `client.key`, `untrusted-ca.pem`.
    tls: PathBuf,
}

/// The secured broker, or a failure saying how to start it. Sets the environment variables the
/// configs below reference: `SLUICE_IT_KAFKA_PASSWORD` (the SCRAM user's),
/// `SLUICE_IT_KAFKA_WRONG_PASSWORD` and `SLUICE_IT_KAFKA_KEY_PASSWORD` (the client key's).
fn secure_broker() -> SecureBroker {
    let env = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_string());
    let state = std::env::var_os("SLUICE_STATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.state"));
    let broker = SecureBroker {
        ssl: env("SLUICE_TEST_KAFKA_SSL", "127.0.0.1:9094"),
        sasl_ssl: env("SLUICE_TEST_KAFKA_SASL_SSL", "127.0.0.1:9095"),
        tls: state.join("kafka-secure/tls"),
    };
    let up = [&broker.ssl, &broker.sasl_ssl].iter().all(|address| std::net::TcpStream::connect(address.as_str()).is_ok());
    assert!(
        up && broker.tls.join(".complete").exists(),
        "the secured Kafka broker is not running at {} / {} with its certificates in {}. Start it with \
         `ops/kafka-secure.sh start` (or `ops/services.sh up`).",
        broker.ssl,
        broker.sasl_ssl,
        broker.tls.display()
    );
    // The same defaults as ops/kafka/secure.sh (test credentials of a loopback broker).
    std::env::set_var("SLUICE_IT_KAFKA_PASSWORD", env("KAFKA_SECURE_PASSWORD", "sluice-scram-secret"));
    std::env::set_var("SLUICE_IT_KAFKA_WRONG_PASSWORD", "not-the-password");
    std::env::set_var("SLUICE_IT_KAFKA_KEY_PASSWORD", env("KAFKA_SECURE_KEY_PASSWORD", "sluice-key-secret"));
    broker
}

impl SecureBroker {
    fn file(&self, name: &str) -> String {
        self.tls.join(name).to_str().expect("UTF-8 path").to_string()
    }

    /// `[kafka]` lines for the SASL_SSL listener with the given CA file and password variable.
    fn sasl_ssl_settings(&self, ca_file: &str, password_env: &str) -> String {
        format!(
            "security_protocol = \"sasl_ssl\"\n\
             tls = {{ ca_file = {ca_file:?} }}\n\
             sasl = {{ mechanism = \"SCRAM-SHA-512\", username = \"sluice\", password = {{ env = \"{password_env}\" }} }}"
        )
    }

    /// `[kafka]` lines for the SSL listener with the client certificate and its encrypted key.
    fn mtls_settings(&self) -> String {
        format!(
            "security_protocol = \"ssl\"\n\
             tls = {{ ca_file = {:?}, cert_file = {:?}, key_file = {:?}, key_password = {{ env = \"SLUICE_IT_KAFKA_KEY_PASSWORD\" }} }}",
            self.file("ca.pem"),
            self.file("client.pem"),
            self.file("client.key"),
        )
    }
}

/// The walking skeleton's first steps over a secured connection: ten rows (row 4 refused by the
/// destination), three updates, three new rows; every change exactly once and in order, the
/// refused row dead-lettered over the same connection.
async fn walking_skeleton_over(bootstrap: &str, kafka_settings: &str) {
    let (url, received) = receiver::start().await;
    let f = fixture_with(&url, Some(bootstrap), kafka_settings).await;
    insert(&f, 1..=10, |id| if id == 4 { "reject-me@invalid".into() } else { format!("c{id}@example.com") }).await;
    let (poller_stop, poller) = start_poller(&f.config);
    let sink_health = Health::new();
    let (sink_stop, sink) = start_sink(&f.config, Arc::clone(&sink_health));
    eventually("9 snapshot rows delivered", WAIT, || names_by_id(&received).len() == 9).await;
    assert_eq!(sink_health.not_ready_reason(), None, "the sink is ready while delivering");
    update_and_add(&f, &received).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    poller_stop.cancel();
    sink_stop.cancel();
    poller.await.unwrap().expect("poller stops cleanly");
    sink.await.unwrap().expect("sink stops cleanly");

    let by_id = names_by_id(&received);
    for id in (1..=13).filter(|&id| id != 4) {
        let expected: Vec<String> =
            if [2, 5, 9].contains(&id) { vec![format!("Customer {id}"), format!("Renamed {id}")] } else { vec![format!("Customer {id}")] };
        assert_eq!(by_id.get(&id), Some(&expected), "row {id}: exactly once per change, in order");
    }
    assert_eq!(received.records().len(), 15, "12 rows + 3 updates, no duplicates");
    let mut client = sluice_kafka::client_config(&f.config.kafka);
    let changes = read_topic_with(&mut client, &naming::change_topic(&f.prefix, "customers"));
    assert_eq!(changes.len(), 16, "13 rows + 3 updates on the change topic of the secured broker");
    let dlq = read_topic_with(&mut client, &naming::dead_letter_topic(&f.prefix, "crm"));
    assert_eq!(dlq.len(), 1, "the refused row, dead-lettered: {dlq:?}");
    assert_eq!(dlq[0].header("sluice.error.class"), Some("permanent"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poller_and_sink_deliver_over_sasl_ssl_with_scram_sha_512() {
    let broker = secure_broker();
    walking_skeleton_over(&broker.sasl_ssl, &broker.sasl_ssl_settings(&broker.file("ca.pem"), "SLUICE_IT_KAFKA_PASSWORD")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poller_and_sink_deliver_over_tls_with_a_client_certificate() {
    let broker = secure_broker();
    walking_skeleton_over(&broker.ssl, &broker.mtls_settings()).await;
}

/// A `sluice-poller` and a `sluice-sink` process on one config file, with their `/readyz`.
struct Services {
    poller: Child,
    sink: Child,
    poller_ops: String,
    sink_ops: String,
    log: PathBuf,
}

impl Services {
    fn start(config_text: &str) -> Services {
        let dir = std::env::temp_dir().join(unique("sluice-it-secure"));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("sluice.toml");
        std::fs::write(&config, config_text).unwrap();
        let log = dir.join("services.log");
        let out = std::fs::File::create(&log).unwrap();
        let spawn = |name: &str, args: &[&str]| {
            Command::new(binary(name))
                .arg("--config")
                .arg(&config)
                .args(args)
                .env("RUST_LOG", "info")
                .stdout(Stdio::from(out.try_clone().unwrap()))
                .stderr(Stdio::from(out.try_clone().unwrap()))
                .spawn()
                .unwrap_or_else(|e| panic!("start {name}: {e}"))
        };
        let (poller_ops, sink_ops) = (free_address(), free_address());
        let poller = spawn("sluice-poller", &["--ops-listen", &poller_ops, "--trigger-listen", "127.0.0.1:0"]);
        let sink = spawn("sluice-sink", &["--destination", "crm", "--ops-listen", &sink_ops]);
        Services { poller, sink, poller_ops, sink_ops, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until both answer `/readyz` with `status` and a body containing every one of `words`;
    /// returns the two bodies.
    async fn wait_readyz(&mut self, status: u16, words: &[&str]) -> [String; 2] {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let answers = [get(&self.poller_ops, "/readyz").await, get(&self.sink_ops, "/readyz").await];
            if let [Some((s1, b1)), Some((s2, b2))] = &answers {
                let matches = |s: &u16, b: &String| *s == status && words.iter().all(|w| b.contains(w));
                if matches(s1, b1) && matches(s2, b2) {
                    return [b1.clone(), b2.clone()];
                }
            }
            self.assert_running();
            assert!(tokio::time::Instant::now() < deadline, "no /readyz {status} with {words:?}: {answers:?}\nlog:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    fn assert_running(&mut self) {
        let exited = [("sluice-poller", self.poller.try_wait().unwrap()), ("sluice-sink", self.sink.try_wait().unwrap())];
        for (name, status) in exited {
            assert!(status.is_none(), "{name} exited ({status:?}) instead of staying up, not ready\nlog:\n{}", self.log());
        }
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        for child in [&mut self.poller, &mut self.sink] {
            // Already exited is fine: the assertion that failed said so.
            child.kill().ok();
            child.wait().ok();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wrong_password_keeps_both_services_up_and_not_ready_naming_the_listener() {
    let broker = secure_broker();
    let (url, _received) = receiver::start().await;
    let settings = broker.sasl_ssl_settings(&broker.file("ca.pem"), "SLUICE_IT_KAFKA_WRONG_PASSWORD");
    let f = fixture_with(&url, Some(&broker.sasl_ssl), &settings).await;
    let mut services = Services::start(&f.text);
    let listener = format!("listener sasl_ssl://{}", broker.sasl_ssl);
    let bodies = services.wait_readyz(503, &[&listener, "authentication failed", "sasl.password"]).await;
    for body in &bodies {
        assert!(body.contains("not ready: kafka: create topics: "), "{body}");
        assert!(!body.contains("not-the-password"), "the password never shows: {body}");
    }
    // Still up and still saying so after more than one retry (1 s, then 2 s, ...).
    tokio::time::sleep(Duration::from_secs(5)).await;
    services.assert_running();
    services.wait_readyz(503, &[&listener, "authentication failed"]).await;
    assert_eq!(get(&services.poller_ops, "/healthz").await.map(|(s, _)| s), Some(200), "alive, just not ready");
    let log = services.log();
    assert!(log.contains("kafka unavailable at start; not ready, retrying"), "{log}");
    assert!(log.matches("authentication failed").count() >= 4, "both services logged the cause, each more than once:\n{log}");
    assert!(!log.contains("not-the-password"), "the password never shows in logs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_untrusted_ca_keeps_the_services_not_ready_until_the_ca_file_is_fixed() {
    let broker = secure_broker();
    let (url, received) = receiver::start().await;
    // The CA file the config names holds a CA that did not sign the broker's certificate.
    let ca_file = std::env::temp_dir().join(unique("sluice-it-ca")).with_extension("pem");
    std::fs::copy(broker.tls.join("untrusted-ca.pem"), &ca_file).unwrap();
    let settings = broker.sasl_ssl_settings(ca_file.to_str().unwrap(), "SLUICE_IT_KAFKA_PASSWORD");
    let f = fixture_with(&url, Some(&broker.sasl_ssl), &settings).await;
    insert(&f, 1..=3, |id| format!("c{id}@example.com")).await;
    let mut services = Services::start(&f.text);
    let listener = format!("listener sasl_ssl://{}", broker.sasl_ssl);
    services.wait_readyz(503, &[&listener, "the broker's TLS certificate was not accepted", "certificate verify failed", "tls.ca_file"]).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    services.assert_running();

    // The operator puts the right CA in place: the next retry connects, no restart needed.
    std::fs::copy(broker.tls.join("ca.pem"), &ca_file).unwrap();
    services.wait_readyz(200, &["ready"]).await;
    eventually("rows delivered once the CA is trusted", WAIT, || names_by_id(&received).len() == 3).await;
    std::fs::remove_file(&ca_file).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_host_the_broker_certificate_does_not_name_is_refused_unless_hostname_checks_are_off() {
    let broker = secure_broker();
    // The broker's certificate names IP 127.0.0.1 only; `localhost` reaches the same listener.
    let port = broker.sasl_ssl.rsplit_once(':').unwrap().1;
    let text = |verify: bool| {
        format!(
            "[kafka]\nbootstrap_servers = \"localhost:{port}\"\n{}\n[warehouse]\nkind = \"duckdb\"\npath = \"unused.duckdb\"\n",
            broker.sasl_ssl_settings(&broker.file("ca.pem"), "SLUICE_IT_KAFKA_PASSWORD").replace(" }\n", &format!(", verify_hostname = {verify} }}\n"))
        )
    };
    let kafka = |verify: bool| -> KafkaConfig {
        let mut kafka = sluice_core::config::Config::parse("hostname.toml", &text(verify)).expect("valid config").kafka;
        // IPv4 only: `localhost` also resolves to ::1, where nothing listens.
        kafka.properties.get_mut().insert("broker.address.family".into(), "v4".into());
        kafka
    };
    match check_connection(&kafka(true)).await {
        Err(KafkaError::Connection { problem, .. }) => {
            assert_eq!(problem.cause, Cause::Hostname, "trusted, but for another host: {problem}");
            assert!(problem.to_string().starts_with(&format!(
                "the broker's TLS certificate does not name the host connected to on listener sasl_ssl://localhost:{port}: "
            )), "{problem}");
            assert_eq!(problem.listener, format!("sasl_ssl://localhost:{port}"), "{problem}");
            assert!(problem.detail.contains("certificate verify failed"), "{problem}");
        }
        other => panic!("a certificate for 127.0.0.1 must not pass for localhost: {other:?}"),
    }
    check_connection(&kafka(false)).await.expect("the same connection without the hostname check");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_listener_requiring_a_client_certificate_refuses_a_client_without_one_with_that_fix() {
    let broker = secure_broker();
    let text = format!(
        "[kafka]\nbootstrap_servers = \"{}\"\nsecurity_protocol = \"ssl\"\ntls = {{ ca_file = {:?} }}\n[warehouse]\nkind = \"duckdb\"\npath = \"unused.duckdb\"\n",
        broker.ssl,
        broker.file("ca.pem")
    );
    let kafka = sluice_core::config::Config::parse("no-client-cert.toml", &text).expect("valid config").kafka;
    match check_connection(&kafka).await {
        Err(KafkaError::Connection { problem, .. }) => {
            assert_eq!(problem.cause, Cause::Tls, "{problem}");
            assert_eq!(problem.listener, format!("ssl://{}", broker.ssl), "{problem}");
            assert!(problem.cause.fix().contains("tls.cert_file and tls.key_file"), "{}", problem.cause.fix());
        }
        other => panic!("the SSL listener requires a client certificate: {other:?}"),
    }
}
