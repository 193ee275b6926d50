//! The registry owns what slipway knows about services: the services themselves, their
//! environments and versioned config (secrets sealed with AES-256-GCM), and their immutable
//! releases, made from the artifacts the builder publishes, and the instances that run them (from
//! the deployer's instance facts and the monitor's health verdicts). It answers reads over its
//! internal HTTP API (the gateway, the edge router's discovery long-polls, the deployer's
//! `/internal/` config reads), and announces every change through its outbox.
//!
//! Layout:
//! - `domain/`: validated types (a service name is a DNS label, ...).
//! - `db/`: queries; writing functions take a transaction so the outbox row shares it.
//! - `consumers/`: event handlers (artifact published → release; instance facts → discovery).
//! - `discovery.rs`: the index watcher behind blocking queries, and the stale-instance reaper.
//! - `answers.rs`: instance answers kept in memory per discovery index (the read path).
//! - `routes/`: the internal HTTP API, one file per resource.
//! - `startup.rs`: settings and [`Application`].

pub mod answers;
pub mod consumers;
pub mod db;
pub mod discovery;
pub mod domain;
pub mod routes;
pub mod startup;

pub use startup::{Application, Settings};
