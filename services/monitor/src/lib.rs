//! The monitor watches what runs: health checks, metric series, logs, alert rules and canary
//! analyses. So far it keeps its own record of every service from the registry's events, and
//! listens on the instance and deployment topics whose events will start its checks and
//! analyses.
//!
//! Layout:
//! - `startup.rs`: settings and [`Application`].

mod startup;

pub use startup::{Application, Settings};
