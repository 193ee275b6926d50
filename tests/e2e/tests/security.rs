//! The security suite: a hostile service attacks the platform from inside, through the five
//! real binaries, and every attack fails with its reason visible while the service itself
//! keeps working.
//!
//! - Its build's test command and its deployed instance both run
//!   `tests/e2e/fixtures/attacker/attack.py`: internal ports without a credential, other
//!   processes' `/proc/*/environ`, the platform's state files and another service's private
//!   directory, PostgreSQL without a password, project files of the host above the work dir.
//! - From outside the platform's code (a plain Kafka client, as an instance could run): forged
//!   commands and facts (a deploy command, an `instance.started` pointing at the registry's
//!   internal port), which are dead-lettered with the reason and never applied.
//! - Through the API: SSRF through a health path, a replayed webhook delivery, credentials in
//!   repository URLs, and a token of another project.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use slipway_testkit::git::{Repo, example_dir};
use support::Stack;

const SECRET: &str = "security-suite-webhook-secret";
/// A secret config value of the victim service: it must never reach the attacker.
const VICTIM_SECRET: &str = "victim-api-key-5b0c1e7d9a";

/// Environment variables that hold the platform's own credentials.
const PLATFORM_ENV: [&str; 7] = [
    "SLIPWAY_SECRETS__KEY",
    "SLIPWAY_AUTH__BOOTSTRAP_TOKEN",
    "SLIPWAY_DATABASE__PASSWORD",
    "SLIPWAY_IDENTITY__CREDENTIAL",
    "SLIPWAY_SIGNING__KEY",
    "SLIPWAY_KAFKA__SASL_PASSWORD",
    "VICTIM_API_KEY",
];

fn quick_check() -> Value {
    json!({"interval_ms": 300, "timeout_ms": 500, "failure_threshold": 2, "grace_seconds": 10})
}

/// One attack's report line, as attack.py prints it.
#[derive(Debug)]
struct Report {
    attack: String,
    blocked: bool,
    detail: String,
}

fn reports(lines: impl Iterator<Item = Value>) -> Vec<Report> {
    lines
        .map(|v| Report {
            attack: v["attack"].as_str().unwrap().to_owned(),
            blocked: v["outcome"] == "blocked",
            detail: v["detail"].as_str().unwrap_or_default().to_owned(),
        })
        .collect()
}

/// Fails on any attack that succeeded; prints every reason, which is part of the point.
fn assert_all_blocked(where_: &str, reports: &[Report]) {
    assert!(
        reports.len() >= 15,
        "{where_}: only {} attacks reported: {reports:?}",
        reports.len()
    );
    for r in reports {
        println!(
            "{where_}: {} blocked={} ({})",
            r.attack, r.blocked, r.detail
        );
    }
    let succeeded: Vec<_> = reports.iter().filter(|r| !r.blocked).collect();
    assert!(
        succeeded.is_empty(),
        "{where_}: attacks succeeded: {succeeded:#?}"
    );
    for r in reports {
        assert!(
            !r.detail.is_empty(),
            "{where_}: {} gives no reason",
            r.attack
        );
    }
}

impl Stack {
    async fn register(&self, name: &str, repo: &Repo) {
        let body = json!({"name": name, "repository": repo.url, "webhook_secret": SECRET});
        let res = self.post("/v1/services", &self.admin_token, body).await;
        assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
        let res = reqwest::Client::new()
            .put(self.url("gateway", &format!("/v1/services/{name}/environments/dev")))
            .bearer_auth(&self.admin_token)
            .json(&json!({"target": "process"}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
    }

    /// Pushes the head of `repo`; answers the webhook's headers and body (for the replay) and
    /// the finished build.
    async fn push(&self, repo: &Repo) -> ((Vec<(&'static str, String)>, Vec<u8>), Value) {
        let (headers, body) = support::github_push(&repo.url, &repo.head(), SECRET);
        let res = self
            .webhook("/v1/webhooks/github", &headers, body.clone())
            .await;
        assert_eq!(res.status(), 202, "{}", res.text().await.unwrap());
        let answer: Value = res.json().await.unwrap();
        let id = answer["builds"][0]["id"].as_str().unwrap().to_owned();
        let build = self.build_finished(&id).await;
        ((headers, body), build)
    }

    async fn build_finished(&self, id: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(180);
        loop {
            let build: Value = self
                .get(&format!("/v1/builds/{id}"), &self.admin_token)
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
                "build {id} unfinished: {build}\n{}",
                self.log_text("builder")
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn build_lines(&self, id: &str) -> Vec<String> {
        let page: Value = self
            .get(&format!("/v1/builds/{id}/logs"), &self.admin_token)
            .await
            .json()
            .await
            .unwrap();
        page["lines"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l["line"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    async fn wait_release(&self, name: &str, n: u32) {
        let ok = slipway_testkit::wait_until(Duration::from_secs(60), || async {
            self.get(
                &format!("/v1/services/{name}/releases/v{n}"),
                &self.admin_token,
            )
            .await
            .status()
                == 200
        })
        .await;
        assert!(ok, "release v{n} of {name} never appeared");
    }

    async fn deploy_and_wait(&self, name: &str, body: Value) -> Value {
        let res = self
            .post(
                &format!("/v1/services/{name}/environments/dev/deployments"),
                &self.admin_token,
                body,
            )
            .await;
        let status = res.status();
        let answer: Value = res.json().await.unwrap();
        assert_eq!(status, 202, "{answer}");
        let id = answer["id"].as_str().unwrap().to_owned();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let d: Value = self
                .get(&format!("/v1/deployments/{id}"), &self.admin_token)
                .await
                .json()
                .await
                .unwrap();
            if matches!(
                d["status"].as_str(),
                Some("succeeded" | "failed" | "rolled_back" | "cancelled")
            ) {
                return d;
            }
            assert!(Instant::now() < deadline, "deployment {id}: {d}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn edge(&self, path: &str) -> (u16, String) {
        let res = reqwest::Client::new()
            .get(self.url("gateway", path))
            .send()
            .await
            .unwrap();
        (res.status().as_u16(), res.text().await.unwrap())
    }
}

/// The working directory of the first live instance process of `service`.
fn instance_dir(stack: &Stack, service_release_marker: &str) -> PathBuf {
    let (pid, _) = stack
        .instance_processes()
        .into_iter()
        .find(|(pid, _)| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .map(|e| {
                    e.split(|b| *b == 0)
                        .any(|v| v == service_release_marker.as_bytes())
                })
                .unwrap_or(false)
        })
        .expect("the victim's instance runs");
    std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap()
}

/// A repository with the attacker fixture and `targets` as targets.json.
fn attacker_repo(targets: &Value) -> Repo {
    let dir = std::env::temp_dir().join(format!("slipway-attacker-{}", slipway_testkit::unique()));
    std::fs::create_dir_all(&dir).unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/attacker");
    for entry in std::fs::read_dir(&fixture).unwrap().flatten() {
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), dir.join(entry.file_name())).unwrap();
        }
    }
    std::fs::write(
        dir.join("targets.json"),
        serde_json::to_vec_pretty(targets).unwrap(),
    )
    .unwrap();
    Repo::from_dir(&dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_build_and_instance_are_walled_off() {
    let stack = Stack::start().await;

    // The victim: an ordinary service with a secret in its config, running.
    let victim = Repo::from_dir(&example_dir("hello-python"));
    stack.register("victim", &victim).await;
    let res = reqwest::Client::new()
        .put(stack.url("gateway", "/v1/services/victim/environments/dev/config"))
        .bearer_auth(&stack.admin_token)
        .json(&json!({"vars": {}, "secrets": {"VICTIM_API_KEY": VICTIM_SECRET}}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    let (_, build) = stack.push(&victim).await;
    assert_eq!(build["status"], "succeeded", "{build}");
    stack.wait_release("victim", 1).await;
    let d = stack
        .deploy_and_wait(
            "victim",
            json!({"release": "v1", "replicas": 1, "health_check": quick_check()}),
        )
        .await;
    assert_eq!(d["status"], "succeeded", "{d}");
    let victim_dir = instance_dir(&stack, &format!("VICTIM_API_KEY={VICTIM_SECRET}"));

    // A platform credential on disk, readable by its owner only, as scripts/up keeps them.
    let token_file = stack.state_dir().join("admin-token");
    std::fs::write(&token_file, &stack.admin_token).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();

    let internal = json!({
        "registry": stack.port("registry"),
        "builder": stack.port("builder"),
        "deployer": stack.port("deployer"),
        "monitor": stack.port("monitor"),
    });
    let targets = json!({
        "internal": internal,
        "internal_paths": {
            "registry": ["/internal/v1/services/victim/environments/dev/config/latest",
                         "/v1/services", "/v1/discovery"],
            "builder": ["/v1/builds"],
            "deployer": ["/v1/deployments"],
            "monitor": ["/v1/services/victim/health"],
        },
        "platform_env_names": PLATFORM_ENV,
        "forbidden_files": [token_file, stack.log_file("registry")],
        "forbidden_dirs": [victim_dir],
        "postgres": stack.postgres_target(),
    });

    // 1. The build's test command attacks; the build itself goes on and succeeds.
    let attacker = attacker_repo(&targets);
    stack.register("attacker", &attacker).await;
    let (delivery, build) = stack.push(&attacker).await;
    assert_eq!(build["status"], "succeeded", "{build}");
    let lines = stack.build_lines(build["id"].as_str().unwrap()).await;
    let from_build = reports(
        lines
            .iter()
            .filter_map(|l| l.strip_prefix("ATTACK "))
            .map(|j| serde_json::from_str(j).unwrap()),
    );
    assert_all_blocked("build command", &from_build);
    assert!(
        !lines
            .iter()
            .any(|l| l.contains(VICTIM_SECRET) || l.contains(&stack.admin_token)),
        "a secret reached the build log"
    );
    stack.wait_release("attacker", 1).await;

    // 2. The deployed instance attacks; it still serves normally through the edge router.
    let d = stack
        .deploy_and_wait(
            "attacker",
            json!({"release": "v1", "replicas": 1, "health_check": quick_check()}),
        )
        .await;
    assert_eq!(d["status"], "succeeded", "{d}");
    let (status, body) = stack.edge("/apps/attacker/dev/").await;
    assert_eq!(
        (status, body.as_str()),
        (200, "attacker app serving normally")
    );
    let (status, body) = stack.edge("/apps/attacker/dev/attack").await;
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains(VICTIM_SECRET) && !body.contains(&stack.admin_token));
    let from_instance: Vec<Value> = serde_json::from_str(&body).unwrap();
    assert_all_blocked("instance", &reports(from_instance.into_iter()));
    let (status, _) = stack.edge("/apps/victim/dev/").await;
    assert_eq!(status, 200, "the victim keeps serving");

    // 3. Forged events from a plain Kafka client: dead-lettered with the reason, not applied.
    forged_events_are_refused(&stack).await;

    // 4. SSRF through a health path: refused where it enters, at the API and in slipway.toml.
    let res = stack
        .post(
            "/v1/services/attacker/environments/dev/deployments",
            &stack.admin_token,
            json!({"release": "v1", "health_check": {"path": "@169.254.169.254/latest/meta-data"}}),
        )
        .await;
    let status = res.status();
    let problem: Value = res.json().await.unwrap();
    assert_eq!(status, 422, "{problem}");
    assert!(problem.to_string().contains("path"), "{problem}");
    attacker.change(
        "slipway.toml",
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/attacker/slipway.toml"),
        )
        .unwrap()
        .replace(
            "health_path = \"/healthz\"",
            &format!(
                "health_path = \"@127.0.0.1:{}/internal/v1/services/victim/environments/dev/config/latest\"",
                stack.port("registry")
            ),
        ),
    );
    let (_, build) = stack.push(&attacker).await;
    assert_eq!(build["status"], "failed", "{build}");
    assert!(
        build.to_string().contains("health_path"),
        "the failure names the field: {build}"
    );

    // 5. A replayed webhook delivery makes no build.
    let builds_before = stack.count("builder.builds").await;
    let res = stack
        .webhook("/v1/webhooks/github", &delivery.0, delivery.1.clone())
        .await;
    let status = res.status();
    let answer = res.text().await.unwrap();
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("duplicate"), "{answer}");
    assert_eq!(stack.count("builder.builds").await, builds_before);

    // 6. Credentials in repository URLs are refused, and never echoed.
    for url in [
        "https://x-access-token:ghp_leak1234@github.com/acme/app.git",
        "https://ghp_leak1234@github.com/acme/app.git",
        "ssh://git:pass@example.com/acme/app.git",
    ] {
        let res = stack
            .post(
                "/v1/services",
                &stack.admin_token,
                json!({"name": "leaky", "repository": url}),
            )
            .await;
        let status = res.status();
        let text = res.text().await.unwrap();
        assert_eq!(status, 422, "{url}: {text}");
        assert!(
            !text.contains("ghp_leak1234") && !text.contains("pass@"),
            "{text}"
        );
    }

    // 7. A deployer of another project can neither see nor touch the victim.
    other_project_is_walled_off(&stack).await;
}

/// A forged deploy command (scale the victim to 0) and a forged `instance.started` for the
/// attacker at the registry's internal port, published with a plain client as an instance
/// could: both are dead-lettered with a reason and neither is applied.
async fn forged_events_are_refused(stack: &Stack) {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};

    let services: Value = stack
        .get("/v1/services", &stack.admin_token)
        .await
        .json()
        .await
        .unwrap();
    let id_of = |name: &str| {
        services
            .as_array()
            .or(services["items"].as_array())
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (victim, attacker) = (id_of("victim"), id_of("attacker"));
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &stack.kafka)
        .create()
        .unwrap();
    let deadletters =
        slipway_testkit::plain_consumer(&stack.kafka, &[&stack.topic("slipway.deadletter")]);
    let now = chrono::Utc::now().to_rfc3339();
    let forged = [
        (
            "slipway.commands",
            "/slipway/gateway",
            "dev.slipway.deploy.requested.v1",
            victim.clone(),
            json!({"kind": "scale", "service_id": victim, "service_name": "victim",
                   "environment": "dev", "replicas": 0, "requested_by": "attacker"}),
        ),
        (
            "slipway.instances",
            "/slipway/deployer",
            "dev.slipway.instance.started.v1",
            attacker.clone(),
            json!({"instance_id": "0190d1c4-0000-7000-8000-000000000001", "service_id": attacker,
                   "service_name": "attacker", "environment": "dev", "release": 1,
                   "address": format!("127.0.0.1:{}", stack.port("registry")),
                   "target": "process", "health_check": {}, "restarts": 0, "at": now}),
        ),
    ];
    let mut ids = Vec::new();
    for (topic, source, ty, key, data) in &forged {
        let id = uuid::Uuid::new_v4().to_string();
        let body = serde_json::to_vec(data).unwrap();
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "ce_specversion",
                value: Some("1.0"),
            })
            .insert(Header {
                key: "ce_id",
                value: Some(&id),
            })
            .insert(Header {
                key: "ce_source",
                value: Some(*source),
            })
            .insert(Header {
                key: "ce_type",
                value: Some(*ty),
            })
            .insert(Header {
                key: "ce_time",
                value: Some(&now),
            })
            .insert(Header {
                key: "content-type",
                value: Some("application/json"),
            });
        producer
            .send(
                FutureRecord::to(&stack.topic(topic))
                    .key(key)
                    .payload(&body)
                    .headers(headers),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
        ids.push(id);
    }

    // Each forged id reaches the dead-letter topic with a reason about its signature.
    let mut reasons = std::collections::HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let all_seen = |reasons: &std::collections::HashMap<(String, String), String>| {
        ids.iter().all(|id| reasons.keys().any(|(i, _)| i == id))
    };
    while !all_seen(&reasons) && Instant::now() < deadline {
        use rdkafka::Message;
        let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(5), deadletters.recv()).await
        else {
            continue;
        };
        let m = m.detach();
        let id = slipway_testkit::header(&m, "ce_id").unwrap_or_default();
        if ids.contains(&id) {
            let group = slipway_testkit::header(&m, "slipway_dlq_group").unwrap_or_default();
            let reason = slipway_testkit::header(&m, "slipway_dlq_reason").unwrap_or_default();
            let _ = m.topic();
            reasons.insert((id, group), reason);
        }
    }
    assert!(!reasons.is_empty(), "no forged event was dead-lettered");
    for id in &ids {
        let mine: Vec<_> = reasons.iter().filter(|((i, _), _)| i == id).collect();
        assert!(
            !mine.is_empty(),
            "forged {id} was not dead-lettered: {reasons:?}"
        );
        for (_, reason) in mine {
            assert!(reason.contains("signature"), "{id}: {reason}");
            println!("forged event {id}: dead-lettered: {reason}");
        }
    }

    // Not applied: the victim still runs, the edge never reaches the registry's port.
    let state: Value = stack
        .get(
            "/v1/services/victim/environments/dev/state",
            &stack.admin_token,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(state["instances"].as_array().unwrap().len(), 1, "{state}");
    for _ in 0..20 {
        let (status, body) = stack.edge("/apps/attacker/dev/").await;
        assert_eq!(
            (status, body.as_str()),
            (200, "attacker app serving normally")
        );
    }
}

async fn other_project_is_walled_off(stack: &Stack) {
    let res = stack
        .post("/v1/projects", &stack.admin_token, json!({"name": "other"}))
        .await;
    assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
    let res = stack
        .post(
            "/v1/tokens",
            &stack.admin_token,
            json!({"name": "other-deployer", "project": "other", "role": "deployer"}),
        )
        .await;
    assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
    let token: Value = res.json().await.unwrap();
    let token = token["token"].as_str().unwrap();
    let res = stack.get("/v1/services/victim", token).await;
    assert_eq!(res.status(), 404, "{}", res.text().await.unwrap());
    let res = reqwest::Client::new()
        .put(stack.url("gateway", "/v1/services/victim/environments/dev/scale"))
        .bearer_auth(token)
        .json(&json!({"replicas": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404, "{}", res.text().await.unwrap());
    let listed = stack.get("/v1/services", token).await.text().await.unwrap();
    assert!(!listed.contains("victim"), "{listed}");
}
