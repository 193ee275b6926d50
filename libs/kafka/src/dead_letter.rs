//! The dead-letter topic: what a consumer writes there, and a runner that reads it back.
//!
//! A dead-letter record is the original record, key, value and headers unchanged (so the
//! signature `ce_slipwaysig` still verifies), plus the `slipway_dlq_*` headers below.
//! [`DeadLetter::original_headers`] gives the headers to republish it with, byte for byte
//! ([`crate::EventProducer::republish`]).
//!
//! [`DeadLetterRunner`] hands each dead-letter record to a [`DeadLetterSink`] (the gateway
//! stores them for its admin API). It shares the consumer loop: a sink failure is retried
//! without limit, the offset stored only after the sink took the record.

use rdkafka::Message;
use rdkafka::message::{BorrowedMessage, Headers};
use slipway_events::Topic;
use tokio_util::sync::CancellationToken;

use crate::KafkaSettings;
use crate::consumer::{Cause, ConsumerError, ConsumerMetrics, ConsumerStatus};
use crate::consumer::{Driver, Process, Step};

/// Why the record was dead-lettered.
pub const REASON: &str = "slipway_dlq_reason";
/// The consumer group that gave up on it.
pub const GROUP: &str = "slipway_dlq_group";
/// The topic it was read from (the broker's name, prefix included).
pub const TOPIC: &str = "slipway_dlq_topic";
/// Its partition there.
pub const PARTITION: &str = "slipway_dlq_partition";
/// Its offset there.
pub const OFFSET: &str = "slipway_dlq_offset";
/// How many times the handler ran (0: not a valid CloudEvent, or rejected).
pub const ATTEMPTS: &str = "slipway_dlq_attempts";
/// Every header a dead-letter record has that the original had not.
const PREFIX: &str = "slipway_dlq_";

/// The longest reason written (a handler's error chain can be long; records are bounded).
pub const MAX_REASON_CHARS: usize = 2000;

/// `reason`, cut to [`MAX_REASON_CHARS`].
pub fn bounded_reason(reason: &str) -> String {
    match reason.char_indices().nth(MAX_REASON_CHARS) {
        Some((at, _)) => format!("{}…", &reason[..at]),
        None => reason.to_owned(),
    }
}

/// A dead-letter record, read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Where the dead-letter record itself is (its partition and offset on the dead-letter
    /// topic): redelivery of the same record names the same place.
    pub dlq_partition: i32,
    pub dlq_offset: i64,
    /// Where the original was read from; empty / -1 when the headers do not say (a record
    /// written there by someone else).
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub group: String,
    pub reason: String,
    pub attempts: i32,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    /// The original record's headers in their order, without the `slipway_dlq_*` ones.
    pub original_headers: Vec<(String, Option<Vec<u8>>)>,
}

impl DeadLetter {
    /// Reads a record of the dead-letter topic; never fails (missing fields stay empty).
    pub fn from_record(message: &impl Message) -> Self {
        let mut original = Vec::new();
        let mut get = std::collections::HashMap::new();
        if let Some(headers) = message.headers() {
            for h in headers.iter() {
                if h.key.starts_with(PREFIX) {
                    let text = h
                        .value
                        .map(|v| String::from_utf8_lossy(v).into_owned())
                        .unwrap_or_default();
                    get.insert(h.key.to_owned(), text);
                } else {
                    original.push((h.key.to_owned(), h.value.map(<[u8]>::to_vec)));
                }
            }
        }
        let text = |k: &str| get.get(k).cloned().unwrap_or_default();
        let number = |k: &str| get.get(k).and_then(|v| v.parse::<i64>().ok());
        Self {
            dlq_partition: message.partition(),
            dlq_offset: message.offset(),
            topic: text(TOPIC),
            partition: number(PARTITION)
                .and_then(|p| i32::try_from(p).ok())
                .unwrap_or(-1),
            offset: number(OFFSET).unwrap_or(-1),
            group: text(GROUP),
            reason: match get.get(REASON) {
                Some(r) => bounded_reason(r),
                None => "(the record has no slipway_dlq_reason header)".to_owned(),
            },
            attempts: number(ATTEMPTS)
                .and_then(|a| i32::try_from(a).ok())
                .unwrap_or(0),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            original_headers: original,
        }
    }

    /// The value of original header `name` as text (e.g. `ce_type`), if present and UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.original_headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_deref())
            .and_then(|v| std::str::from_utf8(v).ok())
    }
}

/// Where dead letters go; an error is retried (with backoff, without limit).
pub trait DeadLetterSink: Send + Sync + 'static {
    fn store(&self, letter: &DeadLetter) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// Consumes the dead-letter topic into a [`DeadLetterSink`].
pub struct DeadLetterRunner<S> {
    settings: KafkaSettings,
    group: String,
    sink: Sink<S>,
    metrics: ConsumerMetrics,
    status: ConsumerStatus,
}

struct Sink<S>(S);

impl<S: DeadLetterSink> Process for Sink<S> {
    async fn process(&self, message: &BorrowedMessage<'_>, _attempt: u32) -> Step {
        let letter = DeadLetter::from_record(message);
        match self.0.store(&letter).await {
            Ok(()) => Step::Done {
                ty: "dead_letter".into(),
                outcome: "applied",
            },
            Err(error) => Step::Retry {
                cause: Cause::of(&error),
                error: format!("{error:#}"),
            },
        }
    }
}

impl<S: DeadLetterSink> DeadLetterRunner<S> {
    pub fn new(
        settings: KafkaSettings,
        group: impl Into<String>,
        sink: S,
        metrics: ConsumerMetrics,
    ) -> Self {
        let group = group.into();
        Self {
            status: ConsumerStatus::new(&group),
            settings,
            group,
            sink: Sink(sink),
            metrics,
        }
    }

    /// What this runner waits for, for `/readyz`.
    pub fn status(&self) -> ConsumerStatus {
        self.status.clone()
    }

    /// Consumes until `cancel` fires.
    pub async fn run(self, cancel: CancellationToken) -> Result<(), ConsumerError> {
        Driver {
            settings: &self.settings,
            group: &self.group,
            topics: &[Topic::DeadLetter],
            process: &self.sink,
            metrics: &self.metrics,
            status: &self.status,
        }
        .run(&cancel)
        .await
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::message::{Header, OwnedHeaders, OwnedMessage, Timestamp};

    use super::*;

    #[test]
    fn a_dead_letter_reads_back_with_its_original_headers() {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "ce_type",
                value: Some(b"dev.slipway.service.created.v1".as_slice()),
            })
            .insert(Header {
                key: "ce_slipwaysig",
                value: Some(b"sig".as_slice()),
            })
            .insert(Header {
                key: REASON,
                value: Some(b"rejected: bad".as_slice()),
            })
            .insert(Header {
                key: TOPIC,
                value: Some(b"t.slipway.services".as_slice()),
            })
            .insert(Header {
                key: PARTITION,
                value: Some(b"1".as_slice()),
            })
            .insert(Header {
                key: OFFSET,
                value: Some(b"42".as_slice()),
            })
            .insert(Header {
                key: "nothing",
                value: None::<&[u8]>,
            });
        let m = OwnedMessage::new(
            Some(b"{}".to_vec()),
            Some(b"k".to_vec()),
            "t.slipway.deadletter".into(),
            Timestamp::NotAvailable,
            0,
            7,
            Some(headers),
        );
        let d = DeadLetter::from_record(&m);
        assert_eq!((d.dlq_partition, d.dlq_offset), (0, 7));
        assert_eq!(
            (d.topic.as_str(), d.partition, d.offset),
            ("t.slipway.services", 1, 42)
        );
        assert_eq!(d.reason, "rejected: bad");
        assert_eq!(d.group, "");
        assert_eq!(d.attempts, 0);
        assert_eq!(d.header("ce_type"), Some("dev.slipway.service.created.v1"));
        let names: Vec<&str> = d.original_headers.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["ce_type", "ce_slipwaysig", "nothing"]);
    }

    #[test]
    fn reasons_are_bounded() {
        assert_eq!(bounded_reason("short"), "short");
        let long = "é".repeat(MAX_REASON_CHARS + 5);
        assert_eq!(bounded_reason(&long).chars().count(), MAX_REASON_CHARS + 1);
    }
}
