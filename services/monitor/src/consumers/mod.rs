//! Kafka handlers.
//!
//! - [`instances`]: the deployer's instance facts: start, stop or re-target probers, record
//!   exits, keep logs.

pub mod instances;

pub use instances::InstanceEvents;
