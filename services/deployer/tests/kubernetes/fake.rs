//! An in-memory Kubernetes API server, enough of one for the target: namespaced GET, LIST and
//! WATCH (from a `resourceVersion`, label selectors `k=v,...`), server-side apply (`PATCH`
//! with `application/apply-patch+yaml` and a `fieldManager`, `metadata.resourceVersion` as a
//! precondition), DELETE (with `DeleteOptions` preconditions on `uid` and `resourceVersion`:
//! 409 when they do not hold) and the pod log (of the container's current run: 400 while it
//! waits, the followed stream ending with the run). Objects get `uid`, `resourceVersion` and
//! `creationTimestamp` as the API server sets them; [`FakeApi::age`] lets time pass. Every applied object is read into its k8s-openapi
//! type (the HTTPRoute into the target's own type) and must serialise back to exactly what was
//! sent (a field the type does not know is refused), then checked like the API server's
//! validation does for what the target uses; a refusal is a 422 `Status`.
//!
//! A Deployment controller and a kubelet run in [`controllers`]: each Deployment has
//! `replicas` pods of its template (running and ready shortly after creation unless their
//! image is marked otherwise), a deleted pod is replaced, extra pods go unready-first then
//! newest-first, a new template replaces the pods; container runs end when a test says.

mod controllers;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::validate::validate;

pub use self::controllers::Behaviour;

type Key = (String, String, String); // plural, namespace, name
/// method, plural, name, fieldManager
type Write = (String, String, String, Option<String>);

#[derive(Debug, Clone)]
pub struct Event {
    pub rv: u64,
    pub plural: String,
    pub namespace: String,
    pub kind: &'static str,
    pub object: Value,
}

#[derive(Default)]
struct Store {
    rv: u64,
    objects: BTreeMap<Key, Value>,
    history: Vec<Event>,
    pods_made: u64,
    logs: BTreeMap<String, Vec<String>>,
}

pub struct State {
    store: Mutex<Store>,
    events: broadcast::Sender<Event>,
    /// How the pods of an image behave (absent: [`Behaviour::Ready`]).
    images: Mutex<HashMap<String, Behaviour>>,
    /// (method, plural, name, fieldManager) of every write.
    pub writes: Mutex<Vec<Write>>,
    /// (`get`, `list` or `watch`, plural) of every read.
    pub reads: Mutex<Vec<(String, String)>>,
}

pub struct FakeApi {
    pub state: Arc<State>,
    pub url: String,
    _server: actix_web::dev::ServerHandle,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl FakeApi {
    pub fn start() -> Self {
        let (events, _) = broadcast::channel(4096);
        let state = Arc::new(State {
            store: Mutex::default(),
            events,
            images: Mutex::default(),
            writes: Mutex::default(),
            reads: Mutex::default(),
        });
        let data = web::Data::from(state.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .app_data(web::PayloadConfig::new(1 << 20))
                .default_service(web::to(handle))
        })
        .workers(2)
        .shutdown_timeout(0)
        .disable_signals()
        .bind(("127.0.0.1", 0))
        .expect("bind the fake API server");
        let url = format!("http://127.0.0.1:{}", server.addrs()[0].port());
        let server = server.run();
        let handle = server.handle();
        tokio::spawn(server);
        Self {
            state,
            url,
            _server: handle,
        }
    }

    /// The pods of `image` run but never pass their readiness probe.
    pub fn never_ready(&self, image: &str) {
        lock(&self.state.images).insert(image.to_owned(), Behaviour::NeverReady);
    }

    /// The pods of `image` crash at once, again after a restart, then back off.
    pub fn crashing(&self, image: &str) {
        lock(&self.state.images).insert(image.to_owned(), Behaviour::Crashing);
    }

    /// The pod's container exits with `exit_code` and the kubelet starts it again at once.
    pub fn crash(&self, namespace: &str, pod: &str, exit_code: i32, reason: &str) {
        self.state.end_run(namespace, pod, exit_code, reason, true);
    }

    /// The pod's container exits with `exit_code` and the kubelet backs off
    /// (`CrashLoopBackOff`).
    pub fn crash_loop(&self, namespace: &str, pod: &str, exit_code: i32) {
        self.state
            .end_run(namespace, pod, exit_code, "Error", false);
    }

    /// Lets `seconds` pass for every object's age (their `creationTimestamp` moves back).
    pub fn age(&self, seconds: i64) {
        let mut store = lock(&self.state.store);
        for object in store.objects.values_mut() {
            let created = object["metadata"]["creationTimestamp"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
            if let Some(created) = created {
                object["metadata"]["creationTimestamp"] =
                    stamp(created.to_utc() - chrono::Duration::seconds(seconds)).into();
            }
        }
    }

    /// Creates `object` as another client would (not validated: it is not the target's).
    pub fn insert(&self, plural: &str, namespace: &str, mut object: Value) {
        let mut store = lock(&self.state.store);
        store.rv += 1;
        let name = object["metadata"]["name"].as_str().unwrap().to_owned();
        object["metadata"]["namespace"] = namespace.into();
        object["metadata"]["resourceVersion"] = store.rv.to_string().into();
        object["metadata"]["uid"] = format!("uid-{}", store.rv).into();
        object["metadata"]["creationTimestamp"] = now(0).into();
        store
            .objects
            .insert((plural.into(), namespace.into(), name), object.clone());
        self.state
            .record(&mut store, plural, namespace, "ADDED", object);
    }

    pub fn get(&self, plural: &str, namespace: &str, name: &str) -> Option<Value> {
        lock(&self.state.store)
            .objects
            .get(&(plural.into(), namespace.into(), name.into()))
            .cloned()
    }

    pub fn list(&self, plural: &str, namespace: &str) -> Vec<Value> {
        lock(&self.state.store)
            .objects
            .iter()
            .filter(|((p, n, _), _)| p == plural && n == namespace)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Deletes a pod as `kubectl delete pod` would (the controller replaces it).
    pub fn delete_pod(&self, namespace: &str, name: &str) {
        self.state.delete("pods", namespace, name);
    }
}

/// A `creationTimestamp`-style time `seconds_ago` before now.
fn now(seconds_ago: i64) -> String {
    stamp(chrono::Utc::now() - chrono::Duration::seconds(seconds_ago))
}

fn stamp(at: chrono::DateTime<chrono::Utc>) -> String {
    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn status(code: u16, reason: &str, message: impl Into<String>) -> HttpResponse {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message.into(), "reason": reason, "code": code,
    });
    HttpResponse::build(actix_web::http::StatusCode::from_u16(code).unwrap_or_default()).json(body)
}

/// `/api/v1/namespaces/<ns>/<plural>[/<name>[/log]]` and the `apis/<group>/<version>` forms.
fn route(path: &str) -> Option<(String, String, Option<String>, bool)> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let rest = match parts.as_slice() {
        ["api", "v1", rest @ ..] => rest,
        ["apis", "apps", "v1", rest @ ..] => rest,
        ["apis", "gateway.networking.k8s.io", "v1", rest @ ..] => rest,
        _ => return None,
    };
    match rest {
        ["namespaces", ns, plural] => Some(((*plural).into(), (*ns).into(), None, false)),
        ["namespaces", ns, plural, name] => {
            Some(((*plural).into(), (*ns).into(), Some((*name).into()), false))
        }
        ["namespaces", ns, "pods", name, "log"] => {
            Some(("pods".into(), (*ns).into(), Some((*name).into()), true))
        }
        _ => None,
    }
}

fn query(req: &HttpRequest) -> BTreeMap<String, String> {
    url::form_urlencoded::parse(req.query_string().as_bytes())
        .into_owned()
        .collect()
}

fn matches(object: &Value, selector: Option<&String>) -> bool {
    let Some(selector) = selector.filter(|s| !s.is_empty()) else {
        return true;
    };
    selector.split(',').all(|term| match term.split_once('=') {
        Some((k, v)) => object["metadata"]["labels"][k].as_str() == Some(v),
        None => false,
    })
}

async fn handle(req: HttpRequest, body: web::Bytes, state: web::Data<State>) -> HttpResponse {
    let Some((plural, ns, name, log)) = route(req.path()) else {
        return status(404, "NotFound", format!("no route {}", req.path()));
    };
    let q = query(&req);
    let method = req.method().as_str().to_owned();
    match (method.as_str(), name) {
        ("GET", None) if q.get("watch").is_some_and(|w| w == "true" || w == "1") => {
            lock(&state.reads).push(("watch".into(), plural.clone()));
            watch(&state, plural, ns, q)
        }
        ("GET", None) => {
            lock(&state.reads).push(("list".into(), plural.clone()));
            let store = lock(&state.store);
            let items: Vec<Value> = store
                .objects
                .iter()
                .filter(|((p, n, _), v)| {
                    *p == plural && *n == ns && matches(v, q.get("labelSelector"))
                })
                .map(|(_, v)| v.clone())
                .collect();
            HttpResponse::Ok().json(json!({
                "kind": "List", "apiVersion": "v1",
                "metadata": {"resourceVersion": store.rv.to_string()}, "items": items,
            }))
        }
        ("GET", Some(name)) if log => logs(&state, ns, name, &q),
        ("GET", Some(name)) => {
            lock(&state.reads).push(("get".into(), plural.clone()));
            match lock(&state.store)
                .objects
                .get(&(plural.clone(), ns, name.clone()))
            {
                Some(v) => HttpResponse::Ok().json(v),
                None => status(404, "NotFound", format!("{plural} \"{name}\" not found")),
            }
        }
        ("PATCH", Some(name)) => {
            let content = req
                .headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            if content != "application/apply-patch+yaml" {
                return status(
                    415,
                    "UnsupportedMediaType",
                    format!("only server-side apply here, not {content}"),
                );
            }
            let Some(manager) = q.get("fieldManager").cloned() else {
                return status(
                    400,
                    "BadRequest",
                    "fieldManager is required for apply requests",
                );
            };
            lock(&state.writes).push(("PATCH".into(), plural.clone(), name.clone(), Some(manager)));
            let object: Value = match serde_json::from_slice(&body) {
                Ok(v) => v,
                Err(e) => return status(400, "BadRequest", format!("not JSON/YAML: {e}")),
            };
            state.apply(&plural, &ns, &name, object)
        }
        ("DELETE", Some(name)) => {
            lock(&state.writes).push(("DELETE".into(), plural.clone(), name.clone(), None));
            let options: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let current = state.object(&plural, &ns, &name);
            for field in ["uid", "resourceVersion"] {
                let want = &options["preconditions"][field];
                let have = current.as_ref().map(|o| &o["metadata"][field]);
                if !want.is_null() && have.is_some_and(|have| have != want) {
                    return status(
                        409,
                        "Conflict",
                        format!(
                            "Precondition failed: {field} in precondition: {want}, {field} in object meta: {}",
                            have.unwrap_or(&Value::Null)
                        ),
                    );
                }
            }
            match state.delete(&plural, &ns, &name) {
                Some(v) => HttpResponse::Ok().json(v),
                None => status(404, "NotFound", format!("{plural} \"{name}\" not found")),
            }
        }
        _ => status(405, "MethodNotAllowed", format!("{method} {}", req.path())),
    }
}

fn watch(state: &State, plural: String, ns: String, q: BTreeMap<String, String>) -> HttpResponse {
    let from: u64 = q
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let selector = q.get("labelSelector").cloned();
    let mut live = state.events.subscribe();
    let past: Vec<Event> = lock(&state.store)
        .history
        .iter()
        .filter(|e| e.rv > from)
        .cloned()
        .collect();
    let keep = move |e: &Event| {
        e.plural == plural && e.namespace == ns && matches(&e.object, selector.as_ref())
    };
    let line = |e: &Event| {
        let mut l =
            serde_json::to_vec(&json!({"type": e.kind, "object": e.object})).unwrap_or_default();
        l.push(b'\n');
        Ok::<_, std::io::Error>(web::Bytes::from(l))
    };
    let stream = async_stream(move |tx| async move {
        let mut last = from;
        for e in past.iter().filter(|e| keep(e)) {
            last = e.rv;
            if tx.send(line(e)).await.is_err() {
                return;
            }
        }
        loop {
            match live.recv().await {
                Ok(e) if e.rv > last && keep(&e) => {
                    last = e.rv;
                    if tx.send(line(&e)).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => return,
            }
        }
    });
    HttpResponse::Ok()
        .content_type("application/json")
        .streaming(stream)
}

/// A stream fed by a task (no async-stream crate needed).
fn async_stream<F, Fut>(f: F) -> impl futures::Stream<Item = Result<web::Bytes, std::io::Error>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<web::Bytes, std::io::Error>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(f(tx));
    tokio_stream(rx)
}

fn tokio_stream<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures::Stream<Item = T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

fn logs(state: &State, ns: String, name: String, q: &BTreeMap<String, String>) -> HttpResponse {
    if q.get("container").map(String::as_str) != Some("app") {
        return status(400, "BadRequest", "container name must be given: app");
    }
    // Subscribed before the state is read: the end of this run is not missed.
    let mut live = state.events.subscribe();
    let Some(pod) = state.object("pods", &ns, &name) else {
        return status(404, "NotFound", format!("pods \"{name}\" not found"));
    };
    let app = &pod["status"]["containerStatuses"][0];
    let run = app["restartCount"].clone();
    let running = !app["state"]["running"].is_null();
    if !running && app["state"]["terminated"].is_null() {
        let reason = app["state"]["waiting"]["reason"]
            .as_str()
            .unwrap_or("PodInitializing");
        return status(
            400,
            "BadRequest",
            format!("container \"app\" in pod \"{name}\" is waiting to start: {reason}"),
        );
    }
    let follow = q.get("follow").is_some_and(|f| f == "true");
    let lines = lock(&state.store)
        .logs
        .get(&name)
        .cloned()
        .unwrap_or_default();
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    if !follow || !running {
        return HttpResponse::Ok().content_type("text/plain").body(text);
    }
    let stream = async_stream(move |tx| async move {
        if tx.send(Ok(web::Bytes::from(text))).await.is_err() {
            return;
        }
        // Open while this run of the container lasts, like the kubelet's stream.
        while let Ok(e) = live.recv().await {
            if e.plural != "pods" || e.object["metadata"]["name"] != name.as_str() {
                continue;
            }
            let app = &e.object["status"]["containerStatuses"][0];
            if e.kind == "DELETED"
                || app["restartCount"] != run
                || app["state"]["running"].is_null()
            {
                return;
            }
        }
    });
    HttpResponse::Ok()
        .content_type("text/plain")
        .streaming(stream)
}

impl State {
    fn object(&self, plural: &str, ns: &str, name: &str) -> Option<Value> {
        lock(&self.store)
            .objects
            .get(&(plural.into(), ns.into(), name.into()))
            .cloned()
    }

    fn record(&self, store: &mut Store, plural: &str, ns: &str, kind: &'static str, object: Value) {
        let event = Event {
            rv: store.rv,
            plural: plural.into(),
            namespace: ns.into(),
            kind,
            object,
        };
        store.history.push(event.clone());
        let _ = self.events.send(event);
    }

    fn apply(&self, plural: &str, ns: &str, name: &str, mut object: Value) -> HttpResponse {
        // The precondition is not part of the object.
        let precondition = object["metadata"]
            .as_object_mut()
            .and_then(|m| m.remove("resourceVersion"))
            .and_then(|v| v.as_str().map(str::to_owned));
        if let Err(why) = validate(plural, name, &object) {
            return status(
                422,
                "Invalid",
                format!("{plural} \"{name}\" is invalid: {why}"),
            );
        }
        let key: Key = (plural.into(), ns.into(), name.into());
        let stored = {
            let mut store = lock(&self.store);
            let existing = store.objects.get(&key).cloned();
            if let Some(want) = &precondition {
                let have = existing
                    .as_ref()
                    .and_then(|e| e["metadata"]["resourceVersion"].as_str().map(str::to_owned));
                if have.as_deref() != Some(want.as_str()) {
                    return status(
                        409,
                        "Conflict",
                        format!(
                            "Operation cannot be fulfilled on {plural} \"{name}\": the object has been modified"
                        ),
                    );
                }
            }
            if let Some(old) = &existing
                && old["immutable"] == true
                && (old["data"] != object["data"] || object["immutable"] != true)
            {
                return status(
                    422,
                    "Invalid",
                    format!(
                        "{plural} \"{name}\" is invalid: data: Forbidden: field is immutable when `immutable` is set"
                    ),
                );
            }
            store.rv += 1;
            let rv = store.rv.to_string();
            let meta = object["metadata"]
                .as_object_mut()
                .expect("metadata checked");
            meta.insert("namespace".into(), ns.into());
            meta.insert("resourceVersion".into(), rv.into());
            meta.insert(
                "creationTimestamp".into(),
                existing.as_ref().map_or_else(
                    || now(0).into(),
                    |e| e["metadata"]["creationTimestamp"].clone(),
                ),
            );
            meta.insert(
                "uid".into(),
                existing.as_ref().map_or_else(
                    || format!("uid-{}", store.rv).into(),
                    |e| e["metadata"]["uid"].clone(),
                ),
            );
            if let Some(old) = &existing
                && !old["status"].is_null()
            {
                object["status"] = old["status"].clone();
            }
            store.objects.insert(key, object.clone());
            let kind = if existing.is_some() {
                "MODIFIED"
            } else {
                "ADDED"
            };
            self.record(&mut store, plural, ns, kind, object.clone());
            object
        };
        if plural == "deployments" {
            self.reconcile(ns, name);
        }
        HttpResponse::Ok().json(stored)
    }

    /// A deletion through the API: the controllers react to it.
    fn delete(&self, plural: &str, ns: &str, name: &str) -> Option<Value> {
        let removed = self.remove(plural, ns, name)?;
        match plural {
            // The ReplicaSet of a pod's Deployment replaces it.
            "pods" => {
                if let Some(owner) = removed["metadata"]["annotations"]["fake/deployment"].as_str()
                {
                    self.reconcile(ns, owner);
                }
            }
            // Foreground deletion: the pods go with the Deployment.
            "deployments" => {
                for pod in self.owned(ns, name) {
                    let pod_name = pod["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned();
                    self.remove("pods", ns, &pod_name);
                }
            }
            _ => {}
        }
        Some(removed)
    }

    /// Removes an object and records the event, nothing else (what controllers do).
    fn remove(&self, plural: &str, ns: &str, name: &str) -> Option<Value> {
        let mut store = lock(&self.store);
        let removed = store
            .objects
            .remove(&(plural.into(), ns.into(), name.into()))?;
        store.rv += 1;
        let mut gone = removed.clone();
        gone["metadata"]["resourceVersion"] = store.rv.to_string().into();
        self.record(&mut store, plural, ns, "DELETED", gone);
        Some(removed)
    }
}
