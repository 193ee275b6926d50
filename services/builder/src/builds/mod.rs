//! Builds: the state kept in `builds`, and the pipeline that moves a build from `queued` to
//! `succeeded`, `failed` or `cancelled`.
//!
//! Every state change is written together with its CDEvent (`build.queued`, `build.started`,
//! `build.finished`) in one transaction through the outbox. A running build is driven under a
//! lease ([`lease`]): every write of its driver is compare-and-set on the lease, so a replica
//! whose lease was taken over can neither change the build nor publish about it.
//!
//! Layout: `store` (requests, reads, cancel, uploads), `lease` (claim, renew, fenced step and
//! requeue), `ending` (how a build ends, `finish`), `retention` (pruning), `output` (bounded
//! lines), and the pipeline's parts (worker, sandbox, source, fetch, spec, step, package,
//! dockerfile: images built from a Dockerfile).

pub mod archive;
pub mod dockerfile;
pub mod ending;
pub mod fetch;
pub mod image;
pub mod lease;
pub mod logs;
pub mod output;
pub mod package;
pub mod retention;
pub mod sandbox;
pub mod source;
pub mod spec;
pub mod step;
pub mod store;
pub mod trace;
pub mod worker;

pub use ending::{Ending, cancelled, describe, exit_code, failed, finish};
pub use lease::{Lease, LeaseError, claim_next, requeue, requeue_interrupted, set_step};
pub use store::{
    LogLine, enqueue, get, list, log_lines, request_cancel, resolve, store_upload, upload,
};

use chrono::{DateTime, Utc};
use serde::Serialize;
use slipway_events::cdevents::CdEvent;
use slipway_events::slipway::sources;
use slipway_ids::{BuildId, ProjectName, ServiceId};
use sqlx::PgConnection;

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
    /// The replica driving it (or that drove it last), and the number of claims so far.
    pub lease_owner: Option<String>,
    pub lease_epoch: i64,
}

fn redacted<S: serde::Serializer>(url: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    url.as_deref()
        .map(slipway_events::repository::redact)
        .serialize(s)
}

const COLUMNS: &str = "id, service_id, service_name, repository, git_ref, commit_requested, \
    commit_built, trigger_kind, trigger_actor, status, step, exit_code, reason, cancel_requested, \
    upload_id, image, artifact_digest, artifact_purl, queued_at, started_at, finished_at, \
    lease_owner, lease_epoch";

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
        // Bounded again here, whatever wrote it: events stay far below the broker's limit.
        "reason": build.reason.as_deref().map(|r| output::cut(r, ending::MAX_REASON_BYTES)),
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
