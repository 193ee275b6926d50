//! Queries. Functions that write take a connection inside the caller's transaction.

pub mod config;
pub mod heartbeats;
pub mod instances;
pub mod releases;
pub mod routers;
pub mod services;
