//! The idempotent producer.
//!
//! `enable.idempotence=true` implies `acks=all` and bounded in-flight requests, so a retried
//! send neither duplicates nor reorders records within a partition. Sends wait for the broker's
//! acknowledgement: callers (the outbox relay) mark an event published only after that.
//! Every event is signed ([`crate::signing`]) with the key of the service it names as source.

use std::time::Duration;

use rdkafka::message::Header;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
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

    /// Hands `event` to the producer's queue without waiting for the broker: the returned
    /// [`Delivery`] resolves once it is acknowledged. Events enqueued one after the other are
    /// sent in that order (idempotent producer), and many can be under way at once: the outbox
    /// relay enqueues a whole batch, then awaits the acknowledgements. Fails at once when the
    /// event cannot be signed or the producer refuses it (too large, queue full:
    /// [`is_queue_full`]).
    pub fn enqueue(&self, topic: Topic, event: &CloudEvent) -> Result<Delivery, PublishError> {
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
        let what = |source| PublishError::Send {
            topic: topic.clone(),
            event_type: event.ty.clone(),
            event_id: event.id.to_string(),
            source,
        };
        match self.producer.send_result(record) {
            Ok(future) => Ok(Delivery {
                future,
                topic: topic.clone(),
                event_type: event.ty.clone(),
                event_id: event.id.to_string(),
            }),
            Err((source, _)) => Err(what(source)),
        }
    }

    /// Sends `event` to `topic` and waits for the acknowledgement; returns (partition, offset).
    /// A full queue is waited out (up to 30 s), as the other sends drain it.
    pub async fn publish(
        &self,
        topic: Topic,
        event: &CloudEvent,
    ) -> Result<(i32, i64), PublishError> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            match self.enqueue(topic, event) {
                Ok(delivery) => return delivery.acknowledged().await,
                Err(e) if is_queue_full(&e) && tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends raw bytes (used to dead-letter records that are not valid CloudEvents); returns
    /// (partition, offset).
    pub(crate) async fn send_bytes(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: rdkafka::message::OwnedHeaders,
    ) -> Result<(i32, i64), rdkafka::error::KafkaError> {
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
            .map(|delivery| (delivery.partition, delivery.offset))
            .map_err(|(e, _)| e)
    }

    /// Publishes a record exactly as it was (a dead letter being replayed): same key, same
    /// headers in the same order (its signature among them), same value; nothing re-signed,
    /// so it is verified again like the original. Returns (partition, offset).
    pub async fn republish(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: &[(String, Option<Vec<u8>>)],
    ) -> Result<(i32, i64), rdkafka::error::KafkaError> {
        let headers =
            headers
                .iter()
                .fold(rdkafka::message::OwnedHeaders::new(), |h, (key, value)| {
                    h.insert(Header {
                        key,
                        value: value.as_deref(),
                    })
                });
        self.send_bytes(topic, key, payload, headers).await
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

/// An event handed to the producer ([`EventProducer::enqueue`]), not yet acknowledged.
pub struct Delivery {
    future: DeliveryFuture,
    topic: String,
    event_type: String,
    event_id: String,
}

impl Delivery {
    /// Waits for the broker's acknowledgement; returns (partition, offset). The producer's
    /// `message.timeout.ms` bounds the wait.
    pub async fn acknowledged(self) -> Result<(i32, i64), PublishError> {
        let source = match self.future.await {
            Ok(Ok(delivery)) => return Ok((delivery.partition, delivery.offset)),
            Ok(Err((source, _))) => source,
            // The producer was dropped with the event still queued.
            Err(_) => rdkafka::error::KafkaError::Canceled,
        };
        Err(PublishError::Send {
            topic: self.topic,
            event_type: self.event_type,
            event_id: self.event_id,
            source,
        })
    }
}

/// Whether the producer refused an event only because its queue is full: it can be enqueued
/// again once earlier sends are acknowledged.
pub fn is_queue_full(error: &PublishError) -> bool {
    matches!(
        error,
        PublishError::Send { source, .. }
            if source.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::QueueFull)
    )
}
