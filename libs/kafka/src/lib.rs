//! Kafka plumbing shared by every service.
//!
//! Layout:
//! - [`settings`]: broker address, topic prefix, partitions, retry policy.
//! - [`record`]: [`slipway_events::CloudEvent`] to and from rdkafka headers/records.
//! - [`signing`]: Ed25519 keys (`[signing]`); events signed on publish, checked on consume.
//! - [`producer`]: the idempotent producer (`acks=all`) that publishes signed CloudEvents.
//! - [`admin`]: topic creation at start-up; the broker reachability probe for `/readyz`.
//! - [`consumer`]: the consumer runner: at-least-once delivery (an offset is stored only after
//!   its handler succeeded), transient failures retried without limit (the partition paused,
//!   `/readyz` told), the client recreated after fatal errors, dead-lettering of permanent
//!   failures with the reason, draining on shutdown.
//! - [`classify`]: which database errors are transient ([`HandlerError::from_sqlx`]).
//! - [`dead_letter`]: the dead-letter record's headers, and a runner reading them back.

pub mod admin;
pub mod classify;
pub mod consumer;
pub mod dead_letter;
pub mod producer;
pub mod record;
pub mod settings;
pub mod signing;

pub use consumer::{ConsumerRunner, ConsumerStatus, Handled, Handler, HandlerError};
pub use producer::{Delivery, EventProducer, PublishError, is_queue_full};
pub use settings::KafkaSettings;
pub use signing::{Keys, Signer, SigningSettings, Verifier};
