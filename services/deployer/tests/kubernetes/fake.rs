//! An in-memory Kubernetes API server, enough of one for the target: namespaced GET, LIST and
//! WATCH (from a `resourceVersion`, label selectors `k=v,...`), server-side apply (`PATCH`
//! with `application/apply-patch+yaml` and a `fieldManager`, `metadata.resourceVersion` as a
//! precondition), DELETE and the pod log. Every applied object is read into its k8s-openapi
//! type (the HTTPRoute into the target's own type) and must serialise back to exactly what was
//! sent (a field the type does not know is refused), then checked like the API server's
//! validation does for what the target uses; a refusal is a 422 `Status`.
//!
//! A Deployment controller runs on every write: each Deployment has `replicas` pods of its
//! template (ready shortly after creation unless their image is marked never-ready), a deleted
//! pod is replaced, extra pods go unready-first then newest-first, a new template replaces the
//! pods.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::validate::validate;

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
    /// Images whose pods never become ready.
    never_ready: Mutex<HashSet<String>>,
    /// (method, plural, name, fieldManager) of every write.
    pub writes: Mutex<Vec<Write>>,
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
            never_ready: Mutex::default(),
            writes: Mutex::default(),
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

    pub fn never_ready(&self, image: &str) {
        lock(&self.state.never_ready).insert(image.to_owned());
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
            watch(&state, plural, ns, q)
        }
        ("GET", None) => {
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
    let key = ("pods".to_owned(), ns, name.clone());
    if !lock(&state.store).objects.contains_key(&key) {
        return status(404, "NotFound", format!("pods \"{name}\" not found"));
    }
    if q.get("container").map(String::as_str) != Some("app") {
        return status(400, "BadRequest", "container name must be given: app");
    }
    let follow = q.get("follow").is_some_and(|f| f == "true");
    let lines = lock(&state.store)
        .logs
        .get(&name)
        .cloned()
        .unwrap_or_default();
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    if !follow {
        return HttpResponse::Ok().content_type("text/plain").body(text);
    }
    let mut live = state.events.subscribe();
    let stream = async_stream(move |tx| async move {
        if tx.send(Ok(web::Bytes::from(text))).await.is_err() {
            return;
        }
        // Open until the pod is deleted, like the kubelet's stream.
        while let Ok(e) = live.recv().await {
            if e.plural == "pods"
                && e.kind == "DELETED"
                && e.object["metadata"]["name"] == name.as_str()
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

    fn owned(&self, ns: &str, deployment: &str) -> Vec<Value> {
        lock(&self.store)
            .objects
            .iter()
            .filter(|((p, n, _), v)| {
                p == "pods"
                    && n == ns
                    && v["metadata"]["annotations"]["fake/deployment"] == deployment
            })
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The Deployment controller (and the ReplicaSet's) for one Deployment.
    fn reconcile(&self, ns: &str, name: &str) {
        let Some(d) = lock(&self.store)
            .objects
            .get(&("deployments".into(), ns.into(), name.into()))
            .cloned()
        else {
            return;
        };
        let template = d["spec"]["template"].clone();
        let hash = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            template.to_string().hash(&mut h);
            format!("{:08x}", h.finish() as u32)
        };
        let want = d["spec"]["replicas"].as_u64().unwrap_or(1) as usize;
        let mut pods = self.owned(ns, name);
        // A new template: the old pods go (the fake rolls all at once).
        for old in pods
            .iter()
            .filter(|p| p["metadata"]["labels"]["pod-template-hash"] != hash.as_str())
        {
            self.remove(
                "pods",
                ns,
                old["metadata"]["name"].as_str().unwrap_or_default(),
            );
        }
        pods.retain(|p| p["metadata"]["labels"]["pod-template-hash"] == hash.as_str());
        if pods.len() > want {
            // Unready first, then the newest.
            pods.sort_by_key(|p| {
                (
                    is_ready(p),
                    std::cmp::Reverse(
                        p["metadata"]["annotations"]["fake/ordinal"]
                            .as_str()
                            .and_then(|o| o.parse::<u64>().ok()),
                    ),
                )
            });
            for extra in &pods[..pods.len() - want] {
                self.remove(
                    "pods",
                    ns,
                    extra["metadata"]["name"].as_str().unwrap_or_default(),
                );
            }
        }
        for _ in pods.len()..want {
            self.make_pod(ns, name, &template, &hash);
        }
    }

    fn make_pod(&self, ns: &str, deployment: &str, template: &Value, hash: &str) {
        let image = template["spec"]["containers"][0]["image"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let never = lock(&self.never_ready).contains(&image);
        let (name, pod) = {
            let mut store = lock(&self.store);
            store.pods_made += 1;
            let n = store.pods_made;
            let name = format!("{deployment}-{hash}-p{n}");
            let mut labels = template["metadata"]["labels"].clone();
            labels["pod-template-hash"] = hash.into();
            store.rv += 1;
            let waiting = if never {
                json!({"reason": "CrashLoopBackOff", "message": "back-off 10s restarting failed container=app"})
            } else {
                json!({"reason": "ContainerCreating"})
            };
            let pod = json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {
                    "name": name, "namespace": ns, "labels": labels, "uid": format!("pod-{n}"),
                    "resourceVersion": store.rv.to_string(),
                    "annotations": {"fake/deployment": deployment, "fake/ordinal": n.to_string()},
                },
                "spec": template["spec"].clone(),
                "status": {
                    "phase": "Pending", "podIP": format!("10.1.0.{n}"),
                    "conditions": [{"type": "Ready", "status": "False", "reason": "ContainersNotReady",
                                    "message": "containers with unready status: [app]"}],
                    "containerStatuses": [{"name": "app", "image": image, "imageID": "", "ready": false,
                                           "restartCount": 0, "state": {"waiting": waiting}}],
                },
            });
            store
                .objects
                .insert(("pods".into(), ns.into(), name.clone()), pod.clone());
            self.record(&mut store, "pods", ns, "ADDED", pod.clone());
            (name, pod)
        };
        if never {
            return;
        }
        // Then ready (a second event, as the kubelet reports it), having printed its lines.
        let release = pod["metadata"]["labels"]["slipway.dev/release"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        lock(&self.store).logs.insert(
            name.clone(),
            vec![
                "listening on :8080".to_owned(),
                format!("release v{release} up"),
            ],
        );
        self.mark_ready(ns, &name);
    }

    fn mark_ready(&self, ns: &str, name: &str) {
        let mut store = lock(&self.store);
        let key = ("pods".to_owned(), ns.to_owned(), name.to_owned());
        let Some(mut pod) = store.objects.get(&key).cloned() else {
            return;
        };
        store.rv += 1;
        pod["metadata"]["resourceVersion"] = store.rv.to_string().into();
        pod["status"]["phase"] = "Running".into();
        pod["status"]["conditions"] = json!([{"type": "Ready", "status": "True"}]);
        pod["status"]["containerStatuses"][0]["ready"] = true.into();
        pod["status"]["containerStatuses"][0]["state"] = json!({"running": {}});
        store.objects.insert(key, pod.clone());
        self.record(&mut store, "pods", ns, "MODIFIED", pod);
    }
}

fn is_ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}
