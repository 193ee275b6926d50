//! Section `[process]` of the deployer's settings.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::UidRange;

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
    /// Time between SIGTERM and SIGKILL for orphans found at recovery and for what a run
    /// leaves behind in its process group when it ends.
    #[serde(default = "default_stop_grace_seconds")]
    pub stop_grace_seconds: u64,
    /// How long output lines are collected before they are sent as one batch.
    #[serde(default = "default_log_batch_ms")]
    pub log_batch_ms: u64,
    /// The longest an image pull may take before the start fails.
    #[serde(default = "default_pull_timeout_seconds")]
    pub pull_timeout_seconds: u64,
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
fn default_pull_timeout_seconds() -> u64 {
    300
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
            pull_timeout_seconds: default_pull_timeout_seconds(),
        }
    }

    pub(crate) fn restart_initial(&self) -> Duration {
        Duration::from_millis(self.restart_initial_ms)
    }
    pub(crate) fn restart_max(&self) -> Duration {
        Duration::from_millis(self.restart_max_ms.max(self.restart_initial_ms))
    }
    pub(crate) fn crash_loop_window(&self) -> Duration {
        Duration::from_secs(self.crash_loop_window_seconds)
    }
    pub(crate) fn stop_grace(&self) -> Duration {
        Duration::from_secs(self.stop_grace_seconds)
    }
    pub(crate) fn log_batch(&self) -> Duration {
        Duration::from_millis(self.log_batch_ms)
    }
    pub(crate) fn pull_timeout(&self) -> Duration {
        Duration::from_secs(self.pull_timeout_seconds.max(1))
    }
}
