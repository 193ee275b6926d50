//! Kafka plumbing shared by every service.
//!
//! Layout:
//! - [`settings`]: broker address, topic prefix, partitions, retry policy.
//! - [`record`]: [`slipway_events::CloudEvent`] to and from rdkafka headers/records.
//! - [`signing`]: Ed25519 keys (`[signing]`); events signed on publish, checked on consume.
//! - [`producer`]: the idempotent producer (`acks=all`) that publishes signed CloudEvents.
//! - [`admin`]: topic creation at start-up; the broker reachability probe for `/readyz`.
//! - [`consumer`]: the consumer runner: at-least-once delivery (an offset is stored only after
//!   its handler succeeded), retries with backoff, dead-lettering with the reason, draining on
//!   shutdown.

pub mod admin;
pub mod consumer;
pub mod producer;
pub mod record;
pub mod settings;
pub mod signing;

pub use consumer::{ConsumerRunner, Handled, Handler, HandlerError};
pub use producer::{EventProducer, PublishError};
pub use settings::KafkaSettings;
pub use signing::{Keys, Signer, SigningSettings, Verifier};
