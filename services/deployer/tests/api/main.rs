//! The deployer's internal API and its command consumer against the real PostgreSQL and
//! broker, with a stand-in for the registry's API.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure

mod auto_deploy;
mod commands;
mod helpers;
mod leases;
mod policy;
mod reads;
mod routing;
mod stand_in;
mod targets;
