//! Queries on builds that hold no lease: storing requests, reading builds and their output,
//! cancel requests, uploads.

use chrono::{DateTime, Utc};
use serde::Serialize;
use slipway_events::cdevents::CdEvent;
use slipway_events::slipway::{BuildRequested, sources};
use slipway_ids::BuildId;
use sqlx::{PgConnection, PgPool};

use super::{Build, COLUMNS, announce};

/// Stores a requested build as `queued` (once: a redelivered request changes nothing).
///
/// A request naming a commit that this service already has queued, running or built is not
/// built again: it is recorded as served by that build (see [`resolve`]), so a replayed webhook
/// makes no new artifact and no new release. Uploads and requests for a ref are always built.
pub async fn enqueue(conn: &mut PgConnection, req: &BuildRequested) -> Result<(), sqlx::Error> {
    let reuse_commit = req.commit.as_ref().filter(|_| req.upload.is_none());
    // Three rounds at most: the build a request conflicts with can fail or be cancelled
    // (leaving the unique index) between the insert and the read.
    for _ in 0..3 {
        // No conflict target: either the id (a redelivery) or the reusable commit conflicts.
        let inserted: Option<Build> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "INSERT INTO builds (id, service_id, service_name, repository, git_ref, commit_requested, \
             trigger_kind, trigger_actor, upload_id, reuse_commit, status) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'queued') \
             ON CONFLICT DO NOTHING RETURNING {COLUMNS}"
        )))
        .bind(req.build_id)
        .bind(req.service_id)
        .bind(&req.service_name)
        .bind(&req.repository)
        .bind(&req.git_ref)
        .bind(&req.commit)
        .bind(&req.trigger.kind)
        .bind(&req.trigger.actor)
        .bind(req.upload)
        .bind(reuse_commit)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some(build) = inserted {
            let event = CdEvent::build_queued(sources::BUILDER, &build.id.to_string());
            announce(conn, &build, event).await?;
            return Ok(());
        }
        let known: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM builds WHERE id = $1) \
             OR EXISTS (SELECT 1 FROM build_reuses WHERE request_id = $1)",
        )
        .bind(req.build_id)
        .fetch_one(&mut *conn)
        .await?;
        let Some(commit) = reuse_commit.filter(|_| !known) else {
            return Ok(()); // this very request was stored before
        };
        let existing: Option<(BuildId, String)> = sqlx::query_as(
            "SELECT id, status FROM builds WHERE service_id = $1 AND reuse_commit = $2 \
             AND status IN ('queued', 'running', 'succeeded')",
        )
        .bind(req.service_id)
        .bind(commit)
        .fetch_optional(&mut *conn)
        .await?;
        if let Some((build_id, status)) = existing {
            sqlx::query(
                "INSERT INTO build_reuses (request_id, build_id, trigger_kind, trigger_actor) \
                 VALUES ($1, $2, $3, $4)",
            )
            .bind(req.build_id)
            .bind(build_id)
            .bind(&req.trigger.kind)
            .bind(&req.trigger.actor)
            .execute(&mut *conn)
            .await?;
            tracing::info!(
                build.id = %build_id,
                request.id = %req.build_id,
                service.name = %req.service_name,
                commit,
                status,
                "commit already {status}: the request reuses that build instead of building again"
            );
            return Ok(());
        }
    }
    Err(sqlx::Error::Protocol(format!(
        "build request {} neither stored nor matched to an existing build",
        req.build_id
    )))
}

/// The build serving request `id`: itself, or the earlier build of the same commit it reuses.
pub async fn resolve(pool: &PgPool, id: BuildId) -> Result<BuildId, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT coalesce((SELECT build_id FROM build_reuses WHERE request_id = $1), $1)",
    )
    .bind(id)
    .fetch_one(pool)
    .await
}

pub async fn get(pool: &PgPool, id: BuildId) -> Result<Option<Build>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM builds WHERE id = $1"
    )))
    .bind(id)
    .fetch_optional(pool)
    .await
}

/// A service's builds, newest first.
pub async fn list(pool: &PgPool, service: &str, limit: i64) -> Result<Vec<Build>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM builds WHERE service_name = $1 ORDER BY queued_at DESC LIMIT $2"
    )))
    .bind(service)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Asks for a build to stop. A queued build is cancelled at once; a running one by its
/// worker, which watches the flag. `None`: no such build.
pub async fn request_cancel(pool: &PgPool, id: BuildId) -> Result<Option<Build>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let cancelled: Option<Build> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE builds SET status = 'cancelled', reason = 'cancelled before it started', \
         cancel_requested = true, finished_at = now() WHERE id = $1 AND status = 'queued' \
         RETURNING {COLUMNS}"
    )))
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(build) = cancelled {
        let event = CdEvent::build_finished(sources::BUILDER, &build.id.to_string(), None);
        announce(&mut tx, &build, event).await?;
        tx.commit().await?;
        return Ok(Some(build));
    }
    sqlx::query("UPDATE builds SET cancel_requested = true WHERE id = $1 AND status = 'running'")
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    get(pool, id).await
}

/// One stored output line.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct LogLine {
    pub seq: i64,
    pub step: String,
    pub stream: String,
    pub line: String,
    pub at: DateTime<Utc>,
}

/// Lines after `after` (exclusive), in order.
pub async fn log_lines(
    pool: &PgPool,
    id: BuildId,
    after: i64,
    limit: i64,
) -> Result<Vec<LogLine>, sqlx::Error> {
    sqlx::query_as(
        "SELECT seq, step, stream, line, at FROM build_logs WHERE build_id = $1 AND seq > $2 \
         ORDER BY seq LIMIT $3",
    )
    .bind(id)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Stores a checked upload; returns its id and the archive's sha256.
pub async fn store_upload(
    pool: &PgPool,
    service: &str,
    bytes: &[u8],
    files: usize,
) -> Result<(uuid::Uuid, String), sqlx::Error> {
    use sha2::Digest;
    let id = uuid::Uuid::now_v7();
    let sha = hex::encode(sha2::Sha256::digest(bytes));
    sqlx::query("INSERT INTO source_uploads (id, service_name, archive, sha256, files) VALUES ($1, $2, $3, $4, $5)")
        .bind(id)
        .bind(service)
        .bind(bytes)
        .bind(&sha)
        .bind(files as i32)
        .execute(pool)
        .await?;
    Ok((id, sha))
}

/// An upload's archive and sha256.
pub async fn upload(
    pool: &PgPool,
    id: uuid::Uuid,
) -> Result<Option<(Vec<u8>, String)>, sqlx::Error> {
    sqlx::query_as("SELECT archive, sha256 FROM source_uploads WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
}
