//! The builder on the real broker and PostgreSQL, building real git repositories.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure

mod bounds;
mod builds;
mod clone_credentials;
mod dockerfile;
mod helpers;
mod images;
mod leases;
mod projects;
mod registry_auth;
mod retention;
mod reuse;
mod sandbox;
mod timeouts;
