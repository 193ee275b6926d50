//! The Docker target against the real Docker Engine: test images are built with `docker build`
//! on the Debian base image (`SLIPWAY_TEST_BASE_IMAGE`) and pushed to the throwaway registry,
//! then started through the `Target` API: reachable over HTTP, healed after `docker kill`,
//! crash-looping, stopped with grace, logs streamed, config in the environment and not in the
//! labels, limits and security options as `docker inspect` shows them, adopted by a new target
//! (a deployer restart) with orphans removed, and unable to reach the platform's loopback.
//!
//! Every test has its own scope (label `dev.slipway.scope`) and network, and a
//! [`support::Cleanup`] that removes its containers and network whatever happens; every
//! container also carries `dev.slipway.test=docker-target`. No engine: the tests fail saying so.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure

mod lifecycle;
mod recovery;
mod support;
