//! Helpers for deploy-and-run tests: releases from pushes, deployments, and a client loop
//! that sends steady traffic through the edge router and records who answered.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use slipway_testkit::git::Repo;

use super::Stack;

pub const SECRET: &str = "e2e-deploy-webhook-secret";

impl Stack {
    pub async fn put(&self, path: &str, body: Value) -> reqwest::Response {
        reqwest::Client::new()
            .put(self.url("gateway", path))
            .bearer_auth(&self.admin_token)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// Sets the environment's config to `vars` (a new version); answers the version.
    pub async fn set_config(&self, env: &str, vars: Value) -> i64 {
        let path = format!("/v1/services/hello/environments/{env}/config");
        let current: Value = self
            .get(&path, &self.admin_token)
            .await
            .json()
            .await
            .unwrap();
        let version = current["version"].as_i64().unwrap_or(0);
        let mut req = reqwest::Client::new()
            .put(self.url("gateway", &path))
            .bearer_auth(&self.admin_token)
            .json(&json!({ "vars": vars }));
        if version > 0 {
            req = req.header("if-match", format!("\"{version}\""));
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
        version + 1
    }

    /// Pushes the repository's head, waits for the build and for release `vN`.
    pub async fn release(&self, repo: &Repo, n: u32) -> Value {
        let (headers, body) = super::github_push(&repo.url, &repo.head(), SECRET);
        let res = self.webhook("/v1/webhooks/github", &headers, body).await;
        assert_eq!(res.status(), 202);
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let res = self
                .get(
                    &format!("/v1/services/hello/releases/v{n}"),
                    &self.admin_token,
                )
                .await;
            if res.status() == 200 {
                return res.json().await.unwrap();
            }
            assert!(
                Instant::now() < deadline,
                "release v{n} never appeared:\n{}",
                self.log_text("builder")
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Asks for a deployment (202) and answers its id.
    pub async fn deploy(&self, env: &str, body: Value) -> String {
        let res = self
            .post(
                &format!("/v1/services/hello/environments/{env}/deployments"),
                &self.admin_token,
                body,
            )
            .await;
        let status = res.status();
        let answer: Value = res.json().await.unwrap();
        assert_eq!(status, 202, "{answer}");
        answer["id"].as_str().unwrap().to_owned()
    }

    pub async fn deployment(&self, id: &str) -> Value {
        self.get(&format!("/v1/deployments/{id}"), &self.admin_token)
            .await
            .json()
            .await
            .unwrap()
    }

    /// Waits until the deployment ends; answers it.
    pub async fn finished(&self, id: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let d = self.deployment(id).await;
            if matches!(
                d["status"].as_str(),
                Some("succeeded" | "failed" | "rolled_back" | "cancelled")
            ) {
                return d;
            }
            assert!(
                Instant::now() < deadline,
                "deployment {id} still {} after {within:?}: {d}\n{}",
                d["status"],
                self.log_text("deployer")
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until the deployment reaches `status` (or fails the test).
    pub async fn reaches(&self, id: &str, status: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let d = self.deployment(id).await;
            if d["status"] == status {
                return d;
            }
            assert!(
                Instant::now() < deadline,
                "deployment {id} never {status}: {d}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The environment's desired state and instances, from the deployer.
    pub async fn state(&self, env: &str) -> Value {
        self.get(
            &format!("/v1/services/hello/environments/{env}/state"),
            &self.admin_token,
        )
        .await
        .json()
        .await
        .unwrap()
    }

    /// One request through the edge router: (status, the release that answered, greeting).
    pub async fn through_edge(&self, client: &reqwest::Client, env: &str) -> (u16, String, String) {
        match client
            .get(self.url("gateway", &format!("/apps/hello/{env}/")))
            .send()
            .await
        {
            Ok(res) => {
                let status = res.status().as_u16();
                let body: Value = res.json().await.unwrap_or_default();
                (
                    status,
                    body["release"].as_str().unwrap_or_default().to_owned(),
                    body["message"].as_str().unwrap_or_default().to_owned(),
                )
            }
            Err(e) => (0, String::new(), e.to_string()),
        }
    }

    /// Waits until every request of a short burst is answered 200 by `release`.
    pub async fn serves_only(&self, env: &str, release: &str) {
        let client = reqwest::Client::new();
        let ok = slipway_testkit::wait_until(Duration::from_secs(30), || async {
            for _ in 0..10 {
                let (status, r, _) = self.through_edge(&client, env).await;
                if status != 200 || r != release {
                    return false;
                }
            }
            true
        })
        .await;
        assert!(ok, "{env} is not served by {release} only");
    }
}

/// One answer of the client loop: when, status, the release that answered, greeting or detail.
pub type Answer = (Instant, u16, String, String);

/// Steady traffic through the edge router until stopped: every answer is recorded.
pub struct ClientLoop {
    pub answers: Arc<Mutex<Vec<Answer>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl ClientLoop {
    pub fn start(stack: &Stack, env: &str) -> Self {
        let url = stack.url("gateway", &format!("/apps/hello/{env}/"));
        let answers = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (a, s) = (answers.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let client = reqwest::Client::new();
            while !s.load(std::sync::atomic::Ordering::Relaxed) {
                let answer = match client.get(&url).send().await {
                    Ok(res) => {
                        let status = res.status().as_u16();
                        let body: Value = res.json().await.unwrap_or_default();
                        (
                            status,
                            body["release"].as_str().unwrap_or_default().to_owned(),
                            body["detail"]
                                .as_str()
                                .or(body["message"].as_str())
                                .unwrap_or_default()
                                .to_owned(),
                        )
                    }
                    Err(e) => (0, String::new(), e.to_string()),
                };
                a.lock()
                    .unwrap()
                    .push((Instant::now(), answer.0, answer.1, answer.2));
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        Self {
            answers,
            stop,
            task,
        }
    }

    /// Stops the loop; answers everything it recorded.
    pub async fn stop(self) -> Vec<Answer> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.unwrap();
        self.answers.lock().unwrap().clone()
    }

    /// The answers recorded since `since`.
    pub fn since(&self, since: Instant) -> Vec<Answer> {
        self.answers
            .lock()
            .unwrap()
            .iter()
            .filter(|a| a.0 >= since)
            .cloned()
            .collect()
    }
}

/// Fails the test if any answer is not a 200, showing the first failures.
pub fn assert_no_loss(what: &str, answers: &[Answer]) {
    let failed: Vec<_> = answers.iter().filter(|a| a.1 != 200).collect();
    assert!(
        answers.len() > 20,
        "{what}: the client loop made only {} requests",
        answers.len()
    );
    assert!(
        failed.is_empty(),
        "{what}: {} of {} requests failed, e.g. {:?}",
        failed.len(),
        answers.len(),
        &failed[..failed.len().min(5)]
    );
}
