//! The deployer rolls releases out and keeps them running: deployments and their steps,
//! desired state per service and environment, and the runtimes (process, Docker, Kubernetes)
//! behind one trait. So far it keeps its own record of every service from the registry's
//! events, and listens on the command topic (deploy, rollback, scale requests) and the
//! monitor's topic (health and analysis verdicts) that will drive rollouts.
//!
//! Layout:
//! - `startup.rs`: settings and [`Application`].

mod startup;

pub use startup::{Application, Settings};
