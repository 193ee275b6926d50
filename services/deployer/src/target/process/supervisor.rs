//! Supervision: one task per instance waits for its process to end, reports why, and starts it
//! again after an exponential backoff, until it is asked to stop (terminate the process) or to
//! detach (leave it running for the next deployer).
//!
//! The task owns the process handle, so stopping goes through it: [`Handle::stop`] hands it the
//! grace period and waits for it to finish.

use std::collections::VecDeque;
use std::os::unix::process::ExitStatusExt;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::process::Child;
use tokio::sync::{Mutex, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Context;
use super::launch::{self, LaunchPlan};
use super::logs::{Tail, spawn_tailer};
use super::procfs::{self, ProcessIdentity};
use crate::target::{InstanceSpec, TargetEvent};

/// How often an adopted process (not our child: no exit notification) is checked.
const ADOPTED_POLL: Duration = Duration::from_millis(250);
/// How often a restart waiting for the lease checks it again.
const LEASE_POLL: Duration = Duration::from_millis(250);
/// How long to wait for the kernel after SIGKILL.
const AFTER_KILL: Duration = Duration::from_secs(5);
/// What an adopted process's end is reported as: its parent was the previous deployer, so its
/// status is gone.
pub(crate) const ADOPTED_EXIT: &str = "exited (status unknown: adopted after a deployer restart)";

/// The current run of an instance.
pub(crate) enum Run {
    /// Started by this deployer: its exit status is known.
    Owned {
        child: Child,
        process: ProcessIdentity,
    },
    /// Found running after a deployer restart or taken over from a replica that is gone; told
    /// from a later process that gets the same pid by its recorded identity.
    Adopted { process: ProcessIdentity },
    /// A restart that could not start (artifact gone, spawn failed): counts as a crash.
    Failed(String),
}

impl Run {
    /// Waits for the run to end; answers how it ended. Whatever the leader left behind in its
    /// group (children it forked) is stopped too: the run is over, and the next one must not
    /// run beside its remains.
    async fn ended(&mut self, grace: Duration) -> String {
        let (exit, process) = match self {
            Run::Owned { child, process } => match child.wait().await {
                Ok(status) => (describe(status), process),
                Err(e) => (format!("status unknown: {e}"), process),
            },
            Run::Adopted { process } => loop {
                if !process.is_running() {
                    break (ADOPTED_EXIT.to_owned(), process);
                }
                tokio::time::sleep(ADOPTED_POLL).await;
            },
            Run::Failed(reason) => return reason.clone(),
        };
        procfs::terminate_runs(std::slice::from_ref(process), grace).await;
        exit
    }

    /// SIGTERM to the group, up to `grace` for it to end, then SIGKILL.
    async fn terminate(self, grace: Duration) {
        match self {
            Run::Owned { mut child, process } => {
                let deadline = Instant::now() + grace;
                procfs::signal_run(&process, Signal::SIGTERM);
                let exited = tokio::time::timeout_at(deadline, child.wait())
                    .await
                    .is_ok();
                if exited {
                    // The leader is gone; its children in the group get the rest of the grace.
                    let left = deadline.saturating_duration_since(Instant::now());
                    procfs::wait_for(left, || !procfs::run_alive(&process)).await;
                } else {
                    let _ = child.start_kill();
                }
                if procfs::run_alive(&process) {
                    procfs::signal_run(&process, Signal::SIGKILL);
                }
                if !exited {
                    let _ = tokio::time::timeout(AFTER_KILL, child.wait()).await;
                }
                procfs::wait_for(AFTER_KILL, || !procfs::run_alive(&process)).await;
            }
            Run::Adopted { process } => procfs::terminate_runs(&[process], grace).await,
            Run::Failed(_) => {}
        }
    }
}

/// `exit code N` or `killed by signal N`.
fn describe(status: std::process::ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => "exited".to_owned(),
    }
}

/// Restart delays: `initial × 2^k` for the k-th crash in a row, capped at `max`; the streak
/// resets once a run lasted longer than `window`. `crash_loop` when `limit` exits fell within
/// the last `window`: restarts go on, at `max`.
#[derive(Debug)]
pub(crate) struct Backoff {
    initial: Duration,
    max: Duration,
    window: Duration,
    limit: usize,
    streak: u32,
    exits: VecDeque<Instant>,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration, window: Duration, limit: u32) -> Self {
        Self {
            initial,
            max,
            window,
            limit: limit.max(1) as usize,
            streak: 0,
            exits: VecDeque::new(),
        }
    }

    /// Records an exit after a run of `ran_for`; answers the delay before the next start and
    /// whether the instance is crash-looping.
    pub fn on_exit(&mut self, ran_for: Duration, now: Instant) -> (Duration, bool) {
        if ran_for >= self.window {
            self.streak = 0;
        }
        self.exits.push_back(now);
        while self
            .exits
            .front()
            .is_some_and(|t| now.duration_since(*t) > self.window)
        {
            self.exits.pop_front();
        }
        let crash_loop = self.exits.len() >= self.limit;
        let delay = if crash_loop {
            self.max
        } else {
            self.initial
                .saturating_mul(2u32.saturating_pow(self.streak))
                .min(self.max)
        };
        self.streak = self.streak.saturating_add(1);
        (delay, crash_loop)
    }
}

/// What a supervisor is told.
enum Order {
    Stop,
    Detach,
}

/// The deployer's side of a supervisor task.
pub(crate) struct Handle {
    stop: oneshot::Sender<Duration>,
    detach: CancellationToken,
    task: JoinHandle<()>,
}

impl Handle {
    /// Stops the instance (no restart follows) and waits until it is gone.
    pub async fn stop(self, grace: Duration) {
        let _ = self.stop.send(grace);
        let _ = self.task.await;
    }

    /// Ends supervision, leaving the process running.
    pub async fn detach(self) {
        self.detach.cancel();
        let _ = self.task.await;
    }
}

/// One instance under supervision.
pub(crate) struct Supervisor {
    pub ctx: Arc<Context>,
    pub spec: InstanceSpec,
    /// Worked out at the first start; after a recovery, at the first restart.
    pub plan: Option<LaunchPlan>,
    pub restarts: u32,
}

impl Supervisor {
    /// Starts supervising `run`. `detach` is a child of the target's token.
    pub fn spawn(self, run: Run, detach: CancellationToken) -> Handle {
        let (stop, stop_rx) = oneshot::channel();
        let token = detach.clone();
        let task = tokio::spawn(async move {
            let id = self.spec.instance_id;
            let dir = self.ctx.instance_dir(id);
            let settings = &self.ctx.settings;
            let tail = Tail::new(id, &dir, settings.log_batch(), self.ctx.events.clone());
            let tail = Arc::new(Mutex::new(tail));
            let tailing = token.child_token();
            let tailer = spawn_tailer(tail.clone(), tailing.clone());
            self.run(run, stop_rx, token, &tail).await;
            tailing.cancel();
            let _ = tailer.await;
        });
        Handle { stop, detach, task }
    }

    async fn run(
        mut self,
        mut run: Run,
        mut stop: oneshot::Receiver<Duration>,
        detach: CancellationToken,
        tail: &Mutex<Tail>,
    ) {
        let id = self.spec.instance_id;
        let settings = &self.ctx.settings;
        let mut backoff = Backoff::new(
            settings.restart_initial(),
            settings.restart_max(),
            settings.crash_loop_window(),
            settings.crash_loop_restarts,
        );
        let grace = settings.stop_grace();
        let mut started = Instant::now();
        loop {
            // Biased: an order that arrives as the process ends wins, so a stopped instance
            // is never reported as crashed.
            let exit = tokio::select! {
                biased;
                order = &mut stop => {
                    if let Ok(grace) = order {
                        run.terminate(grace).await;
                        tail.lock().await.finish();
                        self.ctx.forget(id);
                    }
                    return;
                }
                _ = detach.cancelled() => return,
                exit = run.ended(grace) => exit,
            };

            let last_lines = tail.lock().await.finish();
            let (restart_in, crash_loop) = backoff.on_exit(started.elapsed(), Instant::now());
            tracing::warn!(instance = %id, %exit, restarts = self.restarts, ?restart_in, crash_loop,
                "instance exited; restarting");
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
                    // Nothing runs during the backoff: stopping is forgetting.
                    self.ctx.forget(id);
                    return;
                }
                Some(Order::Detach) => return,
            }
            run = self.restart().await;
            started = Instant::now();
        }
    }

    /// Starts the next run, reported as [`TargetEvent::Restarted`].
    async fn restart(&mut self) -> Run {
        let plan = match &self.plan {
            Some(plan) => plan.clone(),
            None => match self.ctx.plan(&self.spec).await {
                Ok(plan) => self.plan.insert(plan).clone(),
                Err(e) => return Run::Failed(format!("cannot restart: {e}")),
            },
        };
        match launch::launch(&plan) {
            Ok(launched) => {
                self.restarts += 1;
                let _ = self.ctx.events.send(TargetEvent::Restarted {
                    instance_id: self.spec.instance_id,
                    placement: launched.placement,
                    restarts: self.restarts,
                });
                Run::Owned {
                    child: launched.child,
                    process: launched.process,
                }
            }
            Err(e) => Run::Failed(format!("cannot restart: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_caps_and_detects_crash_loops() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), ms(500), Duration::from_secs(60), 5);
        let t = Instant::now();
        let delays: Vec<_> = (0..6).map(|i| b.on_exit(ms(10), t + ms(i))).collect();
        assert_eq!(
            delays,
            vec![
                (ms(100), false),
                (ms(200), false),
                (ms(400), false),
                (ms(500), false),
                (ms(500), true),
                (ms(500), true),
            ]
        );
        // A long healthy run resets the streak; old exits leave the window.
        let later = t + Duration::from_secs(120);
        assert_eq!(b.on_exit(Duration::from_secs(100), later), (ms(100), false));
    }
}
