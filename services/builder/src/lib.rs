//! The builder turns source into artifacts. On a build request it fetches the exact commit,
//! reads the service's recipe (`slipway.toml`, or defaults for Cargo, Go, Node, Python and Maven
//! projects), runs the test command as a gate and then the build command, each with a deadline
//! and cancellation, keeping every output line in order. Packaging the result as an OCI image
//! and publishing it is the next step of this service (not built yet).
//!
//! Layout:
//! - `builds/`: build state and queries (`mod.rs`), the worker, fetching, the recipe, running a
//!   step, output lines.
//! - `consumers/`: one handler per event it reacts to.
//! - `routes/`: the internal HTTP API (builds, logs, cancel).
//! - `startup.rs`: settings and [`Application`].

pub mod builds;
pub mod consumers;
pub mod routes;
mod startup;

pub use startup::{Application, Settings};
