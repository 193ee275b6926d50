//! The wire contract of slipway's internal HTTP APIs: the request and answer bodies, declared
//! once and used by both sides, so a field renamed on one side fails to compile on the other
//! instead of failing at run time.
//!
//! Layout:
//! - `service.rs`: the registry's services (`/v1/services`), as the gateway reads and creates
//!   them.

pub mod service;
