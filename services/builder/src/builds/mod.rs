//! Builds: the state kept in `builds`, and the pipeline that moves a build from `queued` to
//! `succeeded`, `failed` or `cancelled`.
//!
//! Every state change is written together with its CDEvent (`build.queued`, `build.started`,
//! `build.finished`) in one transaction through the outbox.

pub mod archive;
pub mod fetch;
pub mod logs;
pub mod package;
pub mod sandbox;
pub mod source;
pub mod spec;
pub mod step;
pub mod trace;
pub mod worker;

use chrono::{DateTime, Utc};
use serde::Serialize;
use slipway_events::cdevents::CdEvent;
use slipway_events::slipway::{BuildRequested, sources};
use slipway_ids::{BuildId, ProjectName, ServiceId};
use sqlx::{PgConnection, PgPool};

/// A build as stored and shown.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Build {
    pub id: BuildId,
    pub service_id: ServiceId,
    pub service_name: String,
    /// Shown redacted (a request from before credentials in URLs were refused may hold one).
    #[serde(serialize_with = "redacted")]
    pub repository: Option<String>,
    pub git_ref: String,
    pub commit_requested: Option<String>,
    pub commit_built: Option<String>,
    pub trigger_kind: String,
    pub trigger_actor: Option<String>,
    /// `queued`, `running`, `succeeded`, `failed` or `cancelled`.
    pub status: String,
    /// The step running, or the one that failed.
    pub step: Option<String>,
    pub exit_code: Option<i32>,
    /// Why it failed or was cancelled, with the last lines of output.
    pub reason: Option<String>,
    pub cancel_requested: bool,
    /// The uploaded source archive built instead of a repository.
    pub upload_id: Option<uuid::Uuid>,
    /// The pushed image (`registry/repository@sha256:...`), when it succeeded.
    pub image: Option<String>,
    pub artifact_digest: Option<String>,
    pub artifact_purl: Option<String>,
    pub queued_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

fn redacted<S: serde::Serializer>(url: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    url.as_deref()
        .map(slipway_events::repository::redact)
        .serialize(s)
}

const COLUMNS: &str = "id, service_id, service_name, repository, git_ref, commit_requested, \
    commit_built, trigger_kind, trigger_actor, status, step, exit_code, reason, cancel_requested, \
    upload_id, image, artifact_digest, artifact_purl, queued_at, started_at, finished_at";

/// Enqueues the build's CDEvent in the caller's transaction.
async fn announce(
    conn: &mut PgConnection,
    build: &Build,
    event: CdEvent,
) -> Result<(), sqlx::Error> {
    let topic = event.kind().topic();
    let custom = serde_json::json!({
        "build_id": build.id,
        "service": build.service_name,
        "git_ref": build.git_ref,
        "commit": build.commit_built.as_ref().or(build.commit_requested.as_ref()),
        "status": build.status,
        "step": build.step,
        "exit_code": build.exit_code,
        "reason": build.reason,
    });
    let event = event
        .with_subject_source(sources::BUILDER)
        .with_custom_data(custom)
        .into_cloud_event(build.service_id, Some(build.id.to_string()));
    let project = project_of(conn, build.service_id).await?;
    slipway_outbox::enqueue(conn, topic, &event.with_project(project)).await
}

/// The project of the build's service, from the builder's catalog (`build_sources`).
async fn project_of(
    conn: &mut PgConnection,
    service_id: ServiceId,
) -> Result<Option<ProjectName>, sqlx::Error> {
    slipway_runtime::catalog::project_of(conn, "build_sources", service_id).await
}

/// `artifact.packaged` and `artifact.published`: what the registry makes a release of. Their
/// `customData` carries what a release needs (service, build, commit, image, run command).
async fn announce_artifact(
    conn: &mut PgConnection,
    build: &Build,
    packaged: &package::Packaged,
) -> Result<(), sqlx::Error> {
    let commit = build.commit_built.clone().unwrap_or_default();
    let custom = serde_json::json!({
        "service_id": build.service_id,
        "service": build.service_name,
        "build_id": build.id,
        "commit": commit,
        "image": packaged.image,
        "digest": packaged.digest,
        "run": packaged.run,
    });
    let change_source = build
        .repository
        .as_deref()
        .map_or_else(|| "upload".into(), slipway_events::repository::redact);
    let project = project_of(conn, build.service_id).await?;
    for event in [
        CdEvent::artifact_packaged(sources::BUILDER, &packaged.purl, &commit, &change_source),
        CdEvent::artifact_published(sources::BUILDER, &packaged.purl),
    ] {
        let topic = event.kind().topic();
        let event = event
            .with_custom_data(custom.clone())
            .into_cloud_event(build.service_id, Some(build.service_name.clone()))
            .with_project(project.clone());
        slipway_outbox::enqueue(conn, topic, &event).await?;
    }
    Ok(())
}

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

/// Takes the oldest queued build and marks it running (skipping builds other builders hold).
pub async fn claim_next(pool: &PgPool) -> Result<Option<Build>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let build: Option<Build> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE builds SET status = 'running', started_at = now(), step = 'fetch' \
         WHERE id = (SELECT id FROM builds WHERE status = 'queued' ORDER BY queued_at \
                     FOR UPDATE SKIP LOCKED LIMIT 1) \
         RETURNING {COLUMNS}"
    )))
    .fetch_optional(&mut *tx)
    .await?;
    if let Some(build) = &build {
        announce(
            &mut tx,
            build,
            CdEvent::build_started(sources::BUILDER, &build.id.to_string()),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(build)
}

/// Builds a builder left `running` when it stopped go back to the queue (their work dir is
/// gone with the process that owned it; they restart from the fetch).
pub async fn requeue_interrupted(pool: &PgPool) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE builds SET status = 'queued', step = NULL, started_at = NULL WHERE status = 'running'",
    )
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// Puts one running build back in the queue (its builder is stopping).
pub async fn requeue(pool: &PgPool, id: BuildId) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE builds SET status = 'queued', step = NULL, started_at = NULL \
         WHERE id = $1 AND status = 'running'",
    )
    .bind(id)
    .execute(pool)
    .await
    .map(|_| ())
}

/// Records the step now running.
pub async fn set_step(pool: &PgPool, id: BuildId, step: &str) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE builds SET step = $2 WHERE id = $1")
        .bind(id)
        .bind(step)
        .execute(pool)
        .await
        .map(|_| ())
}

/// How a build ended.
pub struct Ending {
    pub status: &'static str,
    pub step: Option<String>,
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
    pub commit_built: Option<String>,
    /// The image, when the build succeeded.
    pub packaged: Option<package::Packaged>,
}

/// A build that failed at `step`.
pub fn failed(
    step: &str,
    exit_code: Option<i32>,
    reason: String,
    commit: Option<String>,
) -> Ending {
    Ending {
        status: "failed",
        step: Some(step.to_owned()),
        exit_code,
        reason: Some(reason),
        commit_built: commit,
        packaged: None,
    }
}

/// A build cancelled during `step`.
pub fn cancelled(step: &str) -> Ending {
    Ending {
        status: "cancelled",
        step: Some(step.to_owned()),
        exit_code: None,
        reason: Some(format!("cancelled during {step}")),
        commit_built: None,
        packaged: None,
    }
}

/// The exit code of a command that failed.
pub fn exit_code(outcome: &step::Outcome) -> Option<i32> {
    match outcome {
        step::Outcome::Failed(code) => *code,
        _ => None,
    }
}

/// What happened to `what`, for a failed build's reason.
pub fn describe(outcome: &step::Outcome, what: &str, timeout: std::time::Duration) -> String {
    match outcome {
        step::Outcome::Failed(Some(code)) => format!("{what} exited with code {code}"),
        step::Outcome::Failed(None) => format!("{what} was killed by a signal"),
        step::Outcome::TimedOut => format!("{what} did not finish within {}s", timeout.as_secs()),
        step::Outcome::Cancelled => format!("{what} was cancelled"),
        step::Outcome::Succeeded => format!("{what} succeeded"),
    }
}

/// Stores the end of a build and announces `build.finished`.
pub async fn finish(pool: &PgPool, id: BuildId, end: Ending) -> Result<Build, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let build: Build = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE builds SET status = $2, step = $3, exit_code = $4, reason = $5, \
         commit_built = coalesce($6, commit_built), image = $7, artifact_digest = $8, \
         artifact_purl = $9, finished_at = now() WHERE id = $1 RETURNING {COLUMNS}"
    )))
    .bind(id)
    .bind(end.status)
    .bind(&end.step)
    .bind(end.exit_code)
    .bind(&end.reason)
    .bind(&end.commit_built)
    .bind(end.packaged.as_ref().map(|p| p.image.clone()))
    .bind(end.packaged.as_ref().map(|p| p.digest.clone()))
    .bind(end.packaged.as_ref().map(|p| p.purl.clone()))
    .fetch_one(&mut *tx)
    .await?;
    if let Some(packaged) = &end.packaged {
        announce_artifact(&mut tx, &build, packaged).await?;
    }
    let purl = end.packaged.as_ref().map(|p| p.purl.as_str());
    let event = CdEvent::build_finished(sources::BUILDER, &build.id.to_string(), purl);
    announce(&mut tx, &build, event).await?;
    tx.commit().await?;
    Ok(build)
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
