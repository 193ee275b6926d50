//! The gateway is slipway's one door: every person and outside system calls its REST API. It
//! owns projects, API tokens and their roles in projects, webhook secrets and the audit log; it
//! checks every request against the project of what it touches, forwards reads to the services
//! that own the data and turns long-running requests into command events.
//!
//! Layout:
//! - `auth/`: tokens (generation, hashing, bootstrap of the first platform admin), roles per
//!   project, the rule table saying what each route needs and the guard enforcing it.
//! - `projects.rs`: projects and the grants of roles in them.
//! - `audit.rs`: middleware writing every mutating call to the audit log.
//! - `creations.rs`: service creations in flight and webhook secrets (retry-safe creates,
//!   rotation).
//! - `commands.rs`: accepted requests become command events (operation row + outbox).
//! - `deliveries.rs`: webhook deliveries already handled (replays produce nothing).
//! - `retention.rs`: pruning of audit entries, operations, creations and deliveries by age.
//! - `upstream.rs`: the HTTP client for the internal APIs (registry, ...).
//! - `routes/`: the public API, one file per resource.
//! - `startup.rs`: settings and [`Application`].

pub mod audit;
pub mod auth;
pub mod commands;
pub mod creations;
pub mod deliveries;
pub mod projects;
pub mod retention;
pub mod routes;
pub mod startup;
pub mod upstream;

pub use startup::{Application, Settings};
