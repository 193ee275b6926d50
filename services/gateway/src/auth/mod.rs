//! Authentication and roles.
//!
//! Every request but the ops endpoints carries `Authorization: Bearer <token>`. A token has one
//! role; roles are ordered `viewer < deployer < admin` and each includes the ones below it.
//! Reads need `viewer`, changes to services and deployments `deployer`, token management
//! `admin`.

mod caller;
mod role;
pub mod tokens;

pub use caller::Caller;
pub use role::Role;
