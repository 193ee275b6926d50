//! Process lifecycle: serve HTTP, run background tasks, stop cleanly.
//!
//! Shutdown order on SIGINT/SIGTERM (Kubernetes sends SIGTERM): cancel the token every
//! background task watches (consumers stop polling and commit, relays finish their batch), stop
//! accepting HTTP connections and let in-flight requests finish, then wait for the tasks under
//! a grace timeout.

use std::time::Duration;

use actix_web::dev::Server;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}

/// A running service: its HTTP server and its background tasks.
pub struct Lifecycle {
    server: Server,
    tasks: JoinSet<Result<(), String>>,
    cancel: CancellationToken,
    grace: Duration,
}

impl Lifecycle {
    /// `cancel` is the token the tasks spawned with [`Lifecycle::spawn`] watch.
    pub fn new(server: Server, cancel: CancellationToken, grace: Duration) -> Self {
        Self {
            server,
            tasks: JoinSet::new(),
            cancel,
            grace,
        }
    }

    /// Runs a named background task; its error ends the process (a dead consumer must not
    /// leave a process that looks healthy).
    pub fn spawn<F, E>(&mut self, name: &'static str, task: F)
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display,
    {
        self.tasks
            .spawn(async move { task.await.map_err(|e| format!("{name}: {e}")) });
    }

    /// Serves until `shutdown` resolves, the server stops, or a task fails; then drains.
    pub async fn run_until(mut self, shutdown: impl Future<Output = ()>) -> Result<(), String> {
        let handle = self.server.handle();
        let mut server = tokio::spawn(self.server);
        let outcome = tokio::select! {
            () = shutdown => Ok(()),
            res = &mut server => match res {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(format!("http server: {e}")),
                Err(e) => Err(format!("http server task: {e}")),
            },
            Some(res) = self.tasks.join_next() => match res {
                Ok(Ok(())) => Err("a background task ended unexpectedly".to_owned()),
                Ok(Err(e)) => Err(e),
                Err(e) => Err(format!("background task panicked: {e}")),
            },
        };
        tracing::info!("shutting down");
        self.cancel.cancel();
        let drain = async {
            handle.stop(true).await;
            while let Some(res) = self.tasks.join_next().await {
                match res {
                    Ok(Err(e)) => tracing::error!(error = %e, "task failed while draining"),
                    Err(e) => tracing::error!(error = %e, "task panicked while draining"),
                    Ok(Ok(())) => {}
                }
            }
        };
        if tokio::time::timeout(self.grace, drain).await.is_err() {
            tracing::warn!(grace = ?self.grace, "drain timed out; exiting anyway");
            self.tasks.abort_all();
        }
        outcome
    }
}
