//! Runnable images on a base, made without a Docker daemon: a Python service built on the
//! test base image (SLIPWAY_TEST_BASE_IMAGE, Debian minbase + python3 from scripts/base-image)
//! is pulled by digest into the real Docker Engine, run as a container and answers HTTP; the
//! same input gives the same digest; a base from "another" registry is copied (and cached), one
//! on the same registry mounted; a bad base fails the build saying why.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use slipway_testkit::git::{Repo, example_dir};

use crate::helpers::{spawn_configured, test_settings};

/// A service that needs nothing beyond python3-minimal (no `http.server` there): answers every
/// request with who and where it runs.
const APP: &str = r#"import os, socket

port = int(os.environ.get("PORT", "8000"))
server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("0.0.0.0", port))
server.listen(16)
print("listening on :%d" % port, flush=True)
while True:
    conn, _ = server.accept()
    try:
        request = conn.recv(4096).decode("latin-1")
        parts = request.split(" ")
        path = parts[1] if len(parts) > 1 else "/"
        if path == "/healthz":
            body = "ok"
        else:
            body = "%s uid=%d cwd=%s" % (os.environ.get("SLIPWAY_SERVICE", "?"), os.getuid(), os.getcwd())
        data = body.encode()
        head = "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: %d\r\nconnection: close\r\n\r\n" % len(data)
        conn.sendall(head.encode() + data)
    finally:
        conn.close()
"#;

fn recipe(image: &str) -> String {
    format!(
        "[test]\ncommand = \"python3 -c 'import ast; ast.parse(open(\\\"app.py\\\").read())'\"\n\
         [build]\ncommand = \"\"\npackage = [\"app.py\"]\n\
         [run]\ncommand = [\"python3\", \"app.py\"]\nport_env = \"PORT\"\nhealth_path = \"/healthz\"\n{image}"
    )
}

fn base_image() -> String {
    std::env::var("SLIPWAY_TEST_BASE_IMAGE").expect(
        "SLIPWAY_TEST_BASE_IMAGE is not set: run the tests through scripts/test, which pushes \
         the base image (scripts/base-image) into the test registry",
    )
}

/// `docker ARGS`, its stdout; the test fails saying what docker answered.
fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run docker ({e}): the image tests need a Docker Engine")
        });
    assert!(
        out.status.success(),
        "docker {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn require_docker() {
    let answer = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output();
    match answer {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "no Docker Engine answers (`docker version`: {}): the image tests need one",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => panic!("no docker client ({e}): the image tests need a Docker Engine"),
    }
}

/// Removes what the test made in the engine, passed or not.
struct Engine {
    label: String,
    images: Vec<String>,
}

impl Drop for Engine {
    fn drop(&mut self) {
        let filter = format!("label=dev.slipway.test={}", self.label);
        if let Ok(out) = Command::new("docker")
            .args(["ps", "-aq", "--filter", &filter])
            .output()
        {
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("docker").args(["rm", "-f", id]).output();
            }
        }
        for image in &self.images {
            let _ = Command::new("docker").args(["rmi", image]).output();
        }
    }
}

async fn get(url: &str) -> Option<String> {
    let res = reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    res.status().is_success().then_some(())?;
    res.text().await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_service_on_a_base_runs_in_docker_and_rebuilds_to_the_same_digest() {
    require_docker();
    let base = base_image();
    let base_digest = base.rsplit_once('@').unwrap().1.to_owned();
    let settings = test_settings().await;
    let workdir = settings.builds.workdir.clone();
    let app = spawn_configured(settings).await;
    let repo = Repo::from_dir(&example_dir("hello-python"));
    repo.change("app.py", APP);
    let commit = repo.change(
        "slipway.toml",
        &recipe(&format!("[image]\nbase = \"{base}\"\n")),
    );

    let first = app.request(&repo.url, Some(&commit)).await;
    let built = app.wait_finished(first).await;
    assert_eq!(built["status"], "succeeded", "{built}");
    let image = built["image"].as_str().unwrap().to_owned();
    let logs = app.log_text(first).await;
    assert!(logs.contains(&format!("on {base}")), "{logs}");

    // On the same registry the base's layers were mounted, not copied through the builder.
    let copied = std::fs::read_dir(std::path::Path::new(&workdir).join("base-blobs"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(
        copied, 0,
        "a base on the push registry is mounted, never pulled"
    );

    // The same commit again: the same bytes, the same digest.
    let second = app.request(&repo.url, Some(&commit)).await;
    let rebuilt = app.wait_finished(second).await;
    assert_eq!(rebuilt["status"], "succeeded", "{rebuilt}");
    assert_eq!(
        rebuilt["artifact_digest"], built["artifact_digest"],
        "same input, same digest"
    );

    let label = format!("builder-images-{}", slipway_testkit::unique());
    let mut engine = Engine {
        label: label.clone(),
        images: vec![],
    };
    docker(&["pull", &image]);
    engine.images.push(image.clone());
    let config: Value = serde_json::from_str(&docker(&[
        "image",
        "inspect",
        "--format",
        "{{json .Config}}",
        &image,
    ]))
    .unwrap();
    assert_eq!(config["User"], "10001:10001", "{config}");
    assert_eq!(config["WorkingDir"], "/app");
    assert_eq!(config["Cmd"], serde_json::json!(["python3", "app.py"]));
    assert!(config["ExposedPorts"].get("8080/tcp").is_some(), "{config}");
    let env: Vec<&str> = config["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert!(env.contains(&"PORT=8080"), "{env:?}");
    assert!(
        env.iter().any(|e| e.starts_with("PATH=")),
        "the base's PATH stays: {env:?}"
    );
    let labels = &config["Labels"];
    assert_eq!(
        labels["org.opencontainers.image.base.digest"],
        base_digest.as_str()
    );
    assert_eq!(labels["org.opencontainers.image.revision"], commit.as_str());
    assert!(
        labels["org.opencontainers.image.source"].is_string(),
        "{labels}"
    );
    assert_eq!(labels["dev.slipway.health-path"], "/healthz");

    let container = docker(&[
        "run",
        "-d",
        "--label",
        &format!("dev.slipway.test={label}"),
        "-p",
        "127.0.0.1::8080",
        &image,
    ]);
    let published = docker(&["port", &container, "8080/tcp"]);
    let address = published.lines().next().unwrap().to_owned();
    let health = format!("http://{address}/healthz");
    let up = slipway_testkit::wait_until(Duration::from_secs(30), || async {
        get(&health).await.is_some_and(|b| b == "ok")
    })
    .await;
    assert!(
        up,
        "the container never answered {health}; its logs: {}",
        Command::new("docker")
            .args(["logs", &container])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned()
                + &String::from_utf8_lossy(&o.stderr))
            .unwrap_or_default()
    );
    let body = get(&format!("http://{address}/")).await.unwrap();
    assert_eq!(
        body, "hello uid=10001 cwd=/app",
        "runs as the image's non-root user"
    );
    drop(engine);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_language_base_from_another_registry_is_copied_and_cached() {
    let base = base_image();
    let (host, rest) = base.split_once('/').unwrap();
    let port = host.rsplit_once(':').unwrap().1;
    // The same registry under another name: to the builder, another registry.
    let elsewhere = format!("localhost:{port}");
    let mut settings = test_settings().await;
    settings
        .images
        .base
        .insert("python".into(), format!("{elsewhere}/{rest}"));
    settings.images.insecure_registries = vec![elsewhere.clone()];
    let workdir = settings.builds.workdir.clone();
    let registry = settings.registry.address.clone();
    let app = spawn_configured(settings).await;
    let repo = Repo::from_dir(&example_dir("hello-python"));
    repo.change("app.py", APP);
    // A Python project to the builder's detection (which picks images.base.python).
    repo.change("requirements.txt", "");
    let commit = repo.change("slipway.toml", &recipe(""));
    let id = app.request(&repo.url, Some(&commit)).await;
    let built = app.wait_finished(id).await;
    assert_eq!(built["status"], "succeeded", "{built}");

    // Every layer of the image is in the service's repository, the base's copied through the
    // builder's cache.
    let image = built["image"].as_str().unwrap();
    let (name, digest) = image.rsplit_once('@').unwrap();
    let repository = name.strip_prefix(&format!("{registry}/")).unwrap();
    let http = reqwest::Client::new();
    let manifest: Value = http
        .get(format!(
            "http://{registry}/v2/{repository}/manifests/{digest}"
        ))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    assert!(
        layers.len() >= 2,
        "base layer(s) + the service's: {manifest}"
    );
    let service = layers.last().unwrap();
    assert_eq!(service["annotations"]["dev.slipway.layer"], "service");
    assert_eq!(
        manifest["annotations"]["org.opencontainers.image.base.name"],
        format!("{elsewhere}/{}", rest.split_once('@').unwrap().0)
    );
    for layer in layers {
        let blob = layer["digest"].as_str().unwrap();
        let head = http
            .head(format!("http://{registry}/v2/{repository}/blobs/{blob}"))
            .send()
            .await
            .unwrap();
        assert!(
            head.status().is_success(),
            "{blob} is missing: {}",
            head.status()
        );
    }
    let first_base = layers[0]["digest"].as_str().unwrap();
    let cached = std::path::Path::new(&workdir)
        .join("base-blobs")
        .join(first_base.trim_start_matches("sha256:"));
    assert!(
        cached.is_file(),
        "the copied base blob is cached: {}",
        cached.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_base_fails_the_build_with_the_reason() {
    let app = spawn_configured(test_settings().await).await;
    let registry = slipway_testkit::oci_registry();
    let repo = Repo::from_dir(&example_dir("hello-python"));
    repo.change("app.py", APP);
    for (base, says) in [
        (
            "127.0.0.1:1/Not Valid".to_owned(),
            "not a valid base image reference",
        ),
        (
            format!("{registry}/no/such-base@sha256:{}", "0".repeat(64)),
            "cannot be used",
        ),
    ] {
        let commit = repo.change(
            "slipway.toml",
            &recipe(&format!("[image]\nbase = \"{base}\"\n")),
        );
        let id = app.request(&repo.url, Some(&commit)).await;
        let build = app.wait_finished(id).await;
        assert_eq!(build["status"], "failed", "{build}");
        assert_eq!(build["step"], "package", "{build}");
        let reason = build["reason"].as_str().unwrap();
        assert!(reason.contains(says), "{base}: {reason}");
        assert!(
            reason.contains("[image] base in slipway.toml") || says == "cannot be used",
            "{reason}"
        );
    }
}
