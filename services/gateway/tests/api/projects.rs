//! Projects and grants with the real registry behind the gateway: what a token sees, what it
//! may do, what the audit log says, and how data from before projects migrates.

use serde_json::{Value, json};
use sqlx::Connection;

use crate::helpers::{TestApp, problem, spawn_app};

impl TestApp {
    /// `method path` with `token` and an optional JSON body.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> reqwest::Response {
        let mut req = self
            .client
            .request(method, self.url(path))
            .bearer_auth(token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        req.send().await.unwrap()
    }

    async fn get_json(&self, path: &str, token: &str) -> Value {
        let res = self.call(reqwest::Method::GET, path, token, None).await;
        assert_eq!(res.status(), 200, "{path}");
        res.json().await.unwrap()
    }

    /// A token made by the platform admin from `body`: (token, id).
    async fn token_with(&self, body: Value) -> (String, String) {
        let res = self
            .call(
                reqwest::Method::POST,
                "/v1/tokens",
                &self.admin_token,
                Some(body),
            )
            .await;
        assert_eq!(res.status(), 201);
        let created: Value = res.json().await.unwrap();
        (
            created["token"].as_str().unwrap().to_owned(),
            created["id"].as_str().unwrap().to_owned(),
        )
    }
}

fn names(list: &Value) -> Vec<&str> {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_sees_and_acts_only_in_its_projects() {
    let app = spawn_app().await;
    let admin = app.admin_token.clone();
    let res = app
        .call(
            reqwest::Method::POST,
            "/v1/projects",
            &admin,
            Some(json!({"name": "team-a"})),
        )
        .await;
    assert_eq!(res.status(), 201);
    assert_eq!(res.headers()["location"], "/v1/projects/team-a");
    let (a, _) = app
        .token_with(json!({"name": "a", "role": "deployer", "project": "team-a"}))
        .await;

    let created = app
        .create_service(&a, json!({"name": "a-web", "project": "team-a"}))
        .await;
    assert_eq!(created.status(), 201);
    assert_eq!(created.json::<Value>().await.unwrap()["project"], "team-a");
    let created = app.create_service(&admin, json!({"name": "d-web"})).await;
    assert_eq!(created.json::<Value>().await.unwrap()["project"], "default");

    // Lists show only what the token may see; platform admins see everything.
    assert_eq!(names(&app.get_json("/v1/services", &a).await), ["a-web"]);
    assert_eq!(
        names(&app.get_json("/v1/services?project=default", &a).await),
        ["a-web"]
    );
    assert_eq!(
        names(&app.get_json("/v1/services", &admin).await),
        ["a-web", "d-web"]
    );
    let projects = app.get_json("/v1/projects", &a).await;
    assert_eq!(names(&projects), ["team-a"]);
    assert_eq!(projects["items"][0]["role"], "deployer");
    assert_eq!(
        names(&app.get_json("/v1/projects", &admin).await),
        ["default", "team-a"]
    );

    // Another project's service looks exactly like one that does not exist.
    let hidden = problem(
        app.call(reqwest::Method::GET, "/v1/services/d-web", &a, None)
            .await,
        404,
    )
    .await;
    let absent = problem(
        app.call(reqwest::Method::GET, "/v1/services/no-web", &a, None)
            .await,
        404,
    )
    .await;
    assert_eq!(hidden["type"], absent["type"]);
    assert_eq!(hidden["detail"], "no service named `d-web`");
    assert_eq!(absent["detail"], "no service named `no-web`");
    let res = app
        .call(
            reqwest::Method::POST,
            "/v1/services/d-web/builds",
            &a,
            Some(json!({})),
        )
        .await;
    problem(res, 404).await;
    // Nor can it create services there.
    let p = problem(app.create_service(&a, json!({"name": "sneaky"})).await, 404).await;
    assert_eq!(p["detail"], "no project named `default`");
    let p = problem(
        app.create_service(&admin, json!({"name": "lost", "project": "nowhere"}))
            .await,
        404,
    )
    .await;
    assert_eq!(p["detail"], "no project named `nowhere`");
    assert_eq!(
        app.count("webhook_secrets").await,
        2,
        "refusals leave no secret behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn project_admins_grant_roles_and_read_their_audit_log() {
    let app = spawn_app().await;
    let admin = app.admin_token.clone();
    app.call(
        reqwest::Method::POST,
        "/v1/projects",
        &admin,
        Some(json!({"name": "team-a"})),
    )
    .await;
    let (lead, _) = app
        .token_with(json!({"name": "lead", "role": "admin", "project": "team-a"}))
        .await;
    let (dev, dev_id) = app.token_with(json!({"name": "dev"})).await;
    assert_eq!(app.get_json("/v1/projects", &dev).await["items"], json!([]));
    assert_eq!(app.get_json("/v1/services", &dev).await["items"], json!([]));

    let grant = format!("/v1/projects/team-a/grants/{dev_id}");
    let res = app
        .call(
            reqwest::Method::PUT,
            &grant,
            &lead,
            Some(json!({"role": "viewer"})),
        )
        .await;
    assert_eq!(res.status(), 201);
    let body: Value = res.json().await.unwrap();
    assert_eq!(
        (body["token_name"].as_str(), body["role"].as_str()),
        (Some("dev"), Some("viewer"))
    );
    let res = app
        .call(
            reqwest::Method::PUT,
            &grant,
            &lead,
            Some(json!({"role": "deployer"})),
        )
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        app.get_json("/v1/projects/team-a", &dev).await["role"],
        "deployer"
    );
    let res = app
        .create_service(&dev, json!({"name": "a-web", "project": "team-a"}))
        .await;
    assert_eq!(res.status(), 201);
    // A deployer does not grant; a bad role or token id is refused.
    let res = app
        .call(
            reqwest::Method::PUT,
            &grant,
            &dev,
            Some(json!({"role": "admin"})),
        )
        .await;
    problem(res, 403).await;
    let res = app
        .call(
            reqwest::Method::PUT,
            &grant,
            &lead,
            Some(json!({"role": "root"})),
        )
        .await;
    assert_eq!(problem(res, 422).await["errors"][0]["field"], "role");
    let res = app
        .call(
            reqwest::Method::PUT,
            &format!("/v1/projects/team-a/grants/{}", uuid::Uuid::now_v7()),
            &lead,
            Some(json!({"role": "viewer"})),
        )
        .await;
    problem(res, 404).await;
    let grants = app.get_json("/v1/projects/team-a/grants", &lead).await;
    assert_eq!(
        grants["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["token_name"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["dev", "lead"]
    );

    let res = app.call(reqwest::Method::DELETE, &grant, &lead, None).await;
    assert_eq!(res.status(), 204);
    problem(
        app.call(reqwest::Method::DELETE, &grant, &lead, None).await,
        404,
    )
    .await;
    problem(
        app.call(reqwest::Method::GET, "/v1/services/a-web", &dev, None)
            .await,
        404,
    )
    .await;

    // The project's audit log: its entries only, each naming the project and the role used.
    app.create_service(&admin, json!({"name": "d-web"})).await;
    let audit = app.get_json("/v1/projects/team-a/audit", &lead).await;
    let entries = audit["items"].as_array().unwrap();
    assert!(entries.iter().all(|e| e["project"] == "team-a"), "{audit}");
    let summary: Vec<(&str, &str, i64, Option<&str>)> = entries
        .iter()
        .map(|e| {
            (
                e["method"].as_str().unwrap(),
                e["path"].as_str().unwrap(),
                e["status"].as_i64().unwrap(),
                e["role"].as_str(),
            )
        })
        .collect();
    assert!(
        summary.contains(&("POST", "/v1/services", 201, Some("deployer"))),
        "{summary:?}"
    );
    assert!(
        summary.contains(&("PUT", grant.as_str(), 403, Some("deployer"))),
        "{summary:?}"
    );
    assert!(
        summary.contains(&("PUT", grant.as_str(), 201, Some("admin"))),
        "{summary:?}"
    );
    let all = app.get_json("/v1/audit", &admin).await;
    assert!(
        all["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["project"] == "default")
    );
    problem(
        app.call(reqwest::Method::GET, "/v1/audit", &lead, None)
            .await,
        403,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn project_and_token_requests_are_validated() {
    let app = spawn_app().await;
    let admin = app.admin_token.clone();
    for (body, status, field) in [
        (json!({"name": "Team"}), 422, Some("name")),
        (json!({"name": "default"}), 409, None),
        (json!({"nom": "x"}), 422, None),
    ] {
        let res = app
            .call(reqwest::Method::POST, "/v1/projects", &admin, Some(body))
            .await;
        let p = problem(res, status).await;
        if let Some(field) = field {
            assert_eq!(p["errors"][0]["field"], field);
        }
    }
    for (body, field) in [
        (
            json!({"name": "t", "role": "viewer", "project": "nowhere"}),
            "project",
        ),
        (
            json!({"name": "t", "role": "viewer", "project": "No"}),
            "project",
        ),
        (json!({"name": "t", "project": "default"}), "role"),
    ] {
        let res = app
            .call(reqwest::Method::POST, "/v1/tokens", &admin, Some(body))
            .await;
        assert_eq!(problem(res, 422).await["errors"][0]["field"], field);
    }
    assert_eq!(
        app.count("api_tokens").await,
        1,
        "a refused grant leaves no token"
    );
    let res = app
        .call(
            reqwest::Method::POST,
            "/v1/services",
            &admin,
            Some(json!({"name": "x", "project": 7})),
        )
        .await;
    assert_eq!(problem(res, 422).await["errors"][0]["field"], "project");
    let res = app
        .client
        .post(app.url("/v1/services"))
        .bearer_auth(&admin)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    problem(res, 400).await;
    // A second platform admin, made by the first.
    let (second, _) = app
        .token_with(json!({"name": "ops", "platform_admin": true}))
        .await;
    let listed = app.get_json("/v1/tokens", &second).await;
    assert!(
        listed["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t.get("token_hash").is_none())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_from_before_projects_keep_their_role_in_default() {
    let settings = slipway_testkit::fresh_database("public").await;
    let mut conn = sqlx::PgConnection::connect_with(&settings.connect_options())
        .await
        .unwrap();
    let before = [
        include_str!("../../migrations/0001_auth_audit.sql"),
        include_str!("../../migrations/0002_operations.sql"),
        include_str!("../../migrations/0003_sealed_webhook_secrets.sql"),
        include_str!("../../migrations/0004_deploy_operations.sql"),
        include_str!("../../migrations/0005_webhook_deliveries.sql"),
    ];
    for sql in before {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&mut conn)
            .await
            .unwrap();
    }
    for (name, role) in [("boot", "admin"), ("ci", "deployer"), ("dash", "viewer")] {
        sqlx::query("INSERT INTO api_tokens (id, name, role, token_hash) VALUES ($1, $2, $3, $4)")
            .bind(uuid::Uuid::now_v7())
            .bind(name)
            .bind(role)
            .bind(format!("hash-{name}"))
            .execute(&mut conn)
            .await
            .unwrap();
    }
    sqlx::raw_sql(sqlx::AssertSqlSafe(include_str!(
        "../../migrations/0006_projects.sql"
    )))
    .execute(&mut conn)
    .await
    .unwrap();
    let rows: Vec<(String, bool, String, String)> = sqlx::query_as(
        "SELECT t.name, t.platform_admin, g.project, g.role FROM api_tokens t \
         JOIN grants g ON g.token_id = t.id ORDER BY t.name",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let expected = [
        ("boot", true, "default", "admin"),
        ("ci", false, "default", "deployer"),
        ("dash", false, "default", "viewer"),
    ];
    let rows: Vec<(&str, bool, &str, &str)> = rows
        .iter()
        .map(|(n, p, g, r)| (n.as_str(), *p, g.as_str(), r.as_str()))
        .collect();
    assert_eq!(rows, expected);
}
