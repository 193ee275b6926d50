//! The registry's internal API against the real PostgreSQL and broker.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure

mod answers;
mod discovery;
mod environments;
mod heartbeats;
mod helpers;
mod identity;
mod instances;
mod internal;
mod projects;
mod releases;
mod routers;
mod services;
