//! Bounded output, with real build commands: a 2 MB line, a line that never ends, more output
//! than a build keeps. Each build ends with a clear reason, its events stay small, and the
//! builder goes on to build the next request.

use std::time::Duration;

use rdkafka::Message;
use serde_json::Value;
use slipway_events::Topic;
use slipway_ids::BuildId;
use slipway_testkit::git::{Repo, example_dir};
use slipway_testkit::{header, next_of_type, plain_consumer};

use crate::helpers::{TestApp, spawn_configured, test_settings};

const MAX_LINE: usize = 16 * 1024;

fn recipe(test: &str) -> String {
    format!("[test]\ncommand = {test:?}\n[build]\ncommand = \"\"\n")
}

/// The `build.finished` record of `id` on the builds topic.
async fn finished_record(app: &TestApp, id: BuildId) -> (usize, Value) {
    let consumer = plain_consumer(
        &app.kafka.bootstrap_servers,
        &[&app.kafka.topics().name(Topic::Builds)],
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let m = next_of_type(
            &consumer,
            "dev.cdevents.build.finished.0.3.0",
            Duration::from_secs(30),
        )
        .await
        .expect("build.finished reaches the broker");
        if header(&m, "ce_subject").as_deref() == Some(id.to_string().as_str()) {
            let payload = m.payload().unwrap();
            return (payload.len(), serde_json::from_slice(payload).unwrap());
        }
        assert!(tokio::time::Instant::now() < deadline);
    }
}

/// The builder is not stuck: the next request builds.
async fn next_build_succeeds(app: &TestApp, repo: &Repo) {
    let commit = repo.change("slipway.toml", &recipe("echo next"));
    let id = app.request(&repo.url, Some(&commit)).await;
    let build = app.wait_finished(id).await;
    assert_eq!(build["status"], "succeeded", "{build}");
}

fn longest_line(logs: &str) -> usize {
    logs.lines().map(str::len).max().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_megabyte_line_is_cut_and_the_build_still_ends_with_a_small_event() {
    let app = spawn_configured(test_settings().await).await;
    let repo = Repo::from_dir(&example_dir("hello-python"));
    let commit = repo.change(
        "slipway.toml",
        &recipe("head -c 2000000 /dev/zero | tr '\\0' x; echo; echo the-last-line; exit 3"),
    );
    let id = app.request(&repo.url, Some(&commit)).await;
    let build = app.wait_finished(id).await;
    assert_eq!(build["status"], "failed", "{build}");
    assert_eq!(build["step"], "test");
    assert_eq!(build["exit_code"], 3);
    let reason = build["reason"].as_str().unwrap();
    assert!(reason.contains("exited with code 3"), "{reason}");
    assert!(
        reason.contains("[line truncated: 2000000 bytes]"),
        "{reason}"
    );
    assert!(reason.ends_with("the-last-line"), "{reason}");
    assert!(reason.len() <= 64 * 1024, "{}", reason.len());

    let logs = app.log_text(id).await;
    assert!(
        logs.contains("… [line truncated: 2000000 bytes]"),
        "the cut is visible"
    );
    assert!(
        longest_line(&logs) <= MAX_LINE + 64,
        "{}",
        longest_line(&logs)
    );
    assert!(logs.contains("the-last-line"));

    let (size, body) = finished_record(&app, id).await;
    assert!(size < 128 * 1024, "build.finished is {size} bytes");
    assert_eq!(body["customData"]["status"], "failed");
    next_build_succeeds(&app, &repo).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_without_end_is_stopped_at_the_deadline_with_a_clear_reason() {
    let mut settings = test_settings().await;
    settings.builds.step_timeout_seconds = 4;
    let app = spawn_configured(settings).await;
    let repo = Repo::from_dir(&example_dir("hello-python"));
    // About 100 KB/s, never a newline: far past the line limit before the deadline.
    let commit = repo.change(
        "slipway.toml",
        &recipe("while :; do printf '%01024d' 0; sleep 0.01; done"),
    );
    let id = app.request(&repo.url, Some(&commit)).await;
    let build = app.wait_finished(id).await;
    assert_eq!(build["status"], "failed", "{build}");
    assert_eq!(build["step"], "test");
    let reason = build["reason"].as_str().unwrap();
    assert!(reason.contains("did not finish within 4s"), "{reason}");
    assert!(reason.contains("[line truncated: "), "{reason}");
    assert!(reason.len() <= 64 * 1024);

    // The unfinished line is kept, cut, with its whole length.
    let logs = app.log_text(id).await;
    let cut = logs
        .lines()
        .find(|l| l.starts_with("0000") && l.contains("[line truncated: "))
        .expect("the endless line, cut");
    let n: usize = cut
        .rsplit_once("[line truncated: ")
        .and_then(|(_, rest)| rest.strip_suffix(" bytes]"))
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(n > MAX_LINE, "{n} bytes were printed");
    assert!(cut.len() <= MAX_LINE + 64);

    let (size, _) = finished_record(&app, id).await;
    assert!(size < 128 * 1024, "build.finished is {size} bytes");
    next_build_succeeds(&app, &repo).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_past_the_log_limit_is_counted_not_kept() {
    let mut settings = test_settings().await;
    settings.builds.max_log_bytes = 64 * 1024;
    let app = spawn_configured(settings).await;
    let repo = Repo::from_dir(&example_dir("hello-python"));
    // 5000 lines of 100 bytes: about 500 KB.
    let line = "y".repeat(99);
    let commit = repo.change(
        "slipway.toml",
        &recipe(&format!("yes {line} | head -n 5000; echo done")),
    );
    let id = app.request(&repo.url, Some(&commit)).await;
    let build = app.wait_finished(id).await;
    assert_eq!(build["status"], "succeeded", "{build}");

    let pool = app.pool().await;
    let (kept, markers): (i64, i64) = sqlx::query_as(
        "SELECT coalesce(sum(octet_length(line)) FILTER (WHERE stream <> 'slipway'), 0)::bigint, \
         count(*) FILTER (WHERE line LIKE '… [log limit of %') FROM build_logs WHERE build_id = $1",
    )
    .bind(id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(kept <= 64 * 1024, "{kept} bytes kept");
    assert_eq!(markers, 1, "one marker line");
    let marker: String = sqlx::query_scalar(
        "SELECT line FROM build_logs WHERE build_id = $1 AND line LIKE '… [log limit%'",
    )
    .bind(id)
    .fetch_one(&pool)
    .await
    .unwrap();
    // 5001 lines of output (the last is `done`), of which about 650 fit.
    let dropped: u64 = marker
        .split_once("reached: ")
        .and_then(|(_, r)| r.split_once(' '))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap();
    assert!((4000..5001).contains(&dropped), "{marker}");
    let logs = app.log_text(id).await;
    assert!(
        logs.contains("build succeeded"),
        "narration is kept past the limit"
    );
}
