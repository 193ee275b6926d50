//! Service creations and webhook secrets: the gateway's half of `POST /v1/services`.
//!
//! A creation is recorded, with its sealed webhook secret, and committed *before* the registry
//! is asked to create the service, under the service id the gateway chose. Whatever happens
//! next (the registry's answer lost or late, the gateway killed), the secret is stored under
//! the id the registry will use, and a retry by the same token finds the creation in flight
//! and completes it: the registry answers 409 for the id it already has, the gateway sees that
//! the service of that name has its id, and answers 201 with the secret as the first attempt
//! would have. See `routes/services.rs` for the flow.
//!
//! Rotation (`POST /v1/services/{name}/webhook-secret`) replaces a secret at once and forgets
//! the service's creations, so no replay of the create shows the old secret again.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use slipway_ids::{ProjectName, ServiceId, TokenId};
use slipway_secrets::SecretBox;
use sqlx::PgPool;

/// A client's `Idempotency-Key`: 1 to 255 visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn parse(s: &str) -> Option<Self> {
        let ok = (1..=255).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic());
        ok.then(|| Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What identifies a create request, for matching a retry to its first attempt. The secret
/// itself is left out (it stays sealed, never hashed); only whether one was given counts, and
/// a given one is compared with the sealed one on a retry.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Request<'a> {
    pub project: &'a ProjectName,
    pub name: &'a str,
    pub repository: Option<&'a str>,
    pub branch: Option<&'a str>,
    pub secret_given: bool,
}

impl Request<'_> {
    /// SHA-256 (hex) of the request's fields, in a fixed order (the struct's).
    pub fn sha256(&self) -> String {
        let canonical = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(Sha256::digest(canonical))
    }
}

/// A creation as recorded.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Creation {
    pub service_id: ServiceId,
    pub request_sha256: String,
    pub secret_generated: bool,
    /// The registry's service, once the creation is done.
    pub answer: Option<serde_json::Value>,
}

const COLUMNS: &str = "service_id, request_sha256, secret_generated, answer";

/// The creation `token` started under `key`, if any.
pub async fn by_key(
    pool: &PgPool,
    token: TokenId,
    key: &IdempotencyKey,
) -> Result<Option<Creation>, sqlx::Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM service_creations WHERE token_id = $1 AND idempotency_key = $2"
    );
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(token)
        .bind(key.as_str())
        .fetch_optional(pool)
        .await
}

/// The latest unfinished creation `token` started for the same request (a retry without an
/// `Idempotency-Key` after an answer was lost).
pub async fn in_flight(
    pool: &PgPool,
    token: TokenId,
    name: &str,
    request_sha256: &str,
) -> Result<Option<Creation>, sqlx::Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM service_creations WHERE token_id = $1 AND name = $2 \
         AND request_sha256 = $3 AND completed_at IS NULL ORDER BY created_at DESC LIMIT 1"
    );
    sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(token)
        .bind(name)
        .bind(request_sha256)
        .fetch_optional(pool)
        .await
}

/// A creation about to be recorded.
pub struct New<'a> {
    pub service_id: ServiceId,
    pub token: TokenId,
    pub key: Option<&'a IdempotencyKey>,
    pub request: &'a Request<'a>,
    pub secret: &'a str,
    pub secret_generated: bool,
}

/// Records the creation and its sealed secret in one transaction, committed before the
/// registry is called. `false` when `key` is already taken by a concurrent attempt (nothing is
/// written; read that one with [`by_key`]).
pub async fn start(pool: &PgPool, sealer: &SecretBox, new: &New<'_>) -> Result<bool, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO service_creations \
         (service_id, token_id, idempotency_key, project, name, request_sha256, secret_generated) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
    )
    .bind(new.service_id)
    .bind(new.token)
    .bind(new.key.map(IdempotencyKey::as_str))
    .bind(new.request.project)
    .bind(new.request.name)
    .bind(new.request.sha256())
    .bind(new.secret_generated)
    .execute(&mut *tx)
    .await?;
    if inserted.rows_affected() == 0 {
        return Ok(false);
    }
    sqlx::query("INSERT INTO webhook_secrets (service_id, sealed) VALUES ($1, $2)")
        .bind(new.service_id)
        .bind(sealer.seal(new.secret))
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(true)
}

/// Marks the creation done with the registry's `answer` (what replays answer).
pub async fn complete(
    pool: &PgPool,
    service: ServiceId,
    answer: &serde_json::Value,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE service_creations SET answer = $2, completed_at = now() WHERE service_id = $1",
    )
    .bind(service)
    .bind(answer)
    .execute(pool)
    .await
    .map(|_| ())
}

/// Forgets a creation the registry refused (the name is taken, a field is invalid) or never
/// received, with its secret: no service has that id.
pub async fn abandon(pool: &PgPool, service: ServiceId) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("DELETE FROM service_creations WHERE service_id = $1")
        .bind(service)
        .execute(&mut *tx)
        .await?;
    sqlx::query("DELETE FROM webhook_secrets WHERE service_id = $1")
        .bind(service)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// The webhook secret of `service`, opened.
pub async fn secret(
    pool: &PgPool,
    sealer: &SecretBox,
    service: ServiceId,
) -> Result<Option<String>, SecretReadError> {
    let sealed: Option<Option<String>> =
        sqlx::query_scalar("SELECT sealed FROM webhook_secrets WHERE service_id = $1")
            .bind(service)
            .fetch_optional(pool)
            .await?;
    match sealed.flatten() {
        Some(sealed) => Ok(Some(sealer.open(&sealed)?)),
        None => Ok(None),
    }
}

/// Why a stored secret could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SecretReadError {
    #[error("cannot read the webhook secret")]
    Database(#[from] sqlx::Error),
    #[error("cannot open the sealed webhook secret")]
    Open(#[from] slipway_secrets::SecretError),
}

/// Replaces the webhook secret of `service` with `secret` (storing one if it had none: a
/// service created before secrets were kept, or whose creation was abandoned) and forgets its
/// creations, so a replay of the create cannot show the old secret. The old secret stops
/// working with the commit: rotation is for a secret lost or leaked, and a leaked one must not
/// keep working for a grace period.
pub async fn rotate(
    pool: &PgPool,
    sealer: &SecretBox,
    service: ServiceId,
    secret: &str,
) -> Result<DateTime<Utc>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let at: DateTime<Utc> = sqlx::query_scalar(
        "INSERT INTO webhook_secrets (service_id, sealed, rotated_at) VALUES ($1, $2, now()) \
         ON CONFLICT (service_id) DO UPDATE SET sealed = EXCLUDED.sealed, secret = NULL, \
         rotated_at = EXCLUDED.rotated_at RETURNING rotated_at",
    )
    .bind(service)
    .bind(sealer.seal(secret))
    .fetch_one(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM service_creations WHERE service_id = $1")
        .bind(service)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_keys_are_short_visible_ascii() {
        assert!(IdempotencyKey::parse("7f1c2b9e-retry-1").is_some());
        assert!(IdempotencyKey::parse("").is_none());
        assert!(IdempotencyKey::parse("a b").is_none());
        assert!(IdempotencyKey::parse(&"k".repeat(256)).is_none());
    }

    #[test]
    fn requests_differing_in_any_field_differ_in_hash() {
        let project = ProjectName::default_project();
        let base = Request {
            project: &project,
            name: "web",
            repository: None,
            branch: None,
            secret_given: false,
        };
        let other_branch = Request {
            branch: Some("main"),
            ..base.clone()
        };
        let with_secret = Request {
            secret_given: true,
            ..base.clone()
        };
        assert_eq!(base.sha256(), base.clone().sha256());
        assert_ne!(base.sha256(), other_branch.sha256());
        assert_ne!(base.sha256(), with_secret.sha256());
    }
}
