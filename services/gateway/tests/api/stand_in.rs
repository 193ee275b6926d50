//! A stand-in for an internal API (registry, deployer, monitor): a real HTTP server on a free
//! port answering what the test told it to, per method and path, and recording every request
//! (with its query) it received. Unknown paths answer a 404 problem, like the real services.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use serde_json::{Value, json};

#[derive(Default)]
struct State {
    /// `"GET /v1/..."` → status and JSON body.
    answers: HashMap<String, (u16, Value)>,
    /// `"GET /v1/...?query"`, in arrival order.
    seen: Vec<String>,
}

pub struct StandIn {
    pub url: String,
    state: Arc<Mutex<State>>,
    handle: actix_web::dev::ServerHandle,
}

impl StandIn {
    pub async fn start() -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
        let state = Arc::new(Mutex::new(State::default()));
        let shared = web::Data::from(state.clone());
        let server = HttpServer::new(move || {
            App::new()
                .app_data(shared.clone())
                .default_service(web::to(answer))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        Self { url, state, handle }
    }

    /// From now on, `method path` answers `status` with `body`.
    pub fn answer(&self, method: &str, path: &str, status: u16, body: Value) {
        self.state
            .lock()
            .unwrap()
            .answers
            .insert(format!("{method} {path}"), (status, body));
    }

    /// The requests received so far, as `METHOD /path?query`.
    pub fn seen(&self) -> Vec<String> {
        self.state.lock().unwrap().seen.clone()
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        let stop = self.handle.stop(false);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(stop);
        }
    }
}

async fn answer(req: HttpRequest, state: web::Data<Mutex<State>>) -> HttpResponse {
    let key = format!("{} {}", req.method(), req.path());
    let found = {
        let mut state = state.lock().unwrap();
        let query = req.query_string();
        state.seen.push(if query.is_empty() {
            key.clone()
        } else {
            format!("{key}?{query}")
        });
        state.answers.get(&key).cloned()
    };
    // A blocking query (`wait=3s`) holds its answer back, as the registry's does.
    let wait = url::form_urlencoded::parse(req.query_string().as_bytes())
        .find(|(k, _)| k == "wait")
        .and_then(|(_, v)| v.strip_suffix('s').and_then(|s| s.parse::<u64>().ok()));
    if let Some(seconds) = wait {
        tokio::time::sleep(Duration::from_secs(seconds)).await;
    }
    let (status, body) = found.unwrap_or_else(|| {
        (
            404,
            json!({"type": "https://slipway.dev/problems/not-found", "title": "Not Found",
                   "status": 404, "detail": format!("the stand-in has nothing at {key}")}),
        )
    });
    let content_type = if status >= 400 {
        "application/problem+json"
    } else {
        "application/json"
    };
    HttpResponse::build(StatusCode::from_u16(status).unwrap())
        .content_type(content_type)
        .body(body.to_string())
}
