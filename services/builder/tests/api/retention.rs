//! Retention on the real database: old uploads and log lines go, in batches; what is young, or
//! still needed by a queued build, stays; 0 keeps forever; the builder prunes by itself and
//! counts it in `/metrics`.

use std::time::Duration;

use slipway_builder::builds::retention::{PruneMetrics, Pruned, RetentionSettings, prune_once};
use slipway_builder::builds::{self};
use slipway_ids::{BuildId, ServiceId};
use sqlx::PgPool;

use crate::helpers::{spawn_configured, test_settings};

async fn database() -> PgPool {
    let settings = test_settings().await;
    let pool = settings
        .base
        .database
        .connect_and_migrate(&slipway_builder::MIGRATOR)
        .await
        .unwrap();
    slipway_outbox::migrate(&pool).await.unwrap();
    pool
}

/// An upload `days` old.
async fn upload(pool: &PgPool, days: i32) -> uuid::Uuid {
    let (id, _) = builds::store_upload(pool, "kept", b"not really a tarball", 1)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE source_uploads SET created_at = now() - make_interval(days => $2) WHERE id = $1",
    )
    .bind(id)
    .bind(days)
    .execute(pool)
    .await
    .unwrap();
    id
}

/// A build in `status` (stored directly: no request, no worker) with `lines` output lines
/// `days` old.
async fn build(
    pool: &PgPool,
    upload: Option<uuid::Uuid>,
    status: &str,
    lines: i32,
    days: i32,
) -> BuildId {
    let id = BuildId::new();
    sqlx::query(
        "INSERT INTO builds (id, service_id, service_name, git_ref, trigger_kind, status, upload_id) \
         VALUES ($1, $2, 'kept', 'upload', 'api', $3, $4)",
    )
    .bind(id)
    .bind(ServiceId::new())
    .bind(status)
    .bind(upload)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO build_logs (build_id, seq, step, stream, line, at) \
         SELECT $1, n, 'test', 'stdout', 'line ' || n, now() - make_interval(days => $3) \
         FROM generate_series(0, $2 - 1) AS n",
    )
    .bind(id)
    .bind(lines)
    .bind(days)
    .execute(pool)
    .await
    .unwrap();
    id
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_owned()))
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn old_uploads_and_log_lines_are_pruned_in_batches() {
    let pool = database().await;
    let old_upload = upload(&pool, 40).await;
    let young_upload = upload(&pool, 1).await;
    let needed_upload = upload(&pool, 40).await;
    let old_build = build(&pool, Some(old_upload), "succeeded", 2500, 100).await;
    let young_build = build(&pool, Some(young_upload), "failed", 10, 2).await;
    let queued = build(&pool, Some(needed_upload), "queued", 0, 0).await;
    let metrics = PruneMetrics::register(&prometheus::Registry::new()).unwrap();

    // 0: kept forever, whatever the age.
    let forever = RetentionSettings {
        uploads_days: 0,
        build_logs_days: 0,
        interval_seconds: 60,
    };
    assert_eq!(
        prune_once(&pool, &forever, &metrics).await.unwrap(),
        Pruned::default()
    );

    let settings = RetentionSettings {
        uploads_days: 30,
        build_logs_days: 90,
        interval_seconds: 60,
    };
    let pruned = prune_once(&pool, &settings, &metrics).await.unwrap();
    assert_eq!(
        pruned,
        Pruned {
            uploads: 1,
            build_logs: 2500
        },
        "three batches of lines, one upload"
    );
    assert_eq!(metrics.pruned("build_logs"), 2500);
    assert_eq!(metrics.pruned("source_uploads"), 1);
    let left = |id: BuildId| format!("SELECT count(*) FROM build_logs WHERE build_id = '{id}'");
    assert_eq!(count(&pool, &left(old_build)).await, 0);
    assert_eq!(count(&pool, &left(young_build)).await, 10);
    let uploads: Vec<uuid::Uuid> = sqlx::query_scalar("SELECT id FROM source_uploads ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    let mut expected = vec![young_upload, needed_upload];
    expected.sort();
    assert_eq!(uploads, expected, "the queued build's upload stays");
    // The builds themselves stay, with the id of what they built.
    let kept = builds::get(&pool, old_build).await.unwrap().unwrap();
    assert_eq!(kept.upload_id, Some(old_upload));
    assert!(builds::get(&pool, queued).await.unwrap().is_some());

    // Nothing left to prune: a second pass (another replica's) deletes nothing.
    assert_eq!(
        prune_once(&pool, &settings, &metrics).await.unwrap(),
        Pruned::default()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_builder_prunes_by_itself_and_counts_it() {
    let mut settings = test_settings().await;
    settings.retention.interval_seconds = 1;
    let app = spawn_configured(settings).await;
    let pool = app.pool().await;
    build(&pool, None, "succeeded", 3, 365).await;
    let metric = "slipway_builder_pruned_rows_total";
    let counted = slipway_testkit::wait_until(Duration::from_secs(30), || async {
        let text = app
            .client
            .get(app.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .any(|l| l.starts_with(metric) && l.contains("build_logs") && l.ends_with(" 3"))
    })
    .await;
    assert!(counted, "{metric} counts the 3 pruned lines");
    assert_eq!(count(&pool, "SELECT count(*) FROM build_logs").await, 0);
}
