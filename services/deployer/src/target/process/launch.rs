//! Starting one run of an instance: the command, working directory and environment worked out
//! once per instance ([`LaunchPlan`]), then a fresh port and a spawned child per (re)start.
//!
//! Each run leads its own process group and is recorded in
//! `<workdir>/instances/<id>/instance.json` (owner-only: pid, process group, start time, boot,
//! uid, port; see [`ProcessIdentity`]) so that a deployer started later, another replica or
//! `scripts/down` finds it and tells it from an unrelated process that got the same pid, without
//! the database and whatever the program does to its title or environment.
//!
//! The environment is cleared: an instance gets `PATH` (from the settings) and `HOME` (its
//! private directory) unless its image's `Env` or the release's config say otherwise, then those,
//! its port, and what it is (`SLIPWAY_INSTANCE`, `SLIPWAY_SERVICE`, `SLIPWAY_ENVIRONMENT`,
//! `SLIPWAY_RELEASE`), which nothing else can override. Nothing of the deployer's own environment
//! (database passwords, keys, its work directory) is passed on.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::net::{SocketAddr, TcpListener};
use std::path::{Component, Path, PathBuf};
use std::process::Stdio;

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::process::Child;
use uuid::Uuid;

use super::artifact::Release;
use super::logs::{STDERR, STDOUT};
use super::procfs::ProcessIdentity;
use super::{ProcessSettings, users};
use crate::target::{InstanceSpec, Placement, TargetError};

const RECORD: &str = "instance.json";

/// Where an instance's files go.
pub(crate) struct Dirs {
    /// Output files and the run record (the deployer's).
    pub output: PathBuf,
    /// The instance's private directory, its `HOME`.
    pub home: PathBuf,
}

/// How to run an instance, fixed for its lifetime (restarts reuse it with a new port).
#[derive(Debug, Clone)]
pub(crate) struct LaunchPlan {
    program: PathBuf,
    args: Vec<String>,
    cwd: PathBuf,
    /// `PATH`, `HOME`, the image's and the release's variables.
    env: BTreeMap<String, String>,
    /// Set last, after the port: what the instance is, which its config cannot override.
    markers: BTreeMap<&'static str, String>,
    instance: Uuid,
    port_env: String,
    bind_host: String,
    /// `<workdir>/instances/<id>`: output files and the run record.
    pub dir: PathBuf,
    /// `<workdir>/homes/<id>`: the instance's own directory.
    home: PathBuf,
    /// The service's uid (= gid), when it is not the deployer's.
    user: Option<u32>,
}

impl LaunchPlan {
    /// Works out how to run `spec` from its unpacked `release`.
    pub fn new(
        spec: &InstanceSpec,
        release: &Release,
        dirs: Dirs,
        user: Option<u32>,
        settings: &ProcessSettings,
    ) -> Result<Self, TargetError> {
        let image = release.config.config.clone().unwrap_or_default();
        let command = match &spec.run {
            Some(run) => run.command.to_vec(),
            _ => {
                let mut command = image.entrypoint.clone().unwrap_or_default();
                command.extend(image.cmd.clone().unwrap_or_default());
                command
            }
        };
        let Some((program, args)) = command.split_first() else {
            return Err(TargetError::Start(
                "no command: the release's run spec and the image's Cmd are both empty".into(),
            ));
        };

        // The image's working directory (`/app`) lives under the release root.
        let cwd = match image.working_dir.as_deref().filter(|w| !w.is_empty()) {
            Some(wd) => {
                let relative: PathBuf = Path::new(wd)
                    .components()
                    .filter(|c| !matches!(c, Component::RootDir | Component::CurDir))
                    .collect();
                if relative
                    .components()
                    .any(|c| !matches!(c, Component::Normal(_)))
                {
                    return Err(TargetError::Start(format!(
                        "the image's WorkingDir `{wd}` leaves the image"
                    )));
                }
                release.root.join(relative)
            }
            None => release.root.join("app"),
        };
        // A relative program with a slash (`./run.sh`) means the working directory's.
        let program = Path::new(program);
        let program = if program.is_relative() && program.components().count() > 1 {
            cwd.join(program)
        } else {
            program.to_owned()
        };

        // `PATH` and `HOME` first: the image and the release's config may set their own.
        let mut env = BTreeMap::from([
            ("PATH".to_owned(), settings.path.clone()),
            ("HOME".to_owned(), dirs.home.to_string_lossy().into_owned()),
        ]);
        // A base image's PATH names the base's directories, which are not unpacked here.
        let base_path = image.has_base();
        for entry in image.env.iter().flatten() {
            if let Some((k, v)) = entry.split_once('=')
                && !(base_path && k == "PATH")
            {
                env.insert(k.to_owned(), v.to_owned());
            }
        }
        env.extend(spec.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        let markers = BTreeMap::from([
            ("SLIPWAY_SERVICE", spec.service_name.clone()),
            ("SLIPWAY_ENVIRONMENT", spec.environment.clone()),
            ("SLIPWAY_RELEASE", format!("v{}", spec.release)),
            ("SLIPWAY_INSTANCE", spec.instance_id.to_string()),
        ]);

        Ok(Self {
            program,
            args: args.to_vec(),
            cwd,
            env,
            markers,
            instance: spec.instance_id,
            port_env: spec
                .run
                .as_ref()
                .map_or_else(|| "PORT".to_owned(), |r| r.port_env.to_string()),
            bind_host: settings.bind_host.clone(),
            dir: dirs.output,
            home: dirs.home,
            user,
        })
    }
}

/// A started run.
#[derive(Debug)]
pub(crate) struct Launched {
    pub child: Child,
    pub process: ProcessIdentity,
    pub placement: Placement,
}

/// What `instance.json` holds (`scripts/down` reads it too: keep the field names).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct RunRecord {
    /// Absent in records written before it was recorded.
    #[serde(default)]
    pub instance: Option<Uuid>,
    #[serde(flatten)]
    pub process: ProcessIdentity,
    pub port: u16,
    /// `IP:port` it was announced at (absent in older records: then `bind_host:port`).
    #[serde(default)]
    pub address: Option<String>,
    pub started_at: DateTime<Utc>,
}

/// Starts one run: a free port, output appended to the instance's files, its own process group,
/// the service's user.
pub(crate) fn launch(plan: &LaunchPlan) -> Result<Launched, TargetError> {
    let address = free_address(&plan.bind_host)?;
    let port = address.port();
    users::dir_with(&plan.dir, 0o700, None)?;
    users::dir_with(&plan.home, 0o700, plan.user.map(|uid| (uid, uid)))?;
    let output = |name: &str| {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(plan.dir.join(name))
    };
    let mut command = tokio::process::Command::new(&plan.program);
    command
        .args(&plan.args)
        .current_dir(&plan.cwd)
        .env_clear()
        .envs(&plan.env)
        .env(&plan.port_env, port.to_string())
        .envs(&plan.markers)
        .stdin(Stdio::null())
        .stdout(Stdio::from(output(STDOUT)?))
        .stderr(Stdio::from(output(STDERR)?))
        // Its own group: signalled as a whole (its children too), found again by it, and it
        // does not get the terminal's or the deployer's signals.
        .process_group(0)
        .kill_on_drop(false);
    if let Some(uid) = plan.user {
        // Supplementary groups are dropped too: with a uid set, std clears them (setgroups)
        // before switching, so the instance keeps none of root's.
        command.uid(uid).gid(uid);
    }
    let child = command.spawn().map_err(|e| {
        TargetError::Start(format!(
            "cannot run `{}` in {}: {e}",
            plan.program.display(),
            plan.cwd.display()
        ))
    })?;
    let pid = child
        .id()
        .ok_or_else(|| TargetError::Start("the process ended before it was recorded".into()))?;
    // Read right after the spawn: the child is ours and not reaped, so the pid is still its.
    let Some(process) = ProcessIdentity::of(pid, plan.user) else {
        return Err(TargetError::Start(
            "the process ended before it was recorded".into(),
        ));
    };
    let record = RunRecord {
        instance: Some(plan.instance),
        process: process.clone(),
        port,
        address: Some(address.to_string()),
        started_at: Utc::now(),
    };
    write_record(&plan.dir, &record)?;
    Ok(Launched {
        child,
        process: process.clone(),
        placement: Placement {
            address: address.to_string(),
            port,
            process: Some(process),
        },
    })
}

/// Writes the run record, owner-only, whole or not at all (a reader never sees half of it).
fn write_record(dir: &Path, record: &RunRecord) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(record).map_err(std::io::Error::other)?;
    let tmp = dir.join(format!(".{RECORD}.tmp"));
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(&json)?;
    file.sync_all()?;
    std::fs::rename(&tmp, dir.join(RECORD))
}

/// The run record in an instance directory, if there is one.
pub(crate) fn read_record(dir: &Path) -> Option<RunRecord> {
    let text = std::fs::read(dir.join(RECORD)).ok()?;
    let mut record: RunRecord = serde_json::from_slice(&text).ok()?;
    if record.process.pgid == 0 {
        record.process.pgid = i32::try_from(record.process.pid).ok()?;
    }
    Some(record)
}

/// Forgets the run (the instance was stopped on purpose); its output files stay.
pub(crate) fn remove_record(dir: &Path) {
    if let Err(e) = std::fs::remove_file(dir.join(RECORD))
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot remove the run record");
    }
}

/// An address (IP and port) nobody listens on right now. The listener is dropped before the
/// instance binds it: another process could take it in between, which shows up as a crash and a
/// restart on another port. A host name is resolved here, so the address the instance is
/// announced at is always `IP:port` (the monitor probes nothing else).
fn free_address(host: &str) -> Result<SocketAddr, TargetError> {
    let listener = TcpListener::bind((host, 0))
        .map_err(|e| TargetError::Start(format!("cannot find a free port on {host}: {e}")))?;
    Ok(listener.local_addr()?)
}
