//! Real HTTP servers for the router's tests: backends that say who they are and what they saw,
//! the router itself on a free port, and the discovery stand-in feeding it.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use serde_json::{Value, json};
use slipway_edge::standin::DiscoveryStandIn;
use slipway_edge::table::RouteEntry;
use slipway_edge::{Edge, EdgeSettings};
use slipway_testkit::identity::ServiceCaller;
use tokio_util::sync::CancellationToken;

/// A backend answering every request with its name and what it received.
pub struct Backend {
    pub address: String,
    hits: Arc<AtomicUsize>,
    _handle: actix_web::dev::ServerHandle,
}

async fn answer(
    req: HttpRequest,
    body: web::Bytes,
    name: web::Data<(String, Arc<AtomicUsize>)>,
) -> HttpResponse {
    name.1.fetch_add(1, Ordering::Relaxed);
    match req.path() {
        "/status/500" => return HttpResponse::InternalServerError().body("backend failed"),
        "/slow" => tokio::time::sleep(Duration::from_secs(3)).await,
        "/events" => return crate::streams::events().await,
        _ => {}
    }
    let headers: HashMap<String, String> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("?").to_owned()))
        .collect();
    HttpResponse::Ok()
        .insert_header(("x-backend", name.0.as_str()))
        .json(json!({
            "name": name.0,
            "method": req.method().as_str(),
            "path": req.path(),
            "query": req.query_string(),
            "headers": headers,
            "body": String::from_utf8_lossy(&body),
        }))
}

impl Backend {
    pub fn start(name: &str) -> Self {
        let hits = Arc::new(AtomicUsize::new(0));
        let data = web::Data::new((name.to_owned(), hits.clone()));
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .default_service(web::to(answer))
        })
        .workers(1)
        .shutdown_timeout(0)
        .disable_signals()
        .bind(("127.0.0.1", 0))
        .unwrap();
        let port = server.addrs()[0].port();
        let server = server.run();
        let handle = server.handle();
        tokio::spawn(server);
        Self {
            address: format!("127.0.0.1:{port}"),
            hits,
            _handle: handle,
        }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::Relaxed)
    }
}

/// `127.0.0.1:<port>` with nothing listening: connecting is refused.
pub fn closed_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    drop(listener);
    address
}

/// An instance that accepts connections, reads the request and hangs up without answering
/// (what a process killed mid-connection looks like); answers its address and how many
/// connections it took.
pub fn hanging_up() -> (String, Arc<AtomicUsize>) {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            count.fetch_add(1, Ordering::Relaxed);
            let mut buf = [0u8; 4096];
            let _ = stream.read(&mut buf);
            drop(stream);
        }
    });
    (address, accepted)
}

/// The router on its own listener, in front of a stand-in gateway API (`/v1/ping`, problems
/// otherwise) as in the gateway, following a discovery stand-in.
pub struct Router {
    pub port: u16,
    pub edge: Edge,
    pub discovery: DiscoveryStandIn,
    pub metrics: slipway_http::Metrics,
    pub client: reqwest::Client,
    cancel: CancellationToken,
    _handle: actix_web::dev::ServerHandle,
}

impl Router {
    /// Stops the router as the gateway's shutdown does: no new connection is accepted, and the
    /// open ones finish their requests.
    pub fn shut_down(&self) {
        self.cancel.cancel();
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

async fn ping() -> HttpResponse {
    HttpResponse::Ok().body("gateway")
}

impl Router {
    pub async fn start(routes: Vec<RouteEntry>) -> Self {
        Self::start_with(
            EdgeSettings {
                upstream_timeout_seconds: 1,
                max_body_bytes: 1024,
                ..EdgeSettings::default()
            },
            routes,
        )
        .await
    }

    /// With `settings`, routing `hello` in `prod` to `backend` alone.
    pub async fn start_to(settings: EdgeSettings, backend: &Backend) -> Self {
        let routes = vec![slipway_edge::standin::build::route(
            "hello",
            "prod",
            &[],
            vec![slipway_edge::standin::build::healthy(
                "a",
                &backend.address,
                1,
            )],
        )];
        Self::start_with(settings, routes).await
    }

    /// Starts and waits until the first discovery answer is in the table.
    pub async fn start_with(settings: EdgeSettings, routes: Vec<RouteEntry>) -> Self {
        let discovery = DiscoveryStandIn::start(routes).unwrap();
        let metrics = slipway_http::Metrics::new("gateway");
        let credential = slipway_testkit::identity::settings(ServiceCaller::Gateway).credential;
        let edge = Edge::new(&settings, discovery.url(), &credential, &metrics.registry).unwrap();
        let cancel = CancellationToken::new();
        tokio::spawn(edge.clone().follow_discovery(cancel.clone()));
        let server = HttpServer::new(move || {
            App::new()
                .route("/v1/ping", web::get().to(ping))
                .route("/v1/stream", web::get().to(crate::streams::events))
                .default_service(web::to(slipway_http::problem::not_found))
        })
        .workers(1)
        .shutdown_timeout(0)
        .disable_signals()
        .bind(("127.0.0.1", 0))
        .unwrap();
        let gateway = server.addrs()[0];
        let server = server.run();
        let handle = server.handle();
        tokio::spawn(server);
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let front = edge.serve(listener, Some(gateway), cancel.clone()).unwrap();
        let port = front.port();
        tokio::spawn(front.wait());
        let router = Self {
            port,
            edge,
            discovery,
            metrics,
            client: reqwest::Client::builder().no_proxy().build().unwrap(),
            cancel,
            _handle: handle,
        };
        router.wait_index(1).await;
        router
    }

    /// Waits until the router's table was built from discovery index `index`.
    pub async fn wait_index(&self, index: u64) {
        let edge = self.edge.clone();
        assert!(
            slipway_testkit::wait_until(Duration::from_secs(10), || {
                let edge = edge.clone();
                async move { edge.table_index() == Some(index) }
            })
            .await,
            "the router never got discovery index {index} (has {:?})",
            self.edge.table_index()
        );
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// GET `path` with `Host: <host>:<port>`.
    pub async fn get_host(&self, host: &str, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .header("host", format!("{host}:{}", self.port))
            .send()
            .await
            .unwrap()
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    /// The backend's JSON answer to GET `path`, asserting 200.
    pub async fn get_json(&self, path: &str) -> Value {
        let res = self.get(path).await;
        assert_eq!(res.status(), 200, "{path}");
        res.json().await.unwrap()
    }

    /// The value of the sample of metric `name` whose labels include all of `labels`.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let families = self.metrics.registry.gather();
        let Some(family) = families.iter().find(|f| f.name() == name) else {
            return 0.0;
        };
        family
            .get_metric()
            .iter()
            .filter(|m| {
                labels.iter().all(|(k, v)| {
                    m.get_label()
                        .iter()
                        .any(|l| l.name() == *k && l.value() == *v)
                })
            })
            // Only the part matching the family's type is non-zero.
            .map(|m| {
                m.get_counter().get_value()
                    + m.get_gauge().get_value()
                    + m.get_histogram().get_sample_count() as f64
            })
            .sum()
    }
}

/// Asserts `res` is a problem document with `status`; returns it.
pub async fn assert_problem(res: reqwest::Response, status: u16) -> Value {
    assert_eq!(res.status(), status);
    assert_eq!(
        res.headers()["content-type"].to_str().unwrap(),
        slipway_http::problem::PROBLEM_JSON
    );
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["status"], status);
    body
}

/// An instance that answers `200 ok` (keep-alive) as soon as a request's head arrived, without
/// reading its body, then only reads (and discards) what else comes on that connection; answers
/// its address.
pub fn answering_before_the_body() -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                if stream.write_all(answer).is_err() {
                    return;
                }
                while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });
    address
}
