//! API tokens: `slw_` followed by 64 hex digits (256 random bits). Only their SHA-256 is stored.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use slipway_ids::TokenId;
use sqlx::{PgConnection, PgPool};

use slipway_ids::ProjectName;

use super::{Caller, Role};

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
    /// May act in every project, and manage projects and tokens.
    pub platform_admin: bool,
    /// Its role per project, by project name.
    pub grants: sqlx::types::Json<Vec<GrantInfo>>,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

/// One of a token's grants.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct GrantInfo {
    pub project: ProjectName,
    pub role: Role,
}

/// The columns of [`TokenInfo`], for `api_tokens t`.
const INFO: &str = "t.id, t.name, t.platform_admin, t.created_at, t.revoked_at, \
     COALESCE((SELECT json_agg(json_build_object('project', g.project, 'role', g.role) \
     ORDER BY g.project) FROM grants g WHERE g.token_id = t.id), '[]') AS grants";

/// A token joined with one of its grants (none: `NULL`s).
type LookupRow = (TokenId, String, bool, Option<ProjectName>, Option<String>);

/// The caller a request's token stands for, when the token is valid and not revoked.
pub async fn lookup(pool: &PgPool, token: &str) -> Result<Option<Caller>, sqlx::Error> {
    let rows: Vec<LookupRow> = sqlx::query_as(
        "SELECT t.id, t.name, t.platform_admin, g.project, g.role FROM api_tokens t \
         LEFT JOIN grants g ON g.token_id = t.id \
         WHERE t.token_hash = $1 AND t.revoked_at IS NULL",
    )
    .bind(hash(token))
    .fetch_all(pool)
    .await?;
    let Some((token_id, token_name, platform_admin, _, _)) = rows.first().cloned() else {
        return Ok(None);
    };
    let grants = rows
        .into_iter()
        .filter_map(|(_, _, _, project, role)| Some((project?, role?.parse().ok()?)))
        .collect();
    Ok(Some(Caller {
        token_id,
        token_name,
        platform_admin,
        grants,
    }))
}

/// Stores a new token's hash (with no grants yet).
pub async fn insert(
    conn: &mut PgConnection,
    name: &str,
    platform_admin: bool,
    token: &str,
    created_by: Option<TokenId>,
) -> Result<TokenInfo, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "WITH t AS (INSERT INTO api_tokens (id, name, platform_admin, token_hash, created_by) \
         VALUES ($1, $2, $3, $4, $5) RETURNING *) SELECT {INFO} FROM t"
    )))
    .bind(TokenId::new())
    .bind(name)
    .bind(platform_admin)
    .bind(hash(token))
    .bind(created_by)
    .fetch_one(conn)
    .await
}

/// One token as listed.
pub async fn get(conn: &mut PgConnection, id: TokenId) -> Result<Option<TokenInfo>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {INFO} FROM api_tokens t WHERE t.id = $1"
    )))
    .bind(id)
    .fetch_optional(conn)
    .await
}

pub async fn list(pool: &PgPool) -> Result<Vec<TokenInfo>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {INFO} FROM api_tokens t ORDER BY t.created_at"
    )))
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

/// Creates a platform admin token if no live one exists (first start). Replicas starting
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
        "SELECT count(*) FROM api_tokens WHERE platform_admin AND revoked_at IS NULL",
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
    insert(&mut tx, "bootstrap admin", true, &token, None).await?;
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
