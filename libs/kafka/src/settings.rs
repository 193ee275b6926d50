//! Kafka settings (section `[kafka]`).

use std::time::Duration;

use rdkafka::ClientConfig;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use slipway_events::Topics;

/// How clients talk to the brokers (librdkafka's `security.protocol`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    /// No TLS, no authentication: a broker reachable only by the platform.
    #[default]
    Plaintext,
    /// TLS, no authentication.
    Ssl,
    /// SASL authentication without TLS (the password is protected only by SCRAM).
    SaslPlaintext,
    /// SASL authentication over TLS.
    SaslSsl,
}

impl SecurityProtocol {
    fn as_str(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }

    fn sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }

    fn tls(self) -> bool {
        matches!(self, SecurityProtocol::Ssl | SecurityProtocol::SaslSsl)
    }
}

/// The SASL mechanism (librdkafka's `sasl.mechanisms`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum SaslMechanism {
    #[default]
    #[serde(rename = "SCRAM-SHA-512", alias = "scram-sha-512")]
    ScramSha512,
    #[serde(rename = "SCRAM-SHA-256", alias = "scram-sha-256")]
    ScramSha256,
    /// The password travels as is: only over `sasl_ssl`.
    #[serde(rename = "PLAIN", alias = "plain")]
    Plain,
}

impl SaslMechanism {
    fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::Plain => "PLAIN",
        }
    }
}

/// Why the `[kafka]` security settings do not fit together (reported before anything binds).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KafkaSettingsError {
    #[error("kafka.security_protocol = {0} needs kafka.sasl_username and kafka.sasl_password")]
    MissingCredentials(&'static str),
    #[error(
        "kafka.sasl_username is set but kafka.security_protocol = {0} sends no credentials: use \
         sasl_plaintext or sasl_ssl"
    )]
    UnusedCredentials(&'static str),
    #[error(
        "kafka.sasl_mechanism = PLAIN sends the password in clear: use security_protocol sasl_ssl"
    )]
    PlainWithoutTls,
    #[error("kafka.ssl_ca_file is set but kafka.security_protocol = {0} uses no TLS")]
    UnusedCaFile(&'static str),
    #[error("kafka.ssl_ca_file `{0}` cannot be read")]
    CaFile(String),
    #[error("kafka.session_timeout_ms = {0} is outside 6000..=1800000 (the brokers' bounds)")]
    SessionTimeout(u32),
    #[error("kafka.message_max_bytes = {0} is outside 16384..=1000000000")]
    MessageMaxBytes(usize),
}

/// Broker and topic settings.
#[derive(Debug, Clone, Deserialize)]
pub struct KafkaSettings {
    /// `host:port[,host:port...]`.
    pub bootstrap_servers: String,
    /// Prepended to every topic name; empty in production, unique per test run.
    #[serde(default)]
    pub topic_prefix: String,
    /// Partitions of topics created at start-up.
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// Replication factor of topics created at start-up.
    #[serde(default = "default_replication")]
    pub replication_factor: i32,
    /// First delay before a consumer retries a message that failed for a transient reason
    /// (database or broker unavailable, a timeout), in milliseconds; doubles per attempt up to
    /// `retry_max_backoff_ms`. Such a message is retried without limit, never dead-lettered
    /// (an outage is waited out); only permanent failures are dead-lettered. The former
    /// `max_attempts` key is accepted and ignored.
    #[serde(default = "default_backoff_ms")]
    pub retry_backoff_ms: u64,
    /// The longest delay between two retries of one message, in milliseconds.
    #[serde(default = "default_max_backoff_ms")]
    pub retry_max_backoff_ms: u64,
    /// A consumer's group session (`session.timeout.ms`; heartbeats every fifteenth of it):
    /// how long a member that stopped heartbeating keeps its partitions. A broker hang shorter
    /// than this is ridden out without a rebalance; a dead member's partitions wait this long
    /// for another member, unless it comes back under the same `instance_id` (static
    /// membership) and takes them back at once.
    #[serde(default = "default_session_timeout_ms")]
    pub session_timeout_ms: u32,
    /// Longest a consumer's fetch waits for data (`fetch.wait.max.ms`). Apache Kafka answers as
    /// soon as data arrives anyway; brokers that do not (Tansu) answer only after this wait, so
    /// it bounds event latency there. Lower means more idle fetch requests.
    #[serde(default = "default_fetch_wait_ms")]
    pub fetch_wait_ms: u32,
    /// This process's stable identity in its consumer groups (Kafka static membership,
    /// `group.instance.id` = `<group>@<instance_id>`): a restarted process takes its partitions
    /// back at once instead of waiting out the dead member's session, which matters most for a
    /// deployer killed mid-rollout. Empty: the host name. Two processes of one service on one
    /// host must set different values.
    #[serde(default)]
    pub instance_id: String,
    /// Use static membership at all (`false`: classic dynamic membership). On by default: on
    /// Tansu 0.6 a dynamic member that dies is dropped when its session expires but its
    /// partitions are not handed to the others until the next rebalance (a deployer killed
    /// mid-rollout left health verdicts unconsumed for minutes), while a restarted static
    /// member takes its partitions back at once. The price, on Tansu only: a static member never
    /// expires (missed heartbeats are checked only on dynamic members' requests), so an instance
    /// id that never comes back keeps its partitions: keep `instance_id` stable (a StatefulSet's
    /// pod name, not a Deployment's).
    #[serde(default = "default_static_membership")]
    pub static_membership: bool,
    /// `plaintext` (default), `ssl`, `sasl_plaintext` or `sasl_ssl`.
    #[serde(default)]
    pub security_protocol: SecurityProtocol,
    /// `SCRAM-SHA-512` (default), `SCRAM-SHA-256` or `PLAIN`; used by the `sasl_*` protocols.
    #[serde(default)]
    pub sasl_mechanism: SaslMechanism,
    /// The SASL user; required by the `sasl_*` protocols.
    #[serde(default)]
    pub sasl_username: String,
    /// The SASL password (`SLIPWAY_KAFKA__SASL_PASSWORD`); never logged.
    #[serde(default = "no_password")]
    pub sasl_password: SecretString,
    /// PEM file of the CA that signed the brokers' certificates, for `ssl`/`sasl_ssl`; empty:
    /// the system's CAs.
    #[serde(default)]
    pub ssl_ca_file: String,
    /// The largest record the brokers accept, in bytes: set it to the brokers' (or topics')
    /// `message.max.bytes`. The producer gets the same `message.max.bytes`, and the outbox
    /// refuses at enqueue an event that would not fit (with room for the signature and framing).
    /// Default 1048588, Apache Kafka's default.
    #[serde(default = "default_message_max_bytes")]
    pub message_max_bytes: usize,
    /// How long the producer keeps trying to deliver one record (`message.timeout.ms`) before
    /// the send fails and the outbox relay retries it.
    #[serde(default = "default_message_timeout_ms")]
    pub message_timeout_ms: u32,
}

/// Apache Kafka's default `message.max.bytes` (1 MiB plus 12 bytes of batch framing).
pub const KAFKA_DEFAULT_MESSAGE_MAX_BYTES: usize = 1_048_588;

fn default_message_max_bytes() -> usize {
    KAFKA_DEFAULT_MESSAGE_MAX_BYTES
}

fn default_message_timeout_ms() -> u32 {
    30_000
}

fn no_password() -> SecretString {
    SecretString::from(String::new())
}

fn default_static_membership() -> bool {
    true
}

fn default_partitions() -> i32 {
    3
}
fn default_replication() -> i32 {
    1
}
fn default_max_backoff_ms() -> u64 {
    30_000
}
fn default_session_timeout_ms() -> u32 {
    45_000
}
fn default_backoff_ms() -> u64 {
    200
}
fn default_fetch_wait_ms() -> u32 {
    100
}

impl KafkaSettings {
    /// Settings for `bootstrap_servers` with every other field at its default.
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        Self {
            bootstrap_servers: bootstrap_servers.into(),
            topic_prefix: String::new(),
            partitions: default_partitions(),
            replication_factor: default_replication(),
            retry_backoff_ms: default_backoff_ms(),
            retry_max_backoff_ms: default_max_backoff_ms(),
            session_timeout_ms: default_session_timeout_ms(),
            fetch_wait_ms: default_fetch_wait_ms(),
            instance_id: String::new(),
            static_membership: default_static_membership(),
            security_protocol: SecurityProtocol::default(),
            sasl_mechanism: SaslMechanism::default(),
            sasl_username: String::new(),
            sasl_password: no_password(),
            ssl_ca_file: String::new(),
            message_max_bytes: default_message_max_bytes(),
            message_timeout_ms: default_message_timeout_ms(),
        }
    }

    /// Checks that the security settings fit together and the CA file is readable.
    pub fn validate(&self) -> Result<(), KafkaSettingsError> {
        // Apache Kafka's default group.min/max.session.timeout.ms: outside, joins are refused.
        if !(6_000..=1_800_000).contains(&self.session_timeout_ms) {
            return Err(KafkaSettingsError::SessionTimeout(self.session_timeout_ms));
        }
        // librdkafka accepts 1000..=1e9; below 16 KiB no event would fit beside its headers.
        if !(16_384..=1_000_000_000).contains(&self.message_max_bytes) {
            return Err(KafkaSettingsError::MessageMaxBytes(self.message_max_bytes));
        }
        let protocol = self.security_protocol;
        if protocol.sasl() {
            if self.sasl_username.is_empty() || self.sasl_password.expose_secret().is_empty() {
                return Err(KafkaSettingsError::MissingCredentials(protocol.as_str()));
            }
            if self.sasl_mechanism == SaslMechanism::Plain && !protocol.tls() {
                return Err(KafkaSettingsError::PlainWithoutTls);
            }
        } else if !self.sasl_username.is_empty() {
            return Err(KafkaSettingsError::UnusedCredentials(protocol.as_str()));
        }
        if !self.ssl_ca_file.is_empty() {
            if !protocol.tls() {
                return Err(KafkaSettingsError::UnusedCaFile(protocol.as_str()));
            }
            std::fs::File::open(&self.ssl_ca_file)
                .map_err(|_| KafkaSettingsError::CaFile(self.ssl_ca_file.clone()))?;
        }
        Ok(())
    }

    /// The `group.instance.id` of this process in `group`, when static membership is on.
    pub fn group_instance_id(&self, group: &str) -> Option<String> {
        if !self.static_membership {
            return None;
        }
        let instance = if self.instance_id.is_empty() {
            std::env::var("HOSTNAME")
                .ok()
                .filter(|h| !h.is_empty())
                .or_else(|| {
                    std::fs::read_to_string("/proc/sys/kernel/hostname")
                        .ok()
                        .map(|h| h.trim().to_owned())
                })
                .unwrap_or_default()
        } else {
            self.instance_id.clone()
        };
        (!instance.is_empty()).then(|| format!("{group}@{instance}"))
    }

    pub fn topics(&self) -> Topics {
        Topics::new(self.topic_prefix.clone())
    }

    /// Common client configuration (producer, consumer and admin client alike).
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.bootstrap_servers)
            .set("socket.keepalive.enable", "true")
            .set("log_level", "4")
            .set("security.protocol", self.security_protocol.as_str());
        if self.security_protocol.sasl() {
            config
                .set("sasl.mechanisms", self.sasl_mechanism.as_str())
                .set("sasl.username", &self.sasl_username)
                .set("sasl.password", self.sasl_password.expose_secret());
        }
        if self.security_protocol.tls() && !self.ssl_ca_file.is_empty() {
            config.set("ssl.ca.location", &self.ssl_ca_file);
        }
        config
    }

    /// The delay before attempt `attempt` (1-based) is retried.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2u64.saturating_pow(attempt.saturating_sub(1));
        Duration::from_millis(
            self.retry_backoff_ms
                .saturating_mul(factor)
                .min(self.retry_max_backoff_ms.max(self.retry_backoff_ms)),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let s = KafkaSettings::new("x:1");
        assert_eq!(s.backoff(1), Duration::from_millis(200));
        assert_eq!(s.backoff(2), Duration::from_millis(400));
        assert_eq!(s.backoff(3), Duration::from_millis(800));
        assert_eq!(s.backoff(40), Duration::from_secs(30));
        let mut s = s;
        s.retry_max_backoff_ms = 500;
        assert_eq!(s.backoff(3), Duration::from_millis(500));
        assert_eq!(s.backoff(u32::MAX), Duration::from_millis(500));
    }

    fn sasl(protocol: SecurityProtocol) -> KafkaSettings {
        KafkaSettings {
            security_protocol: protocol,
            sasl_username: "slipway".into(),
            sasl_password: SecretString::from("s3cret".to_owned()),
            ..KafkaSettings::new("b:9093")
        }
    }

    #[test]
    fn plaintext_sets_no_credentials() {
        let config = KafkaSettings::new("b:9092").client_config();
        assert_eq!(config.get("security.protocol"), Some("plaintext"));
        assert_eq!(config.get("sasl.username"), None);
        assert_eq!(config.get("ssl.ca.location"), None);
        assert_eq!(KafkaSettings::new("b:9092").validate(), Ok(()));
    }

    #[test]
    fn sasl_ssl_maps_to_librdkafka_properties() {
        let mut s = sasl(SecurityProtocol::SaslSsl);
        s.sasl_mechanism = SaslMechanism::ScramSha256;
        s.ssl_ca_file = "/etc/ssl/certs/ca-certificates.crt".into();
        let config = s.client_config();
        assert_eq!(config.get("security.protocol"), Some("sasl_ssl"));
        assert_eq!(config.get("sasl.mechanisms"), Some("SCRAM-SHA-256"));
        assert_eq!(config.get("sasl.username"), Some("slipway"));
        assert_eq!(config.get("sasl.password"), Some("s3cret"));
        assert_eq!(
            config.get("ssl.ca.location"),
            Some("/etc/ssl/certs/ca-certificates.crt")
        );
        let plain = sasl(SecurityProtocol::SaslPlaintext).client_config();
        assert_eq!(plain.get("security.protocol"), Some("sasl_plaintext"));
        assert_eq!(plain.get("sasl.mechanisms"), Some("SCRAM-SHA-512"));
        assert_eq!(plain.get("ssl.ca.location"), None);
        // The password never shows in debug output.
        assert!(!format!("{s:?}").contains("s3cret"));
    }

    #[test]
    fn mismatched_security_settings_are_refused() {
        let mut s = sasl(SecurityProtocol::SaslSsl);
        s.sasl_username.clear();
        assert!(
            s.validate()
                .unwrap_err()
                .to_string()
                .contains("sasl_username")
        );
        let mut s = sasl(SecurityProtocol::SaslPlaintext);
        s.sasl_mechanism = SaslMechanism::Plain;
        assert_eq!(s.validate(), Err(KafkaSettingsError::PlainWithoutTls));
        let s = sasl(SecurityProtocol::Plaintext);
        assert!(matches!(
            s.validate(),
            Err(KafkaSettingsError::UnusedCredentials("plaintext"))
        ));
        let mut s = KafkaSettings::new("b:9092");
        s.ssl_ca_file = "/nowhere/ca.pem".into();
        assert!(matches!(
            s.validate(),
            Err(KafkaSettingsError::UnusedCaFile(_))
        ));
        s.security_protocol = SecurityProtocol::Ssl;
        assert_eq!(
            s.validate(),
            Err(KafkaSettingsError::CaFile("/nowhere/ca.pem".into()))
        );
    }

    #[test]
    fn the_record_limit_is_bounded_and_defaults_to_kafkas() {
        let mut s = KafkaSettings::new("b:9092");
        assert_eq!(s.message_max_bytes, 1_048_588);
        assert_eq!(s.message_timeout_ms, 30_000);
        s.message_max_bytes = 100;
        assert_eq!(s.validate(), Err(KafkaSettingsError::MessageMaxBytes(100)));
        s.message_max_bytes = 2_000_000_000;
        assert!(s.validate().is_err());
        s.message_max_bytes = 20_000;
        assert_eq!(s.validate(), Ok(()));
    }

    #[test]
    fn settings_read_from_text() {
        #[derive(Deserialize)]
        struct K {
            kafka: KafkaSettings,
        }
        let k: K = toml::from_str(
            "[kafka]\nbootstrap_servers = \"b:9093\"\nsecurity_protocol = \"sasl_ssl\"\n\
             sasl_mechanism = \"SCRAM-SHA-256\"\nsasl_username = \"u\"\nsasl_password = \"p\"\n",
        )
        .unwrap();
        assert_eq!(k.kafka.security_protocol, SecurityProtocol::SaslSsl);
        assert_eq!(k.kafka.sasl_mechanism, SaslMechanism::ScramSha256);
        assert_eq!(k.kafka.validate(), Ok(()));
    }

    /// Settings files written for earlier versions still load: `max_attempts` is ignored.
    #[test]
    fn the_former_max_attempts_key_is_ignored() {
        #[derive(Deserialize)]
        struct K {
            kafka: KafkaSettings,
        }
        let k: K = toml::from_str(
            "[kafka]\nbootstrap_servers = \"b:9092\"\nmax_attempts = 5\nretry_backoff_ms = 100\n",
        )
        .unwrap();
        assert_eq!(k.kafka.retry_backoff_ms, 100);
        assert_eq!(k.kafka.retry_max_backoff_ms, 30_000);
        let mut s = k.kafka;
        s.session_timeout_ms = 1000;
        assert_eq!(s.validate(), Err(KafkaSettingsError::SessionTimeout(1000)));
    }
}
