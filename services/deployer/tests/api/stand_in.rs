//! A stand-in for the registry's API, answering what the deployer asks it (releases,
//! environments, config versions) from what the test put in, and recording every request.
//!
//! Like the registry, it answers only the deployer's service credential (anything else gets
//! 401), so every test also proves that the deployer presents it.
//!
//! A release can be *held*: its answer waits until the test opens the gate, which keeps a
//! deployment `queued` in its start for as long as the test needs.
//!
//! Environments are those the releases recorded a config version for, each on the target the
//! test recorded for it ([`StandInRegistry::set_target`]), else `process`.
//!
//! The traffic status (what route steps wait on) answers "nothing set, no router" unless the
//! test set one with [`StandInRegistry::set_traffic`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};

use actix_web::{HttpRequest, HttpResponse, HttpServer, guard, web};
use serde_json::{Value, json};
use slipway_testkit::identity::ServiceCaller;
use tokio::sync::watch;

#[derive(Default)]
struct Catalog {
    /// (service, number) → the release as the registry shows it.
    releases: Mutex<HashMap<(String, i32), Value>>,
    /// Releases whose answer waits for the gate.
    held: Mutex<HashSet<(String, i32)>>,
    /// Paths asked for, in order.
    seen: Mutex<Vec<String>>,
    /// (service id, environment) → the traffic status answered.
    traffic: Mutex<HashMap<(String, String), Value>>,
    /// (service, environment) → the target recorded (absent: `process`).
    targets: Mutex<HashMap<(String, String), String>>,
}

pub struct StandInRegistry {
    pub url: String,
    catalog: Arc<Catalog>,
    gate: watch::Sender<bool>,
}

fn not_found(detail: String) -> HttpResponse {
    HttpResponse::NotFound()
        .content_type("application/problem+json")
        .json(json!({
            "type": "https://slipway.dev/problems/not-found",
            "title": "Not Found",
            "status": 404,
            "detail": detail,
        }))
}

async fn release(
    catalog: web::Data<Catalog>,
    gate: web::Data<watch::Receiver<bool>>,
    path: web::Path<(String, i32)>,
    req: HttpRequest,
) -> HttpResponse {
    catalog.seen.lock().unwrap().push(req.path().to_owned());
    let key = path.into_inner();
    let held = catalog.held.lock().unwrap().contains(&key);
    if held {
        let mut gate = gate.get_ref().clone();
        let _ = gate.wait_for(|open| *open).await;
    }
    let found = catalog.releases.lock().unwrap().get(&key).cloned();
    match found {
        Some(r) => HttpResponse::Ok().json(r),
        None => not_found(format!("service `{}` has no release {}", key.0, key.1)),
    }
}

/// The environments of a service: those its releases recorded a config version for.
async fn environments(
    catalog: web::Data<Catalog>,
    name: web::Path<String>,
    req: HttpRequest,
) -> HttpResponse {
    catalog.seen.lock().unwrap().push(req.path().to_owned());
    let releases = catalog.releases.lock().unwrap();
    let latest: BTreeMap<String, Value> = releases
        .iter()
        .filter(|((service, _), _)| *service == *name)
        .flat_map(|(_, r)| r["config"].as_object().cloned().unwrap_or_default())
        .collect();
    if latest.is_empty() {
        return not_found(format!("no service named `{name}`"));
    }
    let targets = catalog.targets.lock().unwrap();
    let items: Vec<Value> = latest
        .into_iter()
        .map(|(env, version)| {
            let target = targets
                .get(&(name.to_string(), env.clone()))
                .map_or("process", String::as_str);
            json!({"name": env, "target": target, "config_version": version,
                "created_at": chrono::Utc::now(), "updated_at": chrono::Utc::now()})
        })
        .collect();
    HttpResponse::Ok().json(json!({ "items": items }))
}

async fn config(
    catalog: web::Data<Catalog>,
    path: web::Path<(String, String, i32)>,
    req: HttpRequest,
) -> HttpResponse {
    catalog.seen.lock().unwrap().push(req.path().to_owned());
    let (_, env, version) = path.into_inner();
    HttpResponse::Ok().json(json!({
        "version": version,
        "vars": {"SLIPWAY_ENVIRONMENT_NAME": env},
        "secrets": {},
    }))
}

async fn traffic(
    catalog: web::Data<Catalog>,
    path: web::Path<(String, String)>,
    req: HttpRequest,
) -> HttpResponse {
    catalog.seen.lock().unwrap().push(req.path().to_owned());
    let (service, env) = path.into_inner();
    let set = catalog
        .traffic
        .lock()
        .unwrap()
        .get(&(service.clone(), env.clone()))
        .cloned();
    HttpResponse::Ok().json(set.unwrap_or_else(|| {
        json!({"service_id": service, "environment": env, "weights": [], "version": 0,
            "index": 0, "routers": []})
    }))
}

impl StandInRegistry {
    pub async fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let catalog = Arc::new(Catalog::default());
        let (gate, opened) = watch::channel(false);
        let data = web::Data::from(catalog.clone());
        let opened = web::Data::new(opened);
        // Leaked once per stand-in: actix's header guard wants a `'static` value.
        let bearer: &'static str = Box::leak(
            format!(
                "Bearer {}",
                slipway_testkit::identity::credential(ServiceCaller::Deployer)
            )
            .into_boxed_str(),
        );
        let get = move || web::get().guard(guard::Header("authorization", bearer));
        let server = HttpServer::new(move || {
            actix_web::App::new()
                .app_data(data.clone())
                .app_data(opened.clone())
                .route("/v1/services/{name}/releases/{number}", get().to(release))
                .route("/v1/services/{name}/environments", get().to(environments))
                .route(
                    "/internal/v1/services/{name}/environments/{env}/config/{version}",
                    get().to(config),
                )
                .route("/internal/v1/traffic/{service_id}/{env}", get().to(traffic))
                .default_service(web::to(|| async { HttpResponse::Unauthorized().finish() }))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
        tokio::spawn(server);
        Self {
            url: format!("http://127.0.0.1:{port}"),
            catalog,
            gate,
        }
    }

    /// Makes release `number` of `service` known, with config version 1 in `environments`.
    pub fn add_release(&self, service: &str, number: i32, environments: &[&str]) {
        let config: serde_json::Map<String, Value> = environments
            .iter()
            .map(|e| ((*e).to_owned(), json!(1)))
            .collect();
        let digest = format!("sha256:{}", "ab".repeat(32));
        self.catalog.releases.lock().unwrap().insert(
            (service.to_owned(), number),
            json!({
                "id": uuid::Uuid::now_v7(),
                "service_id": slipway_ids::ServiceId::new(),
                "version": format!("v{number}"),
                "build_id": slipway_ids::BuildId::new(),
                "commit": "0".repeat(40),
                "created_at": chrono::Utc::now(),
                "number": number,
                // Pinned, on a port where no registry listens: pulls fail at once.
                "image": format!("127.0.0.1:1/{service}@{digest}"),
                "digest": digest,
                "artifact_purl": format!("pkg:oci/{service}@{digest}"),
                "run": null,
                "config": config,
            }),
        );
    }

    /// Gives release `number` of `service` the run spec `run` (JSON, as the registry answers).
    pub fn set_run(&self, service: &str, number: i32, run: Value) {
        let mut releases = self.catalog.releases.lock().unwrap();
        let release = releases
            .get_mut(&(service.to_owned(), number))
            .expect("add the release first");
        release["run"] = run;
    }

    /// From now on the traffic status of `service` in `env` holds `weights` (JSON) at table
    /// `version`, with live routers each serving the version given.
    pub fn set_traffic(
        &self,
        service: slipway_ids::ServiceId,
        env: &str,
        weights: Value,
        version: u64,
        routers: &[(&str, u64)],
    ) {
        let routers: Vec<Value> = routers
            .iter()
            .map(|(id, applied)| {
                json!({"router": id, "applied": applied, "polled_at": chrono::Utc::now(),
                    "live": true})
            })
            .collect();
        self.catalog.traffic.lock().unwrap().insert(
            (service.to_string(), env.to_owned()),
            json!({"service_id": service, "environment": env, "weights": weights,
                "version": version, "index": version, "routers": routers}),
        );
    }

    /// Records `env` of `service` on `target` (`process`, `docker` or `kubernetes`), as
    /// `PUT /v1/services/{name}/environments/{env}` does.
    pub fn set_target(&self, service: &str, env: &str, target: &str) {
        self.catalog
            .targets
            .lock()
            .unwrap()
            .insert((service.to_owned(), env.to_owned()), target.to_owned());
    }

    /// How many times the traffic status was asked for.
    pub fn traffic_asks(&self) -> usize {
        self.catalog
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|p| p.starts_with("/internal/v1/traffic/"))
            .count()
    }

    /// The answer for release `number` of `service` waits until [`Self::open_gate`].
    pub fn hold(&self, service: &str, number: i32) {
        self.catalog
            .held
            .lock()
            .unwrap()
            .insert((service.to_owned(), number));
    }

    pub fn open_gate(&self) {
        self.gate.send_replace(true);
    }

    /// Whether `path` was asked for.
    pub fn saw(&self, path: &str) -> bool {
        self.catalog.seen.lock().unwrap().iter().any(|p| p == path)
    }
}
