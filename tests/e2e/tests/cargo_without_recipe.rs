//! A Cargo repository with no slipway.toml, pushed with a GitHub-signed webhook, is built with
//! the Cargo defaults (as the build user when the stack runs as root, in a work dir outside
//! any checkout), passes its tests and becomes a release that runs its one binary.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use slipway_testkit::git::Repo;
use support::Stack;

const SECRET: &str = "e2e-webhook-secret-0123456789";

const MANIFEST: &str = r#"[package]
name = "hello-rs"
version = "0.1.0"
edition = "2021"
"#;

/// One binary and one unit test, std only (builds offline with Debian's cargo and rustc 1.63).
const MAIN: &str = r#"use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;

fn respond(path: &str) -> &'static str {
    if path == "/healthz" { "ok" } else { "hello from rust" }
}

fn main() {
    let port = std::env::var("PORT").unwrap_or_else(|_| "8080".to_string());
    let listener = TcpListener::bind(format!("127.0.0.1:{}", port)).expect("bind");
    for stream in listener.incoming().flatten() {
        let mut stream = stream;
        let mut line = String::new();
        let _ = BufReader::new(&stream).read_line(&mut line);
        let body = respond(line.split_whitespace().nth(1).unwrap_or("/"));
        let _ = write!(stream, "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{}", body.len(), body);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn health_answers_ok() {
        assert_eq!(super::respond("/healthz"), "ok");
    }
}
"#;

async fn wait_build(stack: &Stack, id: &str) -> Value {
    // Two cargo runs from scratch (test, then release) on a shared machine.
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let build: Value = stack
            .get(&format!("/v1/builds/{id}"), &stack.admin_token)
            .await
            .json()
            .await
            .unwrap();
        if matches!(
            build["status"].as_str(),
            Some("succeeded" | "failed" | "cancelled")
        ) {
            return build;
        }
        assert!(
            Instant::now() < deadline,
            "build {id} did not finish: {build}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cargo_repository_without_slipway_toml_builds_tests_and_becomes_a_release() {
    let stack = Stack::start().await;
    let source = std::env::temp_dir().join(format!("slipway-cargo-{}", slipway_testkit::unique()));
    std::fs::create_dir_all(&source).unwrap();
    std::fs::write(source.join("Cargo.toml"), MANIFEST).unwrap();
    let repo = Repo::from_dir(&source);
    let commit = repo.change("src/main.rs", MAIN);
    let body = json!({"name": "hello-rs", "repository": repo.url, "webhook_secret": SECRET});
    let res = stack.post("/v1/services", &stack.admin_token, body).await;
    assert_eq!(res.status(), 201);

    let (headers, body) = support::github_push(&repo.url, &commit, SECRET);
    let res = stack.webhook("/v1/webhooks/github", &headers, body).await;
    assert_eq!(res.status(), 202);
    let answer: Value = res.json().await.unwrap();
    let id = answer["builds"][0]["id"].as_str().unwrap().to_owned();

    let build = wait_build(&stack, &id).await;
    let logs: Value = stack
        .get(&format!("/v1/builds/{id}/logs"), &stack.admin_token)
        .await
        .json()
        .await
        .unwrap();
    let text: Vec<&str> = logs["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["line"].as_str().unwrap())
        .collect();
    let text = text.join("\n");
    assert_eq!(build["status"], "succeeded", "{build}\n{text}");
    assert_eq!(build["commit_built"], commit.as_str());
    assert!(text.contains("build recipe from cargo"), "{text}");
    assert!(text.contains("$ cargo test"), "{text}");
    assert!(
        text.contains("test tests::health_answers_ok ... ok"),
        "{text}"
    );
    assert!(text.contains("$ cargo build --release"), "{text}");

    let v1 = slipway_testkit::wait_until(Duration::from_secs(60), || async {
        stack
            .get("/v1/services/hello-rs/releases/v1", &stack.admin_token)
            .await
            .status()
            == 200
    })
    .await;
    assert!(v1, "the build became release v1");
    let release: Value = stack
        .get("/v1/services/hello-rs/releases/v1", &stack.admin_token)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(release["commit"], commit.as_str(), "{release}");
    assert_eq!(
        release["run"]["command"],
        json!(["./target/release/hello-rs"]),
        "{release}"
    );
}
