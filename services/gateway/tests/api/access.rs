//! The authorisation matrix, generated from the rule table (`auth/rules.rs`): every route ×
//! {viewer, deployer, admin of project `own`, platform admin, no token} × {a thing in `own`, a
//! thing in `other`}, each with the answer the policy below implies. The upstreams are
//! stand-ins that answer every forwarded call, so an allowed request answers 2xx and a refusal
//! is the guard's.
//!
//! The expected answers do not come from the rule table but from [`policy`], the security
//! conventions stated once here: a rule that loosens them fails, as does a route registered in
//! `src/routes/*.rs` without a rule, a rule without a route, or a rule without a sample request.

use std::collections::BTreeSet;

use serde_json::{Value, json};
use slipway_gateway::auth::Role;
use slipway_gateway::auth::rules::{Access, RULES, Rule};
use slipway_gateway::startup::UpstreamSettings;

use crate::helpers::{TestApp, problem, start_gateway};
use crate::stand_in::StandIn;

/// Which project the thing a request names is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Own,
    Other,
}

impl Side {
    fn project(self) -> &'static str {
        match self {
            Side::Own => "own",
            Side::Other => "other",
        }
    }
}

/// Who calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    /// A token with this role in `own` (and none in `other`).
    Granted(Role),
    PlatformAdmin,
    Anonymous,
}

const CALLERS: [Who; 5] = [
    Who::Granted(Role::Viewer),
    Who::Granted(Role::Deployer),
    Who::Granted(Role::Admin),
    Who::PlatformAdmin,
    Who::Anonymous,
];

/// The answer a rule implies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// The handler ran and succeeded (2xx).
    Allowed,
    Unauthorized,
    Forbidden,
    /// 404: the thing is in a project the caller has no role in.
    Hidden,
    /// Whatever the handler says, the same for every caller (public routes).
    Unchecked,
}

/// What a route should need, from conventions rather than from the rule table: webhooks are
/// signed instead; tokens, the whole audit log, new projects and everything under `/v1/admin/`
/// are the platform admins'; the two top-level lists are anyone's (filtered); a project's grants
/// and audit log, and a service's webhook secret rotation, are its admins'; everything else is
/// about a thing in a project: reads need `viewer` there, changes
/// `deployer`.
fn policy(method: &str, pattern: &str) -> Policy {
    match (method, pattern) {
        (_, p) if p.starts_with("/v1/webhooks/") => Policy::Public,
        (_, p) if p.starts_with("/v1/tokens") || p == "/v1/audit" => Policy::PlatformAdmin,
        (_, p) if p.starts_with("/v1/admin/") => Policy::PlatformAdmin,
        ("POST", "/v1/projects") => Policy::PlatformAdmin,
        ("GET", "/v1/services" | "/v1/projects") => Policy::Authenticated,
        (_, p) if p.starts_with("/v1/projects/{project}/") => Policy::Project(Role::Admin),
        // Whoever rotates a webhook secret sees the new one: as for a project's grants, admins.
        ("POST", "/v1/services/{name}/webhook-secret") => Policy::Project(Role::Admin),
        ("GET", _) => Policy::Project(Role::Viewer),
        _ => Policy::Project(Role::Deployer),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Policy {
    Public,
    Authenticated,
    PlatformAdmin,
    Project(Role),
}

impl From<Access> for Policy {
    fn from(access: Access) -> Self {
        match access {
            Access::Public => Policy::Public,
            Access::Authenticated => Policy::Authenticated,
            Access::PlatformAdmin => Policy::PlatformAdmin,
            Access::Project(role, _) => Policy::Project(role),
        }
    }
}

fn expected(policy: Policy, who: Who, side: Side) -> Expect {
    match (policy, who) {
        (Policy::Public, _) => Expect::Unchecked,
        (_, Who::Anonymous) => Expect::Unauthorized,
        (Policy::Authenticated, _) | (_, Who::PlatformAdmin) => Expect::Allowed,
        (Policy::PlatformAdmin, _) => Expect::Forbidden,
        (Policy::Project(_), Who::Granted(_)) if side == Side::Other => Expect::Hidden,
        (Policy::Project(needed), Who::Granted(has)) if has >= needed => Expect::Allowed,
        (Policy::Project(_), Who::Granted(_)) => Expect::Forbidden,
    }
}

#[test]
fn every_rule_follows_the_policy() {
    let loose: Vec<String> = RULES
        .iter()
        .filter(|r| Policy::from(r.access) != policy(r.method, r.pattern))
        .map(|r| {
            let want = policy(r.method, r.pattern);
            format!(
                "{} {}: {:?}, the policy says {want:?}",
                r.method, r.pattern, r.access
            )
        })
        .collect();
    assert!(loose.is_empty(), "{}", loose.join("\n"));
}

/// The gateway, its stand-ins, the callers' tokens and one build and deployment per project.
struct Fixture {
    app: TestApp,
    builder: StandIn,
    deployer: StandIn,
    _registry: StandIn,
    _monitor: StandIn,
    tokens: Vec<(Who, Option<String>)>,
    /// A token whose grants the grant routes change (never one of the callers).
    subject: String,
    builds: [String; 2],
    deployments: [String; 2],
}

fn service(side: Side) -> String {
    format!("web-{}", side.project())
}

fn index(side: Side) -> usize {
    usize::from(side == Side::Other)
}

impl Fixture {
    async fn start() -> Self {
        let registry = StandIn::start().await;
        let builder = StandIn::start().await;
        let deployer = StandIn::start().await;
        let monitor = StandIn::start().await;
        let ok = json!({});
        let items = json!({"items": [], "next": null});
        registry.answer("GET", "/v1/services", 200, items.clone());
        for side in [Side::Own, Side::Other] {
            let name = service(side);
            let base = format!("/v1/services/{name}");
            let id = uuid::Uuid::now_v7();
            for method in ["PUT", "DELETE"] {
                builder.answer(
                    method,
                    &format!("/v1/services/{id}/clone-credential"),
                    200,
                    ok.clone(),
                );
            }
            let svc = json!({"id": id, "name": name, "project": side.project(),
                             "repository": "https://git.example/web.git", "branch": "main",
                             "created_at": "2026-12-01T10:00:00Z"});
            registry.answer("GET", &base, 200, svc);
            for path in [
                "/releases",
                "/releases/1",
                "/environments/prod/config",
                "/instances",
            ] {
                registry.answer("GET", &format!("{base}{path}"), 200, ok.clone());
            }
            registry.answer(
                "GET",
                &format!("{base}/environments"),
                200,
                json!({"items": [{"name": "prod", "config_version": 4}]}),
            );
            registry.answer(
                "GET",
                &format!("{base}/environments/prod"),
                200,
                json!({"name": "prod", "config_version": 4}),
            );
            for path in ["/environments/prod", "/environments/prod/config"] {
                registry.answer("PUT", &format!("{base}{path}"), 200, ok.clone());
            }
            for path in ["/deployments", "/state"] {
                deployer.answer(
                    "GET",
                    &format!("{base}/environments/prod{path}"),
                    200,
                    items.clone(),
                );
            }
            deployer.answer(
                "PUT",
                &format!("{base}/environments/prod/policy"),
                200,
                ok.clone(),
            );
            monitor.answer("GET", &format!("{base}/health"), 200, items.clone());
            monitor.answer(
                "GET",
                &format!("{base}/environments/prod/logs"),
                200,
                items.clone(),
            );
        }
        registry.answer(
            "POST",
            "/v1/services",
            201,
            json!({"id": uuid::Uuid::now_v7(), "name": "created", "project": "own",
                   "repository": null, "branch": "main", "created_at": "2026-12-01T10:00:00Z"}),
        );
        builder.answer("GET", "/v1/builds", 200, items.clone());
        builder.answer(
            "POST",
            "/v1/sources",
            201,
            json!({"id": uuid::Uuid::now_v7()}),
        );

        let base = slipway_testkit::base_settings("gateway").await;
        let upstreams = UpstreamSettings {
            registry: registry.url.clone(),
            builder: builder.url.clone(),
            deployer: deployer.url.clone(),
            monitor: monitor.url.clone(),
            timeout_seconds: 5,
            connect_timeout_seconds: 3,
        };
        let app = start_gateway(base, upstreams, Vec::new()).await;
        let mut fx = Fixture {
            subject: String::new(),
            tokens: Vec::new(),
            builds: Default::default(),
            deployments: Default::default(),
            app,
            builder,
            deployer,
            _registry: registry,
            _monitor: monitor,
        };
        for project in ["own", "other"] {
            fx.admin(
                reqwest::Method::POST,
                "/v1/projects",
                json!({"name": project}),
            )
            .await;
        }
        for who in CALLERS {
            let token = match who {
                Who::Granted(role) => Some(fx.new_token(Some(role)).await.0),
                Who::PlatformAdmin => Some(fx.app.admin_token.clone()),
                Who::Anonymous => None,
            };
            fx.tokens.push((who, token));
        }
        fx.subject = fx.new_token(None).await.1;
        for side in [Side::Own, Side::Other] {
            let name = service(side);
            let build = fx
                .admin(
                    reqwest::Method::POST,
                    &format!("/v1/services/{name}/builds"),
                    json!({}),
                )
                .await["id"]
                .as_str()
                .unwrap()
                .to_owned();
            let owned = json!({"id": build, "service_name": name, "status": "running",
                               "finished": false, "lines": []});
            let path = format!("/v1/builds/{build}");
            fx.builder.answer("GET", &path, 200, owned.clone());
            fx.builder
                .answer("GET", &format!("{path}/logs"), 200, owned.clone());
            fx.builder
                .answer("POST", &format!("{path}/cancel"), 202, owned);
            fx.builds[index(side)] = build;
            let deploy = format!("/v1/services/{name}/environments/prod/deployments");
            let id = fx
                .admin(reqwest::Method::POST, &deploy, json!({"release": 1}))
                .await["id"]
                .as_str()
                .unwrap()
                .to_owned();
            let owned = json!({"id": id, "service_name": name, "status": "progressing"});
            fx.deployer
                .answer("GET", &format!("/v1/deployments/{id}"), 200, owned);
            fx.deployments[index(side)] = id;
        }
        fx
    }

    /// A platform admin call that must succeed; its JSON answer.
    async fn admin(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let res = self
            .app
            .client
            .request(method, self.app.url(path))
            .bearer_auth(&self.app.admin_token)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(res.status().is_success(), "{path}: {}", res.status());
        res.json().await.unwrap_or(Value::Null)
    }

    /// A new token, with `role` in `own` if given: (token, id).
    async fn new_token(&self, role: Option<Role>) -> (String, String) {
        let mut body = json!({"name": format!("{role:?}")});
        if let Some(role) = role {
            body["role"] = json!(role.as_str());
            body["project"] = json!("own");
        }
        let created = self.admin(reqwest::Method::POST, "/v1/tokens", body).await;
        let token = created["token"].as_str().unwrap().to_owned();
        (token, created["id"].as_str().unwrap().to_owned())
    }

    /// The request that exercises `rule` on a thing in `side`'s project: path and body.
    async fn sample(&self, rule: &Rule, side: Side) -> (String, Option<Body>) {
        let mut path = rule.pattern.to_owned();
        let token_id = if rule.pattern == "/v1/tokens/{id}" {
            self.new_token(None).await.1 // revoked by an allowed call: a fresh one each time
        } else {
            self.subject.clone()
        };
        // Replayed by an allowed call: a fresh dead letter each time.
        let dead_letter = if rule.pattern.starts_with("/v1/admin/dead-letters/") {
            crate::dead_letters::insert_sample(&self.app)
                .await
                .to_string()
        } else {
            String::new()
        };
        let id = if rule.pattern.starts_with("/v1/builds/") {
            &self.builds[index(side)]
        } else if rule.pattern.starts_with("/v1/deployments/") {
            &self.deployments[index(side)]
        } else if rule.pattern.starts_with("/v1/admin/dead-letters/") {
            &dead_letter
        } else {
            &token_id
        };
        for (param, value) in [
            ("{name}", service(side).as_str()),
            ("{env}", "prod"),
            ("{n}", "1"),
            ("{project}", side.project()),
            ("{token_id}", token_id.as_str()),
            ("{id}", id.as_str()),
        ] {
            path = path.replace(param, value);
        }
        assert!(
            !path.contains('{'),
            "no value for a parameter of {path}; add one here"
        );
        if rule.method == "DELETE" && rule.pattern.contains("/grants/") {
            // Something to take away, in either project.
            let grant = format!("/v1/projects/{}/grants/{}", side.project(), self.subject);
            self.admin(reqwest::Method::PUT, &grant, json!({"role": "viewer"}))
                .await;
        }
        let unique = slipway_testkit::unique();
        let body = match (rule.method, rule.pattern) {
            ("GET" | "DELETE", _) => None,
            ("POST", "/v1/services") => Some(Body::Json(
                json!({"name": format!("s{unique}"), "project": side.project()}),
            )),
            ("POST", "/v1/services/{name}/builds") => Some(Body::Json(json!({}))),
            ("PUT", "/v1/services/{name}/clone-credential") => {
                Some(Body::Json(json!({"token": "a-clone-token"})))
            }
            ("POST", "/v1/services/{name}/sources") => Some(Body::Bytes(vec![0x1f, 0x8b, 0, 0])),
            ("POST", "/v1/services/{name}/environments/{env}/deployments") => {
                Some(Body::Json(json!({"release": 1})))
            }
            ("POST", "/v1/services/{name}/environments/{env}/rollback") => {
                Some(Body::Json(json!({})))
            }
            ("PUT", "/v1/services/{name}/environments/{env}/scale") => {
                Some(Body::Json(json!({"replicas": 2})))
            }
            ("PUT", "/v1/services/{name}/environments/{env}") => {
                Some(Body::Json(json!({"target": "process"})))
            }
            ("PUT", "/v1/services/{name}/environments/{env}/config") => {
                Some(Body::Json(json!({"vars": {"A": "1"}})))
            }
            ("PUT", "/v1/services/{name}/environments/{env}/policy") => {
                Some(Body::Json(json!({"auto_deploy": true})))
            }
            ("POST", "/v1/builds/{id}/cancel" | "/v1/deployments/{id}/cancel") => None,
            ("POST", "/v1/admin/dead-letters/{id}/replay") => None,
            ("POST", "/v1/services/{name}/webhook-secret") => None,
            ("POST", "/v1/webhooks/github" | "/v1/webhooks/gitlab") => {
                Some(Body::Json(json!({"ref": "refs/heads/main"})))
            }
            ("POST", "/v1/projects") => Some(Body::Json(json!({"name": format!("p{unique}")}))),
            ("PUT", "/v1/projects/{project}/grants/{token_id}") => {
                Some(Body::Json(json!({"role": "deployer"})))
            }
            ("POST", "/v1/tokens") => Some(Body::Json(json!({"name": "made"}))),
            (method, pattern) => {
                panic!("no sample request for {method} {pattern}: add one to tests/api/access.rs")
            }
        };
        (path, body)
    }
}

enum Body {
    Json(Value),
    Bytes(Vec<u8>),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_each_role_in_each_project_as_its_rule_says() {
    let fx = Fixture::start().await;
    let mut failures = Vec::new();
    for rule in RULES {
        for side in [Side::Own, Side::Other] {
            let mut public_answers = BTreeSet::new();
            for (who, token) in &fx.tokens {
                let (path, body) = fx.sample(rule, side).await;
                let method = reqwest::Method::from_bytes(rule.method.as_bytes()).unwrap();
                let mut req = fx.app.client.request(method, fx.app.url(&path));
                if let Some(token) = token {
                    req = req.bearer_auth(token);
                }
                req = match body {
                    Some(Body::Json(v)) => req.json(&v),
                    Some(Body::Bytes(b)) => req.body(b),
                    None => req,
                };
                let status = req.send().await.unwrap().status().as_u16();
                let want = expected(policy(rule.method, rule.pattern), *who, side);
                let ok = match want {
                    Expect::Allowed => (200..300).contains(&status),
                    Expect::Unauthorized => status == 401,
                    Expect::Forbidden => status == 403,
                    Expect::Hidden => status == 404,
                    Expect::Unchecked => {
                        public_answers.insert(status);
                        status < 500
                    }
                };
                if !ok {
                    failures.push(format!(
                        "{} {path} as {who:?} ({side:?}): {status}, expected {want:?}",
                        rule.method
                    ));
                }
            }
            if public_answers.len() > 1 {
                failures.push(format!(
                    "{} {}: a public route answered differently by caller: {public_answers:?}",
                    rule.method, rule.pattern
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `(METHOD, /v1/pattern)` of every route `src/routes/*.rs` registers: `.route("/p",
/// web::get()...)` and `web::resource("/p")...route(web::post()...)`, read from the source so
/// that a route added without a rule is found.
fn registered_routes() -> BTreeSet<(String, String)> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/routes");
    let mut found = BTreeSet::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text: String = std::fs::read_to_string(&path)
            .unwrap()
            .split_whitespace()
            .collect();
        let mut resource: Option<String> = None;
        let mut rest = text.as_str();
        let next = |t: &str| {
            ["route(", "resource("]
                .iter()
                .filter_map(|m| t.find(m))
                .min()
        };
        while let Some(at) = next(rest) {
            rest = &rest[at..];
            if let Some(after) = rest.strip_prefix("resource(\"") {
                let end = after.find('"').unwrap();
                resource = Some(after[..end].to_owned());
                rest = &after[end..];
            } else if let Some(after) = rest.strip_prefix("route(\"") {
                let end = after.find('"').unwrap();
                let method = method_after(&after[end..]);
                found.insert((method, format!("/v1{}", &after[..end])));
                rest = &after[end..];
            } else if let Some(after) = rest.strip_prefix("route(web::") {
                let path = resource
                    .clone()
                    .expect("a .route(web::..) outside a resource");
                found.insert((method_after(&format!("web::{after}")), format!("/v1{path}")));
                rest = after;
            } else {
                rest = &rest[1..];
            }
        }
    }
    found
}

/// The method of the first `web::<method>()` in `text`.
fn method_after(text: &str) -> String {
    let at = text.find("web::").expect("a route without a method") + 5;
    let name: String = text[at..]
        .chars()
        .take_while(char::is_ascii_alphabetic)
        .collect();
    name.to_ascii_uppercase()
}

#[test]
fn every_registered_route_has_a_rule_and_every_rule_a_route() {
    let routes = registered_routes();
    assert!(
        routes.len() > 30,
        "the route scan found too little: {routes:?}"
    );
    let rules: BTreeSet<(String, String)> = RULES
        .iter()
        .map(|r| (r.method.to_owned(), r.pattern.to_owned()))
        .collect();
    let unruled: Vec<_> = routes.difference(&rules).collect();
    assert!(
        unruled.is_empty(),
        "routes without a rule in auth/rules.rs: {unruled:?}"
    );
    let stale: Vec<_> = rules.difference(&routes).collect();
    assert!(stale.is_empty(), "rules without a route: {stale:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_and_paths_without_a_rule_are_refused() {
    let fx = Fixture::start().await;
    let res = fx
        .app
        .client
        .delete(fx.app.url("/v1/services/web-own"))
        .bearer_auth(&fx.app.admin_token)
        .send()
        .await
        .unwrap();
    problem(res, 405).await;
    let res = fx
        .app
        .client
        .get(fx.app.url("/v1/nothing/here"))
        .bearer_auth(&fx.app.admin_token)
        .send()
        .await
        .unwrap();
    problem(res, 404).await;
}
