//! Health checks: one prober task per instance incarnation.
//!
//! - [`machine`]: the pure state machine (`starting` / `healthy` / `unhealthy`).
//! - [`probe`]: one HTTP or TCP probe.
//! - [`Probers`]: the running prober tasks, keyed by instance id; a new incarnation replaces
//!   the old prober, and every prober stops with the service.
//!
//! - [`shards`]: which instances this replica probes (leased shards in `monitor_shards`).
//!
//! A prober writes to the database only on a transition: the new health and its
//! `InstanceHealthChanged` go through the outbox in one transaction, guarded by the
//! incarnation (`restarts`) so a prober that was replaced meanwhile writes nothing.

pub mod machine;
pub mod probe;
mod prober;
pub mod shards;

pub use prober::{Probers, health_changed, project_of};
