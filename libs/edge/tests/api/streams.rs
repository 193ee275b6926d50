//! Answers that outlive the upstream timeout: server-sent events, and upgraded connections
//! (WebSocket) tunnelled both ways.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use actix_web::HttpResponse;
use futures::StreamExt;
use slipway_edge::standin::build::{healthy, route};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{Backend, Router};

/// Events sent this far apart...
const EVERY: Duration = Duration::from_millis(400);
/// ...this many: 2 s in all, twice the router's upstream timeout in these tests.
const EVENTS: usize = 5;

/// A `text/event-stream` of [`EVENTS`] events, one every [`EVERY`].
pub async fn events() -> HttpResponse {
    let stream = futures::stream::unfold(0usize, |n| async move {
        if n == EVENTS {
            return None;
        }
        if n > 0 {
            tokio::time::sleep(EVERY).await;
        }
        let event = actix_web::web::Bytes::from(format!("data: event {n}\n\n"));
        Some((Ok::<_, std::convert::Infallible>(event), n + 1))
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .streaming(stream)
}

/// Reads `res` as it arrives: when the first chunk came, and the whole text.
async fn read_stream(res: reqwest::Response, started: Instant) -> (Duration, String) {
    assert_eq!(res.status(), 200);
    let mut first = None;
    let mut text = String::new();
    let mut body = res.bytes_stream();
    while let Some(chunk) = body.next().await {
        first.get_or_insert_with(|| started.elapsed());
        text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
    }
    (first.unwrap(), text)
}

fn all_events() -> String {
    (0..EVENTS)
        .map(|n| format!("data: event {n}\n\n"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_sent_events_stream_past_the_upstream_timeout() {
    let v1 = Backend::start("v1");
    let router = Router::start(vec![route(
        "hello",
        "prod",
        &[],
        vec![healthy("i1", &v1.address, 1)],
    )])
    .await;

    let started = Instant::now();
    let res = router.get("/apps/hello/prod/events").await;
    assert_eq!(res.headers()["content-type"], "text/event-stream");
    let (first, text) = read_stream(res, started).await;
    assert_eq!(
        text,
        all_events(),
        "every event, none cut by the 1 s timeout"
    );
    assert!(
        started.elapsed() >= EVERY * (EVENTS as u32 - 1),
        "the stream lasted as long as the instance sent it"
    );
    assert!(
        first < EVERY * 2,
        "the first event arrived before the later ones were sent (not buffered): {first:?}"
    );

    // The gateway's own API streams through the router's listener the same way.
    let started = Instant::now();
    let (_, text) = read_stream(router.get("/v1/stream").await, started).await;
    assert_eq!(text, all_events());
}

/// An instance that switches protocols on `Upgrade: websocket` (and only then), then echoes
/// whatever it receives; answers its address.
fn upgrading_instance() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if stream.read(&mut byte).unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
                if !(head.contains("\r\nupgrade: websocket\r\n")
                    && head.contains("\r\nconnection: upgrade\r\n"))
                {
                    let _ = stream.write_all(
                        b"HTTP/1.1 400 Bad Request\r\ncontent-length: 10\r\n\r\nno upgrade",
                    );
                    return;
                }
                let _ = stream.write_all(
                    b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\r\n",
                );
                let mut buf = [0u8; 1024];
                loop {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if stream.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    address
}

/// Reads from `stream` until the end of an HTTP head; answers the head.
async fn read_head(stream: &mut tokio::net::TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).await.unwrap();
        assert!(n > 0, "closed before the end of the head: {head:?}");
        head.push(byte[0]);
    }
    String::from_utf8(head).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_is_passed_through_and_tunnelled_both_ways() {
    let router = Router::start(vec![route(
        "hello",
        "prod",
        &[],
        vec![healthy("i1", &upgrading_instance(), 1)],
    )])
    .await;

    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", router.port))
        .await
        .unwrap();
    stream
        .write_all(
            b"GET /apps/hello/prod/socket HTTP/1.1\r\nhost: localhost\r\nconnection: Upgrade\r\n\
              upgrade: websocket\r\nsec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await
        .unwrap();
    let head = read_head(&mut stream).await.to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(head.contains("\r\nupgrade: websocket\r\n"), "{head}");
    assert!(head.contains("\r\nconnection: upgrade\r\n"), "{head}");

    // Well past the upstream timeout: a tunnel has none.
    for message in ["hello", "again, later"] {
        stream.write_all(message.as_bytes()).await.unwrap();
        let mut echo = vec![0u8; message.len()];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut echo))
            .await
            .expect("the echo came back through the tunnel")
            .unwrap();
        assert_eq!(echo, message.as_bytes());
        tokio::time::sleep(Duration::from_millis(1200)).await;
    }

    // Without the handshake headers the instance refuses: they were forwarded above.
    let res = router.get("/apps/hello/prod/socket").await;
    assert_eq!(res.status(), 400);
}
