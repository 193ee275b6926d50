//! One trace per change: a webhook push becomes a build, a release, an auto-deployment and a
//! healthy instance, and the spans every service exports for it share one trace id. The spans
//! are caught by an OTLP/HTTP receiver inside the test (no collector is installable here).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message;
use serde_json::json;
use support::Stack;
use support::deploy::SECRET;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// One exported span, as much of it as the test needs.
#[derive(Debug, Clone)]
struct Span {
    service: String,
    trace_id: String,
    name: String,
    attributes: BTreeMap<String, String>,
}

fn text(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
        .collect()
}

/// An OTLP/HTTP (protobuf) trace receiver on a free port: keeps every span it is sent.
struct Receiver {
    endpoint: String,
    spans: Arc<Mutex<Vec<Span>>>,
}

impl Receiver {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let spans: Arc<Mutex<Vec<Span>>> = Arc::default();
        let kept = spans.clone();
        tokio::spawn(async move {
            while let Ok((socket, _)) = listener.accept().await {
                tokio::spawn(serve(socket, kept.clone()));
            }
        });
        Self { endpoint, spans }
    }

    fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }
}

/// Answers HTTP/1.1 requests on one (kept-alive) connection: each body is an
/// `ExportTraceServiceRequest`.
async fn serve(mut socket: tokio::net::TcpStream, spans: Arc<Mutex<Vec<Span>>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        // Headers, then as much body as they announce.
        let end = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end;
            }
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let length = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(0);
        while buf.len() < end + 4 + length {
            match socket.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body: Vec<u8> = buf.drain(..end + 4 + length).skip(end + 4).collect();
        if head.starts_with("post /v1/traces")
            && let Ok(request) = ExportTraceServiceRequest::decode(body.as_slice())
        {
            let mut kept = spans.lock().unwrap();
            for resource in request.resource_spans {
                let service = resource
                    .resource
                    .as_ref()
                    .map(|r| attributes(&r.attributes))
                    .and_then(|a| a.get("service.name").cloned())
                    .unwrap_or_default();
                // `slipway-gateway` and so on: the binaries' names.
                let service = service
                    .strip_prefix("slipway-")
                    .unwrap_or(&service)
                    .to_owned();
                for scope in resource.scope_spans {
                    for span in scope.spans {
                        kept.push(Span {
                            service: service.clone(),
                            trace_id: hex::encode(&span.trace_id),
                            name: span.name,
                            attributes: attributes(&span.attributes),
                        });
                    }
                }
            }
        }
        let answer =
            b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n";
        if socket.write_all(answer).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_push_is_one_trace_up_to_the_healthy_instance() {
    let receiver = Receiver::start().await;
    let stack = Stack::start_with_env(&[
        (
            "SLIPWAY_TELEMETRY__OTLP_ENDPOINT",
            receiver.endpoint.clone(),
        ),
        // Export every half second instead of every 5 s, so the test waits less.
        ("OTEL_BSP_SCHEDULE_DELAY", "500".to_owned()),
        ("SLIPWAY_DEPLOY__DEFAULT_REPLICAS", "1".to_owned()),
    ])
    .await;
    let repo = stack.hello_service(SECRET).await;
    let res = stack
        .put(
            "/v1/services/hello/environments/prod",
            json!({"target": "process"}),
        )
        .await;
    assert_eq!(res.status(), 201);
    // The deployer knows the service once it consumed the registry's event.
    let policy = slipway_testkit::wait_until(Duration::from_secs(30), || async {
        stack
            .put(
                "/v1/services/hello/environments/prod/policy",
                json!({"auto_deploy": true}),
            )
            .await
            .status()
            == 200
    })
    .await;
    assert!(policy, "the auto-deploy policy was never accepted");

    // The push: webhook -> build -> release v1 -> auto-deploy -> healthy instance.
    let (headers, body) = support::github_push(&repo.url, &repo.head(), SECRET);
    let res = stack.webhook("/v1/webhooks/github", &headers, body).await;
    assert_eq!(res.status(), 202);
    let healthy = slipway_testkit::wait_until(Duration::from_secs(240), || async {
        let state = stack.state("prod").await;
        state["state"]["release"] == 1
            && state["instances"]
                .as_array()
                .is_some_and(|i| !i.is_empty() && i.iter().all(|i| i["health"] == "healthy"))
    })
    .await;
    assert!(
        healthy,
        "v1 never ran healthy: {}\n{}",
        stack.state("prod").await,
        stack.log_text("deployer")
    );

    // The webhook's request span starts the trace (no caller sent a traceparent). It is the
    // test's only request answered 202 (`http.route` cannot tell: the gateway's middleware
    // sees the edge router's catch-all pattern).
    let webhook_trace = || {
        let webhooks: Vec<String> = receiver
            .spans()
            .into_iter()
            .filter(|s| {
                s.service == "gateway"
                    && s.name == "http.request"
                    && s.attributes.get("http.method").map(String::as_str) == Some("POST")
                    && s.attributes.get("http.status").map(String::as_str) == Some("202")
            })
            .map(|s| s.trace_id)
            .collect();
        assert!(webhooks.len() <= 1, "one webhook request: {webhooks:?}");
        webhooks.into_iter().next()
    };
    let services_in = |trace: &str| -> BTreeSet<String> {
        receiver
            .spans()
            .into_iter()
            .filter(|s| s.trace_id == trace)
            .map(|s| s.service)
            .collect()
    };
    let all: BTreeSet<String> = ["gateway", "builder", "registry", "deployer", "monitor"]
        .into_iter()
        .map(String::from)
        .collect();
    let one_trace = slipway_testkit::wait_until(Duration::from_secs(30), || async {
        webhook_trace().is_some_and(|t| services_in(&t).is_superset(&all))
    })
    .await;
    let spans = receiver.spans();
    let Some(trace) = webhook_trace() else {
        panic!(
            "no webhook span among {} exported: {:?}",
            spans.len(),
            spans
                .iter()
                .map(|s| (&s.service, &s.name))
                .collect::<BTreeSet<_>>()
        )
    };
    let mut by_trace: BTreeMap<&str, BTreeSet<(&str, &str)>> = BTreeMap::new();
    for s in &spans {
        by_trace
            .entry(&s.trace_id)
            .or_default()
            .insert((&s.service, &s.name));
    }
    assert!(
        one_trace,
        "services in the webhook's trace {trace}: {:?}; spans by trace: {by_trace:#?}",
        services_in(&trace)
    );
    // The work driven later, from the stored trace context, is in it too: the build and the
    // deployment (whose instance start the monitor consumed, then judged healthy). A drive
    // span is exported when it ends: the deployment may still be finishing.
    let driven = [
        ("builder", "build.drive"),
        ("deployer", "deployment.drive"),
        ("monitor", "consume"),
    ];
    let in_trace = || -> BTreeSet<(String, String)> {
        receiver
            .spans()
            .into_iter()
            .filter(|s| s.trace_id == trace)
            .map(|s| (s.service, s.name))
            .collect()
    };
    let all_driven = slipway_testkit::wait_until(Duration::from_secs(60), || async {
        let seen = in_trace();
        driven
            .iter()
            .all(|(service, name)| seen.contains(&((*service).to_owned(), (*name).to_owned())))
    })
    .await;
    assert!(
        all_driven,
        "{driven:?} not all in the trace: {:#?}\n{}",
        in_trace(),
        stack.log_text("deployer")
    );
}
