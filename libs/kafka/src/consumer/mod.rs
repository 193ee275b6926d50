//! The consumer runner: at-least-once, in order per partition, outages waited out, poison
//! messages dead-lettered.
//!
//! Auto-commit only commits offsets that were *stored*, and an offset is stored only once its
//! message was handled or dead-lettered, so a crash at any point redelivers, never skips.
//! Handlers make redelivery harmless by recording event ids in an inbox in the same
//! transaction as their effect (see `slipway-outbox`).
//!
//! A [`HandlerError::Retryable`] failure (database or broker unavailable, a timeout) is retried
//! without limit with capped exponential backoff (`kafka.retry_backoff_ms`,
//! `kafka.retry_max_backoff_ms`), its partition paused meanwhile while the others flow;
//! [`ConsumerStatus`] says so to `/readyz`. Only a [`HandlerError::Permanent`] failure, a record
//! that is not a valid CloudEvent, or one that fails its signature check
//! ([`crate::signing`]) goes to the dead-letter topic, with the reason ([`crate::dead_letter`]).
//! The loop itself, its states and how it survives broker hangs: `driver.rs`.

mod context;
mod driver;
mod status;

use std::collections::HashMap;

use rdkafka::Message;
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use slipway_events::{CloudEvent, Topic, Topics};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use driver::ConsumerMetrics;
pub(crate) use driver::{Driver, Process, Step};
pub use status::{Cause, ConsumerStatus};

use crate::dead_letter;
use crate::record::{event_of, verify};
use crate::signing::Verifier;
use crate::{EventProducer, KafkaSettings};

/// What a handler did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handled {
    /// Its effect was applied.
    Applied,
    /// It had been applied before (its id was in the inbox); nothing done.
    Duplicate,
    /// Not an event this handler acts on.
    Ignored,
}

/// Why a handler could not apply an event.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Might succeed later (database down, a dependency timed out): retried with backoff,
    /// without limit, the partition paused meanwhile. For database errors use
    /// [`HandlerError::from_sqlx`], which tells the two kinds apart.
    #[error("{0:#}")]
    Retryable(anyhow::Error),
    /// Will never succeed (malformed payload, refused by a domain rule or a constraint):
    /// dead-lettered at once.
    #[error("{0:#}")]
    Permanent(anyhow::Error),
}

/// Applies events. Called once per message, in partition order; must be idempotent.
pub trait Handler: Send + Sync + 'static {
    fn handle(
        &self,
        event: &CloudEvent,
    ) -> impl Future<Output = Result<Handled, HandlerError>> + Send;
}

/// Why the runner stopped with an error (a configuration the broker client refuses; outages
/// and client failures are waited out instead).
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error("cannot create the consumer for group `{group}`: {source}")]
    Create {
        group: String,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    #[error("cannot subscribe group `{group}` to {topics:?}: {source}")]
    Subscribe {
        group: String,
        topics: Vec<String>,
        #[source]
        source: rdkafka::error::KafkaError,
    },
}

/// Runs one consumer group member over some topics with one handler.
pub struct ConsumerRunner<H> {
    settings: KafkaSettings,
    group: String,
    topics: Vec<Topic>,
    metrics: ConsumerMetrics,
    status: ConsumerStatus,
    events: Events<H>,
}

/// Turns records into handled events: decode, verify, handle, dead-letter.
struct Events<H> {
    group: String,
    topics: Topics,
    handler: H,
    dead_letters: EventProducer,
    verifier: Verifier,
}

impl<H: Handler> ConsumerRunner<H> {
    /// `group` is the consumer group id (one per service and purpose, e.g. `slipway-builder`);
    /// `verifier` decides which records reach `handler`.
    pub fn new(
        settings: KafkaSettings,
        group: impl Into<String>,
        topics: &[Topic],
        handler: H,
        dead_letters: EventProducer,
        metrics: ConsumerMetrics,
        verifier: Verifier,
    ) -> Self {
        let group = group.into();
        Self {
            status: ConsumerStatus::new(&group),
            events: Events {
                group: group.clone(),
                topics: settings.topics(),
                handler,
                dead_letters,
                verifier,
            },
            settings,
            group,
            topics: topics.to_vec(),
            metrics,
        }
    }

    /// What this runner waits for, for `/readyz` (shared: it follows the running runner).
    pub fn status(&self) -> ConsumerStatus {
        self.status.clone()
    }

    /// Consumes until `cancel` fires, then drains and commits. Returns an error only for a
    /// configuration the client refuses.
    pub async fn run(self, cancel: CancellationToken) -> Result<(), ConsumerError> {
        Driver {
            settings: &self.settings,
            group: &self.group,
            topics: &self.topics,
            process: &self.events,
            metrics: &self.metrics,
            status: &self.status,
        }
        .run(&cancel)
        .await
    }
}

impl<H: Handler> Process for Events<H> {
    async fn process(&self, message: &BorrowedMessage<'_>, attempt: u32) -> Step {
        let event = match event_of(message) {
            Ok(event) => event,
            Err(e) => {
                let reason = format!("not a valid slipway CloudEvent: {e}");
                return self
                    .dead_letter(message, &reason, 0, "invalid".into(), "dead_lettered")
                    .await;
            }
        };
        if let Err(rejection) = verify(&self.verifier, message) {
            let reason = format!("rejected: {rejection}");
            tracing::warn!(
                group = %self.group,
                topic = message.topic(),
                event.id = %event.id,
                event.r#type = %event.ty,
                event.source = %event.source,
                reason = %reason,
                "dead-lettering an event that is not its owner's"
            );
            // Anyone can write any type on the broker: only known types become metric labels.
            let label = match slipway_events::trust::owner(&event.ty) {
                Some(_) => event.ty,
                None => "unknown".to_owned(),
            };
            return self
                .dead_letter(message, &reason, 0, label, "rejected")
                .await;
        }
        let span = tracing::info_span!(
            "consume",
            group = %self.group,
            topic = message.topic(),
            partition = message.partition(),
            offset = message.offset(),
            attempt,
            event.id = %event.id,
            event.r#type = %event.ty,
        );
        let carrier: HashMap<String, String> = [
            ("traceparent", &event.traceparent),
            ("tracestate", &event.tracestate),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.clone().map(|v| (k.to_owned(), v)))
        .collect();
        slipway_telemetry::set_parent(&span, &carrier);

        match self.handler.handle(&event).instrument(span.clone()).await {
            Ok(Handled::Applied) => Step::Done {
                ty: event.ty,
                outcome: "applied",
            },
            Ok(Handled::Duplicate) => Step::Done {
                ty: event.ty,
                outcome: "duplicate",
            },
            // Any producer can send any type; only the handled ones become labels.
            Ok(Handled::Ignored) => Step::Done {
                ty: "other".into(),
                outcome: "ignored",
            },
            Err(HandlerError::Retryable(error)) => Step::Retry {
                cause: Cause::of(&error),
                error: format!("{error:#}"),
            },
            Err(HandlerError::Permanent(error)) => {
                let reason = format!("{error:#}");
                span.in_scope(
                    || tracing::error!(attempt, reason = %reason, "dead-lettering event"),
                );
                self.dead_letter(message, &reason, attempt, event.ty, "dead_lettered")
                    .await
            }
        }
    }
}

impl<H> Events<H> {
    /// Copies the record, headers and all, to the dead-letter topic with why and where from.
    /// Until the broker takes it the message is not done: it is retried like an outage.
    async fn dead_letter(
        &self,
        message: &BorrowedMessage<'_>,
        reason: &str,
        attempts: u32,
        ty: String,
        outcome: &'static str,
    ) -> Step {
        let mut headers = OwnedHeaders::new();
        if let Some(original) = message.headers() {
            for h in original.iter() {
                headers = headers.insert(h);
            }
        }
        let reason = dead_letter::bounded_reason(reason);
        let extra = [
            (dead_letter::REASON, reason),
            (dead_letter::GROUP, self.group.clone()),
            (dead_letter::TOPIC, message.topic().to_owned()),
            (dead_letter::PARTITION, message.partition().to_string()),
            (dead_letter::OFFSET, message.offset().to_string()),
            (dead_letter::ATTEMPTS, attempts.to_string()),
        ];
        for (key, value) in &extra {
            headers = headers.insert(Header {
                key,
                value: Some(value.as_bytes()),
            });
        }
        let topic = self.topics.name(Topic::DeadLetter);
        match self
            .dead_letters
            .send_bytes(&topic, message.key(), message.payload(), headers)
            .await
        {
            Ok(_) => Step::Done { ty, outcome },
            Err(e) => Step::Retry {
                cause: Cause::Broker,
                error: format!("cannot dead-letter the record: {e}"),
            },
        }
    }
}
