//! API tokens: `slw_` followed by 64 hex digits (256 random bits). Only their SHA-256 is stored.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use slipway_ids::TokenId;
use sqlx::{PgConnection, PgPool};

use super::Role;

/// The prefix of every token, so leaked tokens are easy to scan for.
pub const PREFIX: &str = "slw_";

/// A fresh random token.
pub fn generate() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(format!("{PREFIX}{}", hex::encode(bytes)))
}

/// The stored form of a token.
pub fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A token as listed (never the token itself).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct TokenInfo {
    pub id: TokenId,
    pub name: String,
    pub role: String,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// The token a request presented, when valid and not revoked.
pub async fn lookup(
    pool: &PgPool,
    token: &str,
) -> Result<Option<(TokenId, String, Role)>, sqlx::Error> {
    let row: Option<(TokenId, String, String)> = sqlx::query_as(
        "SELECT id, name, role FROM api_tokens WHERE token_hash = $1 AND revoked_at IS NULL",
    )
    .bind(hash(token))
    .fetch_optional(pool)
    .await?;
    Ok(row.and_then(|(id, name, role)| role.parse().ok().map(|r| (id, name, r))))
}

/// Stores a new token's hash.
pub async fn insert(
    conn: &mut PgConnection,
    name: &str,
    role: Role,
    token: &str,
    created_by: Option<TokenId>,
) -> Result<TokenInfo, sqlx::Error> {
    sqlx::query_as(
        "INSERT INTO api_tokens (id, name, role, token_hash, created_by) VALUES ($1, $2, $3, $4, $5) \
         RETURNING id, name, role, created_at, revoked_at",
    )
    .bind(TokenId::new())
    .bind(name)
    .bind(role.as_str())
    .bind(hash(token))
    .bind(created_by)
    .fetch_one(conn)
    .await
}

pub async fn list(pool: &PgPool) -> Result<Vec<TokenInfo>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, name, role, created_at, revoked_at FROM api_tokens ORDER BY created_at",
    )
    .fetch_all(pool)
    .await
}

/// Revokes a token; `false` if there is no such live token.
pub async fn revoke(pool: &PgPool, id: TokenId) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE api_tokens SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
    )
    .bind(id)
    .execute(pool)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Why the first admin token could not be created.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("no randomness available: {0}")]
    Random(getrandom::Error),
    #[error("the bootstrap token must start with `{PREFIX}` and be at least 36 characters")]
    WeakToken,
}

/// The admin token created at first start.
pub struct Bootstrapped {
    pub token: String,
    /// True when slipway generated it (and so must show it once).
    pub generated: bool,
}

/// Creates an admin token if no live admin token exists (first start). Replicas starting
/// together serialise on an advisory lock, so exactly one token is made.
///
/// The configured token is never stored twice: when it exists already nothing is inserted, and
/// when it was revoked it stays revoked and is ignored (as if none were configured: with no
/// live admin left, one is generated and printed, so the platform is not locked out).
pub async fn bootstrap_admin(
    pool: &PgPool,
    mut given: Option<String>,
) -> Result<Option<Bootstrapped>, BootstrapError> {
    if let Some(t) = &given
        && (!t.starts_with(PREFIX) || t.len() < 36)
    {
        return Err(BootstrapError::WeakToken);
    }
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('slipway.gateway.bootstrap'))")
        .execute(&mut *tx)
        .await?;
    if let Some(t) = &given {
        let stored: Option<(TokenId, Option<DateTime<Utc>>)> =
            sqlx::query_as("SELECT id, revoked_at FROM api_tokens WHERE token_hash = $1")
                .bind(hash(t))
                .fetch_optional(&mut *tx)
                .await?;
        match stored {
            Some((_, None)) => return Ok(None),
            Some((id, Some(revoked_at))) => {
                tracing::warn!(
                    token.id = %id,
                    %revoked_at,
                    "the configured bootstrap token ([auth] bootstrap_token) was revoked; it stays revoked and is ignored: remove it from the settings"
                );
                given = None;
            }
            None => {}
        }
    }
    let admins: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM api_tokens WHERE role = 'admin' AND revoked_at IS NULL",
    )
    .fetch_one(&mut *tx)
    .await?;
    if admins > 0 {
        return Ok(None);
    }
    let (token, generated) = match given {
        Some(t) => (t, false),
        None => (generate().map_err(BootstrapError::Random)?, true),
    };
    insert(&mut tx, "bootstrap admin", Role::Admin, &token, None).await?;
    tx.commit().await?;
    tracing::info!(generated, "first admin token created");
    Ok(Some(Bootstrapped { token, generated }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_prefixed_and_hashed() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with(PREFIX) && a.len() == PREFIX.len() + 64, "{a}");
        assert_eq!(hash(&a).len(), 64);
        assert_ne!(hash(&a), hash(&b));
        assert!(!hash(&a).contains(&a[PREFIX.len()..]));
    }
}
