//! A broker connection failure as librdkafka reports it, classified: which listener, what
//! kind of failure, and how to fix it.

use rdkafka::error::RDKafkaErrorCode;

/// What kind of failure a [`ConnectionProblem`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cause {
    /// The broker rejected the SASL credentials (or the mechanism).
    Authentication,
    /// The broker's certificate could not be verified: not signed by a trusted CA, expired, or
    /// (unless [`Cause::Hostname`] was established) not naming the host connected to.
    Certificate,
    /// The broker's certificate is trusted but does not name the host connected to (found by
    /// `check_connection`, which retries without the hostname check to tell the two apart).
    Hostname,
    /// Another TLS failure: the handshake was refused (a client certificate required?), or
    /// one side does not speak TLS.
    Tls,
    /// The broker could not be reached (refused, reset, name not resolved).
    Unreachable,
}

impl Cause {
    /// Lowercase words for messages and the `cause` log field.
    pub fn describe(self) -> &'static str {
        match self {
            Cause::Authentication => "authentication failed",
            Cause::Certificate => "the broker's TLS certificate was not accepted",
            Cause::Hostname => "the broker's TLS certificate does not name the host connected to",
            Cause::Tls => "the TLS handshake failed",
            Cause::Unreachable => "the broker is unreachable",
        }
    }

    /// How to fix it.
    pub fn fix(self) -> &'static str {
        match self {
            Cause::Authentication => {
                "check [kafka] sasl.username, sasl.password and sasl.mechanism against the user on the cluster \
                 (the password is read at start: restart the service after changing it)"
            }
            Cause::Certificate => {
                "point [kafka] tls.ca_file at the CA that signed the broker's certificate (without it the system trust \
                 store is used) and check that the certificate has not expired"
            }
            Cause::Hostname => {
                "use the host names the broker's certificate names, in bootstrap_servers and the brokers' advertised \
                 listeners, or set [kafka] tls.verify_hostname = false"
            }
            Cause::Tls => {
                "check that the listener speaks TLS (security_protocol) and, if it requires a client certificate, \
                 set [kafka] tls.cert_file and tls.key_file"
            }
            Cause::Unreachable => "check [kafka] bootstrap_servers and that the brokers run and are reachable from here",
        }
    }

    /// Whether retrying cannot help until an operator changes something, so a request need not
    /// wait for its timeout. An unreachable broker may be restarting: that one waits.
    pub fn is_decisive(self) -> bool {
        !matches!(self, Cause::Unreachable)
    }
}

/// A broker connection failure, as librdkafka reported it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ConnectionProblem {
    /// The listener, as librdkafka names the broker: `sasl_ssl://127.0.0.1:9095` (its
    /// `bootstrap_servers` entry, or the address the cluster advertised for it).
    pub listener: String,
    pub cause: Cause,
    /// librdkafka's explanation, without the broker name and its "(after N ms in state X)".
    pub detail: String,
}

impl std::fmt::Display for ConnectionProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} on listener {}: {}", self.cause.describe(), self.listener, self.detail)
    }
}

impl ConnectionProblem {
    /// Classify an error event: its code and its text, `<proto>://<host:port>/<node>: <detail>`.
    /// `None` for events that are not about one broker's connection (e.g. "all brokers down",
    /// which follows the events that are).
    pub fn from_event(code: RDKafkaErrorCode, reason: &str) -> Option<ConnectionProblem> {
        let (broker, detail) = split_broker(reason)?;
        let detail = strip_state_suffix(detail).to_string();
        let unverified = detail.contains("certificate verify failed") || detail.contains("verify broker certificate");
        // librdkafka reports some TLS failures (e.g. a disconnect during the handshake) with the
        // transport error code, so the text decides between TLS and the network.
        let cause = match code {
            RDKafkaErrorCode::Authentication => Cause::Authentication,
            RDKafkaErrorCode::SSL | RDKafkaErrorCode::BrokerTransportFailure if unverified => Cause::Certificate,
            RDKafkaErrorCode::SSL => Cause::Tls,
            RDKafkaErrorCode::BrokerTransportFailure if detail.contains("SSL") => Cause::Tls,
            RDKafkaErrorCode::BrokerTransportFailure | RDKafkaErrorCode::Resolve => Cause::Unreachable,
            _ => return None,
        };
        // `sasl_ssl://127.0.0.1:9095/bootstrap` → `sasl_ssl://127.0.0.1:9095`.
        let listener = broker.rsplit_once('/').filter(|(address, _)| address.contains("://")).map_or(broker, |(address, _)| address);
        Some(ConnectionProblem { listener: listener.to_string(), cause, detail })
    }
}

/// `("sasl_ssl://h:9095/bootstrap", "SASL authentication error: ...")` from an event's text.
fn split_broker(reason: &str) -> Option<(&str, &str)> {
    let scheme = reason.find("://")?;
    let end = scheme + reason[scheme..].find(": ")?;
    Some((&reason[..end], &reason[end + 2..]))
}

/// librdkafka appends "(after 12ms in state AUTH_REQ)" and suppression counts to each failure.
fn strip_state_suffix(detail: &str) -> &str {
    match detail.rfind(" (after ") {
        Some(at) if detail.ends_with(')') => &detail[..at],
        _ => detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_events_name_the_listener_and_the_cause() {
        let problem = ConnectionProblem::from_event(
            RDKafkaErrorCode::Authentication,
            "sasl_ssl://127.0.0.1:9095/bootstrap: SASL authentication error: Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512 (after 302ms in state AUTH_REQ)",
        )
        .expect("a broker's failure");
        assert_eq!(problem.listener, "sasl_ssl://127.0.0.1:9095");
        assert_eq!(problem.cause, Cause::Authentication);
        assert_eq!(
            problem.to_string(),
            "authentication failed on listener sasl_ssl://127.0.0.1:9095: SASL authentication error: Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512"
        );

        let problem = ConnectionProblem::from_event(
            RDKafkaErrorCode::SSL,
            "ssl://127.0.0.1:9094/1: SSL handshake failed: error:0A000086:SSL routines::certificate verify failed: broker certificate could not be verified, verify that ssl.ca.location is correctly configured or root CA certificates are installed (install ca-certificates package) (after 5ms in state SSL_HANDSHAKE, 1 identical error(s) suppressed)",
        )
        .unwrap();
        assert_eq!((problem.listener.as_str(), problem.cause), ("ssl://127.0.0.1:9094", Cause::Certificate));
        assert!(problem.detail.ends_with("(install ca-certificates package)"), "{}", problem.detail);
        // The same failure, as the transport error librdkafka also reports for it.
        let problem = ConnectionProblem::from_event(
            RDKafkaErrorCode::BrokerTransportFailure,
            "sasl_ssl://localhost:9095/bootstrap: error:0A000086:SSL routines::certificate verify failed (after 2ms in state SSL_HANDSHAKE)",
        )
        .unwrap();
        assert_eq!(problem.cause, Cause::Certificate);

        let refused = ConnectionProblem::from_event(
            RDKafkaErrorCode::BrokerTransportFailure,
            "ssl://127.0.0.1:9099/bootstrap: Connect to ipv4#127.0.0.1:9099 failed: Connection refused (after 0ms in state CONNECT)",
        )
        .unwrap();
        assert_eq!(refused.cause, Cause::Unreachable);
        assert!(!refused.cause.is_decisive(), "a broker may be restarting");
        let plaintext = ConnectionProblem::from_event(
            RDKafkaErrorCode::BrokerTransportFailure,
            "ssl://127.0.0.1:9092/bootstrap: SSL handshake failed: Disconnected: connecting to a PLAINTEXT broker listener? (after 3ms in state SSL_HANDSHAKE)",
        )
        .unwrap();
        assert_eq!(plaintext.cause, Cause::Tls);

        assert_eq!(ConnectionProblem::from_event(RDKafkaErrorCode::AllBrokersDown, "1/1 brokers are down"), None);
    }
}
