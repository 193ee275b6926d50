//! Supervision of one container, by Slipway rather than the engine (whose restart policy is
//! `no`): a task waits for the container to stop, reports why ([`TargetEvent::Exited`]) and
//! starts the same container again after the process target's backoff
//! ([`TargetEvent::Restarted`], with the new address: a published port changes), until it is
//! asked to stop (`docker stop -t <grace>`, then removal) or to detach (it keeps running).

use std::sync::Arc;
use std::time::Duration;

use bollard::errors::Error as DockerError;
use bollard::models::ContainerState;
use bollard::query_parameters::{
    RemoveContainerOptionsBuilder, StopContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use futures::StreamExt;
use tokio::sync::{Mutex, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Context;
use super::engine::{Host, not_found, not_modified};
use super::logs::{Tail, follow};
use crate::target::process::Backoff;
use crate::target::{InstanceSpec, Placement, TargetError, TargetEvent};

/// How often a restart waiting for the lease checks it again.
const LEASE_POLL: Duration = Duration::from_millis(250);
/// How long to wait after a lost connection to the engine before looking again.
const ENGINE_RETRY: Duration = Duration::from_secs(1);
/// How long the output of an ended run may take to arrive in full.
const LOG_DRAIN: Duration = Duration::from_secs(3);

/// What a supervisor is told.
enum Order {
    Stop,
    Detach,
}

/// The target's side of a supervisor task.
pub(crate) struct Handle {
    stop: oneshot::Sender<Duration>,
    detach: CancellationToken,
    task: JoinHandle<()>,
    /// The engine it runs on (an index into the target's hosts) and its service and
    /// environment, for spreading instances.
    pub host: usize,
    pub group: (String, String),
}

impl Handle {
    /// Stops the container (no restart follows), removes it and waits until it is gone.
    pub async fn stop(self, grace: Duration) {
        let _ = self.stop.send(grace);
        let _ = self.task.await;
    }

    /// Ends supervision, leaving the container running.
    pub async fn detach(self) {
        self.detach.cancel();
        let _ = self.task.await;
    }
}

/// One instance under supervision.
pub(crate) struct Supervisor {
    pub ctx: Arc<Context>,
    pub spec: InstanceSpec,
    pub host: Arc<Host>,
    pub host_index: usize,
    /// The container's id.
    pub container: String,
    pub restarts: u32,
}

impl Supervisor {
    /// Starts supervising the running container. `detach` is a child of the target's token.
    pub fn spawn(self, detach: CancellationToken) -> Handle {
        let (stop, stop_rx) = oneshot::channel();
        let token = detach.clone();
        let host = self.host_index;
        let group = (
            self.spec.service_name.clone(),
            self.spec.environment.clone(),
        );
        let task = tokio::spawn(self.run(stop_rx, token));
        Handle {
            stop,
            detach,
            task,
            host,
            group,
        }
    }

    async fn run(mut self, mut stop: oneshot::Receiver<Duration>, detach: CancellationToken) {
        let id = self.spec.instance_id;
        let settings = &self.ctx.settings;
        let tail = Arc::new(Mutex::new(Tail::new(
            id,
            settings.log_batch(),
            self.ctx.events.clone(),
        )));
        let mut backoff = Backoff::new(
            settings.restart_initial(),
            settings.restart_max(),
            settings.crash_loop_window(),
            settings.crash_loop_restarts,
        );
        let mut follower = Some(self.follow(&tail));
        let mut started = Instant::now();
        let mut failed: Option<String> = None;
        loop {
            let exit = match failed.take() {
                Some(reason) => reason,
                // Biased: an order that arrives as the container stops wins, so a stopped
                // instance is never reported as crashed.
                None => tokio::select! {
                    biased;
                    order = &mut stop => {
                        if let Ok(grace) = order {
                            remove(&self.host, &self.container, Some(grace)).await;
                            drain(follower.take()).await;
                            tail.lock().await.finish();
                        }
                        abort(follower.take());
                        return;
                    }
                    _ = detach.cancelled() => {
                        abort(follower.take());
                        tail.lock().await.flush();
                        return;
                    }
                    exit = ended(&self.host, &self.container) => exit,
                },
            };
            drain(follower.take()).await;
            let last_lines = tail.lock().await.finish();
            let (restart_in, crash_loop) = backoff.on_exit(started.elapsed(), Instant::now());
            tracing::warn!(instance = %id, %exit, restarts = self.restarts, ?restart_in,
                crash_loop, "container exited; restarting");
            let _ = self.ctx.events.send(TargetEvent::Exited {
                instance_id: id,
                exit,
                restarts: self.restarts,
                restart_in,
                crash_loop,
                last_lines,
            });

            let mut wait = restart_in;
            let order = loop {
                let order = tokio::select! {
                    biased;
                    order = &mut stop => Some(order.map_or(Order::Detach, |_| Order::Stop)),
                    _ = detach.cancelled() => Some(Order::Detach),
                    _ = tokio::time::sleep(wait) => None,
                };
                // Restarts only under a valid lease: once it lapsed, another replica may have
                // adopted the instance and restarted it already.
                if order.is_some() || self.ctx.lease.valid() {
                    break order;
                }
                wait = LEASE_POLL;
            };
            match order {
                None => {}
                Some(Order::Stop) => {
                    // Nothing runs during the backoff: stopping is removing.
                    remove(&self.host, &self.container, None).await;
                    return;
                }
                Some(Order::Detach) => return,
            }
            started = Instant::now();
            match self.restart(&detach).await {
                Ok(placement) => {
                    self.restarts += 1;
                    let _ = self.ctx.events.send(TargetEvent::Restarted {
                        instance_id: id,
                        placement,
                        restarts: self.restarts,
                    });
                    follower = Some(self.follow(&tail));
                }
                Err(e) => failed = Some(format!("cannot restart: {e}")),
            }
        }
    }

    fn follow(&self, tail: &Arc<Mutex<Tail>>) -> JoinHandle<()> {
        follow(
            self.host.docker.clone(),
            self.container.clone(),
            tail.clone(),
        )
    }

    /// Starts the container again (created anew if someone removed it); answers where it
    /// runs now.
    async fn restart(&mut self, cancel: &CancellationToken) -> Result<Placement, TargetError> {
        match self
            .host
            .docker
            .start_container(&self.container, None)
            .await
        {
            Ok(()) => {}
            Err(e) if not_modified(&e) => {}
            Err(e) if not_found(&e) => {
                tracing::warn!(instance = %self.spec.instance_id,
                    "the container is gone; creating it again");
                self.container = self.ctx.create(&self.host, &self.spec, cancel).await?;
                self.host
                    .docker
                    .start_container(&self.container, None)
                    .await
                    .map_err(|e| TargetError::Start(e.to_string()))?;
            }
            Err(e) => return Err(TargetError::Start(e.to_string())),
        }
        self.ctx.placement(&self.host, &self.container).await
    }
}

/// Waits for the run to end (through lost connections to the engine); answers how it ended.
async fn ended(host: &Host, container: &str) -> String {
    loop {
        let options = WaitContainerOptionsBuilder::default()
            .condition("not-running")
            .build();
        let waited = std::pin::pin!(host.docker.wait_container(container, Some(options)))
            .next()
            .await;
        match waited {
            Some(Ok(_)) | Some(Err(DockerError::DockerContainerWaitError { .. })) => {}
            Some(Err(e)) if not_found(&e) => return "the container was removed".into(),
            other => {
                let why = other.map_or_else(|| "no answer".to_owned(), |r| format!("{r:?}"));
                tracing::warn!(container, engine = %host.url, error = %why,
                    "lost the wait on the container; looking again");
                tokio::time::sleep(ENGINE_RETRY).await;
            }
        }
        match host.docker.inspect_container(container, None).await {
            Ok(inspect) => {
                let state = inspect.state.unwrap_or_default();
                if state.running != Some(true) {
                    return describe(&state);
                }
            }
            Err(e) if not_found(&e) => return "the container was removed".into(),
            Err(e) => {
                tracing::warn!(container, engine = %host.url, error = %e, "the engine does not answer");
                tokio::time::sleep(ENGINE_RETRY).await;
            }
        }
    }
}

/// `exit code N`, `killed by signal N` (an exit code above 128, as the engine reports
/// signals), or `killed: out of memory`.
pub(crate) fn describe(state: &ContainerState) -> String {
    let code = state.exit_code.unwrap_or(-1);
    let mut exit = if state.oom_killed == Some(true) {
        "killed: out of memory".to_owned()
    } else if code > 128 && code < 128 + 65 {
        format!("killed by signal {}", code - 128)
    } else {
        format!("exit code {code}")
    };
    if let Some(error) = state.error.as_deref().filter(|e| !e.is_empty()) {
        exit.push_str(&format!(" ({error})"));
    }
    exit
}

/// Stops the container (`docker stop -t <grace>`: SIGTERM, then SIGKILL) if `grace` is given,
/// then removes it. A container already gone is no error.
pub(crate) async fn remove(host: &Host, container: &str, grace: Option<Duration>) {
    if let Some(grace) = grace {
        let seconds = i32::try_from(grace.as_secs_f64().ceil() as u64).unwrap_or(i32::MAX);
        let options = StopContainerOptionsBuilder::default().t(seconds).build();
        match host.docker.stop_container(container, Some(options)).await {
            Ok(()) => {}
            Err(e) if not_found(&e) || not_modified(&e) => {}
            Err(e) => {
                tracing::warn!(container, engine = %host.url, error = %e, "docker stop failed; removing by force")
            }
        }
    }
    let options = RemoveContainerOptionsBuilder::default().force(true).build();
    match host.docker.remove_container(container, Some(options)).await {
        Ok(()) => {}
        Err(e) if not_found(&e) => {}
        // 409: a removal already under way.
        Err(e) => {
            tracing::warn!(container, engine = %host.url, error = %e, "cannot remove the container")
        }
    }
}

/// Lets a follower read the rest of an ended run's output.
async fn drain(follower: Option<JoinHandle<()>>) {
    if let Some(mut follower) = follower
        && tokio::time::timeout(LOG_DRAIN, &mut follower)
            .await
            .is_err()
    {
        follower.abort();
    }
}

fn abort(follower: Option<JoinHandle<()>>) {
    if let Some(follower) = follower {
        follower.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_are_described_like_the_process_targets() {
        let state = |code, oom| ContainerState {
            exit_code: Some(code),
            oom_killed: Some(oom),
            ..Default::default()
        };
        assert_eq!(describe(&state(3, false)), "exit code 3");
        assert_eq!(describe(&state(137, false)), "killed by signal 9");
        assert_eq!(describe(&state(137, true)), "killed: out of memory");
    }
}
