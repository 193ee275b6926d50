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
//! Each run of an instance leads its own process group, with a cleared environment: the
//! release's config, the port, `PATH` (a setting) and `HOME`. Instances outlive the deployer;
//! the next one, another replica of it on this machine ([`Target::adopt`]) or `scripts/down`
//! find them again by the run record in `instances/<id>/` ([`ProcessIdentity`]: pid, group,
//! start time, boot, uid), never by anything the program can rewrite.
//!
//! Modules: [`artifact`] (pull and unpack), [`launch`] (command, environment, spawn, run
//! record), [`supervisor`] (wait, restart with backoff, stop), [`logs`] (output tailing),
//! [`procfs`] (`/proc`, process identity), [`users`] (uids and ownership), [`settings`].

mod artifact;
mod launch;
mod logs;
mod procfs;
mod settings;
mod supervisor;
mod users;

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use self::artifact::Artifacts;
use self::launch::LaunchPlan;
pub use self::procfs::ProcessIdentity;
pub use self::settings::ProcessSettings;
// The restart rules, shared with the Docker target.
pub(crate) use self::supervisor::Backoff;
use self::supervisor::{Handle, Run, Supervisor};
pub use self::users::{UidRange, UidSource, Users, running_as_root};
use super::{Adopted, InstanceSpec, Known, Lease, Placement, Target, TargetError, TargetEvent};

/// The settings section of the registry login, as named in errors.
pub const REGISTRY_AUTH: &str = "process.registry_auth";

/// What the supervisors share with the target.
pub(crate) struct Context {
    settings: ProcessSettings,
    /// The canonical workdir.
    scope: PathBuf,
    events: UnboundedSender<TargetEvent>,
    artifacts: Artifacts,
    users: Users,
    /// Restarts happen only while it is valid (see [`Lease`]).
    lease: Lease,
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
    /// `<host name>:<canonical workdir>`.
    node: String,
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
        let detach = CancellationToken::new();
        let artifacts = Artifacts::new(
            scope.join("releases"),
            settings.registry_insecure,
            login,
            settings.pull_timeout(),
            detach.child_token(),
        );
        let node = format!("{}:{}", hostname(), scope.display());
        Ok(Self {
            ctx: Arc::new(Context {
                settings,
                scope,
                events,
                artifacts,
                users,
                lease: Lease::default(),
            }),
            node,
            instances: Mutex::new(HashMap::new()),
            detach,
        })
    }

    /// The canonical workdir: the instances under it are this target's.
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

    fn supervised_ids(&self) -> HashSet<Uuid> {
        self.handles().keys().copied().collect()
    }

    async fn start_instance(&self, spec: InstanceSpec) -> Result<Placement, TargetError> {
        let id = spec.instance_id;
        if self.handles().contains_key(&id) {
            return Err(TargetError::Start(format!("instance {id} already runs")));
        }
        let plan = self.ctx.plan(&spec).await?;
        let launched = launch::launch(&plan)?;
        tracing::info!(instance = %id, pid = launched.process.pid,
            start_time = launched.process.start_time, address = %launched.placement.address,
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
            process: launched.process,
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
            return;
        }
        // Not supervised here (its replica is gone, or it was never adopted): stopped through
        // its run record, which names only its own processes.
        if let Some(record) = launch::read_record(&self.ctx.instance_dir(id)) {
            if procfs::run_alive(&record.process) {
                procfs::terminate_runs(&[record.process], grace).await;
                tracing::info!(instance = %id, "unsupervised instance stopped");
            }
            self.ctx.forget(id);
        }
    }

    /// The process of `k`, if it still runs: by its run record (the truth: written at every
    /// start, also by a replica that died before its database caught up), else by what the
    /// database recorded. As root, it must also run as the service's uid.
    async fn find(&self, k: &Known) -> Result<Option<(ProcessIdentity, Placement)>, TargetError> {
        let id = k.spec.instance_id;
        let found = match launch::read_record(&self.ctx.instance_dir(id)) {
            Some(record) => {
                let address = record
                    .address
                    .clone()
                    .unwrap_or_else(|| format!("{}:{}", self.ctx.settings.bind_host, record.port));
                let placement = Placement {
                    address,
                    port: record.port,
                    process: Some(record.process.clone()),
                };
                Some((record.process, placement))
            }
            None => k
                .placement
                .process
                .clone()
                .map(|p| (p, k.placement.clone())),
        };
        let Some((mut process, mut placement)) = found else {
            return Ok(None);
        };
        if let Some(uid) = self.ctx.user(&k.spec).await? {
            process.uid = Some(uid);
        }
        placement.process = Some(process.clone());
        Ok(process.is_running().then_some((process, placement)))
    }

    async fn adopt_instances(&self, known: Vec<Known>) -> Result<Adopted, TargetError> {
        let mut adopted = Adopted::default();
        for k in known {
            let id = k.spec.instance_id;
            if self.handles().contains_key(&id) {
                continue;
            }
            let Some((process, placement)) = self.find(&k).await? else {
                tracing::info!(instance = %id, "known instance is gone");
                launch::remove_record(&self.ctx.instance_dir(id));
                adopted.dead.push(id);
                continue;
            };
            tracing::info!(instance = %id, pid = process.pid, "adopting a running instance");
            let supervisor = Supervisor {
                ctx: self.ctx.clone(),
                spec: k.spec,
                plan: None,
                restarts: k.restarts,
            };
            let handle = supervisor.spawn(Run::Adopted { process }, self.detach.child_token());
            self.handles().insert(id, handle);
            adopted.running.push((id, placement));
        }
        Ok(adopted)
    }

    /// Instances with a run record whose process runs.
    fn running_instances(&self) -> Vec<Uuid> {
        scope_instances(&self.ctx.scope)
            .into_iter()
            .map(|(id, _)| id)
            .collect()
    }

    async fn sweep_orphans(&self, orphans: Vec<Uuid>) -> Vec<Uuid> {
        let supervised = self.supervised_ids();
        let mut runs = Vec::new();
        let mut stopped = Vec::new();
        for id in orphans.into_iter().filter(|id| !supervised.contains(id)) {
            if let Some(record) = launch::read_record(&self.ctx.instance_dir(id))
                && procfs::run_alive(&record.process)
            {
                tracing::warn!(instance = %id, pid = record.process.pid, "stopping an orphan instance");
                runs.push(record.process);
                stopped.push(id);
            }
        }
        procfs::terminate_runs(&runs, self.ctx.settings.stop_grace()).await;
        for id in &stopped {
            self.ctx.forget(*id);
        }
        stopped
    }

    async fn release_instance(&self, id: Uuid) {
        let handle = self.handles().remove(&id);
        if let Some(handle) = handle {
            handle.detach().await;
            tracing::info!(instance = %id, "no longer supervised here (another replica owns it)");
        }
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

/// The instances with a running process under `scope` (a process target's canonical workdir),
/// found by their run records alone, as `scripts/down` finds them: no database, no deployer.
pub fn scope_instances(scope: &Path) -> Vec<(Uuid, ProcessIdentity)> {
    let Ok(entries) = std::fs::read_dir(scope.join("instances")) else {
        return Vec::new();
    };
    let mut found: Vec<(Uuid, ProcessIdentity)> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<Uuid>().ok())
        .filter_map(|id| {
            let record = launch::read_record(&scope.join("instances").join(id.to_string()))?;
            procfs::run_alive(&record.process).then_some((id, record.process))
        })
        .collect();
    found.sort_unstable_by_key(|(id, _)| *id);
    found
}

/// This machine's name (the node's first half).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

impl Target for ProcessTarget {
    fn kind(&self) -> &'static str {
        "process"
    }

    fn node(&self) -> String {
        self.node.clone()
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

    fn adopt(&self, known: Vec<Known>) -> BoxFuture<'_, Result<Adopted, TargetError>> {
        Box::pin(self.adopt_instances(known))
    }

    fn sweep(&self, orphans: Vec<Uuid>) -> BoxFuture<'_, Vec<Uuid>> {
        Box::pin(self.sweep_orphans(orphans))
    }

    fn running(&self) -> Vec<Uuid> {
        self.running_instances()
    }

    fn supervised(&self) -> HashSet<Uuid> {
        self.supervised_ids()
    }

    fn release(&self, instance_id: Uuid) -> BoxFuture<'_, ()> {
        Box::pin(self.release_instance(instance_id))
    }

    fn lease(&self) -> Lease {
        self.ctx.lease.clone()
    }

    fn detach(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.detach_all())
    }
}
