//! The process target against a real OCI registry and real child processes: an image with a tiny
//! Python HTTP server is pushed, then started, killed, crash-looped, stopped and recovered by a
//! second target on the same workdir (a deployer restart), also when the instance rewrote its
//! environment and forked children, and never mistaking a reused pid for an instance; and
//! `scripts/down`'s way of stopping them without a deployer; an image made on a base runs its
//! service layer only.
//!
//! Every test owns a fresh workdir and a [`support::Cleanup`] guard that SIGKILLs whatever still
//! runs in its scope, so a failing test leaves no process behind.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure

mod based;
mod identity;
mod lifecycle;
mod support;
