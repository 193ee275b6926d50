//! The router's listener: hyper's HTTP/1 server on threads of their own.
//!
//! Each thread runs a single-threaded runtime that accepts from the shared listening socket,
//! serves its connections, and keeps its own pool of connections to instances ([`crate::pool`]),
//! so the request path takes no lock and shares no connection state between threads. A request
//! that is not the router's ([`crate::target`]) goes on, unchanged, to the gateway's own API on
//! a loopback listener.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::task::{JoinSet, LocalSet};
use tokio_util::sync::CancellationToken;

use crate::forward::{self, Worker};
use crate::{Edge, EdgeError};

/// How long open connections may finish their requests at shutdown.
const DRAIN: Duration = Duration::from_secs(10);
/// How often idle instance connections are checked for expiry.
const SWEEP_EVERY: Duration = Duration::from_secs(15);

/// The running listener threads.
///
/// The threads belong to whoever holds this value: they stop when the cancel token given to
/// [`Edge::serve`] fires, and also when the `Front` (or the future of [`Front::wait`]) is
/// dropped, as when the runtime owning the gateway is dropped without being shut down (a test
/// ending). Waiting is asynchronous and parks no thread: a thread blocked joining the router's
/// threads would keep that runtime's shutdown waiting for threads nobody tells to stop.
pub struct Front {
    /// Each thread sends once when it ended normally; one that panicked drops its sender unsent.
    ended: tokio::sync::mpsc::UnboundedReceiver<()>,
    threads: usize,
    /// Tells the threads to stop when the front is dropped.
    _stop: tokio_util::sync::DropGuard,
    port: u16,
}

impl Front {
    /// The port the router listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Resolves when every thread has stopped (after the cancel token fired and connections
    /// drained); an error when one of them panicked. Dropping this future stops the threads.
    pub async fn wait(mut self) -> Result<(), String> {
        let mut ended = 0;
        // `None` once every thread dropped its sender: all of them are done.
        while self.ended.recv().await.is_some() {
            ended += 1;
        }
        match self.threads - ended {
            0 => Ok(()),
            panicked => Err(format!("{panicked} edge router thread(s) panicked")),
        }
    }
}

impl Edge {
    /// Serves `listener` until `cancel` fires: the router's requests are proxied, any other one
    /// goes to the gateway's API at `gateway` (`host:port`; `None` answers 404).
    pub fn serve(
        &self,
        listener: std::net::TcpListener,
        gateway: Option<SocketAddr>,
        cancel: CancellationToken,
    ) -> Result<Front, EdgeError> {
        let port = listener.local_addr().map_err(EdgeError::Serve)?.port();
        listener.set_nonblocking(true).map_err(EdgeError::Serve)?;
        let threads = match self.inner.settings.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        // A child token: the front's own drop stops the threads without cancelling the caller.
        let stop = cancel.child_token();
        let (ended, ended_rx) = tokio::sync::mpsc::unbounded_channel();
        for n in 0..threads {
            let listener = listener.try_clone().map_err(EdgeError::Serve)?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(EdgeError::Serve)?;
            let (edge, stop, ended) = (self.clone(), stop.clone(), ended.clone());
            let fallback = gateway.map(|a| a.to_string().into_boxed_str());
            std::thread::Builder::new()
                .name(format!("edge-{n}"))
                .spawn(move || {
                    let worker = Rc::new(Worker { edge, fallback });
                    LocalSet::new().block_on(&runtime, accept(listener, worker, stop));
                    drop(runtime);
                    let _ = ended.send(());
                })
                .map_err(EdgeError::Serve)?;
        }
        tracing::info!(port, threads, "edge router listening");
        Ok(Front {
            ended: ended_rx,
            threads,
            _stop: stop.drop_guard(),
            port,
        })
    }
}

async fn accept(listener: std::net::TcpListener, worker: Rc<Worker>, cancel: CancellationToken) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!(error = %e, "edge router thread cannot listen");
            return;
        }
    };
    let mut connections = JoinSet::new();
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            _ = sweep.tick() => crate::pool::sweep(),
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    connections.spawn_local(serve(stream, peer, worker.clone(), cancel.clone()));
                }
                Err(e) => {
                    // Out of file descriptors, typically: pause instead of spinning.
                    tracing::warn!(error = %e, "edge router cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    let drained = tokio::time::timeout(DRAIN, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("edge router connections still open after the drain; closing them");
    }
}

async fn serve(
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    worker: Rc<Worker>,
    cancel: CancellationToken,
) {
    let service = service_fn(move |req| forward::handle(worker.clone(), peer, req));
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = cancel.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(error = %e, "client connection ended");
    }
}
