//! The deployer's queries. It owns deployments, desired state, release history, policies and
//! the instances it runs, and the uid each service's instances run as.

pub mod deployments;
pub mod instances;
pub mod state;
pub mod trace;
pub mod uids;
