//! Retention on the real database: rows past their retention go, in batches, younger ones
//! stay, two replicas pruning at once share the work without error, and the pruner counts what
//! it deleted on `/metrics`.

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use slipway_gateway::retention::{self, Policy, RetentionSettings, Table};
use uuid::Uuid;

use crate::helpers::{TestApp, start_gateway_with};

/// A gateway with no upstreams, pruning every second with `settings`.
async fn gateway(settings: RetentionSettings) -> TestApp {
    let base = slipway_testkit::base_settings("gateway").await;
    let nowhere = "http://127.0.0.1:9".to_owned();
    let upstreams = slipway_gateway::startup::UpstreamSettings {
        registry: nowhere.clone(),
        builder: nowhere.clone(),
        deployer: nowhere.clone(),
        monitor: nowhere,
        timeout_seconds: 2,
        connect_timeout_seconds: 1,
    };
    let key = slipway_testkit::secrets_key();
    start_gateway_with(base, upstreams, Vec::new(), settings, key).await
}

/// Hourly (the start-up pass runs before the test's rows exist), tiny batches.
fn settings() -> RetentionSettings {
    RetentionSettings {
        batch_size: NonZeroU32::new(2).unwrap(),
        ..RetentionSettings::default()
    }
}

/// Inserts `n` audit entries `days` old.
async fn audit(app: &TestApp, n: i32, days: i32) {
    sqlx::query(
        "INSERT INTO audit_log (at, method, path, status) \
         SELECT now() - make_interval(days => $2), 'POST', '/v1/x', 201 FROM generate_series(1, $1)",
    )
    .bind(n)
    .bind(days)
    .execute(&app.pool)
    .await
    .unwrap();
}

/// An operation `days` old; a cancel when `cancels` is set.
async fn operation(app: &TestApp, days: i32, cancels: Option<Uuid>) -> Uuid {
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO operations (id, kind, service_id, service_name, trigger, cancels, created_at) \
         VALUES ($1, CASE WHEN $3::uuid IS NULL THEN 'deploy' ELSE 'cancel' END, $2, 'web', 'api', \
         $3, now() - make_interval(days => $4))",
    )
    .bind(id)
    .bind(Uuid::now_v7())
    .bind(cancels)
    .bind(days)
    .execute(&app.pool)
    .await
    .unwrap();
    id
}

async fn exists(app: &TestApp, id: Uuid) -> bool {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM operations WHERE id = $1)")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_past_their_retention_are_pruned_in_batches_and_younger_ones_kept() {
    let app = gateway(settings()).await;
    let audit_before = app.count("audit_log").await;
    audit(&app, 5, 400).await;
    audit(&app, 3, 10).await;
    let old_deploy = operation(&app, 40, None).await;
    let old_cancel = operation(&app, 39, Some(old_deploy)).await;
    let kept_deploy = operation(&app, 40, None).await;
    let young_cancel = operation(&app, 1, Some(kept_deploy)).await;
    let young = operation(&app, 1, None).await;
    sqlx::query(
        "INSERT INTO service_creations (service_id, token_id, project, name, request_sha256, \
         secret_generated, created_at) VALUES ($1, $2, 'default', 'old', 'x', true, \
         now() - interval '2 days'), ($3, $2, 'default', 'new', 'y', true, now())",
    )
    .bind(Uuid::now_v7())
    .bind(Uuid::now_v7())
    .bind(Uuid::now_v7())
    .execute(&app.pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO webhook_deliveries (provider, delivery_id, body_sha256, received_at) \
         VALUES ('github', 'old', 'a', now() - interval '8 days'), ('github', 'new', 'b', now())",
    )
    .execute(&app.pool)
    .await
    .unwrap();

    let policy = Policy::new(&settings(), chrono::Duration::days(7));
    let pruned = retention::prune_all(&app.pool, &policy, None).await;
    // At least 5 audit entries, the old cancel, 1 creation and 1 delivery (the deploy the
    // cancel pointed at may wait for the next pass); batches of 2 took several statements.
    assert!(pruned >= 8, "pruned {pruned}");
    retention::prune_all(&app.pool, &policy, None).await;

    assert_eq!(app.count("audit_log").await, audit_before + 3);
    assert!(!exists(&app, old_cancel).await);
    assert!(!exists(&app, old_deploy).await, "gone once its cancel went");
    assert!(
        exists(&app, kept_deploy).await,
        "kept while a young cancel points at it"
    );
    assert!(exists(&app, young_cancel).await);
    assert!(exists(&app, young).await);
    let creations: Vec<String> = sqlx::query_scalar("SELECT name FROM service_creations")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(creations, ["new"]);
    let deliveries: Vec<String> = sqlx::query_scalar("SELECT delivery_id FROM webhook_deliveries")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    assert_eq!(deliveries, ["new"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_pruning_at_once_share_the_rows() {
    let app = gateway(settings()).await;
    audit(&app, 500, 400).await;
    let young = app.count("audit_log").await - 500;
    let policy = Policy::new(
        &RetentionSettings {
            batch_size: NonZeroU32::new(7).unwrap(),
            ..RetentionSettings::default()
        },
        chrono::Duration::days(7),
    );
    let (a, b) = tokio::join!(
        retention::prune_table(&app.pool, &policy, Table::AuditLog),
        retention::prune_table(&app.pool, &policy, Table::AuditLog),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    // A replica stops at a short batch (the other held those rows); what is left goes next pass.
    let rest = retention::prune_table(&app.pool, &policy, Table::AuditLog)
        .await
        .unwrap();
    assert_eq!(
        a + b + rest,
        500,
        "each row deleted once: {a} + {b} + {rest}"
    );
    assert_eq!(app.count("audit_log").await, young);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pruner_runs_on_its_own_and_counts_what_it_deleted() {
    let app = gateway(RetentionSettings {
        interval_seconds: NonZeroU32::new(1).unwrap(),
        audit_days: NonZeroU32::new(30).unwrap(),
        ..RetentionSettings::default()
    })
    .await;
    audit(&app, 4, 31).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = app
            .client
            .get(app.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        // `slipway_gateway_pruned_rows_total{service="gateway",table="audit_log"} 4`
        let series = |table: &str| {
            text.lines()
                .filter(|l| l.starts_with("slipway_gateway_pruned_rows_total{"))
                .find(|l| l.contains(&format!("table=\"{table}\"")))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<f64>().ok())
        };
        assert_eq!(
            series("operations"),
            Some(0.0),
            "every table's series exists from the start:\n{text}"
        );
        let counted = series("audit_log").unwrap_or(0.0);
        if counted >= 4.0 {
            break;
        }
        assert!(Instant::now() < deadline, "not pruned in time:\n{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let old: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE at < now() - interval '30 days'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(old, 0);
}
