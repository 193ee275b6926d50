//! Releases: numbered per service, immutable (a database trigger refuses UPDATE and DELETE).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use slipway_events::slipway::RunSpec;
use slipway_ids::{BuildId, ServiceId};
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool};

/// A release as stored and shown.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Release {
    pub id: uuid::Uuid,
    pub service_id: ServiceId,
    pub number: i32,
    pub build_id: BuildId,
    pub artifact_purl: String,
    pub image: String,
    pub digest: String,
    pub commit: String,
    pub run: Option<Json<RunSpec>>,
    /// Environment → config version in force when the release was made.
    pub config: Json<BTreeMap<String, i32>>,
    pub created_at: DateTime<Utc>,
}

impl Release {
    /// `v<number>`.
    pub fn version(&self) -> String {
        format!("v{}", self.number)
    }
}

/// What a release is made of.
pub struct NewRelease<'a> {
    pub service_id: ServiceId,
    pub build_id: BuildId,
    pub artifact_purl: &'a str,
    pub image: &'a str,
    pub digest: &'a str,
    pub commit: &'a str,
    pub run: Option<&'a RunSpec>,
    pub config: BTreeMap<String, i32>,
}

const COLUMNS: &str = "id, service_id, number, build_id, artifact_purl, image, digest, commit, run, config, created_at";

/// Makes the next release of the service, or returns the one already made from this build.
/// Numbering is serialised per service by locking the service's row.
pub async fn create(
    conn: &mut PgConnection,
    new: NewRelease<'_>,
) -> Result<(Release, bool), sqlx::Error> {
    sqlx::query("SELECT id FROM services WHERE id = $1 FOR UPDATE")
        .bind(new.service_id)
        .execute(&mut *conn)
        .await?;
    let existing: Option<Release> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM releases WHERE build_id = $1"
    )))
    .bind(new.build_id)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(release) = existing {
        return Ok((release, false));
    }
    let release: Release = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "INSERT INTO releases (id, service_id, number, build_id, artifact_purl, image, digest, commit, run, config) \
         SELECT $1, $2, coalesce(max(number), 0) + 1, $3, $4, $5, $6, $7, $8, $9 FROM releases WHERE service_id = $2 \
         RETURNING {COLUMNS}"
    )))
    .bind(uuid::Uuid::now_v7())
    .bind(new.service_id)
    .bind(new.build_id)
    .bind(new.artifact_purl)
    .bind(new.image)
    .bind(new.digest)
    .bind(new.commit)
    .bind(new.run.map(Json))
    .bind(Json(&new.config))
    .fetch_one(&mut *conn)
    .await?;
    Ok((release, true))
}

/// A service's releases, newest first.
pub async fn list(
    pool: &PgPool,
    service: ServiceId,
    limit: i64,
) -> Result<Vec<Release>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM releases WHERE service_id = $1 ORDER BY number DESC LIMIT $2"
    )))
    .bind(service)
    .bind(limit)
    .fetch_all(pool)
    .await
}

pub async fn get(
    pool: &PgPool,
    service: ServiceId,
    number: i32,
) -> Result<Option<Release>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM releases WHERE service_id = $1 AND number = $2"
    )))
    .bind(service)
    .bind(number)
    .fetch_optional(pool)
    .await
}
