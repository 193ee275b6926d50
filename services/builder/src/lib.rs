//! The builder turns source into artifacts. On a build request it fetches the exact commit,
//! reads the service's recipe (`slipway.toml`, or defaults for Cargo, Go, Node, Python and Maven
//! projects), runs the test command as a gate and then the build command, each with a deadline
//! and cancellation, keeping its output in order (bounded per line and per build), then
//! packages the result as an OCI image and pushes it. Replicas share the queue: each build is
//! driven under a lease with fenced writes, taken over when its replica goes away. Old uploads
//! and build logs are pruned.
//!
//! Layout:
//! - `builds/`: build state and queries (`mod.rs`, `store`, `lease`, `ending`), the worker,
//!   the sandbox builds run in (work dir, environment, build user), getting the source and
//!   fetching, the recipe, running a step, output lines (`output`, `logs`), packaging,
//!   retention.
//! - `credentials.rs`: per-service clone credentials (token or deploy key), sealed at rest.
//! - `consumers/`: one handler per event it reacts to.
//! - `routes/`: the internal HTTP API (builds, logs, cancel, uploads, clone credentials).
//! - `startup.rs`: settings and [`Application`].

pub mod builds;
pub mod consumers;
pub mod credentials;
pub mod routes;
mod startup;

pub use startup::{
    Application, BuilderStartError, MIGRATOR, SecretSettings, ServiceSettings, Settings,
};
