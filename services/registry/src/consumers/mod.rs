//! Event handlers: the registry makes a release of every published artifact, and keeps the
//! discovered instances from instance, health and traffic facts.

mod artifacts;
mod instances;

pub use artifacts::ReleaseMaker;
pub use instances::Discovery;
