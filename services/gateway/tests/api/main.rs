//! The gateway's public API, with a real registry behind it, on the real PostgreSQL and broker.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure

mod access;
mod auth;
mod bootstrap;
mod clone_credentials;
mod creation_retry;
mod deployment_reads;
mod deployments;
mod edge;
mod helpers;
mod identity;
mod layering;
mod lossy_proxy;
mod metrics;
mod projects;
mod retention;
mod services;
mod stand_in;
mod timeouts;
mod webhook_replay;
mod webhooks;
