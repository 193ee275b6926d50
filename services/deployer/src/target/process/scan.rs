//! What `/proc` says about processes: liveness, identity (start time, environment) and process
//! groups. This is how instances are recognised after a deployer restart, since they are no
//! longer its children: each carries `SLIPWAY_TARGET_SCOPE` and `SLIPWAY_INSTANCE` in its
//! environment.
//!
//! Entries that vanish or cannot be read while scanning (another user's processes, a process
//! that just exited) are skipped: a scan is a snapshot, never an error.

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use uuid::Uuid;

/// The fields of `/proc/<pid>/stat` the target uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stat {
    /// `R`, `S`, `Z` (zombie: exited, not yet reaped), ...
    pub state: char,
    pub pgid: i32,
    /// Field 22: clock ticks after boot when the process started. With the pid, it names one
    /// process for the machine's uptime (pids are reused, start times are not).
    pub start_time: u64,
}

impl Stat {
    /// Running in any sense: not a zombie waiting to be reaped, not dead.
    pub fn alive(&self) -> bool {
        !matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// `/proc/<pid>/stat`, if the process exists.
pub(crate) fn stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// Parses a stat line. The command name (field 2) is in parentheses and may itself hold spaces
/// and parentheses, so fields are counted from the last `)`.
fn parse_stat(text: &str) -> Option<Stat> {
    let (_, rest) = text.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `fields[0]` is field 3 (state), so field N is `fields[N - 3]`.
    Some(Stat {
        state: fields.first()?.chars().next()?,
        pgid: fields.get(2)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// The value of `name` in the environment `pid` was started with, if readable.
pub(crate) fn environ_var(pid: u32, name: &str) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let prefix = format!("{name}=");
    raw.split(|b| *b == 0).find_map(|entry| {
        entry
            .strip_prefix(prefix.as_bytes())
            .map(|v| String::from_utf8_lossy(v).into_owned())
    })
}

/// Whether `pid` still runs instance `instance`: alive, and the same process as recorded (same
/// start time) or carrying the instance's id in its environment.
pub(crate) fn runs_instance(pid: u32, recorded_start: Option<u64>, instance: Uuid) -> Option<Stat> {
    let stat = stat(pid).filter(Stat::alive)?;
    let same_start = recorded_start == Some(stat.start_time);
    let same_env =
        || environ_var(pid, "SLIPWAY_INSTANCE").as_deref() == Some(&instance.to_string());
    (same_start || same_env()).then_some(stat)
}

/// Every live process whose environment puts it in `scope` (a process target's canonical
/// workdir), with the instance it belongs to. The children an instance forks inherit its
/// environment and so are listed too.
pub fn scope_processes(scope: &Path) -> Vec<(u32, Uuid)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let scope = scope.to_string_lossy();
    let mut found: Vec<(u32, Uuid)> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let raw = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
            let mut in_scope = false;
            let mut instance = None;
            for entry in raw.split(|b| *b == 0) {
                if let Some(v) = entry.strip_prefix(b"SLIPWAY_TARGET_SCOPE=") {
                    in_scope = v == scope.as_bytes();
                } else if let Some(v) = entry.strip_prefix(b"SLIPWAY_INSTANCE=") {
                    instance = std::str::from_utf8(v).ok()?.parse::<Uuid>().ok();
                }
            }
            let alive = stat(pid).is_some_and(|s| s.alive());
            (in_scope && alive).then_some((pid, instance?))
        })
        .collect();
    found.sort_unstable();
    found
}

/// Whether any live process is in group `pgid`.
pub(crate) fn group_alive(pgid: i32) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(stat)
        .any(|s| s.pgid == pgid && s.alive())
}

/// Sends `signal` to a process group; a group that is already gone is not an error. Never
/// signals the deployer's own group.
pub(crate) fn signal_group(pgid: i32, signal: Signal) {
    if pgid <= 1 || Pid::from_raw(pgid) == nix::unistd::getpgrp() {
        return;
    }
    if let Err(e) = killpg(Pid::from_raw(pgid), signal)
        && e != nix::errno::Errno::ESRCH
    {
        tracing::warn!(pgid, %signal, error = %e, "cannot signal a process group");
    }
}

/// How often group exits are polled while stopping.
const POLL: Duration = Duration::from_millis(50);
/// How long to wait for the kernel to finish off groups after SIGKILL.
const AFTER_KILL: Duration = Duration::from_secs(5);

/// Stops process groups that are not our children: SIGTERM, up to `grace` for them to exit,
/// then SIGKILL for whatever is left.
pub(crate) async fn terminate_groups(groups: &[i32], grace: Duration) {
    if groups.is_empty() {
        return;
    }
    for pgid in groups {
        signal_group(*pgid, Signal::SIGTERM);
    }
    let all_gone = || !groups.iter().any(|g| group_alive(*g));
    if wait_for(grace, all_gone).await {
        return;
    }
    for pgid in groups {
        if group_alive(*pgid) {
            signal_group(*pgid, Signal::SIGKILL);
        }
    }
    if !wait_for(AFTER_KILL, all_gone).await {
        tracing::warn!(?groups, "process groups still alive after SIGKILL");
    }
}

/// Polls `done` until it holds or `timeout` passes; answers whether it held.
pub(crate) async fn wait_for(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let line = "4242 (my (odd) app) S 1 4242 4242 0 -1 4194304 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        let stat = parse_stat(line).unwrap();
        assert_eq!(stat.state, 'S');
        assert_eq!(stat.pgid, 4242);
        assert_eq!(stat.start_time, 987654);
        assert!(parse_stat("garbage").is_none());
    }

    #[test]
    fn this_process_is_seen() {
        let me = stat(std::process::id()).unwrap();
        assert!(me.alive());
        assert!(environ_var(std::process::id(), "PATH").is_some());
    }
}
