//! Metrics labels come from closed sets: callers choosing methods and paths cannot grow the
//! number of series (and so the process's memory).

use futures::StreamExt;

use crate::helpers::spawn_with;

const METHODS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_random_methods_and_paths_leave_the_series_bounded() {
    let app = spawn_with(false).await;
    let sent = futures::stream::iter(0..1000)
        .map(|i| {
            let token = format!("M{}", uuid::Uuid::new_v4().simple()).to_uppercase();
            let method = reqwest::Method::from_bytes(token.as_bytes()).unwrap();
            app.client
                .request(method, app.url(&format!("/probe/{i}/{token}")))
                .send()
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    for res in &sent {
        let res = res.as_ref().unwrap();
        assert!(res.status().is_client_error(), "{}", res.status());
    }

    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("slipway_http_requests_total{"))
        .collect();
    assert!(series.len() < 10, "{series:#?}");
    for line in &series {
        assert!(
            METHODS
                .iter()
                .any(|m| line.contains(&format!(r#"method="{m}""#))),
            "{line}"
        );
        // The matched pattern (the edge router's catch-all here) or `unmatched`.
        assert!(!line.contains("/probe/"), "no raw path: {line}");
    }
    let others: u64 = series
        .iter()
        .filter(|l| l.contains(r#"method="other""#))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(others, 1000, "{series:#?}");
}
