//! Webhook deliveries already handled, so that a code host's retry, a redelivery from its UI or
//! an attacker's replay of a signed delivery produces nothing the second time.
//!
//! A delivery is claimed in the same transaction as the build commands it produces: either both
//! are stored or neither. It is known by its delivery id and by the SHA-256 of its body: GitHub
//! signs the body only, so a replay with a fresh `X-GitHub-Delivery` is caught by the digest.

use std::fmt;
use std::num::NonZeroU16;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use slipway_http::Problem;
use sqlx::PgConnection;

/// `[webhooks]` settings.
#[derive(Debug, Clone, Deserialize)]
pub struct WebhookSettings {
    /// Days a delivery id is remembered; GitHub pushes older than this are refused.
    #[serde(default = "default_retention")]
    pub delivery_retention_days: NonZeroU16,
}

fn default_retention() -> NonZeroU16 {
    NonZeroU16::new(7).unwrap_or(NonZeroU16::MIN)
}

impl Default for WebhookSettings {
    fn default() -> Self {
        Self {
            delivery_retention_days: default_retention(),
        }
    }
}

impl WebhookSettings {
    pub fn retention(&self) -> chrono::Duration {
        chrono::Duration::days(i64::from(self.delivery_retention_days.get()))
    }
}

/// The code host a delivery came from (`webhook_deliveries.provider`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    GitHub,
    GitLab,
}

impl Provider {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::GitHub => "github",
            Self::GitLab => "gitlab",
        }
    }
}

/// A delivery id as a code host sends it (a GUID/UUID): 1 to 128 visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryId(String);

impl DeliveryId {
    /// The id from the first of `headers` present; 400 when none is or it is malformed.
    pub fn from_headers(req: &actix_web::HttpRequest, headers: &[&str]) -> Result<Self, Problem> {
        for name in headers {
            if let Some(value) = req.headers().get(name.to_ascii_lowercase()) {
                return value.to_str().ok().and_then(Self::parse).ok_or_else(|| {
                    Problem::bad_request(format!(
                        "`{name}` must be 1 to 128 visible ASCII characters"
                    ))
                });
            }
        }
        Err(Problem::bad_request(format!(
            "missing `{}` header: code hosts send a delivery id with every delivery, and \
             slipway needs it to recognise a replayed delivery",
            headers.join("` or `")
        )))
    }

    pub fn parse(s: &str) -> Option<Self> {
        let ok = (1..=128).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic());
        ok.then(|| Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeliveryId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A delivery handled before, and what it produced.
#[derive(Debug, sqlx::FromRow)]
pub struct Seen {
    pub delivery_id: String,
    pub received_at: DateTime<Utc>,
    pub outcome: Option<serde_json::Value>,
}

impl Seen {
    /// The answer to a replay: 200, says it is a duplicate and points at what the first made.
    pub fn answer(&self, replayed: &DeliveryId) -> actix_web::HttpResponse {
        let first = self.outcome.clone().unwrap_or_default();
        actix_web::HttpResponse::Ok().json(serde_json::json!({
            "status": "duplicate",
            "delivery": replayed.as_str(),
            "detail": format!(
                "this delivery was already handled at {} (delivery `{}`); nothing was done again",
                self.received_at.to_rfc3339(),
                self.delivery_id
            ),
            "first": {
                "delivery": self.delivery_id,
                "received_at": self.received_at,
                "status": first.get("status"),
                "builds": first.get("builds").cloned().unwrap_or_else(|| serde_json::json!([])),
            },
        }))
    }
}

/// Claims a delivery inside the caller's transaction: `None` when it is new (the row is
/// written and stays if the transaction commits), `Some` with the earlier one when the same
/// delivery id or the same body was handled before. A concurrent claim of the same delivery
/// waits on the unique index until the first commits, then sees it.
pub async fn claim(
    conn: &mut PgConnection,
    provider: Provider,
    id: &DeliveryId,
    body: &[u8],
) -> Result<Option<Seen>, sqlx::Error> {
    let digest = hex::encode(Sha256::digest(body));
    // Twice at most: the earlier row can be pruned between the insert and the read.
    for _ in 0..2 {
        let inserted = sqlx::query(
            "INSERT INTO webhook_deliveries (provider, delivery_id, body_sha256) \
             VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(provider.as_str())
        .bind(id.as_str())
        .bind(&digest)
        .execute(&mut *conn)
        .await?;
        if inserted.rows_affected() == 1 {
            return Ok(None);
        }
        let seen: Option<Seen> = sqlx::query_as(
            "SELECT delivery_id, received_at, outcome FROM webhook_deliveries \
             WHERE provider = $1 AND (delivery_id = $2 OR body_sha256 = $3) \
             ORDER BY received_at LIMIT 1",
        )
        .bind(provider.as_str())
        .bind(id.as_str())
        .bind(&digest)
        .fetch_optional(&mut *conn)
        .await?;
        if seen.is_some() {
            return Ok(seen);
        }
    }
    Err(sqlx::Error::Protocol(
        "webhook delivery neither inserted nor found".into(),
    ))
}

/// Stores what the claimed delivery produced (its answer), for the answer to replays.
pub async fn record_outcome(
    conn: &mut PgConnection,
    provider: Provider,
    id: &DeliveryId,
    outcome: &serde_json::Value,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE webhook_deliveries SET outcome = $3 WHERE provider = $1 AND delivery_id = $2",
    )
    .bind(provider.as_str())
    .bind(id.as_str())
    .bind(outcome)
    .execute(conn)
    .await
    .map(|_| ())
}

/// Whether a GitHub push with the signed `repository.pushed_at` (Unix seconds) is too old to be
/// anything but a replay: older than the retention, after which its id is forgotten.
pub fn too_old(pushed_at: i64, now: DateTime<Utc>, retention: chrono::Duration) -> bool {
    DateTime::from_timestamp(pushed_at, 0).is_some_and(|at| at < now - retention)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_ids_are_short_visible_ascii() {
        assert!(DeliveryId::parse("72d3162e-cc78-11e3-81ab-4c9367dc0958").is_some());
        assert!(DeliveryId::parse("").is_none());
        assert!(DeliveryId::parse("a b").is_none());
        assert!(DeliveryId::parse("é").is_none());
        assert!(DeliveryId::parse(&"x".repeat(129)).is_none());
        assert!(DeliveryId::parse(&"x".repeat(128)).is_some());
    }

    #[test]
    fn pushes_older_than_the_retention_are_too_old() {
        let now = Utc::now();
        let week = chrono::Duration::days(7);
        assert!(too_old(
            (now - chrono::Duration::days(8)).timestamp(),
            now,
            week
        ));
        assert!(!too_old(
            (now - chrono::Duration::days(6)).timestamp(),
            now,
            week
        ));
        assert!(
            !too_old(now.timestamp() + 60, now, week),
            "clock skew is no replay"
        );
    }

    #[test]
    fn retention_defaults_to_a_week() {
        assert_eq!(
            WebhookSettings::default().retention(),
            chrono::Duration::days(7)
        );
    }
}
