//! The router's own client against an instance written byte for byte: every way an answer can
//! be framed, informational answers, malformed ones, and its pool of kept-alive connections.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use slipway_edge::EdgeSettings;
use slipway_edge::standin::build::{healthy, route};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{Router, assert_problem};

/// What the scripted instance sends for a request line's path; `close` after it, or not.
fn script(method: &str, path: &str) -> (&'static [u8], bool) {
    match (method, path) {
        ("HEAD", "/length") => (b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", false),
        (_, "/length") => (b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello", false),
        // A Content-Length beside a transfer coding is void: the body is what the chunks say.
        (_, "/chunked") => (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 3\r\n\r\n\
              5;x=1\r\nhello\r\n6\r\n world\r\n0\r\nx-checksum: 1\r\n\r\n",
            false,
        ),
        (_, "/continue") => (
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
            false,
        ),
        // Says it closes, but takes its time to (a pooled connection would be used meanwhile).
        (_, "/says-close") => (
            b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok",
            true,
        ),
        (_, "/until-close") => (b"HTTP/1.1 200 OK\r\n\r\nuntil the end", true),
        (_, "/no-content") => (b"HTTP/1.1 204 No Content\r\n\r\n", false),
        (_, "/two-lengths") => (
            b"HTTP/1.1 200 OK\r\ncontent-length: 5, 6\r\n\r\nhello",
            false,
        ),
        (_, "/cut-short") => (b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhello", true),
        (_, "/garbage") => (b"NOT HTTP AT ALL\r\n\r\n", true),
        // Answers as if it kept the connection, then closes it idle (a keep-alive timeout).
        (_, "/then-idle-close") => (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", true),
        _ => (
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
            false,
        ),
    }
}

/// An instance answering from [`script`] over keep-alive; answers its address and how many
/// connections it accepted.
async fn scripted() -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        let mut chunk = [0u8; 4096];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end + 4);
                    let mut line = head.split(' ');
                    let (method, path) = (line.next().unwrap_or(""), line.next().unwrap_or(""));
                    let (answer, close) = script(method, path);
                    if stream.write_all(answer).await.is_err() || close {
                        match path {
                            "/then-idle-close" => tokio::time::sleep(Duration::from_millis(50)),
                            _ => tokio::time::sleep(Duration::from_millis(300)),
                        }
                        .await;
                        return;
                    }
                }
            });
        }
    });
    (address, accepted)
}

async fn scripted_router() -> (Router, Arc<AtomicUsize>) {
    let (address, accepted) = scripted().await;
    // One router thread: its pool is the only one, whichever connection the client opens
    // (reqwest may open a second one when its first is not back in its pool yet).
    let settings = EdgeSettings {
        upstream_timeout_seconds: 1,
        workers: 1,
        ..EdgeSettings::default()
    };
    let routes = vec![route("raw", "prod", &[], vec![healthy("a", &address, 1)])];
    let router = Router::start_with(settings, routes).await;
    (router, accepted)
}

async fn text(router: &Router, method: reqwest::Method, path: &str) -> (u16, String) {
    let res = router
        .client
        .request(method, router.url(&format!("/apps/raw/prod{path}")))
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_framing_passes_through_on_one_kept_alive_connection() {
    let (router, accepted) = scripted_router().await;
    for _ in 0..5 {
        assert_eq!(
            text(&router, reqwest::Method::GET, "/length").await,
            (200, "hello".into())
        );
    }
    assert_eq!(
        text(&router, reqwest::Method::GET, "/chunked").await,
        (200, "hello world".into())
    );
    assert_eq!(
        text(&router, reqwest::Method::GET, "/continue").await,
        (200, "ok".into())
    );
    assert_eq!(
        text(&router, reqwest::Method::GET, "/no-content").await,
        (204, String::new())
    );
    let head = router
        .client
        .head(router.url("/apps/raw/prod/length"))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(head.headers()["content-length"], "5");
    // All on one connection to the instance, kept alive in the router's pool.
    assert_eq!(accepted.load(Ordering::SeqCst), 1);

    // A body that ends with the connection cannot leave it for another request.
    assert_eq!(
        text(&router, reqwest::Method::GET, "/until-close").await,
        (200, "until the end".into())
    );
    assert_eq!(
        text(&router, reqwest::Method::GET, "/length").await,
        (200, "hello".into())
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    // Nor can one whose answer said `Connection: close`, even before the instance closed it.
    assert_eq!(
        text(&router, reqwest::Method::GET, "/says-close").await,
        (200, "ok".into())
    );
    assert_eq!(
        text(&router, reqwest::Method::GET, "/length").await,
        (200, "hello".into())
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_instance_closed_while_idle_is_not_used_again() {
    let (router, accepted) = scripted_router().await;
    for method in [reqwest::Method::GET, reqwest::Method::POST] {
        assert_eq!(
            text(&router, method.clone(), "/then-idle-close").await,
            (200, "ok".into())
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Even a POST, which is never retried once sent, finds a live connection.
        assert_eq!(
            text(&router, method, "/length").await,
            (200, "hello".into())
        );
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
    assert_eq!(
        router.metric("slipway_edge_requests_total", &[("code", "2xx")]),
        4.0
    );
    assert_eq!(
        router.metric("slipway_edge_upstream_retries_total", &[]),
        0.0,
        "no request had to be sent twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_or_cut_answers_are_bad_gateway_or_a_cut_body() {
    let (router, _) = scripted_router().await;
    for path in ["/two-lengths", "/garbage"] {
        let res = router.get(&format!("/apps/raw/prod{path}")).await;
        let problem = assert_problem(res, 502).await;
        assert_eq!(problem["title"], "Bad Gateway", "{path}: {problem}");
    }
    // The client sees the exchange fail (before or after the head reached it), never a
    // shorter body passed off as whole.
    let url = router.url("/apps/raw/prod/cut-short");
    let cut = match router.client.get(url).send().await {
        Err(_) => true,
        Ok(res) => res.bytes().await.is_err(),
    };
    assert!(cut, "a body cut short arrived as if whole");
}
