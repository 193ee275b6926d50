//! Kafka settings (section `[kafka]`).

use std::time::Duration;

use rdkafka::ClientConfig;
use serde::Deserialize;
use slipway_events::Topics;

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
    /// Attempts a consumer makes at one message before dead-lettering it.
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// First retry delay in milliseconds; doubles per attempt, capped at 30 s.
    #[serde(default = "default_backoff_ms")]
    pub retry_backoff_ms: u64,
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
    /// Use static membership at all (`false`: classic dynamic membership).
    #[serde(default = "default_static_membership")]
    pub static_membership: bool,
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
fn default_attempts() -> u32 {
    5
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
            max_attempts: default_attempts(),
            retry_backoff_ms: default_backoff_ms(),
            fetch_wait_ms: default_fetch_wait_ms(),
            instance_id: String::new(),
            static_membership: default_static_membership(),
        }
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

    /// Common client configuration.
    pub fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.bootstrap_servers)
            .set("socket.keepalive.enable", "true")
            .set("log_level", "4");
        config
    }

    /// The delay before attempt `attempt` (1-based) is retried.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2u64.saturating_pow(attempt.saturating_sub(1));
        Duration::from_millis(self.retry_backoff_ms.saturating_mul(factor).min(30_000))
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
    }
}
