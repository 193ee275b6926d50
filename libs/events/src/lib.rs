//! Slipway's event contract, the one place that says what travels on Kafka.
//!
//! Layout:
//! - [`topics`]: every topic name and who writes it.
//! - [`envelope`]: the CloudEvents 1.0 envelope in Kafka *binary mode* (attributes in `ce_*`
//!   headers, the JSON data as the record value, the service id as the record key).
//! - [`cdevents`]: CDEvents v0.5.1 payloads for the events the CD Foundation defines.
//! - [`slipway`]: slipway's own event types (reverse-DNS, versioned) where CDEvents has none.
//! - [`inputs`]: user-given values that steer the platform (probe paths, run commands, env
//!   names), as types that hold only valid ones.
//! - [`resources`]: the CPUs and memory a release asks for its instances (`[run] cpus`,
//!   `memory`), as types that hold only values the targets can enforce.
//! - [`deploy`]: deploy-and-run commands and facts (deployments, instances, traffic, health).
//! - [`trust`]: the owning service of every event type and the bytes its signature covers.
//! - [`repository`]: the rule for repository URLs in events (no credentials; local ones only
//!   where an operator allows them).
//!
//! The written catalog for outside consumers is `docs/events.md`; a test keeps the two in step.
//!
//! The envelope is mapped by hand rather than with `cloudevents-sdk`: its Kafka binding pins
//! `rdkafka ^0.38` while the workspace uses 0.39, and the binary-mode mapping is a dozen headers.

pub mod cdevents;
pub mod deploy;
pub mod envelope;
pub mod inputs;
pub mod repository;
pub mod resources;
pub mod slipway;
pub mod topics;
pub mod trust;

pub use envelope::{CloudEvent, EnvelopeError, PROJECT_HEADER};
pub use topics::{Topic, Topics};
pub use trust::{SIGNATURE_HEADER, Service};

/// A typed event payload: its CloudEvents `type` and the topic it is published on.
pub trait EventData: serde::Serialize + serde::de::DeserializeOwned {
    /// The CloudEvents `type` attribute, e.g. `dev.slipway.service.created.v1`.
    const TYPE: &'static str;
    /// The topic the event is published on.
    const TOPIC: Topic;
}
