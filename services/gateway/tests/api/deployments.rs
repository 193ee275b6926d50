//! The deploy API's commands: what reaches the command topic, and what is refused (leaving
//! nothing behind). The registry, deployer and monitor are stand-ins (`stand_in.rs`).

use std::time::Duration;

use rdkafka::Message;
use serde_json::{Value, json};
use slipway_events::Topic;
use slipway_testkit::{header, next_of_type, plain_consumer};

use crate::helpers::{TestApp, problem, spawn_with_stand_ins};
use crate::stand_in::StandIn;

pub(crate) const SERVICE_ID: &str = "0190f5a4-7b9e-7c3a-8000-00000000c0de";
const DEPLOY: &str = "dev.slipway.deploy.requested.v1";
const CANCEL: &str = "dev.slipway.deploy.cancel-requested.v1";

pub(crate) struct Setup {
    pub app: TestApp,
    pub registry: StandIn,
    pub deployer: StandIn,
    pub monitor: StandIn,
}

/// A gateway before stand-ins: the registry knows service `web` with environment `prod`
/// (config versions up to 4) and releases v1 and v2.
pub(crate) async fn setup() -> Setup {
    let registry = StandIn::start().await;
    let deployer = StandIn::start().await;
    let monitor = StandIn::start().await;
    registry.answer(
        "GET",
        "/v1/services/web",
        200,
        json!({"id": SERVICE_ID, "name": "web", "project": "default", "repository": null, "branch": "main", "created_at": "2026-12-01T10:00:00Z"}),
    );
    registry.answer(
        "GET",
        "/v1/services/web/environments",
        200,
        json!({"items": [{"name": "prod", "target": "process", "config_version": 4}]}),
    );
    // What a deployment request checks: its one environment (any other is unknown: 404).
    registry.answer(
        "GET",
        "/v1/services/web/environments/prod",
        200,
        json!({"name": "prod", "target": "process", "config_version": 4}),
    );
    for n in [1, 2] {
        registry.answer(
            "GET",
            &format!("/v1/services/web/releases/{n}"),
            200,
            json!({"number": n, "version": format!("v{n}")}),
        );
    }
    let app = spawn_with_stand_ins(&registry, &deployer, &monitor).await;
    Setup {
        app,
        registry,
        deployer,
        monitor,
    }
}

impl Setup {
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> reqwest::Response {
        let mut req = self
            .app
            .client
            .request(method, self.app.url(path))
            .bearer_auth(token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        req.send().await.unwrap()
    }

    pub async fn post(&self, path: &str, token: &str, body: Value) -> reqwest::Response {
        self.send(reqwest::Method::POST, path, token, Some(body))
            .await
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.send(reqwest::Method::GET, path, &self.app.admin_token, None)
            .await
    }

    /// Rows of the outbox holding events of type `ty`.
    async fn enqueued(&self, ty: &str) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE event_type = $1")
            .bind(ty)
            .fetch_one(&self.app.pool)
            .await
            .unwrap()
    }

    fn commands(&self) -> rdkafka::consumer::StreamConsumer {
        plain_consumer(
            &self.app.kafka.bootstrap_servers,
            &[&self.app.kafka.topics().name(Topic::Commands)],
        )
    }
}

/// The next record of type `ty`: its key, subject and JSON body.
async fn next(
    consumer: &rdkafka::consumer::StreamConsumer,
    ty: &str,
) -> (String, Option<String>, Value) {
    let m = next_of_type(consumer, ty, Duration::from_secs(30))
        .await
        .unwrap_or_else(|| panic!("no {ty} on the commands topic"));
    let key = String::from_utf8(m.key().unwrap().to_vec()).unwrap();
    let data = serde_json::from_slice(m.payload().unwrap()).unwrap();
    (key, header(&m, "ce_subject"), data)
}

/// A 202 for a deployment: its id, after checking the answer's shape.
pub(crate) async fn accepted(res: reqwest::Response, kind: &str) -> String {
    assert_eq!(res.status(), 202);
    let location = res.headers()["location"].to_str().unwrap().to_owned();
    let body: Value = res.json().await.unwrap();
    let id = body["id"].as_str().unwrap().to_owned();
    assert_eq!(location, format!("/v1/deployments/{id}"));
    assert_eq!(body["url"], location);
    assert_eq!(body["kind"], kind);
    assert_eq!(body["status"], "requested");
    id
}

pub(crate) const DEPLOYMENTS: &str = "/v1/services/web/environments/prod/deployments";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_deploy_becomes_exactly_one_command_and_reads_as_requested() {
    let s = setup().await;
    let token = s.app.token("deployer").await;
    let res = s
        .post(
            DEPLOYMENTS,
            &token,
            json!({
                "release": "v2",
                "strategy": {"type": "canary", "steps": [{"weight": 20, "pause_seconds": 10}, {"weight": 50}]},
                "replicas": 3,
                "config_version": 4,
                "health_check": {"path": "/ready", "interval_ms": 500},
                "step_timeout_seconds": 120,
                "auto_rollback": false
            }),
        )
        .await;
    let id = accepted(res, "deploy").await;

    let consumer = s.commands();
    let (key, subject, data) = next(&consumer, DEPLOY).await;
    assert_eq!(key, SERVICE_ID);
    assert_eq!(subject.as_deref(), Some(id.as_str()));
    assert_eq!(data["deployment_id"], id);
    assert_eq!(data["kind"], "deploy");
    assert_eq!(data["service_id"], SERVICE_ID);
    assert_eq!(data["service_name"], "web");
    assert_eq!(data["project"], "default", "commands name the project");
    assert_eq!(data["environment"], "prod");
    assert_eq!(data["release"], 2);
    assert_eq!(
        data["strategy"],
        json!({"type": "canary", "steps": [{"weight": 20, "pause_seconds": 10}, {"weight": 50, "pause_seconds": 0}]})
    );
    assert_eq!(data["replicas"], 3);
    assert_eq!(data["config_version"], 4);
    assert_eq!(data["health_check"]["path"], "/ready");
    assert_eq!(data["health_check"]["interval_ms"], 500);
    assert_eq!(data["step_timeout_seconds"], 120);
    assert_eq!(data["auto_rollback"], false);
    assert_eq!(data["actor"], "deployer-test");
    assert_eq!(s.enqueued(DEPLOY).await, 1, "exactly one command");
    let (kind, env): (String, Option<String>) =
        sqlx::query_as("SELECT kind, environment FROM operations")
            .fetch_one(&s.app.pool)
            .await
            .unwrap();
    assert_eq!((kind.as_str(), env.as_deref()), ("deploy", Some("prod")));

    // The deployer has not picked it up (its stand-in answers 404): the gateway says so.
    let got: Value = s
        .get(&format!("/v1/deployments/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        got,
        json!({"id": id, "kind": "deploy", "status": "requested", "service": "web",
               "environment": "prod", "requested_at": got["requested_at"]})
    );
    assert!(
        s.deployer
            .seen()
            .contains(&format!("GET /v1/deployments/{id}"))
    );
    // Once it has, its answer is the one shown.
    s.deployer.answer(
        "GET",
        &format!("/v1/deployments/{id}"),
        200,
        json!({"id": id, "status": "running", "steps": []}),
    );
    let got: Value = s
        .get(&format!("/v1/deployments/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(got["status"], "running");
    // An id no one knows is the deployer's 404, passed through.
    let unknown = "0190f5a4-7b9e-7c3a-8000-000000000001";
    problem(s.get(&format!("/v1/deployments/{unknown}")).await, 404).await;
    problem(s.get("/v1/deployments/not-an-id").await, 404).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_deploys_are_refused_naming_the_problem_and_leave_nothing() {
    let s = setup().await;
    let admin = s.app.admin_token.clone();
    // (path, body, status, field named in `errors` or text in `detail`)
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        (
            DEPLOYMENTS,
            json!({"release": 2, "strategy": {"type": "yolo"}}),
            422,
            "strategy",
        ),
        (
            DEPLOYMENTS,
            json!({"release": 2, "strategy": {"type": "rolling", "surge": 1}}),
            422,
            "strategy",
        ),
        (
            DEPLOYMENTS,
            json!({"release": 2, "strategy": {"type": "rolling", "max_surge": 0, "max_unavailable": 0}}),
            422,
            "strategy.max_surge",
        ),
        (
            DEPLOYMENTS,
            json!({"release": 2, "strategy": {"type": "canary", "steps": [{"weight": 50}, {"weight": 20}]}}),
            422,
            "strategy.steps",
        ),
        (
            DEPLOYMENTS,
            json!({"release": 2, "colour": "blue"}),
            422,
            "colour",
        ),
        (
            DEPLOYMENTS,
            json!({"strategy": {"type": "recreate"}}),
            422,
            "release",
        ),
        (DEPLOYMENTS, json!({"release": "latest"}), 422, "release"),
        (
            DEPLOYMENTS,
            json!({"release": 2, "replicas": 101}),
            422,
            "replicas",
        ),
        (
            DEPLOYMENTS,
            json!({"release": 2, "replicas": -1}),
            422,
            "replicas",
        ),
        (
            DEPLOYMENTS,
            json!({"release": 2, "step_timeout_seconds": 0}),
            422,
            "step_timeout_seconds",
        ),
        (
            DEPLOYMENTS,
            json!({"release": 2, "step_timeout_seconds": 3601}),
            422,
            "step_timeout_seconds",
        ),
        (
            DEPLOYMENTS,
            json!({"release": 2, "health_check": {"interval_ms": 10}}),
            422,
            "health_check.interval_ms",
        ),
        // A path that would name another host (the cloud metadata service) when pasted after
        // the instance's address.
        (
            DEPLOYMENTS,
            json!({"release": 2, "health_check": {"path": "@169.254.169.254/latest"}}),
            422,
            "health_check.path",
        ),
        (
            DEPLOYMENTS,
            json!({"release": 2, "health_check": {"path": "//169.254.169.254/latest"}}),
            422,
            "health_check.path",
        ),
        (
            DEPLOYMENTS,
            json!({"release": 2, "health_check": {"kind": "udp"}}),
            422,
            "health_check",
        ),
        (
            DEPLOYMENTS,
            json!({"release": 2, "config_version": 5}),
            422,
            "config_version",
        ),
        (
            DEPLOYMENTS,
            json!({"release": 2, "config_version": 0}),
            422,
            "config_version",
        ),
        // Passes every check of its own; the registry has no such release.
        (DEPLOYMENTS, json!({"release": "v9"}), 422, "release"),
        (
            "/v1/services/web/environments/staging/deployments",
            json!({"release": 2}),
            404,
            "PUT /v1/services/web/environments/staging",
        ),
        (
            "/v1/services/nope/environments/prod/deployments",
            json!({"release": 2}),
            404,
            "nope",
        ),
        (
            "/v1/services/web/environments/Prod/deployments",
            json!({"release": 2}),
            404,
            "Prod",
        ),
        (
            "/v1/services/web/environments/prod/rollback",
            json!({"release": "v9"}),
            422,
            "release",
        ),
        (
            "/v1/services/web/environments/prod/rollback",
            json!({"to": 1}),
            422,
            "unknown field `to`",
        ),
        (
            "/v1/services/web/environments/staging/rollback",
            json!({}),
            404,
            "staging",
        ),
    ];
    for (path, body, status, named) in cases {
        let p = problem(s.post(path, &admin, body.clone()).await, status).await;
        let field = p["errors"][0]["field"].as_str().unwrap_or_default();
        assert!(
            field == named || p["detail"].as_str().unwrap().contains(named),
            "{path} {body}: expected {named} named in {p}"
        );
    }
    let scale = "/v1/services/web/environments/prod/scale";
    for (body, field) in [
        (json!({"replicas": 101}), "replicas"),
        (json!({"replicas": -2}), "replicas"),
        (json!({}), "replicas"),
    ] {
        let res = s
            .send(reqwest::Method::PUT, scale, &admin, Some(body.clone()))
            .await;
        let p = problem(res, 422).await;
        assert!(p.to_string().contains(field), "{body}: {p}");
    }
    // Not JSON at all.
    let res = s
        .app
        .client
        .post(s.app.url(DEPLOYMENTS))
        .bearer_auth(&admin)
        .header("content-type", "application/json")
        .body("{\"release\":")
        .send()
        .await
        .unwrap();
    problem(res, 400).await;
    let res = s
        .app
        .client
        .post(s.app.url("/v1/services/web/environments/prod/rollback"))
        .bearer_auth(&admin)
        .body("{oops")
        .send()
        .await
        .unwrap();
    problem(res, 400).await;

    assert_eq!(s.app.count("operations").await, 0, "no operation recorded");
    assert_eq!(s.app.count("outbox").await, 0, "no event enqueued");
    // And nothing reached the topic: the first deploy command there is the next valid one.
    let id = accepted(
        s.post(DEPLOYMENTS, &admin, json!({"release": 1})).await,
        "deploy",
    )
    .await;
    let (_, _, data) = next(&s.commands(), DEPLOY).await;
    assert_eq!(data["deployment_id"], id);
    assert_eq!(
        data["strategy"],
        json!({"type": "rolling", "max_surge": 1, "max_unavailable": 0})
    );
    assert_eq!(data["replicas"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_and_scale_become_commands_of_their_kind() {
    let s = setup().await;
    let admin = s.app.admin_token.clone();
    let consumer = s.commands();

    let to_v1 = accepted(
        s.post(
            "/v1/services/web/environments/prod/rollback",
            &admin,
            json!({"release": "v1"}),
        )
        .await,
        "rollback",
    )
    .await;
    // No body at all: the release before the current one, which the deployer resolves.
    let res = s
        .send(
            reqwest::Method::POST,
            "/v1/services/web/environments/prod/rollback",
            &admin,
            None,
        )
        .await;
    let previous = accepted(res, "rollback").await;
    let scaled = accepted(
        s.send(
            reqwest::Method::PUT,
            "/v1/services/web/environments/prod/scale",
            &admin,
            Some(json!({"replicas": 5})),
        )
        .await,
        "scale",
    )
    .await;

    let (key, _, data) = next(&consumer, DEPLOY).await;
    assert_eq!(key, SERVICE_ID);
    assert_eq!(
        (
            data["deployment_id"].as_str(),
            &data["kind"],
            &data["release"]
        ),
        (Some(to_v1.as_str()), &json!("rollback"), &json!(1))
    );
    let (_, _, data) = next(&consumer, DEPLOY).await;
    assert_eq!(
        (
            data["deployment_id"].as_str(),
            &data["kind"],
            &data["release"]
        ),
        (Some(previous.as_str()), &json!("rollback"), &Value::Null)
    );
    let (_, _, data) = next(&consumer, DEPLOY).await;
    assert_eq!(data["deployment_id"], scaled);
    assert_eq!(data["kind"], "scale");
    assert_eq!(data["replicas"], 5);
    assert_eq!(data["release"], Value::Null);
    assert_eq!(data["environment"], "prod");

    let kinds: Vec<String> = sqlx::query_scalar("SELECT kind FROM operations ORDER BY id")
        .fetch_all(&s.app.pool)
        .await
        .unwrap();
    assert_eq!(kinds, ["rollback", "rollback", "scale"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_needs_a_deployment_the_gateway_accepted() {
    let s = setup().await;
    let admin = s.app.admin_token.clone();
    let unknown = "0190f5a4-7b9e-7c3a-8000-000000000001";
    problem(
        s.post(
            &format!("/v1/deployments/{unknown}/cancel"),
            &admin,
            json!({}),
        )
        .await,
        404,
    )
    .await;
    problem(
        s.post("/v1/deployments/nope/cancel", &admin, json!({}))
            .await,
        404,
    )
    .await;
    assert_eq!(s.app.count("outbox").await, 0);

    let id = accepted(
        s.post(DEPLOYMENTS, &admin, json!({"release": 2})).await,
        "deploy",
    )
    .await;
    let res = s
        .post(&format!("/v1/deployments/{id}/cancel"), &admin, json!({}))
        .await;
    assert_eq!(res.status(), 202);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["id"], id);
    assert_eq!(body["status"], "cancel_requested");

    let (key, subject, data) = next(&s.commands(), CANCEL).await;
    assert_eq!(key, SERVICE_ID);
    assert_eq!(subject.as_deref(), Some(id.as_str()));
    assert_eq!(data["deployment_id"], id);
    assert_eq!(data["service_id"], SERVICE_ID);
    assert_eq!(data["project"], "default");
    assert_eq!(data["actor"], "bootstrap admin");
    let cancels: Option<uuid::Uuid> =
        sqlx::query_scalar("SELECT cancels FROM operations WHERE kind = 'cancel'")
            .fetch_one(&s.app.pool)
            .await
            .unwrap();
    assert_eq!(cancels.map(|c| c.to_string()), Some(id.clone()));
    // A cancel is not itself something to cancel.
    let (cancel_id,): (uuid::Uuid,) =
        sqlx::query_as("SELECT id FROM operations WHERE kind = 'cancel'")
            .fetch_one(&s.app.pool)
            .await
            .unwrap();
    problem(
        s.post(
            &format!("/v1/deployments/{cancel_id}/cancel"),
            &admin,
            json!({}),
        )
        .await,
        404,
    )
    .await;
    assert_eq!(s.enqueued(CANCEL).await, 1);
}
