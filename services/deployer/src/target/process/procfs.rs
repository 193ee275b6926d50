//! What `/proc` says about processes, and how an instance's process is told from any other.
//!
//! An instance is found again (after a deployer restart, by another replica, by `scripts/down`)
//! through what the deployer recorded when it started it and what the instance cannot rewrite:
//! its pid, its process group (each run leads its own), its start time (field 22 of
//! `/proc/<pid>/stat`, clock ticks after boot), the boot it started in
//! (`/proc/sys/kernel/random/boot_id`) and, as root, the service's uid. A program may rewrite its
//! title, its argv and environment memory, or exec something else: none of these change. A pid
//! reused by an unrelated process has another start time (or boot), so it is never taken for an
//! instance.
//!
//! Entries that vanish or cannot be read while scanning (another user's processes, a process
//! that just exited) are skipped: a scan is a snapshot, never an error.

use std::sync::OnceLock;
use std::time::Duration;

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// The fields of `/proc/<pid>/stat` the target uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stat {
    pub pid: u32,
    /// `R`, `S`, `Z` (zombie: exited, not yet reaped), ...
    pub state: char,
    pub pgid: i32,
    /// Field 22: clock ticks after boot when the process started.
    pub start_time: u64,
}

impl Stat {
    /// Running in any sense: not a zombie waiting to be reaped, not dead.
    pub fn alive(&self) -> bool {
        !matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Which process runs an instance, as recorded when it was started. With the pid alone a
/// process cannot be named (pids are reused); with its start time and boot it can.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessIdentity {
    pub pid: u32,
    /// The group the run leads (= `pid`): stopping an instance signals all of it. Absent (0)
    /// in records written before it was recorded: then the pid's (each run always led one).
    #[serde(default)]
    pub pgid: i32,
    /// Field 22 of `/proc/<pid>/stat`.
    pub start_time: u64,
    /// The boot it started in; absent in records written before boots were recorded (then the
    /// start time alone decides).
    #[serde(default)]
    pub boot_id: Option<String>,
    /// The uid it runs as when that is not the deployer's (one per service, as root).
    #[serde(default)]
    pub uid: Option<u32>,
}

impl ProcessIdentity {
    /// The identity of `pid` as it runs now (right after it was spawned).
    pub(crate) fn of(pid: u32, uid: Option<u32>) -> Option<Self> {
        let stat = stat(pid)?;
        Some(Self {
            pid,
            pgid: stat.pgid,
            start_time: stat.start_time,
            boot_id: boot_id().map(str::to_owned),
            uid,
        })
    }

    fn same_boot(&self) -> bool {
        match (&self.boot_id, boot_id()) {
            (Some(recorded), Some(now)) => recorded == now,
            // Not recorded (an older record), or unreadable here: the start time decides.
            _ => true,
        }
    }

    fn uid_matches(&self, pid: u32) -> bool {
        self.uid.is_none_or(|uid| uid_of(pid) == Some(uid))
    }

    /// Whether the recorded process still runs: alive, same start time, same boot and (when
    /// recorded) same uid. (Its group is not part of it: a leader that moved to another group is
    /// still the instance, and is signalled by pid too.)
    pub fn is_running(&self) -> bool {
        self.same_boot()
            && stat(self.pid).is_some_and(|s| s.alive() && s.start_time == self.start_time)
            && self.uid_matches(self.pid)
    }

    /// The live processes of the run's group: the leader if it is still the recorded process,
    /// and every member of its group started since (children it forked). While a member
    /// lives, the kernel does not hand the group's number out again, so a leaderless group
    /// with members started after the leader is still the run's.
    pub fn members(&self) -> Vec<u32> {
        if !self.same_boot() || self.pgid <= 1 {
            return Vec::new();
        }
        all_stats()
            .filter(|s| {
                let leader = s.pid == self.pid && s.start_time == self.start_time;
                s.alive()
                    && (leader
                        || (s.pgid == self.pgid
                            && s.pid != self.pid
                            && s.start_time >= self.start_time))
            })
            .filter(|s| self.uid_matches(s.pid))
            .map(|s| s.pid)
            .collect()
    }
}

/// This boot's id, read once.
pub(crate) fn boot_id() -> Option<&'static str> {
    static BOOT: OnceLock<Option<String>> = OnceLock::new();
    BOOT.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    })
    .as_deref()
}

/// `/proc/<pid>/stat`, if the process exists.
pub(crate) fn stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(pid, &text)
}

/// Parses a stat line. The command name (field 2) is in parentheses and may itself hold spaces
/// and parentheses (a program sets it), so fields are counted from the last `)`.
fn parse_stat(pid: u32, text: &str) -> Option<Stat> {
    let (_, rest) = text.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `fields[0]` is field 3 (state), so field N is `fields[N - 3]`.
    Some(Stat {
        pid,
        state: fields.first()?.chars().next()?,
        pgid: fields.get(2)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// The real uid of `pid` (`Uid:` of `/proc/<pid>/status`).
fn uid_of(pid: u32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
    line.split_whitespace().next()?.parse().ok()
}

fn all_stats() -> impl Iterator<Item = Stat> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(stat)
}

/// Sends `signal` to the run's processes: the whole group while its leader is the recorded
/// process, else each member one by one. Never signals the deployer's own group.
pub(crate) fn signal_run(run: &ProcessIdentity, signal: Signal) {
    if run.pgid <= 1 || Pid::from_raw(run.pgid) == nix::unistd::getpgrp() {
        return;
    }
    if run.is_running() {
        if let Err(e) = killpg(Pid::from_raw(run.pgid), signal)
            && e != nix::errno::Errno::ESRCH
        {
            tracing::warn!(pgid = run.pgid, %signal, error = %e, "cannot signal a process group");
        }
        if stat(run.pid).is_some_and(|s| s.pgid != run.pgid) {
            let _ = kill(Pid::from_raw(run.pid as i32), signal);
        }
        return;
    }
    for pid in run.members() {
        let _ = kill(Pid::from_raw(pid as i32), signal);
    }
}

/// Whether any process of the run lives (the leader is checked first: cheap).
pub(crate) fn run_alive(run: &ProcessIdentity) -> bool {
    run.is_running() || !run.members().is_empty()
}

/// How often exits are polled while stopping.
const POLL: Duration = Duration::from_millis(50);
/// How long to wait for the kernel to finish processes off after SIGKILL.
const AFTER_KILL: Duration = Duration::from_secs(5);

/// Stops runs that are not (or no longer) our children: SIGTERM to each group, up to `grace`
/// for them to exit, then SIGKILL for whatever is left.
pub(crate) async fn terminate_runs(runs: &[ProcessIdentity], grace: Duration) {
    if runs.is_empty() {
        return;
    }
    for run in runs {
        signal_run(run, Signal::SIGTERM);
    }
    let all_gone = || !runs.iter().any(run_alive);
    if wait_for(grace, all_gone).await {
        return;
    }
    for run in runs {
        signal_run(run, Signal::SIGKILL);
    }
    if !wait_for(AFTER_KILL, all_gone).await {
        tracing::warn!(?runs, "processes still alive after SIGKILL");
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
        let stat = parse_stat(4242, line).unwrap();
        assert_eq!(stat.state, 'S');
        assert_eq!(stat.pgid, 4242);
        assert_eq!(stat.start_time, 987654);
        assert!(parse_stat(1, "garbage").is_none());
    }

    #[test]
    fn this_process_is_identified_and_a_changed_start_time_is_not() {
        let me = ProcessIdentity::of(std::process::id(), None).unwrap();
        assert!(me.is_running());
        assert!(boot_id().is_some());
        let reused = ProcessIdentity {
            start_time: me.start_time + 1,
            ..me.clone()
        };
        assert!(
            !reused.is_running(),
            "another start time is another process"
        );
        let other_boot = ProcessIdentity {
            boot_id: Some("another-boot".into()),
            ..me.clone()
        };
        assert!(!other_boot.is_running());
        assert!(other_boot.members().is_empty());
        let other_uid = ProcessIdentity {
            uid: Some(uid_of(std::process::id()).unwrap() + 1),
            ..me
        };
        assert!(!other_uid.is_running());
    }
}
