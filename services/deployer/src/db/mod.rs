//! The deployer's queries. It owns deployments, desired state, release history, policies and
//! the instances it runs.

pub mod deployments;
pub mod instances;
pub mod state;
