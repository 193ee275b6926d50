//! The monitor against the real PostgreSQL and broker, probing real HTTP and TCP servers that
//! the tests start.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure

mod backend;
mod health;
mod helpers;
mod logs;
mod probe_paths;
mod shards;
