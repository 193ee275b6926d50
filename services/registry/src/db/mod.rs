//! Queries. Functions that write take a connection inside the caller's transaction.

pub mod services;
