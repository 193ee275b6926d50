//! Auto-deploy never goes backwards: a `release.created` older than what runs in an environment,
//! or than a deploy already on its way there, is skipped; newer ones deploy; a person can still
//! deploy an older release.

use chrono::Utc;
use serde_json::{Value, json};
use slipway_events::deploy::DeployKind;
use slipway_events::slipway::{ReleaseCreated, sources};
use slipway_ids::{BuildId, ServiceId};
use slipway_testkit::wait_until;

use crate::helpers::{SETTLE, TestApp, request, spawn_app};

const SERVICE: &str = "shop";

/// Registers the service and turns auto-deploy on for staging.
async fn with_auto_deploy(app: &TestApp) -> ServiceId {
    let id = app.register(SERVICE).await;
    let policy = json!({"auto_deploy": true, "strategy": {"type": "recreate"}});
    let res = app
        .put_json(
            &format!("/v1/services/{SERVICE}/environments/staging/policy"),
            &policy,
        )
        .await;
    assert_eq!(res.status(), 200);
    id
}

/// Publishes `release.created` for release `number` as the registry would.
async fn release_created(app: &TestApp, service: ServiceId, number: i32) {
    let digest = format!("sha256:{}", "ab".repeat(32));
    let data = ReleaseCreated {
        release_id: uuid::Uuid::now_v7(),
        service_id: service,
        service_name: SERVICE.into(),
        number,
        version: format!("v{number}"),
        artifact: format!("pkg:oci/{SERVICE}@{digest}"),
        image: format!("127.0.0.1:1/{SERVICE}@{digest}"),
        digest,
        commit: format!("{number:040}"),
        build_id: BuildId::new(),
        run: None,
        config: [("staging".to_owned(), 1)].into_iter().collect(),
        created_at: Utc::now(),
    };
    app.publish(sources::REGISTRY, service, SERVICE, &data)
        .await;
}

/// The releases staging's deployments asked for, oldest first, once one asked for `last`.
async fn requested_releases_through(app: &TestApp, last: i32) -> Vec<(i64, String)> {
    let seen = |items: &[Value]| {
        items
            .iter()
            .rev()
            .map(|d| {
                (
                    d["requested_release"].as_i64().unwrap_or(-1),
                    d["actor"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect::<Vec<_>>()
    };
    let arrived = wait_until(SETTLE, || async {
        seen(&app.history(SERVICE, "staging").await)
            .iter()
            .any(|(r, _)| *r == i64::from(last))
    })
    .await;
    let releases = seen(&app.history(SERVICE, "staging").await);
    assert!(arrived, "no deployment of release {last}: {releases:?}");
    releases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_older_than_a_deploy_on_its_way_is_not_auto_deployed() {
    let app = spawn_app().await;
    let service = with_auto_deploy(&app).await;
    for n in [4, 5, 6] {
        app.registry.add_release(SERVICE, n, &["staging"]);
    }
    // Release 5's deployment stays queued (its start waits for the registry's answer).
    app.registry.hold(SERVICE, 5);
    release_created(&app, service, 5).await;
    // Late (or replayed): older than the deploy on its way.
    release_created(&app, service, 4).await;
    release_created(&app, service, 6).await;

    // Events of one service are consumed in order: once 6 is there, 4 was decided.
    let releases = requested_releases_through(&app, 6).await;
    assert_eq!(
        releases,
        [(5, "auto-deploy".to_owned()), (6, "auto-deploy".to_owned())],
        "release 4 was skipped"
    );
    app.registry.open_gate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_older_than_the_running_one_is_skipped_but_a_person_may_deploy_it() {
    let app = spawn_app().await;
    let service = with_auto_deploy(&app).await;
    for n in [3, 6, 8] {
        app.registry.add_release(SERVICE, n, &["staging"]);
    }
    // Release 7 runs in staging (as a finished deployment leaves it).
    let pool = sqlx::PgPool::connect_with(app.settings.database.connect_options())
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO environment_state (service_id, environment, service_name, release, \
         config_version, replicas) VALUES ($1, 'staging', $2, 7, 1, 0)",
    )
    .bind(service)
    .bind(SERVICE)
    .execute(&pool)
    .await
    .unwrap();

    release_created(&app, service, 6).await; // older: skipped
    release_created(&app, service, 7).await; // the same: skipped
    release_created(&app, service, 8).await; // newer: deployed
    let releases = requested_releases_through(&app, 8).await;
    assert_eq!(releases, [(8, "auto-deploy".to_owned())]);

    // An explicit deploy of an older release (a person going back) is not skipped: it is
    // queued behind the auto-deploy like any deployment.
    let back = request(DeployKind::Deploy, service, SERVICE, "staging", Some(3));
    app.command(&back).await;
    let releases = requested_releases_through(&app, 3).await;
    assert_eq!(
        releases,
        [(8, "auto-deploy".to_owned()), (3, "api-test".to_owned())]
    );
}
