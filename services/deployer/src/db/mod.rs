//! The deployer's queries. It owns deployments, desired state, release history, policies and
//! the instances its replicas run (and the replicas' liveness), and the uid each service's
//! instances run as.

pub mod deployments;
pub mod instances;
pub mod replicas;
pub mod state;
pub mod uids;
