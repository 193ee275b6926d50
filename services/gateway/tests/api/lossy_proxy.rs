//! A TCP proxy in front of a real upstream that loses one answer: the first request whose
//! first bytes start with a given prefix is passed on whole, and once the upstream has started
//! answering (so it did the work) the client's connection is closed without a byte of the
//! answer. Every other connection is passed through untouched. This is a registry that
//! created the service while its answer never reached the gateway.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub struct LossyProxy {
    /// `http://127.0.0.1:<port>`: where to send what is meant for the upstream.
    pub url: String,
    lost: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl LossyProxy {
    /// Proxies to `upstream` (`http://host:port`), losing the answer to the first request
    /// starting with `prefix` (e.g. `POST /v1/services `).
    pub async fn start(upstream: &str, prefix: &'static str) -> Self {
        let target = upstream.trim_start_matches("http://").to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let lost = Arc::new(AtomicBool::new(false));
        let flag = lost.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let target = target.clone();
                let flag = flag.clone();
                tokio::spawn(async move {
                    let _ = relay(client, &target, prefix, &flag).await;
                });
            }
        });
        Self { url, lost, task }
    }

    /// Whether the answer has been lost yet.
    pub fn lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }
}

impl Drop for LossyProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(
    mut client: TcpStream,
    target: &str,
    prefix: &str,
    lost: &AtomicBool,
) -> std::io::Result<()> {
    let mut first = vec![0u8; 64 * 1024];
    let n = client.read(&mut first).await?;
    first.truncate(n);
    let mut upstream = TcpStream::connect(target).await?;
    upstream.write_all(&first).await?;
    let lose = first.starts_with(prefix.as_bytes()) && !lost.swap(true, Ordering::SeqCst);
    if !lose {
        tokio::io::copy_bidirectional(&mut client, &mut upstream).await?;
        return Ok(());
    }
    // Pass the rest of the request on (a body may follow in later segments) until the
    // upstream answers, then drop both connections: the answer is lost.
    let (mut from_client, _to_client) = client.split();
    let (mut from_upstream, mut to_upstream) = upstream.split();
    let forward = tokio::io::copy(&mut from_client, &mut to_upstream);
    let mut answer = [0u8; 1];
    tokio::select! {
        _ = forward => {}
        _ = from_upstream.read_exact(&mut answer) => {}
    }
    Ok(())
}
