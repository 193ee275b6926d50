//! The registry owns what slipway knows about services: the services themselves (and, as the
//! platform grows, their environments, immutable releases, versioned config and discovered
//! instances). It answers reads over its internal HTTP API, which only the gateway calls, and
//! announces every change through its outbox.
//!
//! Layout:
//! - `domain/`: validated types (a service name is a DNS label, ...).
//! - `db/`: queries; writing functions take a transaction so the outbox row shares it.
//! - `routes/`: the internal HTTP API, one file per resource.
//! - `startup.rs`: settings and [`Application`].

pub mod db;
pub mod domain;
pub mod routes;
mod startup;

pub use startup::{Application, Settings};
