//! What a consumer group member is waiting for: `/readyz` says it, the logs and metrics count it.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use chrono::{DateTime, SecondsFormat, Utc};

/// What a transient failure is about, for the readiness reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The handler's database was unreachable or refused for a while (a `sqlx::Error`).
    Database,
    /// The broker: dead-lettering failed, or the client had to be recreated.
    Broker,
    /// Anything else the handler called retryable (a dependency timed out).
    Transient,
}

impl Cause {
    /// Reads the cause from a handler's error chain.
    pub fn of(error: &anyhow::Error) -> Self {
        if error.chain().any(|e| e.is::<sqlx::Error>()) {
            Cause::Database
        } else if error.chain().any(|e| e.is::<rdkafka::error::KafkaError>()) {
            Cause::Broker
        } else {
            Cause::Transient
        }
    }

    fn outage(self) -> &'static str {
        match self {
            Cause::Database => "a database outage",
            Cause::Broker => "a broker outage",
            Cause::Transient => "a transient failure",
        }
    }
}

/// One partition (or the whole member) waiting.
#[derive(Debug, Clone)]
struct Waiting {
    since: DateTime<Utc>,
    cause: Cause,
    error: String,
}

#[derive(Debug, Default)]
struct Inner {
    /// Partitions paused on a message that failed transiently, by (topic, partition).
    partitions: BTreeMap<(String, i32), Waiting>,
    /// The client itself is being recreated (after a fatal error).
    member: Option<Waiting>,
}

/// A handle on one consumer's state, shared with `/readyz`. Cloning shares it.
#[derive(Debug, Clone)]
pub struct ConsumerStatus {
    group: Arc<str>,
    inner: Arc<Mutex<Inner>>,
}

/// Readiness reasons quote the error; a whole chain of SQL can be long.
const MAX_ERROR_CHARS: usize = 300;

impl ConsumerStatus {
    pub fn new(group: &str) -> Self {
        Self {
            group: group.into(),
            inner: Arc::default(),
        }
    }

    /// The consumer group this status is of.
    pub fn group(&self) -> &str {
        &self.group
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The data stays consistent whatever panicked while holding it (plain inserts).
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `Ok` while nothing waits; otherwise the `/readyz` reason, e.g. `consumer group
    /// slipway-deployer-commands: waiting out a database outage since 2026-12-01T10:00:00Z:
    /// pool timed out while waiting for an open connection`.
    pub fn check(&self) -> Result<(), String> {
        let inner = self.lock();
        let count = inner.partitions.len();
        let oldest = inner
            .member
            .iter()
            .chain(inner.partitions.values())
            .min_by_key(|w| w.since);
        let Some(w) = oldest else {
            return Ok(());
        };
        let mut error: String = w.error.chars().take(MAX_ERROR_CHARS).collect();
        if error.len() < w.error.len() {
            error.push('…');
        }
        let partitions = if count > 1 {
            format!(" ({count} partitions paused)")
        } else {
            String::new()
        };
        Err(format!(
            "consumer group {}: waiting out {} since {}: {error}{partitions}",
            self.group,
            w.cause.outage(),
            w.since.to_rfc3339_opts(SecondsFormat::Secs, true),
        ))
    }

    /// How many partitions are paused on a failing message.
    pub fn waiting_partitions(&self) -> usize {
        self.lock().partitions.len()
    }

    pub(crate) fn partition_waits(
        &self,
        topic: &str,
        partition: i32,
        since: DateTime<Utc>,
        cause: Cause,
        error: &str,
    ) {
        let waiting = Waiting {
            since,
            cause,
            error: error.to_owned(),
        };
        self.lock()
            .partitions
            .insert((topic.to_owned(), partition), waiting);
    }

    pub(crate) fn partition_flows(&self, topic: &str, partition: i32) {
        self.lock()
            .partitions
            .remove(&(topic.to_owned(), partition));
    }

    pub(crate) fn no_partitions(&self) {
        self.lock().partitions.clear();
    }

    pub(crate) fn member_restarting(&self, since: DateTime<Utc>, error: &str) {
        self.lock().member = Some(Waiting {
            since,
            cause: Cause::Broker,
            error: error.to_owned(),
        });
    }

    pub(crate) fn member_running(&self) {
        self.lock().member = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reason_names_group_outage_time_and_error() {
        let status = ConsumerStatus::new("slipway-deployer-commands");
        assert_eq!(status.check(), Ok(()));
        let since = DateTime::parse_from_rfc3339("2026-12-01T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let db = anyhow::Error::from(sqlx::Error::PoolTimedOut);
        status.partition_waits(
            "t.slipway.commands",
            1,
            since,
            Cause::of(&db),
            &db.to_string(),
        );
        assert_eq!(
            status.check(),
            Err(
                "consumer group slipway-deployer-commands: waiting out a database outage since \
                 2026-12-01T10:00:00Z: pool timed out while waiting for an open connection"
                    .to_owned()
            )
        );
        let later = since + chrono::Duration::seconds(5);
        status.partition_waits("t.slipway.commands", 0, later, Cause::Transient, "x");
        let reason = status.check().unwrap_err();
        assert!(
            reason.contains("since 2026-12-01T10:00:00Z"),
            "the oldest: {reason}"
        );
        assert!(reason.ends_with("(2 partitions paused)"), "{reason}");
        status.partition_flows("t.slipway.commands", 1);
        status.partition_flows("t.slipway.commands", 0);
        assert_eq!(status.check(), Ok(()));
        status.member_restarting(later, &"e".repeat(1000));
        let reason = status.check().unwrap_err();
        assert!(reason.contains("a broker outage"), "{reason}");
        assert!(reason.len() < 500, "bounded: {reason}");
        status.member_running();
        assert_eq!(status.check(), Ok(()));
    }
}
