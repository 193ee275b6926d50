use std::time::Duration;

use rdkafka::Message;
use serde_json::Value;
use slipway_events::Topic;
use slipway_testkit::{header, next_of_type, plain_consumer};

use slipway_testkit::git::{Repo, example_dir};

use crate::helpers::spawn_app;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_commit_passes_the_gate_and_builds() {
    let app = spawn_app().await;
    let repo = Repo::from_dir(&example_dir("hello-python"));
    let commit = repo.head();
    let id = app.request(&repo.url, Some(&commit)).await;

    let build = app.wait_finished(id).await;
    assert_eq!(build["status"], "succeeded", "{build}");
    assert_eq!(build["commit_built"], commit.as_str());
    assert_eq!(build["exit_code"], 0);
    let image = build["image"].as_str().unwrap();
    let digest = build["artifact_digest"].as_str().unwrap();
    assert!(
        image.ends_with(&format!("@{digest}")),
        "pulled by digest: {image}"
    );
    let purl = build["artifact_purl"].as_str().unwrap();
    assert!(
        purl.starts_with(&format!("pkg:oci/hello@sha256%3A{}", &digest[7..])),
        "{purl}"
    );
    check_image(&app.client, image).await;

    let logs = app.log_text(id).await;
    assert!(logs.contains("$ python3 -m unittest -v"), "{logs}");
    assert!(logs.contains("Ran 3 tests"), "test output is kept: {logs}");
    assert!(logs.contains("build succeeded"), "{logs}");

    // The artifact, published for the registry to make a release of.
    let consumer = plain_consumer(
        &app.kafka.bootstrap_servers,
        &[&app.kafka.topics().name(Topic::Builds)],
    );
    let m = next_of_type(
        &consumer,
        "dev.cdevents.artifact.published.0.3.0",
        Duration::from_secs(30),
    )
    .await
    .expect("artifact published");
    let body: Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
    assert_eq!(body["subject"]["id"], purl);
    assert_eq!(body["customData"]["image"], image);
    assert_eq!(
        body["customData"]["run"]["command"],
        serde_json::json!(["python3", "app.py"])
    );
    assert_eq!(body["customData"]["commit"], commit.as_str());

    // queued, started, finished: CDEvents on the builds topic, keyed by the service.
    let consumer = plain_consumer(
        &app.kafka.bootstrap_servers,
        &[&app.kafka.topics().name(Topic::Builds)],
    );
    for ty in [
        "dev.cdevents.build.queued.0.3.0",
        "dev.cdevents.build.started.0.3.0",
        "dev.cdevents.build.finished.0.3.0",
    ] {
        let m = next_of_type(&consumer, ty, Duration::from_secs(30))
            .await
            .unwrap_or_else(|| panic!("{ty}"));
        assert_eq!(
            header(&m, "ce_subject").as_deref(),
            Some(id.to_string().as_str())
        );
        let body: Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
        assert_eq!(body["subject"]["id"], id.to_string());
        if ty.contains("finished") {
            assert_eq!(body["subject"]["content"]["artifactId"], purl);
            assert_eq!(body["customData"]["status"], "succeeded");
            assert_eq!(body["customData"]["commit"], commit.as_str());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_test_gate_fails_the_build_with_the_step_exit_code_and_output() {
    let app = spawn_app().await;
    let repo = Repo::from_dir(&example_dir("hello-python"));
    let broken = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/hello-python/test_app.py"
    ))
    .unwrap()
    .replace(
        "self.assertEqual(self.get(\"/healthz\"), (200, \"ok\"))",
        "self.assertEqual(self.get(\"/healthz\"), (200, \"broken on purpose\"))",
    );
    let commit = repo.change("test_app.py", &broken);
    let id = app.request(&repo.url, Some(&commit)).await;

    let build = app.wait_finished(id).await;
    assert_eq!(build["status"], "failed", "{build}");
    assert_eq!(build["step"], "test");
    assert_eq!(build["exit_code"], 1);
    let reason = build["reason"].as_str().unwrap();
    assert!(reason.contains("exited with code 1"), "{reason}");
    assert!(
        reason.contains("broken on purpose"),
        "the reason quotes the output: {reason}"
    );
    let logs = app.log_text(id).await;
    assert!(
        !logs.contains("build succeeded"),
        "the build step never ran: {logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_commits_fail_at_fetch() {
    let app = spawn_app().await;
    let repo = Repo::from_dir(&example_dir("hello-python"));
    let id = app
        .request(&repo.url, Some("0123456789abcdef0123456789abcdef01234567"))
        .await;
    let build = app.wait_finished(id).await;
    assert_eq!(build["status"], "failed");
    assert_eq!(build["step"], "fetch");
    assert!(
        build["reason"]
            .as_str()
            .unwrap()
            .contains("0123456789abcdef"),
        "{build}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_build_stops_its_processes() {
    let app = spawn_app().await;
    let repo = Repo::from_dir(&example_dir("hello-python"));
    // A gate that would run for a long time, with a marker to find its process by.
    let commit = repo.change(
        "slipway.toml",
        "[test]\ncommand = \"sleep 1317 & sleep 1317; wait\"\n[build]\ncommand = \"\"\n",
    );
    let id = app.request(&repo.url, Some(&commit)).await;
    app.wait_for(id, |s| s == "running").await;
    let sleeping = || async {
        let out = std::process::Command::new("pgrep")
            .args(["-f", "sleep 1317"])
            .output()
            .unwrap();
        !out.stdout.is_empty()
    };
    assert!(
        slipway_testkit::wait_until(Duration::from_secs(30), sleeping).await,
        "the gate started"
    );

    let res = app
        .client
        .post(format!("{}/v1/builds/{id}/cancel", app.address))
        .send()
        .await
        .unwrap();
    assert!(
        res.status() == 202 || res.status() == 200,
        "{}",
        res.status()
    );
    let build = app.wait_finished(id).await;
    assert_eq!(build["status"], "cancelled");
    assert_eq!(build["step"], "test");
    let gone =
        slipway_testkit::wait_until(Duration::from_secs(10), || async { !sleeping().await }).await;
    assert!(gone, "every process of the step was stopped");

    // Finished builds cannot be cancelled again; unknown ones do not exist.
    let res = app
        .client
        .post(format!("{}/v1/builds/{id}/cancel", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = app
        .client
        .post(format!(
            "{}/v1/builds/{}/cancel",
            app.address,
            slipway_ids::BuildId::new()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_request_builds_once() {
    let app = spawn_app().await;
    let repo = Repo::from_dir(&example_dir("hello-python"));
    let id = app.request_times(&repo.url, None, 2).await;
    let first = app.wait_finished(id).await;
    assert_eq!(first["status"], "succeeded", "{first}");
    assert_eq!(
        first["commit_built"],
        repo.head().as_str(),
        "the ref's head was built"
    );
    let list: Value = app
        .client
        .get(format!("{}/v1/builds?service=hello", app.address))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 1);
    let logs = app.log_text(id).await;
    assert_eq!(
        logs.matches("Ran 3 tests").count(),
        1,
        "the gate ran once: {logs}"
    );
}

/// Fetches the image's manifest, config and layer by digest from the registry's `/v2/` API.
async fn check_image(client: &reqwest::Client, image: &str) {
    let (name, digest) = image.split_once('@').unwrap();
    let (host, repository) = name.split_once('/').unwrap();
    let res = client
        .get(format!("http://{host}/v2/{repository}/manifests/{digest}"))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let manifest: Value = res.json().await.unwrap();
    let blob = |d: &str| format!("http://{host}/v2/{repository}/blobs/{d}");
    let config: Value = client
        .get(blob(manifest["config"]["digest"].as_str().unwrap()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        config["config"]["Cmd"],
        serde_json::json!(["python3", "app.py"])
    );
    assert!(
        config["config"]["Env"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e == "PORT=8080"),
        "{config}"
    );
    assert_eq!(
        config["config"]["ExposedPorts"]["8080/tcp"],
        serde_json::json!({})
    );
    let layer_digest = manifest["layers"][0]["digest"].as_str().unwrap();
    let layer = client
        .get(blob(layer_digest))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let sha = format!(
        "sha256:{}",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&layer))
    );
    assert_eq!(sha, layer_digest, "the blob is content-addressed");
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&layer[..]));
    let names: Vec<String> = archive
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            assert_eq!(
                e.header().uid().unwrap(),
                10001,
                "owned by the image's user"
            );
            e.path().unwrap().display().to_string()
        })
        .collect();
    assert_eq!(
        names,
        ["app/", "app/app.py"],
        "/app, then only what slipway.toml packages"
    );
    assert_eq!(
        manifest["layers"][0]["annotations"]["dev.slipway.layer"], "service",
        "no base: the one layer is the service's"
    );
}
