//! Targets: where instances run. One trait, several runtimes; [`process`] (supervised local
//! processes) is always there; [`docker`] runs instances as containers on Docker Engines,
//! [`kubernetes`] as pods in clusters, when the deployer's `[targets] enabled` sets them up.
//! [`router`] sends each instance to the target its deployment recorded: the one the registry
//! records for the environment ([`TargetKind`]).
//!
//! A target starts, supervises and stops *instances*. It does not know about deployments: the
//! deployment engine decides how many instances of which release run, and learns what happens to
//! them (restarts, crashes, output) from the [`TargetEvent`]s the target sends on the channel it
//! was built with.

pub mod docker;
pub mod kubernetes;
pub mod process;
pub mod router;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use futures::future::BoxFuture;
use slipway_events::deploy::{LogLine, ReleaseWeight};
use slipway_events::slipway::RunSpec;
use slipway_ids::ServiceId;
use tokio::time::Instant;
use uuid::Uuid;

pub use self::process::ProcessIdentity;
pub use slipway_wire::releases::TargetKind;

/// A settings list given as a TOML list or as one comma-separated string (what an
/// environment variable can carry), entries trimmed, empty ones dropped.
pub(crate) fn comma_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum List {
        One(String),
        Many(Vec<String>),
    }
    let items = match <List as serde::Deserialize>::deserialize(d)? {
        List::One(s) => s.split(',').map(str::to_owned).collect(),
        List::Many(v) => v,
    };
    Ok(items
        .into_iter()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .collect())
}

/// Everything a target needs to run one instance.
#[derive(Clone)]
pub struct InstanceSpec {
    pub instance_id: Uuid,
    pub service_id: ServiceId,
    pub service_name: String,
    pub environment: String,
    /// The target that runs it: its deployment's, recorded on its row.
    pub target: TargetKind,
    /// Release number (given to the instance as `SLIPWAY_RELEASE=v<N>`).
    pub release: i32,
    /// The config version `env` is (Kubernetes names its ConfigMap and Secret after it).
    pub config_version: i32,
    /// Pullable by digest: `host:port/repository@sha256:<hex>`.
    pub image: String,
    /// How to run it; absent: the image config's `Cmd` and `PORT`.
    pub run: Option<RunSpec>,
    /// The release's config: variables and decrypted secrets. Given to the instance's
    /// environment only; never logged (see the `Debug` impl), never stored by the target.
    pub env: BTreeMap<String, String>,
}

impl fmt::Debug for InstanceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InstanceSpec")
            .field("instance_id", &self.instance_id)
            .field("service_name", &self.service_name)
            .field("environment", &self.environment)
            .field("target", &self.target)
            .field("release", &self.release)
            .field("config_version", &self.config_version)
            .field("image", &self.image)
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// Where a started instance runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// `host:port` the edge router and the monitor reach it at.
    pub address: String,
    pub port: u16,
    /// The process that runs it (process target), for bookkeeping and recovery.
    pub process: Option<ProcessIdentity>,
}

impl Placement {
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(|p| p.pid)
    }
}

/// Whether this replica may still act on the instances it supervises (restart them). The
/// deployer's replica loop renews it as long as its liveness row in the database is fresh;
/// once it lapses another replica may adopt the instances, so nothing is restarted any more
/// (a restart then would run a second copy beside the adopter's). Unbounded by default (one
/// replica, tests).
#[derive(Debug, Clone, Default)]
pub struct Lease {
    /// `None`: unbounded; else valid until then.
    until: Arc<Mutex<Option<Instant>>>,
}

impl Lease {
    /// A lease valid until `until` (and renewed from then on).
    pub fn bounded(until: Instant) -> Self {
        Self {
            until: Arc::new(Mutex::new(Some(until))),
        }
    }

    pub fn renew_until(&self, until: Instant) {
        *self.until.lock().unwrap_or_else(PoisonError::into_inner) = Some(until);
    }

    pub fn valid(&self) -> bool {
        self.until
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_none_or(|until| Instant::now() < until)
    }
}

/// An instance the deployer's database says runs, handed to [`Target::adopt`] after a restart
/// of the deployer or when its replica is gone.
#[derive(Debug, Clone)]
pub struct Known {
    pub spec: InstanceSpec,
    pub placement: Placement,
    /// Restarts so far (the backoff continues from there).
    pub restarts: u32,
}

/// What [`Target::adopt`] found.
#[derive(Debug, Default)]
pub struct Adopted {
    /// Known instances found dead: the caller starts them again.
    pub dead: Vec<Uuid>,
    /// Known instances found running, now supervised, where they run according to their run
    /// record (which may be newer than the database's row).
    pub running: Vec<(Uuid, Placement)>,
}

/// What happens to instances, reported by the target as it happens.
#[derive(Debug, Clone, PartialEq)]
pub enum TargetEvent {
    /// The supervisor restarted a crashed instance (a first start is answered by
    /// [`Target::start`] instead). The address may differ from before.
    Restarted {
        instance_id: Uuid,
        placement: Placement,
        restarts: u32,
    },
    /// The instance's process ended without being asked to. It will be restarted after
    /// `restart_in`. `crash_loop`: it crashed too often lately (restarts go on at the longest
    /// backoff; the deployment engine treats the instance as failed).
    Exited {
        instance_id: Uuid,
        /// e.g. `exit code 1`, `killed by signal 9`.
        exit: String,
        restarts: u32,
        restart_in: Duration,
        crash_loop: bool,
        /// The last lines of output, for reasons shown to people.
        last_lines: Vec<String>,
    },
    /// Lines the instance wrote, in order. `first_seq` is the 0-based position of the first
    /// line in the instance's output, so a line sent twice (after a recovery) is recognised.
    Logs {
        instance_id: Uuid,
        first_seq: u64,
        lines: Vec<LogLine>,
    },
    /// The target itself knows whether the instance is ready (Kubernetes: the pod's readiness,
    /// probed by the kubelet), for the incarnation `restarts`.
    Health {
        instance_id: Uuid,
        restarts: u32,
        healthy: bool,
        detail: String,
    },
}

/// A service's traffic split in one environment, as the engine's route step sets it.
#[derive(Debug, Clone, PartialEq)]
pub struct Traffic {
    pub service_id: ServiceId,
    pub service_name: String,
    pub environment: String,
    /// The target the deployment runs on (the one applying the weights if any does).
    pub target: TargetKind,
    /// Relative weights per release; releases absent or at 0 get no traffic.
    pub weights: Vec<ReleaseWeight>,
}

/// Why a target could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// The artifact could not be fetched or unpacked.
    #[error("cannot fetch the artifact {image}: {reason}")]
    Artifact { image: String, reason: String },
    /// The instance could not be started (no command, spawn failed, ...).
    #[error("cannot start the instance: {0}")]
    Start(String),
    #[error("no instance {0} on this target")]
    Unknown(Uuid),
    /// The image pull took longer than allowed.
    #[error("pulling {image} took longer than {seconds} s")]
    PullTimeout { image: String, seconds: u64 },
    /// The start was cancelled (the deployer is shutting down).
    #[error("cancelled")]
    Cancelled,
    /// Another replica was asked to stop the instance and did not in time.
    #[error("instance {0} was not stopped: {1}")]
    NotStopped(Uuid, String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Why this deployer cannot run an environment's instances on the target the registry
/// records for it: a deployment there fails at once with this reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "environment `{environment}` is recorded on the {target} target, which this deployer has \
     not set up: {settings}"
)]
pub struct NotSetUp {
    pub environment: String,
    pub target: TargetKind,
    /// The settings to add, for people.
    pub settings: String,
}

impl NotSetUp {
    /// The target is not among the deployer's `[targets] enabled`.
    pub fn not_enabled(environment: &str, target: TargetKind) -> Self {
        let needs = match target {
            // Never refused: the process target is always set up.
            TargetKind::Process => String::new(),
            TargetKind::Docker => " and the engines in `[docker] hosts` \
                 (or `[docker.environments.<env>] hosts`)"
                .to_owned(),
            TargetKind::Kubernetes => format!(
                " and a `[kubernetes.environments.{environment}]` table (its namespace, \
                 kubeconfig or context)"
            ),
        };
        Self {
            environment: environment.to_owned(),
            target,
            settings: format!(
                "add `{target}` to the deployer's `[targets] enabled` \
                 (SLIPWAY_TARGETS__ENABLED){needs}, or record the environment on another \
                 target (PUT /v1/services/{{name}}/environments/{environment})"
            ),
        }
    }
}

/// A runtime for instances.
pub trait Target: Send + Sync + 'static {
    /// The kind of target it is ([`router::TargetRouter`]: its first target's).
    fn kind(&self) -> TargetKind;

    /// Whether instances of `environment` can run on `target` here: `target` is this target's
    /// kind (a [`router::TargetRouter`] asks the target of that kind), and the target has what
    /// it needs for the environment (Kubernetes: its cluster).
    fn serves(&self, target: TargetKind, environment: &str) -> Result<(), NotSetUp> {
        if target == self.kind() {
            Ok(())
        } else {
            Err(NotSetUp::not_enabled(environment, target))
        }
    }

    /// Fetches the artifact (cached by digest), starts the instance and supervises it from then
    /// on: a crash is reported ([`TargetEvent::Exited`]) and restarted with exponential backoff
    /// ([`TargetEvent::Restarted`]). Answers once the instance is started (not yet healthy:
    /// health is the monitor's business).
    fn start(&self, spec: InstanceSpec) -> BoxFuture<'_, Result<Placement, TargetError>>;

    /// Stops the instance: a polite signal (SIGTERM) to its process group, then a forced stop
    /// after `grace`. No restart follows. An instance this target does not supervise is stopped
    /// through its recorded process identity (only ever the recorded process and its group);
    /// stopping an instance that does not run is not an error.
    fn stop(&self, instance_id: Uuid, grace: Duration) -> BoxFuture<'_, Result<(), TargetError>>;

    /// Where this target's instances run (a machine and a work directory): a replica adopts
    /// only instances of its own node, the only ones whose processes it can see.
    fn node(&self) -> String;

    /// Supervises every `known` instance that still runs (found by its recorded process
    /// identity; no second copy is started), watching it since it is not this process's child.
    /// Answers which were found dead (the caller starts them again) and where the others run.
    fn adopt(&self, known: Vec<Known>) -> BoxFuture<'_, Result<Adopted, TargetError>>;

    /// The instances with a running process on this node (by their run records).
    fn running(&self) -> Vec<Uuid>;

    /// Stops those of `orphans` that still run and that this target does not supervise:
    /// instances [`Target::running`] listed and the database no longer knows (started just
    /// before a crash and never recorded, or whose row is gone). Answers the ids stopped.
    fn sweep(&self, orphans: Vec<Uuid>) -> BoxFuture<'_, Vec<Uuid>>;

    /// The instances this target supervises.
    fn supervised(&self) -> HashSet<Uuid>;

    /// Ends supervision of one instance, leaving it running (another replica owns it now).
    fn release(&self, instance_id: Uuid) -> BoxFuture<'_, ()>;

    /// The lease restarts are made under.
    fn lease(&self) -> Lease;

    /// Stops supervising without stopping the instances (the deployer is shutting down; the
    /// instances keep serving and are adopted by another replica or the next start).
    fn detach(&self) -> BoxFuture<'_, ()>;

    /// Applies the engine's weights where the target routes traffic itself (Kubernetes:
    /// HTTPRoute and stable Service). Targets reached through Slipway's edge router ignore it.
    fn set_weights(&self, traffic: Traffic) -> BoxFuture<'_, Result<(), TargetError>> {
        let _ = traffic;
        Box::pin(async { Ok(()) })
    }
}
