//! Dockerfile builds on the real Docker Engine and with real buildah: the image is built from
//! the repository's Dockerfile (a Python HTTP app on the Debian base image of
//! `SLIPWAY_TEST_BASE_IMAGE`), pushed to the test registry, pulled by digest with `docker pull`
//! and run with `docker run`; the gate, refused paths and cancellation on both builders.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use rdkafka::Message;
use serde_json::Value;
use slipway_events::Topic;
use slipway_testkit::git::Repo;
use slipway_testkit::{next_of_type, plain_consumer};

use crate::helpers::{TestApp, spawn_configured, test_settings};

const ENGINE: &str = "unix:///var/run/docker.sock";
/// What the containers these tests start carry (and are removed by).
const LABEL: &str = "dev.slipway.test=builder-dockerfile";

/// The app: the base has python3-minimal only (no http.server), so plain sockets.
const APP: &str = r#"import os, socket
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("0.0.0.0", int(os.environ.get("PORT", "8000"))))
srv.listen(8)
while True:
    conn, _ = srv.accept()
    conn.recv(4096)
    conn.sendall(b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok")
    conn.close()
"#;

const TEST: &str =
    "import app_logic\nassert app_logic.answer() == 'ok', 'broken'\nprint('gate passed')\n";

/// Fails the test, saying so, when no engine answers (never skips).
fn require_engine() {
    let out = Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .output();
    let answered = out.as_ref().is_ok_and(|o| o.status.success());
    assert!(
        answered,
        "no Docker Engine answers at {ENGINE} (`docker info` failed: {}): the Dockerfile build \
         tests need a running engine",
        out.map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
            .unwrap_or_else(|e| e.to_string())
    );
}

fn base_image() -> String {
    std::env::var("SLIPWAY_TEST_BASE_IMAGE")
        .expect("SLIPWAY_TEST_BASE_IMAGE is not set: run the tests through scripts/test")
}

/// A builder; `engine`: with the Docker Engine, else with buildah.
async fn builder(engine: bool) -> TestApp {
    if engine {
        require_engine();
    }
    let mut settings = test_settings().await;
    // Image builds on a loaded machine are slow (the engine makes a container per LABEL).
    settings.builds.step_timeout_seconds = 600;
    if engine {
        settings.docker.host = ENGINE.into();
    }
    spawn_configured(settings).await
}

/// A repository holding `files`.
fn repo(files: &[(&str, &str)]) -> Repo {
    let dir = std::env::temp_dir().join(format!("slipway-df-{}", slipway_testkit::unique()));
    std::fs::create_dir_all(&dir).unwrap();
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
    Repo::from_dir(&dir)
}

/// `ARG BASE` / `FROM ${BASE}` (the base from slipway.toml), a passing `test` stage as the
/// gate, the app on port 8000.
fn app_repo() -> Repo {
    let dockerfile = "ARG BASE\n\
        FROM ${BASE} AS test\n\
        COPY app_logic.py test_app.py /src/\n\
        RUN cd /src && python3 test_app.py\n\
        FROM ${BASE}\n\
        COPY app.py /app/app.py\n\
        WORKDIR /app\n\
        USER 10001\n\
        EXPOSE 8000\n\
        CMD [\"python3\", \"app.py\"]\n";
    let toml = format!(
        "[image]\ndockerfile = \"Dockerfile\"\nbase = \"{}\"\n\n[run]\ncommand = [\"python3\", \"app.py\"]\nhealth_path = \"/ready\"\n",
        base_image()
    );
    repo(&[
        ("Dockerfile", dockerfile),
        ("slipway.toml", &toml),
        ("app.py", APP),
        ("app_logic.py", "def answer():\n    return 'ok'\n"),
        ("test_app.py", TEST),
    ])
}

/// Waits (longer than [`TestApp::wait_finished`]: image builds are slow) for the build's end.
async fn finished(app: &TestApp, id: slipway_ids::BuildId) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(900);
    loop {
        if let Some(build) = app.build(id).await
            && matches!(
                build["status"].as_str(),
                Some("succeeded" | "failed" | "cancelled")
            )
        {
            return build;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "build {id} did not finish: {}",
            app.log_text(id).await
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Pulls `image` by digest, runs it and waits for its HTTP answer; removes both after.
async fn pull_and_run(image: &str) -> Value {
    docker(&["pull", "-q", image]);
    let id = docker(&[
        "run",
        "-d",
        "--label",
        LABEL,
        "-p",
        "127.0.0.1::8000",
        image,
    ]);
    let inspect: Value = serde_json::from_str(&docker(&["image", "inspect", image])).unwrap();
    let port = docker(&["port", &id, "8000/tcp"]);
    let address = port.lines().next().unwrap().to_owned();
    let client = reqwest::Client::new();
    let answered = slipway_testkit::wait_until(Duration::from_secs(30), || {
        let client = client.clone();
        let url = format!("http://{address}/healthz");
        async move {
            let Ok(res) = client.get(url).send().await else {
                return false;
            };
            res.status() == 200 && res.text().await.is_ok_and(|t| t == "ok")
        }
    })
    .await;
    let logs = Command::new("docker").args(["logs", &id]).output().unwrap();
    docker(&["rm", "-f", &id]);
    let _ = Command::new("docker").args(["rmi", image]).output();
    assert!(
        answered,
        "the container answers HTTP; its log: {}",
        String::from_utf8_lossy(&logs.stderr)
    );
    inspect[0].clone()
}

/// Builds the app repository and checks the image, the record and that it runs.
async fn builds_pushes_and_runs(engine: bool) {
    let app = builder(engine).await;
    let repo = app_repo();
    let commit = repo.head();
    let id = app.request(&repo.url, Some(&commit)).await;
    let build = finished(&app, id).await;
    let logs = app.log_text(id).await;
    assert_eq!(build["status"], "succeeded", "{build}\n{logs}");
    assert!(
        logs.contains("test gate: the `test` stage of Dockerfile"),
        "{logs}"
    );
    assert!(
        logs.contains("gate passed"),
        "the stage's output is kept: {logs}"
    );
    assert!(logs.contains("build succeeded"), "{logs}");
    let image = build["image"].as_str().unwrap();
    let digest = build["artifact_digest"].as_str().unwrap();
    assert!(image.ends_with(&format!("@{digest}")), "by digest: {image}");

    // Recorded as packaged images are: the artifact and its run spec.
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
    assert_eq!(body["customData"]["image"], image);
    assert_eq!(body["customData"]["digest"], digest);
    assert_eq!(
        body["customData"]["run"]["command"],
        serde_json::json!(["python3", "app.py"])
    );
    assert_eq!(body["customData"]["run"]["health_path"], "/ready");

    let inspect = pull_and_run(image).await;
    let labels = &inspect["Config"]["Labels"];
    assert_eq!(
        labels["org.opencontainers.image.revision"],
        commit.as_str(),
        "{labels}"
    );
    assert_eq!(labels["org.opencontainers.image.source"], repo.url.as_str());
    assert_eq!(
        labels["org.opencontainers.image.base.name"],
        base_image().as_str()
    );
    assert_eq!(labels["dev.slipway.port-env"], "PORT");
    assert_eq!(labels["dev.slipway.health-path"], "/ready");
    assert_eq!(labels["dev.slipway.service"], "hello");
    assert_eq!(inspect["Config"]["User"], "10001");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dockerfile_is_built_through_the_engine_pushed_and_runs() {
    builds_pushes_and_runs(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dockerfile_is_built_with_buildah_pushed_and_runs() {
    builds_pushes_and_runs(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_dockerfile_is_built_and_its_cmd_is_the_run_command() {
    let app = builder(false).await;
    // No slipway.toml: detected, FROM written out, the command from CMD.
    let dockerfile = format!(
        "FROM {}\nCOPY app.py /app/app.py\nEXPOSE 8000\nCMD [\"python3\", \"/app/app.py\"]\n",
        base_image()
    );
    let repo = repo(&[("Dockerfile", &dockerfile), ("app.py", APP)]);
    let id = app.request(&repo.url, None).await;
    let build = finished(&app, id).await;
    let logs = app.log_text(id).await;
    assert_eq!(build["status"], "succeeded", "{build}\n{logs}");
    assert!(logs.contains("build recipe from dockerfile"), "{logs}");
    assert!(
        logs.contains("the image exposes 8000/tcp; instances get their port in $PORT"),
        "{logs}"
    );
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
    assert_eq!(
        body["customData"]["run"]["command"],
        serde_json::json!(["python3", "/app/app.py"])
    );
    assert_eq!(body["customData"]["run"]["health_path"], "/healthz");
    require_engine();
    let inspect = pull_and_run(build["image"].as_str().unwrap()).await;
    assert_eq!(inspect["Config"]["Labels"]["dev.slipway.port-env"], "PORT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_test_stage_stops_the_build_before_the_image() {
    let app = builder(true).await;
    let dockerfile = format!(
        "FROM {} AS test\nRUN echo checking; python3 -c 'import sys; sys.exit(3)'\nFROM {}\nCMD [\"true\"]\n",
        base_image(),
        base_image()
    );
    let repo = repo(&[("Dockerfile", &dockerfile)]);
    let id = app.request(&repo.url, None).await;
    let build = finished(&app, id).await;
    let logs = app.log_text(id).await;
    assert_eq!(build["status"], "failed", "{build}\n{logs}");
    assert_eq!(build["step"], "test", "{build}");
    assert_eq!(build["exit_code"], 3, "{build}");
    let reason = build["reason"].as_str().unwrap();
    assert!(reason.contains("returned a non-zero code: 3"), "{reason}");
    assert!(
        reason.contains("checking"),
        "the reason quotes the output: {reason}"
    );
    assert!(build["image"].is_null(), "{build}");
    assert!(
        !logs.contains("building Dockerfile"),
        "no image build: {logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dockerfile_outside_the_source_is_refused() {
    let app = builder(false).await;
    let repo = repo(&[("slipway.toml", "[image]\ndockerfile = \"../Dockerfile\"\n")]);
    let id = app.request(&repo.url, None).await;
    let build = finished(&app, id).await;
    assert_eq!(build["status"], "failed", "{build}");
    assert_eq!(build["step"], "spec");
    let reason = build["reason"].as_str().unwrap();
    assert!(
        reason.contains(
            "[image] dockerfile = \"../Dockerfile\" must be a relative path inside the source"
        ),
        "{reason}"
    );
    // A link in the repository leading out of the checkout is refused the same way.
    let outside =
        std::env::temp_dir().join(format!("slipway-df-out-{}", slipway_testkit::unique()));
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("Dockerfile"), "FROM scratch\n").unwrap();
    let linked = repo_with_link(&outside.join("Dockerfile"));
    let id = app.request(&linked.url, None).await;
    let build = finished(&app, id).await;
    assert_eq!(build["status"], "failed", "{build}");
    assert_eq!(build["step"], "spec");
    let reason = build["reason"].as_str().unwrap();
    assert!(reason.contains("inside the source"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_that_does_not_answer_fails_the_build_saying_so() {
    let mut settings = test_settings().await;
    settings.docker.host = "unix:///nonexistent/docker.sock".into();
    let app = spawn_configured(settings).await;
    let repo = repo(&[("Dockerfile", "FROM scratch\n")]);
    let id = app.request(&repo.url, None).await;
    let build = finished(&app, id).await;
    assert_eq!(build["status"], "failed", "{build}");
    assert_eq!(build["step"], "build");
    let reason = build["reason"].as_str().unwrap();
    assert!(
        reason.contains("the Docker Engine at unix:///nonexistent/docker.sock does not answer"),
        "{reason}"
    );
}

/// A repository whose `Dockerfile` is a link to `target`.
fn repo_with_link(target: &Path) -> Repo {
    let repo = repo(&[("README", "a link\n")]);
    let dir = std::env::temp_dir().join(format!("slipway-df-link-{}", slipway_testkit::unique()));
    let git = |args: &[&str], cwd: &Path| {
        let out = Command::new("git")
            .args(args)
            .current_dir(cwd)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@slipway.invalid")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@slipway.invalid")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    git(
        &["clone", "-q", &repo.url, &dir.display().to_string()],
        Path::new("/"),
    );
    std::os::unix::fs::symlink(target, dir.join("Dockerfile")).unwrap();
    git(&["add", "Dockerfile"], &dir);
    git(&["commit", "-q", "-m", "link"], &dir);
    git(&["push", "-q", "origin", "HEAD:main"], &dir);
    repo
}

/// Whether a process whose command line holds `marker` runs on this machine (the engine's
/// and buildah's build containers run here too).
fn running(marker: &str) -> bool {
    let out = Command::new("pgrep").args(["-f", marker]).output().unwrap();
    !out.stdout.is_empty()
}

async fn cancel_stops_the_run_step(engine: bool, seconds: &str) {
    let app = builder(engine).await;
    let dockerfile = format!("FROM {}\nRUN sleep {seconds}\n", base_image());
    let repo = repo(&[("Dockerfile", &dockerfile)]);
    let id = app.request(&repo.url, None).await;
    let marker = format!("sleep {seconds}");
    let started = slipway_testkit::wait_until(Duration::from_secs(120), || {
        let marker = marker.clone();
        async move { running(&marker) }
    })
    .await;
    assert!(started, "the RUN step started: {}", app.log_text(id).await);
    let res = app
        .client
        .post(app.url(&format!("/v1/builds/{id}/cancel")))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    let build = finished(&app, id).await;
    assert_eq!(build["status"], "cancelled", "{build}");
    assert_eq!(build["step"], "build");
    let gone = slipway_testkit::wait_until(Duration::from_secs(30), || {
        let marker = marker.clone();
        async move { !running(&marker) }
    })
    .await;
    assert!(gone, "the RUN step's process was stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_stops_the_engine_build() {
    cancel_stops_the_run_step(true, "2317").await;
    // The engine removed the build's container too.
    let left = docker(&["ps", "-a", "--no-trunc", "--format", "{{.Command}}"]);
    assert!(!left.contains("sleep 2317"), "{left}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_stops_the_buildah_build() {
    cancel_stops_the_run_step(false, "2318").await;
}
