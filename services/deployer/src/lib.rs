//! The deployer rolls releases out and keeps them running: deployments and their steps,
//! desired state per service and environment, and the runtimes behind one trait.
//!
//! Layout:
//! - `startup.rs`: settings and [`Application`].
//! - `consumers.rs`: deploy/rollback/scale/cancel commands, health verdicts, auto-deploy.
//! - [`domain`]: what a deployment, an instance and a plan can be (shared by `db` and
//!   `engine`, importing neither).
//! - [`engine`]: plans (strategies as steps), the state machine that drives them, the fleet
//!   of instances.
//! - [`target`]: the runtime trait and the process target.
//! - `db/`: deployments, instances (and their owners), replicas' liveness, desired state,
//!   release history, policies.
//! - `registry.rs`: releases and config (secrets decrypted) from the registry.
//! - `routes.rs`: the internal HTTP API.

mod consumers;
pub mod db;
pub mod domain;
pub mod engine;
pub mod registry;
mod routes;
mod startup;
pub mod target;

pub use startup::{Application, DeployerStartError, Settings};
