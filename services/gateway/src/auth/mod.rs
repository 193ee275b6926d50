//! Authentication and authorisation.
//!
//! Every `/v1` request but webhooks carries `Authorization: Bearer <token>`. A token holds one
//! role per project (a grant), roles ordered `viewer < deployer < admin`, each including the
//! ones below it; a platform admin token may act in every project and manage projects and
//! tokens. Reads need `viewer` in the thing's project, changes `deployer`, a project's grants
//! and audit log `admin`. What each route needs is data ([`rules::RULES`]), enforced by one
//! middleware ([`guard::guard`]); a thing in a project the token has no role in answers 404.
//!
//! - `caller.rs`: who is calling and what it may do ([`Caller::may`]).
//! - `rules.rs`: the rule table; `guard.rs`: the middleware that applies it.
//! - `tokens.rs`: tokens (generation, hashing, bootstrap of the first platform admin).

mod caller;
pub mod guard;
mod role;
pub mod rules;
pub mod tokens;

pub use caller::{Acting, Caller, Verdict};
pub use guard::Scoped;
pub use role::Role;
