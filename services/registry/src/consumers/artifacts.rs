//! `dev.cdevents.artifact.published.0.3.0` → the service's next release.

use anyhow::anyhow;
use futures::FutureExt;
use serde::Deserialize;
use slipway_events::cdevents::CdEventKind;
use slipway_events::slipway::{ReleaseCreated, RunSpec, sources};
use slipway_events::{CloudEvent, EventData};
use slipway_ids::{BuildId, ProjectName, ServiceId};
use slipway_kafka::{Handled, Handler, HandlerError};
use sqlx::PgPool;

use crate::db::releases::{self, NewRelease};

const CONSUMER: &str = "registry.releases";

/// The builder's details in the event's `customData`.
#[derive(Debug, Deserialize)]
struct Published {
    service_id: ServiceId,
    build_id: BuildId,
    commit: String,
    image: String,
    digest: String,
    run: Option<RunSpec>,
}

pub struct ReleaseMaker {
    pool: PgPool,
}

impl ReleaseMaker {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

impl Handler for ReleaseMaker {
    async fn handle(&self, event: &CloudEvent) -> Result<Handled, HandlerError> {
        if event.ty != CdEventKind::ArtifactPublished.type_str() {
            return Ok(Handled::Ignored);
        }
        let purl = event.data["subject"]["id"]
            .as_str()
            .ok_or_else(|| {
                HandlerError::Permanent(anyhow!("artifact.published without subject.id"))
            })?
            .to_owned();
        let published: Published = serde_json::from_value(event.data["customData"].clone())
            .map_err(|e| HandlerError::Permanent(anyhow!("artifact.published customData: {e}")))?;
        let trace = (event.traceparent.clone(), event.tracestate.clone());
        slipway_outbox::inbox::apply_once(&self.pool, CONSUMER, event, move |tx| {
            async move {
                let found: Option<(String, ProjectName)> =
                    sqlx::query_as("SELECT name, project FROM services WHERE id = $1")
                        .bind(published.service_id)
                        .fetch_optional(&mut *tx)
                        .await?;
                let Some((name, project)) = found else {
                    // Not a service of this registry (deleted, or another installation's).
                    tracing::warn!(service.id = %published.service_id, "artifact for an unknown service; no release");
                    return Ok(());
                };
                let config = crate::db::config::current_versions(&mut *tx, published.service_id).await?;
                let (release, created) = releases::create(
                    &mut *tx,
                    NewRelease {
                        service_id: published.service_id,
                        build_id: published.build_id,
                        artifact_purl: &purl,
                        image: &published.image,
                        digest: &published.digest,
                        commit: &published.commit,
                        run: published.run.as_ref(),
                        config,
                    },
                )
                .await?;
                if !created {
                    return Ok(());
                }
                let data = ReleaseCreated {
                    release_id: release.id,
                    service_id: release.service_id,
                    service_name: name.clone(),
                    number: release.number,
                    version: release.version(),
                    artifact: release.artifact_purl.clone(),
                    image: release.image.clone(),
                    digest: release.digest.clone(),
                    commit: release.commit.clone(),
                    build_id: release.build_id,
                    run: release.run.as_ref().map(|r| r.0.clone()),
                    config: release.config.0.clone(),
                    created_at: release.created_at,
                };
                let subject = format!("{name}/{}", release.version());
                let mut ce = CloudEvent::new(sources::REGISTRY, release.service_id, Some(subject), &data)
                    // Encoding errors are permanent: dead-lettered, not retried.
                    .map_err(|e| sqlx::Error::Encode(e.into()))?;
                (ce.traceparent, ce.tracestate) = trace;
                ce.project = Some(project);
                slipway_outbox::enqueue(&mut *tx, ReleaseCreated::TOPIC, &ce).await?;
                tracing::info!(service = %name, release = %release.version(), "release created");
                Ok(())
            }
            .boxed()
        })
        .await
    }
}
