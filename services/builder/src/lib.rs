//! The builder turns source into artifacts: it will fetch a commit (or an upload), run the
//! service's tests as a gate, build, package an OCI image and publish it. So far it keeps its
//! own record of every service's source (repository and branch) from the registry's events,
//! and listens on the command topic where build requests will arrive.
//!
//! Layout:
//! - `consumers/`: one handler per event it reacts to.
//! - `startup.rs`: settings and [`Application`].

pub mod consumers;
mod startup;

pub use startup::{Application, Settings};
