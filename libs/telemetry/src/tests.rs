use std::collections::HashMap;

use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing_subscriber::layer::SubscriberExt;

use super::*;

fn trace_id(span: &tracing::Span) -> String {
    span.context().span().span_context().trace_id().to_string()
}

#[test]
fn context_crosses_a_carrier_and_continues_the_trace() {
    let provider = SdkTracerProvider::builder().build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    tracing::subscriber::with_default(subscriber, || {
        let producer = tracing::info_span!("publish");
        let carrier = context_of(&producer);
        let tp = carrier.get("traceparent").expect("traceparent injected");
        assert!(tp.starts_with("00-"), "{tp}");
        assert!(tp.contains(&trace_id(&producer)), "{tp}");

        let consumer = tracing::info_span!("consume");
        set_parent(&consumer, &carrier);
        assert_eq!(trace_id(&consumer), trace_id(&producer));

        let orphan = tracing::info_span!("orphan");
        set_parent(&orphan, &HashMap::new());
        assert_ne!(trace_id(&orphan), trace_id(&producer));
    });
}

#[test]
fn a_span_with_a_stored_parent_continues_its_trace() {
    let provider = SdkTracerProvider::builder().build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    tracing::subscriber::with_default(subscriber, || {
        let request = tracing::info_span!("request");
        let stored = request.in_scope(current_traceparent).expect("traceparent");
        let resumed = span_with_parent("build", Some(&stored));
        assert_eq!(trace_id(&resumed), trace_id(&request));
        let inner = resumed.in_scope(current_traceparent).expect("traceparent");
        assert!(inner.contains(&trace_id(&request)), "{inner}");
        assert_ne!(
            inner, stored,
            "the resumed span is a child, not the request itself"
        );

        let fresh = span_with_parent("build", None);
        assert_ne!(trace_id(&fresh), trace_id(&request));
        let garbled = span_with_parent("build", Some("not-a-traceparent"));
        assert_ne!(trace_id(&garbled), trace_id(&request));
    });
}

/// A span exported through the OTLP/HTTP exporter arrives at a real HTTP receiver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_over_otlp_http() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let received = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        // Read until the headers and the announced body have arrived.
        loop {
            let n = socket.read(&mut chunk).await.unwrap();
            buf.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&buf).to_string();
            if let Some(end) = text.find("\r\n\r\n") {
                let len = text[..end]
                    .lines()
                    .find_map(|l| {
                        let l = l.to_ascii_lowercase();
                        l.strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len || n == 0 {
                    break;
                }
            }
            if n == 0 {
                break;
            }
        }
        socket
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        buf
    });

    let provider = otlp_provider("slipway-test", &endpoint).unwrap();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    tracing::subscriber::with_default(subscriber, || {
        let span = tracing::info_span!("exported-span-name");
        let _entered = span.enter();
    });
    let flush = tokio::task::spawn_blocking(move || provider.force_flush());
    flush.await.unwrap().unwrap();

    let request = received.await.unwrap();
    let text = String::from_utf8_lossy(&request);
    assert!(text.starts_with("POST /v1/traces"), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("content-type: application/x-protobuf")
    );
    assert!(
        text.contains("exported-span-name"),
        "span name in the protobuf body"
    );
    assert!(
        text.contains("slipway-test"),
        "service.name resource in the body"
    );
}
