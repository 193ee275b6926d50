//! Clone credentials reach the code host, and nothing else: not the build log, not the API,
//! not the URL. Repository URLs the builder must not use are refused at fetch.

use base64::Engine;
use serde_json::{Value, json};
use slipway_ids::ServiceId;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{spawn_app, spawn_app_with};

/// A stand-in code host: answers every request 404 (so the fetch fails) and hands over the
/// head of the first request it gets.
async fn code_host() -> (String, tokio::sync::oneshot::Receiver<String>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/acme/app.git", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut first = Some(tx);
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let _ = conn
                .write_all(
                    b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                )
                .await;
            if let Some(tx) = first.take() {
                let _ = tx.send(String::from_utf8_lossy(&head).into_owned());
            }
        }
    });
    (url, rx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_reaches_the_code_host_as_a_header_and_nowhere_else() {
    let app = spawn_app().await;
    let service = ServiceId::new();
    let path = format!("/v1/services/{service}/clone-credential");
    let token = "ghp_t0kenOfThisServiceOnly";
    let res = app
        .client
        .put(app.url(&path))
        .json(&json!({"token": token, "username": "deploy-bot"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert!(res.text().await.unwrap().is_empty(), "never shown back");

    let (repository, first_request) = code_host().await;
    let id = app.request_for(service, &repository, None, 1).await;
    let build = app.wait_finished(id).await;
    assert_eq!(build["status"], "failed", "{build}");
    assert_eq!(build["step"], "fetch");

    let head = first_request.await.unwrap();
    let expected = base64::engine::general_purpose::STANDARD.encode(format!("deploy-bot:{token}"));
    let sent = head.lines().find_map(|l| {
        l.strip_prefix("Authorization: ")
            .or_else(|| l.strip_prefix("authorization: "))
    });
    assert_eq!(sent, Some(format!("Basic {expected}").as_str()), "{head}");
    assert!(
        head.starts_with("GET /acme/app.git/info/refs"),
        "git smart HTTP: {head}"
    );

    let logs = app.log_text(id).await;
    assert!(
        logs.contains("using the service's clone credential (token)"),
        "{logs}"
    );
    for shown in [logs, build.to_string()] {
        assert!(
            !shown.contains(token) && !shown.contains(&expected),
            "{shown}"
        );
    }
    // Another service's build does not get it.
    let (repository, first_request) = code_host().await;
    let other = app
        .request_for(ServiceId::new(), &repository, None, 1)
        .await;
    app.wait_finished(other).await;
    let head = first_request.await.unwrap();
    assert!(
        !head.to_ascii_lowercase().contains("authorization"),
        "{head}"
    );

    // Removed once; then there is nothing to remove.
    let res = app.client.delete(app.url(&path)).send().await.unwrap();
    assert_eq!(res.status(), 204);
    let res = app.client.delete(app.url(&path)).send().await.unwrap();
    assert_eq!(res.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_are_refused_with_a_problem_naming_the_field() {
    let app = spawn_app().await;
    let path = format!("/v1/services/{}/clone-credential", ServiceId::new());
    for (body, field) in [
        (json!({"token": "a b"}), "token"),
        (json!({"token": "t", "ssh_key": "k"}), "body"),
        (json!({"ssh_key": "not-a-key-s3cret"}), "ssh_key"),
        (json!({"password": "s3cret"}), "body"),
    ] {
        let res = app
            .client
            .put(app.url(&path))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 422, "{body}");
        let problem: Value = res.json().await.unwrap();
        assert_eq!(problem["errors"][0]["field"], field, "{problem}");
        assert!(!problem.to_string().contains("s3cret"), "{problem}");
    }
    let res = app
        .client
        .put(app.url("/v1/services/not-an-id/clone-credential"))
        .json(&json!({"token": "t"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_builder_refuses_local_and_credential_urls_at_fetch() {
    let app = spawn_app_with(false).await;
    let repo =
        slipway_testkit::git::Repo::from_dir(&slipway_testkit::git::example_dir("hello-python"));
    let id = app.request(&repo.url, None).await;
    let build = app.wait_finished(id).await;
    assert_eq!(build["status"], "failed", "{build}");
    assert_eq!(build["step"], "fetch");
    let reason = build["reason"].as_str().unwrap();
    assert!(reason.contains("allow_local_repositories"), "{reason}");

    let id = app
        .request("https://ghp_urlT0ken@git.invalid/acme/app.git", None)
        .await;
    let build = app.wait_finished(id).await;
    assert_eq!(build["status"], "failed", "{build}");
    assert!(
        build["reason"].as_str().unwrap().contains("credentials"),
        "{build}"
    );
    let logs = app.log_text(id).await;
    for shown in [logs, build.to_string()] {
        assert!(!shown.contains("ghp_urlT0ken"), "{shown}");
    }
    assert_eq!(build["repository"], "https://git.invalid/acme/app.git");
}
