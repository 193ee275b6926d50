//! The idempotent producer.
//!
//! `enable.idempotence=true` implies `acks=all` and bounded in-flight requests, so a retried
//! send neither duplicates nor reorders records within a partition. Sends wait for the broker's
//! acknowledgement: callers (the outbox relay) mark an event published only after that.
//! Every event is signed ([`crate::signing`]) with the key of the service it names as source.

use std::time::Duration;

use rdkafka::message::Header;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use slipway_events::{CloudEvent, SIGNATURE_HEADER, Topic, Topics};

use crate::KafkaSettings;
use crate::record::headers;
use crate::signing::{SignError, Signer};

/// Why an event was not published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("cannot create the Kafka producer: {0}")]
    Create(#[source] rdkafka::error::KafkaError),
    #[error("publishing {event_type} {event_id} to {topic} failed: {source}")]
    Send {
        topic: String,
        event_type: String,
        event_id: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("not publishing {event_type} {event_id}: {source}")]
    Sign {
        event_type: String,
        event_id: String,
        #[source]
        source: SignError,
    },
}

/// Publishes signed CloudEvents with the service id as key.
#[derive(Clone)]
pub struct EventProducer {
    producer: FutureProducer,
    topics: Topics,
    signer: Signer,
    /// What it was made from, to make a fresh one ([`EventProducer::fresh`]).
    config: rdkafka::ClientConfig,
}

impl EventProducer {
    /// A producer signing with `signer` (a service's own key: [`crate::signing::Keys`]).
    pub fn new(settings: &KafkaSettings, signer: Signer) -> Result<Self, PublishError> {
        let mut config = settings.client_config();
        config
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set(
                "message.timeout.ms",
                settings.message_timeout_ms.to_string(),
            )
            // The same bound the outbox checks at enqueue (`kafka.message_max_bytes`).
            .set("message.max.bytes", settings.message_max_bytes.to_string())
            .set("linger.ms", "5");
        let producer: FutureProducer = config.create().map_err(PublishError::Create)?;
        Ok(Self {
            producer,
            topics: settings.topics(),
            signer,
            config,
        })
    }

    /// A new producer with the same settings and key, and a new producer id: the way out when
    /// this one can no longer send ([`EventProducer::is_stuck`]).
    pub fn fresh(&self) -> Result<Self, PublishError> {
        Ok(Self {
            producer: self.config.create().map_err(PublishError::Create)?,
            topics: self.topics.clone(),
            signer: self.signer.clone(),
            config: self.config.clone(),
        })
    }

    /// Whether this producer will fail every send from now on, whatever the broker does: in
    /// librdkafka's fatal state, or fenced by the broker. Seen after records timed out during a
    /// broker hang: the idempotent producer bumps its epoch and a broker may answer
    /// `PRODUCER_FENCED` to it for good (Tansu does).
    pub fn is_stuck(&self, error: &rdkafka::error::KafkaError) -> bool {
        use rdkafka::types::RDKafkaErrorCode as Code;
        self.producer.client().fatal_error().is_some()
            || matches!(
                error.rdkafka_error_code(),
                Some(
                    Code::ProducerFenced
                        | Code::InvalidProducerEpoch
                        | Code::UnknownProducerId
                        | Code::OutOfOrderSequenceNumber
                        | Code::InvalidProducerIdMapping
                        | Code::Fatal
                )
            )
    }

    /// Sends `event` to `topic` and waits for the acknowledgement; returns (partition, offset).
    pub async fn publish(
        &self,
        topic: Topic,
        event: &CloudEvent,
    ) -> Result<(i32, i64), PublishError> {
        let topic = self.topics.name(topic);
        let signature = self
            .signer
            .sign(event)
            .map_err(|source| PublishError::Sign {
                event_type: event.ty.clone(),
                event_id: event.id.to_string(),
                source,
            })?;
        let key = event.key.to_string();
        let body = event.body();
        let record =
            FutureRecord::to(&topic)
                .key(&key)
                .payload(&body)
                .headers(headers(event).insert(Header {
                    key: SIGNATURE_HEADER,
                    value: Some(signature.as_bytes()),
                }));
        self.producer
            .send(record, Timeout::After(Duration::from_secs(30)))
            .await
            .map(|delivery| (delivery.partition, delivery.offset))
            .map_err(|(source, _)| PublishError::Send {
                topic: topic.clone(),
                event_type: event.ty.clone(),
                event_id: event.id.to_string(),
                source,
            })
    }

    /// Sends raw bytes (used to dead-letter records that are not valid CloudEvents).
    pub(crate) async fn send_bytes(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: rdkafka::message::OwnedHeaders,
    ) -> Result<(), rdkafka::error::KafkaError> {
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(topic).headers(headers);
        if let Some(k) = key {
            record = record.key(k);
        }
        if let Some(p) = payload {
            record = record.payload(p);
        }
        self.producer
            .send(record, Timeout::After(Duration::from_secs(30)))
            .await
            .map(|_| ())
            .map_err(|(e, _)| e)
    }

    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    /// Asks a broker for metadata: the readiness probe.
    pub async fn ping(&self) -> Result<(), String> {
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(None, Duration::from_secs(2))
                .map(|_| ())
                .map_err(|e| format!("broker unreachable: {e}"))
        })
        .await
        .map_err(|e| format!("probe task failed: {e}"))?
    }

    /// Waits for queued sends to be delivered (at shutdown).
    pub fn flush(&self, timeout: Duration) {
        if let Err(e) = self.producer.flush(Timeout::After(timeout)) {
            tracing::warn!(error = %e, "producer flush incomplete");
        }
    }
}
