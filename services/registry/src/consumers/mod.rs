//! Event handlers: the registry makes a release of every published artifact.

mod artifacts;

pub use artifacts::ReleaseMaker;
