//! Retention: uploads (`source_uploads`) and build output (`build_logs`) older than the
//! `[retention]` settings are deleted, in batches, by a task every replica runs. Replicas do
//! not coordinate: each batch locks its rows with `SKIP LOCKED`, so two replicas pruning at
//! once delete different rows, and a row deleted twice is no error.
//!
//! An upload a queued or running build still needs is kept whatever its age. A build keeps
//! its own row (status, reason, image) forever; only its output lines go.

use std::time::Duration;

use prometheus::{IntCounterVec, Opts};
use serde::Deserialize;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

/// Rows deleted by one statement; small enough to hold locks briefly.
const BATCH: i64 = 1000;

/// Settings of section `[retention]`.
#[derive(Debug, Clone, Deserialize)]
pub struct RetentionSettings {
    /// Uploaded source archives are deleted this many days after upload; 0 keeps them forever.
    #[serde(default = "default_uploads_days")]
    pub uploads_days: u32,
    /// Build output lines are deleted this many days after they were written; 0: forever.
    #[serde(default = "default_build_logs_days")]
    pub build_logs_days: u32,
    /// How often each replica prunes.
    #[serde(default = "default_interval")]
    pub interval_seconds: u64,
}

fn default_uploads_days() -> u32 {
    30
}

fn default_build_logs_days() -> u32 {
    90
}

fn default_interval() -> u64 {
    3600
}

impl Default for RetentionSettings {
    fn default() -> Self {
        Self {
            uploads_days: default_uploads_days(),
            build_logs_days: default_build_logs_days(),
            interval_seconds: default_interval(),
        }
    }
}

/// `slipway_builder_pruned_rows_total{table}`.
#[derive(Clone)]
pub struct PruneMetrics {
    pruned: IntCounterVec,
}

impl PruneMetrics {
    pub fn register(registry: &prometheus::Registry) -> Result<Self, prometheus::Error> {
        let pruned = IntCounterVec::new(
            Opts::new(
                "builder_pruned_rows_total",
                "Rows deleted by retention, by table",
            ),
            &["table"],
        )?;
        registry.register(Box::new(pruned.clone()))?;
        Ok(Self { pruned })
    }

    /// Rows pruned from `table` so far (by this process).
    pub fn pruned(&self, table: &str) -> u64 {
        self.pruned.with_label_values(&[table]).get()
    }
}

/// What one pass deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub uploads: u64,
    pub build_logs: u64,
}

async fn batches(pool: &PgPool, sql: &'static str, days: u32) -> Result<u64, sqlx::Error> {
    let mut total = 0;
    loop {
        let done = sqlx::query(sql)
            .bind(i32::try_from(days).unwrap_or(i32::MAX))
            .bind(BATCH)
            .execute(pool)
            .await?
            .rows_affected();
        total += done;
        if done < BATCH as u64 {
            return Ok(total);
        }
    }
}

/// Deletes what the settings no longer keep; counts it in `metrics`.
pub async fn prune_once(
    pool: &PgPool,
    settings: &RetentionSettings,
    metrics: &PruneMetrics,
) -> Result<Pruned, sqlx::Error> {
    let mut pruned = Pruned::default();
    if settings.build_logs_days > 0 {
        pruned.build_logs = batches(
            pool,
            "DELETE FROM build_logs WHERE (build_id, seq) IN ( \
                 SELECT build_id, seq FROM build_logs \
                 WHERE at < now() - make_interval(days => $1) \
                 LIMIT $2 FOR UPDATE SKIP LOCKED)",
            settings.build_logs_days,
        )
        .await?;
        metrics
            .pruned
            .with_label_values(&["build_logs"])
            .inc_by(pruned.build_logs);
    }
    if settings.uploads_days > 0 {
        pruned.uploads = batches(
            pool,
            "DELETE FROM source_uploads WHERE id IN ( \
                 SELECT u.id FROM source_uploads u \
                 WHERE u.created_at < now() - make_interval(days => $1) \
                   AND NOT EXISTS (SELECT 1 FROM builds b WHERE b.upload_id = u.id \
                                   AND b.status IN ('queued', 'running')) \
                 LIMIT $2 FOR UPDATE SKIP LOCKED)",
            settings.uploads_days,
        )
        .await?;
        metrics
            .pruned
            .with_label_values(&["source_uploads"])
            .inc_by(pruned.uploads);
    }
    Ok(pruned)
}

/// Prunes every `interval_seconds` (first at start-up) until `cancel`.
pub async fn run(
    pool: PgPool,
    settings: RetentionSettings,
    metrics: PruneMetrics,
    cancel: CancellationToken,
) -> Result<(), sqlx::Error> {
    if settings.uploads_days == 0 && settings.build_logs_days == 0 {
        // Nothing to prune; a task that ends would stop the service.
        cancel.cancelled().await;
        return Ok(());
    }
    let every = Duration::from_secs(settings.interval_seconds.max(1));
    loop {
        match prune_once(&pool, &settings, &metrics).await {
            Ok(p) if p != Pruned::default() => {
                tracing::info!(uploads = p.uploads, build_logs = p.build_logs, "pruned")
            }
            Ok(_) => {}
            // The database is away: try again next time, the task stays.
            Err(e) => tracing::warn!(error = %e, "pruning failed"),
        }
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            () = tokio::time::sleep(every) => {}
        }
    }
}
