//! The edge router against real backends over HTTP, fed by a stand-in discovery server.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure

mod framing;
mod helpers;
mod lifetime;
mod outage;
mod platform;
mod routing;
mod streams;
mod traffic;
