//! The wire contract of slipway's internal HTTP APIs: the request and answer bodies, declared
//! once and used by both sides, so a field renamed on one side fails to compile on the other
//! instead of failing at run time. Ids are `slipway_ids` newtypes and closed sets are enums,
//! never strings.
//!
//! Layout:
//! - [`instances`]: an instance as routers see it (`RouteInstance`).
//! - [`routes`]: the registry's routing table (`GET /v1/discovery`), how edge routers report
//!   the table version they apply, and the traffic status the deployer's route step waits on
//!   (`GET /internal/v1/traffic/{service_id}/{environment}`).
//! - [`releases`]: releases, environments (and the [`releases::TargetKind`] each runs on) and
//!   run config as the deployer reads them.
//! - [`service`]: the registry's services (`/v1/services`), as the gateway reads and creates
//!   them.

pub mod instances;
pub mod releases;
pub mod routes;
pub mod service;
