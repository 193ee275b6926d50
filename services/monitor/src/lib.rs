//! The monitor watches what runs: health checks and logs of every instance the deployer
//! starts (metric series, alert rules and canary analyses will follow). It keeps its own
//! record of every service from the registry's events.
//!
//! Layout:
//! - `startup.rs`: settings and [`Application`]; resumes probing at start-up.
//! - `health/`: the health state machine, HTTP/TCP probes, one prober task per instance.
//! - `consumers/`: instance facts (start/exit/stop/logs) from `slipway.instances`.
//! - `db/`: the `probes` and `instance_logs` tables.
//! - `routes/`: the internal API (instance health, logs).

mod consumers;
mod db;
mod health;
mod routes;
mod startup;

pub use startup::{Application, LogSettings, MonitorStartError, Settings};
