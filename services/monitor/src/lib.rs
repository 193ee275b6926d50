//! The monitor watches what runs: health checks and logs of every instance the deployer
//! starts (metric series, alert rules and canary analyses will follow). It keeps its own
//! record of every service from the registry's events.
//!
//! Layout:
//! - `startup.rs`: settings and [`Application`]; resumes probing at start-up.
//! - `health/`: the health state machine, HTTP/TCP probes, one prober task per instance, and
//!   the shards that split the instances between replicas.
//! - `consumers/`: instance facts (start/exit/stop/logs) from `slipway.instances`.
//! - `db/`: the `probes` and `instance_logs` tables (`monitor_shards` is `health/shards.rs`').
//! - `routes/`: the internal API (instance health, logs).

mod consumers;
mod db;
mod health;
mod routes;
mod startup;

pub use health::shards::{Leases, ShardSettings, WAKE, fair_share, shard_of};
pub use startup::{Application, LogSettings, MonitorStartError, Probing, Settings};
