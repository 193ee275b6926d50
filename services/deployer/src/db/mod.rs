//! The deployer's queries. It owns deployments (and the leases replicas drive them under),
//! desired state, release history, policies, the instances its replicas run (and the
//! replicas' liveness), and the uid each service's instances run as.

pub mod deployments;
pub mod instances;
pub mod leases;
pub mod replicas;
pub mod state;
pub mod trace;
pub mod uids;
