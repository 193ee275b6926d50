//! The process target: instances as supervised local processes. It needs nothing installed
//! beyond what the services themselves run with, which makes it the embedded default.
//!
//! Layout of the work directory (`[process] workdir`, outside the platform's own state):
//! - `releases/<service>/<digest-hex>/`: an image unpacked once per digest and service (`app/`
//!   and the image config); see [`artifact`].
//! - `instances/<id>/`: `stdout.log`, `stderr.log` (kept after a stop) and `instance.json`
//!   (the current run: pid, port, start time; removed on stop). The deployer's bookkeeping:
//!   instances write their output through descriptors and never see these files.
//! - `homes/<id>/`: the instance's private directory and `HOME` (removed on stop).
//!
//! Run as root, each service's instances get their own uid and the files above are owned so
//! that no service reads another's ([`users`]); otherwise every instance runs as the deployer's
//! user (a warning at start-up says so).
//!
//! Instances are started in their own process group with a cleared environment: the release's
//! config, the port, `PATH` (a setting), `HOME`, and `SLIPWAY_TARGET_SCOPE=<workdir>` and
//! `SLIPWAY_INSTANCE=<id>`, which let them outlive the deployer and be found again by the next
//! one ([`Target::recover`], [`scope_processes`]).
//!
//! Modules: [`artifact`] (pull and unpack), [`launch`] (command, environment, spawn),
//! [`supervisor`] (wait, restart with backoff, stop), [`logs`] (output tailing), [`scan`]
//! (`/proc`), [`users`] (uids and ownership).

mod artifact;
mod launch;
mod logs;
mod scan;
mod supervisor;
mod users;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use futures::future::BoxFuture;
use serde::Deserialize;
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use self::artifact::Artifacts;
use self::launch::LaunchPlan;
pub use self::scan::scope_processes;
use self::supervisor::{Handle, Run, Supervisor};
pub use self::users::{UidRange, UidSource, Users, running_as_root};
use super::{InstanceSpec, Known, Placement, Target, TargetError, TargetEvent};

/// The settings section of the registry login, as named in errors.
pub const REGISTRY_AUTH: &str = "process.registry_auth";

/// Section `[process]` of the deployer's settings.
#[derive(Debug, Clone, Deserialize)]
pub struct ProcessSettings {
    /// Where releases are unpacked and instances keep their output. Also the scope that tells
    /// this target's processes from any other's.
    pub workdir: PathBuf,
    /// The uids services' instances get when the deployer runs as root (one per service).
    #[serde(default = "default_uid_range")]
    pub uid_range: UidRange,
    /// `PATH` in instances' environment (nothing else of the deployer's environment is passed).
    #[serde(default = "default_path")]
    pub path: String,
    /// The address instances listen on (given their port in `PORT`).
    #[serde(default = "default_bind_host")]
    pub bind_host: String,
    /// Plain HTTP to the OCI registry (a registry on loopback or a trusted network).
    #[serde(default = "default_true")]
    pub registry_insecure: bool,
    /// Login to the OCI registry (section `[process.registry_auth]`): anonymous, basic or bearer.
    #[serde(default)]
    pub registry_auth: slipway_settings::RegistryAuthSettings,
    /// First restart delay after a crash; doubles with each crash in a row.
    #[serde(default = "default_restart_initial_ms")]
    pub restart_initial_ms: u64,
    /// Longest restart delay.
    #[serde(default = "default_restart_max_ms")]
    pub restart_max_ms: u64,
    /// Exits within the window that make a crash loop.
    #[serde(default = "default_crash_loop_restarts")]
    pub crash_loop_restarts: u32,
    /// The crash-loop window; a run longer than it also resets the backoff.
    #[serde(default = "default_crash_loop_window_seconds")]
    pub crash_loop_window_seconds: u64,
    /// Time between SIGTERM and SIGKILL for orphans found at recovery.
    #[serde(default = "default_stop_grace_seconds")]
    pub stop_grace_seconds: u64,
    /// How long output lines are collected before they are sent as one batch.
    #[serde(default = "default_log_batch_ms")]
    pub log_batch_ms: u64,
}

fn default_uid_range() -> UidRange {
    UidRange::new(61000, 61999).unwrap_or_else(|_| unreachable!("a valid range"))
}
fn default_path() -> String {
    "/usr/local/bin:/usr/bin:/bin".into()
}
fn default_bind_host() -> String {
    "127.0.0.1".into()
}
fn default_true() -> bool {
    true
}
fn default_restart_initial_ms() -> u64 {
    500
}
fn default_restart_max_ms() -> u64 {
    30_000
}
fn default_crash_loop_restarts() -> u32 {
    5
}
fn default_crash_loop_window_seconds() -> u64 {
    60
}
fn default_stop_grace_seconds() -> u64 {
    10
}
fn default_log_batch_ms() -> u64 {
    200
}

impl ProcessSettings {
    /// Settings with every default, working in `workdir`.
    pub fn new(workdir: impl Into<PathBuf>) -> Self {
        Self {
            workdir: workdir.into(),
            uid_range: default_uid_range(),
            path: default_path(),
            bind_host: default_bind_host(),
            registry_insecure: true,
            registry_auth: Default::default(),
            restart_initial_ms: default_restart_initial_ms(),
            restart_max_ms: default_restart_max_ms(),
            crash_loop_restarts: default_crash_loop_restarts(),
            crash_loop_window_seconds: default_crash_loop_window_seconds(),
            stop_grace_seconds: default_stop_grace_seconds(),
            log_batch_ms: default_log_batch_ms(),
        }
    }

    fn restart_initial(&self) -> Duration {
        Duration::from_millis(self.restart_initial_ms)
    }
    fn restart_max(&self) -> Duration {
        Duration::from_millis(self.restart_max_ms.max(self.restart_initial_ms))
    }
    fn crash_loop_window(&self) -> Duration {
        Duration::from_secs(self.crash_loop_window_seconds)
    }
    fn stop_grace(&self) -> Duration {
        Duration::from_secs(self.stop_grace_seconds)
    }
    fn log_batch(&self) -> Duration {
        Duration::from_millis(self.log_batch_ms)
    }
}

/// What the supervisors share with the target.
pub(crate) struct Context {
    settings: ProcessSettings,
    /// The canonical workdir.
    scope: PathBuf,
    events: UnboundedSender<TargetEvent>,
    artifacts: Artifacts,
    users: Users,
}

impl Context {
    fn instance_dir(&self, id: Uuid) -> PathBuf {
        self.scope.join("instances").join(id.to_string())
    }

    fn home_dir(&self, id: Uuid) -> PathBuf {
        self.scope.join("homes").join(id.to_string())
    }

    /// The uid `spec`'s service runs as, if not the deployer's.
    async fn user(&self, spec: &InstanceSpec) -> Result<Option<u32>, TargetError> {
        match &self.users {
            Users::Shared => Ok(None),
            Users::PerService(source) => {
                source
                    .uid_for(spec.service_id)
                    .await
                    .map(Some)
                    .map_err(|e| {
                        TargetError::Start(format!("no uid for `{}`: {e}", spec.service_name))
                    })
            }
        }
    }

    /// Fetches the artifact (cached) and works out how to run `spec`.
    async fn plan(&self, spec: &InstanceSpec) -> Result<LaunchPlan, TargetError> {
        let user = self.user(spec).await?;
        let release = self
            .artifacts
            .ensure(&spec.service_name, &spec.image, user)
            .await?;
        LaunchPlan::new(
            spec,
            &release,
            launch::Dirs {
                output: self.instance_dir(spec.instance_id),
                home: self.home_dir(spec.instance_id),
                scope: &self.scope,
            },
            user,
            &self.settings,
        )
    }

    /// Forgets a run stopped on purpose: its record and private directory (output stays).
    fn forget(&self, id: Uuid) {
        launch::remove_record(&self.instance_dir(id));
        let home = self.home_dir(id);
        if let Err(e) = std::fs::remove_dir_all(&home)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %home.display(), error = %e, "cannot remove the instance's home");
        }
    }
}

/// Instances as supervised local processes.
pub struct ProcessTarget {
    ctx: Arc<Context>,
    instances: Mutex<HashMap<Uuid, Handle>>,
    /// Parent of every supervisor's token: dropping the target ends supervision (never the
    /// processes).
    detach: CancellationToken,
}

impl ProcessTarget {
    /// A target working in `settings.workdir` (created if missing), reporting on `events`,
    /// running instances as `users` ([`Users::PerService`] needs root).
    pub fn new(
        settings: ProcessSettings,
        events: UnboundedSender<TargetEvent>,
        users: Users,
    ) -> Result<Self, TargetError> {
        std::fs::create_dir_all(&settings.workdir)?;
        let scope = settings.workdir.canonicalize()?;
        let isolated = matches!(users, Users::PerService(_));
        if isolated {
            if !running_as_root() {
                return Err(TargetError::Start(
                    "one user per service needs the deployer to run as root".into(),
                ));
            }
            users::check_workdir(&scope)?;
        }
        // Isolated, others may pass through the shared directories but list none of them;
        // otherwise only the deployer's user (which every instance shares) gets in at all.
        let passable = if isolated { 0o711 } else { 0o700 };
        users::dir_with(&scope, passable, None)?;
        for (sub, mode) in [
            ("releases", passable),
            ("homes", passable),
            ("instances", 0o700),
        ] {
            users::dir_with(&scope.join(sub), mode, None)?;
        }
        let login = settings
            .registry_auth
            .login(REGISTRY_AUTH)
            .map_err(|e| TargetError::Start(e.to_string()))?;
        let artifacts = Artifacts::new(scope.join("releases"), settings.registry_insecure, login);
        Ok(Self {
            ctx: Arc::new(Context {
                settings,
                scope,
                events,
                artifacts,
                users,
            }),
            instances: Mutex::new(HashMap::new()),
            detach: CancellationToken::new(),
        })
    }

    /// The canonical workdir every instance of this target carries as `SLIPWAY_TARGET_SCOPE`.
    pub fn scope(&self) -> &Path {
        &self.ctx.scope
    }

    /// How many images were pulled from the registry (not served from the cache).
    pub fn pulls(&self) -> u64 {
        self.ctx.artifacts.pulls()
    }

    fn handles(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Handle>> {
        self.instances
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn supervised(&self) -> HashSet<Uuid> {
        self.handles().keys().copied().collect()
    }

    async fn start_instance(&self, spec: InstanceSpec) -> Result<Placement, TargetError> {
        let id = spec.instance_id;
        if self.handles().contains_key(&id) {
            return Err(TargetError::Start(format!("instance {id} already runs")));
        }
        let plan = self.ctx.plan(&spec).await?;
        let launched = launch::launch(&plan)?;
        tracing::info!(instance = %id, pid = launched.pid, address = %launched.placement.address,
            "instance started");
        let placement = launched.placement.clone();
        let supervisor = Supervisor {
            ctx: self.ctx.clone(),
            spec,
            plan: Some(plan),
            restarts: 0,
        };
        let run = Run::Owned {
            child: launched.child,
            pid: launched.pid,
        };
        let handle = supervisor.spawn(run, self.detach.child_token());
        self.handles().insert(id, handle);
        Ok(placement)
    }

    async fn stop_instance(&self, id: Uuid, grace: Duration) {
        let handle = self.handles().remove(&id);
        if let Some(handle) = handle {
            handle.stop(grace).await;
            tracing::info!(instance = %id, "instance stopped");
        }
    }

    async fn recover_instances(&self, known: Vec<Known>) -> Vec<Uuid> {
        let mut dead = Vec::new();
        let mut keep: HashSet<Uuid> = self.supervised();
        for k in known {
            let id = k.spec.instance_id;
            keep.insert(id);
            if self.handles().contains_key(&id) {
                continue;
            }
            let dir = self.ctx.instance_dir(id);
            let record = launch::read_record(&dir);
            let pid = record.as_ref().map(|r| r.pid).or(k.placement.pid);
            let start = record.as_ref().and_then(|r| r.start_time);
            let alive = pid.and_then(|pid| Some((pid, scan::runs_instance(pid, start, id)?)));
            let Some((pid, stat)) = alive else {
                tracing::info!(instance = %id, "known instance is gone");
                launch::remove_record(&dir);
                dead.push(id);
                continue;
            };
            tracing::info!(instance = %id, pid, "adopting a running instance");
            let supervisor = Supervisor {
                ctx: self.ctx.clone(),
                spec: k.spec,
                plan: None,
                restarts: k.restarts,
            };
            let run = Run::Adopted {
                pid,
                start_time: stat.start_time,
            };
            let handle = supervisor.spawn(run, self.detach.child_token());
            self.handles().insert(id, handle);
        }

        let mut orphans: Vec<i32> = scope_processes(&self.ctx.scope)
            .into_iter()
            .filter(|(_, instance)| !keep.contains(instance))
            .filter_map(|(pid, instance)| {
                tracing::warn!(%instance, pid, "stopping an orphan instance");
                scan::stat(pid).map(|s| s.pgid)
            })
            .collect();
        orphans.sort_unstable();
        orphans.dedup();
        scan::terminate_groups(&orphans, self.ctx.settings.stop_grace()).await;
        dead
    }

    async fn detach_all(&self) {
        let handles: Vec<Handle> = self.handles().drain().map(|(_, h)| h).collect();
        for handle in handles {
            handle.detach().await;
        }
    }
}

impl Drop for ProcessTarget {
    fn drop(&mut self) {
        self.detach.cancel();
    }
}

impl Target for ProcessTarget {
    fn kind(&self) -> &'static str {
        "process"
    }

    fn start(&self, spec: InstanceSpec) -> BoxFuture<'_, Result<Placement, TargetError>> {
        Box::pin(self.start_instance(spec))
    }

    fn stop(&self, instance_id: Uuid, grace: Duration) -> BoxFuture<'_, Result<(), TargetError>> {
        Box::pin(async move {
            self.stop_instance(instance_id, grace).await;
            Ok(())
        })
    }

    fn recover(&self, known: Vec<Known>) -> BoxFuture<'_, Result<Vec<Uuid>, TargetError>> {
        Box::pin(async move { Ok(self.recover_instances(known).await) })
    }

    fn detach(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.detach_all())
    }
}
