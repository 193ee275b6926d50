//! Types the engine and the queries share, with no dependency on either: what a deployment,
//! an instance and a plan can be. `db` stores them and `engine` acts on them; neither imports
//! the other's types through here, so there is no `db` <-> `engine` cycle.
//!
//! Layout:
//! - `status.rs`: deployment status and kind, instance state and health (stored as `TEXT`
//!   with the values the migrations' `CHECK` constraints allow).
//! - `step.rs`: plans' steps, sets and gates.
//! - `check.rs`: which check failed a deployment.

mod check;
mod status;
mod step;

pub use check::Check;
pub use status::{DeploymentKind, DeploymentStatus, InstanceHealth, InstanceState};
pub use step::{Current, Gate, Set, Step};
