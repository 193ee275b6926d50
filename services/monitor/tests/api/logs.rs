use chrono::{Duration as Age, Utc};
use serde_json::Value;
use slipway_events::CloudEvent;
use slipway_events::deploy::{InstanceLogs, InstanceRef, LogLine};
use slipway_events::slipway::sources;
use slipway_ids::ServiceId;
use slipway_testkit::wait_until;

use crate::helpers::{TestApp, WAIT, instance, spawn_app};

fn batch(i: &InstanceRef, first_seq: u64, lines: &[&str]) -> InstanceLogs {
    InstanceLogs {
        instance: i.clone(),
        first_seq,
        lines: lines
            .iter()
            .map(|l| LogLine {
                stream: if l.starts_with("ERR") {
                    "stderr"
                } else {
                    "stdout"
                }
                .into(),
                line: (*l).to_owned(),
                at: Utc::now(),
            })
            .collect(),
    }
}

fn event(i: &InstanceRef, data: &InstanceLogs) -> CloudEvent {
    CloudEvent::new(
        sources::DEPLOYER,
        i.service_id,
        Some(i.instance_id.to_string()),
        data,
    )
    .unwrap()
}

/// The lines of a page (none for a problem, e.g. before the service is known).
fn lines(body: &Value) -> Vec<String> {
    body["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|i| i["line"].as_str().unwrap().to_owned())
        .collect()
}

async fn logs(app: &TestApp, query: &str) -> (u16, Value) {
    app.get(&format!("/v1/services/web/environments/prod/logs{query}"))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivered_batches_are_stored_once_and_pages_are_oldest_first() {
    let app = spawn_app().await;
    let service = ServiceId::new();
    let a = instance(service);
    let first = batch(
        &a,
        0,
        &["booting", "ERR no config, using defaults", "listening"],
    );
    let once = event(&a, &first);
    app.publish_event(&once).await;
    app.publish_event(&once).await; // redelivered as is
    app.publish_event(&event(&a, &first)).await; // sent again under a new id
    app.publish_event(&event(&a, &batch(&a, 3, &["GET / 200"])))
        .await;
    // Overlapping a stored line: only the new one is added.
    app.publish_event(&event(&a, &batch(&a, 3, &["GET / 200", "GET /x 404"])))
        .await;

    assert!(
        wait_until(WAIT, || async { lines(&logs(&app, "").await.1).len() == 5 }).await,
        "five distinct lines are stored"
    );
    let (status, body) = logs(&app, "").await;
    assert_eq!(status, 200);
    assert_eq!(
        lines(&body),
        [
            "booting",
            "ERR no config, using defaults",
            "listening",
            "GET / 200",
            "GET /x 404"
        ]
    );
    let item = &body["items"][1];
    assert_eq!(item["instance_id"], a.instance_id.to_string());
    assert_eq!(item["seq"], 1);
    assert_eq!(item["stream"], "stderr");
    assert_eq!(item["release"], 1);
    assert!(item["at"].is_string());
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM instance_logs")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(
        stored, 5,
        "no duplicate rows even briefly visible through the API"
    );

    // A tail of 2, then following from a sequence number.
    let (_, tail) = logs(&app, "?limit=2").await;
    assert_eq!(lines(&tail), ["GET / 200", "GET /x 404"]);
    let (_, after) = logs(
        &app,
        &format!("?instance={}&since_seq=1&limit=2", a.instance_id),
    )
    .await;
    assert_eq!(lines(&after), ["listening", "GET / 200"]);
    let (_, from_start) = logs(
        &app,
        &format!("?instance={}&since_seq=-1&limit=1", a.instance_id),
    )
    .await;
    assert_eq!(lines(&from_start), ["booting"]);

    // Another instance's and another environment's lines are kept apart.
    let b = instance(service);
    let mut elsewhere = instance(service);
    elsewhere.environment = "staging".into();
    app.publish_event(&event(&b, &batch(&b, 0, &["b says hi"])))
        .await;
    app.publish_event(&event(&elsewhere, &batch(&elsewhere, 0, &["staging line"])))
        .await;
    assert!(
        wait_until(WAIT, || async { lines(&logs(&app, "").await.1).len() == 6 }).await,
        "b's line is stored"
    );
    let (_, only_b) = logs(&app, &format!("?instance={}", b.instance_id)).await;
    assert_eq!(lines(&only_b), ["b says hi"]);
    assert!(!lines(&logs(&app, "").await.1).contains(&"staging line".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_past_the_retention_are_pruned() {
    let app = spawn_app().await; // retention 24 h, pruned every 200 ms
    let service = ServiceId::new();
    let a = instance(service);
    let mut old = batch(&a, 0, &["from last week", "fresh"]);
    old.lines[0].at = Utc::now() - Age::days(8);
    app.publish_event(&event(&a, &old)).await;
    assert!(
        wait_until(WAIT, || async {
            lines(&logs(&app, "").await.1) == ["fresh"]
        })
        .await,
        "the old line is pruned, the fresh one kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_log_queries_are_problems() {
    let app = spawn_app().await;
    let service = ServiceId::new();
    let a = instance(service);
    app.publish_event(&event(&a, &batch(&a, 0, &["hello"])))
        .await;
    assert!(wait_until(WAIT, || async { logs(&app, "").await.0 == 200 }).await);

    let cases = [
        ("?limit=0", 422, "limit"),
        ("?limit=1001", 422, "limit"),
        ("?limit=many", 400, "limit"),
        ("?since_seq=3", 422, "since_seq"),
        ("?instance=not-a-uuid", 400, "instance"),
        ("?tail=5", 400, "tail"),
    ];
    for (query, want, names) in cases {
        let (status, body) = logs(&app, query).await;
        assert_eq!(status, want, "{query}: {body}");
        assert_eq!(body["status"], want);
        assert!(
            body["detail"].as_str().unwrap().contains(names),
            "{query}: {body}"
        );
    }
    let (status, body) = app.get("/v1/services/nope/environments/prod/logs").await;
    assert_eq!(status, 404);
    assert!(body["detail"].as_str().unwrap().contains("nope"));
    let too_long = "e".repeat(64);
    let (status, _) = app
        .get(&format!("/v1/services/web/environments/{too_long}/logs"))
        .await;
    assert_eq!(status, 422);
    // A known service and environment without lines: an empty page, not an error.
    let (status, body) = app.get("/v1/services/web/environments/dev/logs").await;
    assert_eq!((status, body["items"].as_array().unwrap().len()), (200, 0));
}
