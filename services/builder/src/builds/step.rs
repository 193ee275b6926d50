//! Running one command of a build: its own process group (so a timeout or a cancel stops every
//! process it started), output read in bounded chunks from both streams as it comes and split
//! into lines of bounded length (an endless line costs a fixed buffer), a deadline, and
//! cancellation. The command starts from an empty environment (only what the invocation
//! lists) and, when a build user is given, as that uid and gid with no supplementary groups.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::AsyncReadExt;
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::lease::LeaseError;
use super::logs::{LogWriter, Stream};
use super::output::LineCutter;
use super::sandbox::BuildUser;

/// How long a killed command's output is still read: what it printed last (an endless line)
/// ends up in the log. Only a process that left the group can hold the pipes longer.
const DRAIN_AFTER_KILL: Duration = Duration::from_secs(2);

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    /// Exited non-zero (or by a signal: no code).
    Failed(Option<i32>),
    TimedOut,
    Cancelled,
}

/// Why a command could not be run at all.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("cannot start `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Lease(#[from] LeaseError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("waiting for the command failed: {0}")]
    Wait(#[source] std::io::Error),
}

/// What to run.
pub struct Invocation<'a> {
    pub step: &'a str,
    pub program: &'a str,
    pub args: Vec<String>,
    pub cwd: &'a Path,
    /// The whole environment: nothing of the builder's own is passed on.
    pub env: Vec<(String, String)>,
    /// Run as this user (the builder is root); `None`: as the builder.
    pub user: Option<BuildUser>,
    pub timeout: Duration,
}

/// Runs `inv`, storing every output line; stops it at the deadline or on `cancel`.
pub async fn run(
    inv: Invocation<'_>,
    logs: &mut LogWriter,
    cancel: &CancellationToken,
) -> Result<Outcome, StepError> {
    let shown = std::iter::once(inv.program.to_owned())
        .chain(inv.args.iter().cloned())
        .collect::<Vec<_>>()
        .join(" ");
    let mut command = Command::new(inv.program);
    command
        .args(&inv.args)
        .current_dir(inv.cwd)
        .env_clear()
        .envs(inv.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    if let Some(user) = inv.user {
        // std calls setgroups(0) before setuid when the parent is root: no groups are kept.
        command.uid(user.uid).gid(user.gid);
    }
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|source| StepError::Spawn {
            command: shown.clone(),
            source,
        })?;
    let pgid = child.id().map(|id| Pid::from_raw(id as i32));

    // Each line holds at most `max_line_bytes`: the channel holds a bounded amount too.
    let (tx, mut rx) = mpsc::channel::<(Stream, String)>(256);
    let max = logs.max_line_bytes();
    if let Some(out) = child.stdout.take() {
        tokio::spawn(forward(out, Stream::Stdout, tx.clone(), max));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(forward(err, Stream::Stderr, tx.clone(), max));
    }
    drop(tx);

    let deadline = tokio::time::sleep(inv.timeout);
    tokio::pin!(deadline);
    let mut stopped: Option<Outcome> = None;
    let mut status = None;
    let mut streams_open = true;
    let drain = tokio::time::sleep(Duration::MAX);
    tokio::pin!(drain);
    let mut draining = false;
    loop {
        tokio::select! {
            line = rx.recv(), if streams_open => match line {
                Some((stream, text)) => {
                    logs.line(inv.step, stream, &text).await?;
                    if rx.is_empty() {
                        logs.flush().await?; // output paused: make it visible to followers
                    }
                }
                None => streams_open = false,
            },
            s = child.wait(), if status.is_none() => status = Some(s.map_err(StepError::Wait)?),
            () = &mut deadline, if stopped.is_none() && status.is_none() => {
                stopped = Some(Outcome::TimedOut);
                kill_group(pgid);
            }
            () = cancel.cancelled(), if stopped.is_none() && status.is_none() => {
                stopped = Some(Outcome::Cancelled);
                kill_group(pgid);
            }
            () = &mut drain, if draining => break,
        }
        if status.is_some() && !streams_open {
            break;
        }
        if status.is_some() && stopped.is_some() && !draining {
            // Killed: read what it printed last, but a process that left the group may still
            // hold the pipes; do not wait for it longer than the grace.
            kill_group(pgid);
            draining = true;
            drain
                .as_mut()
                .reset(tokio::time::Instant::now() + DRAIN_AFTER_KILL);
        }
    }
    logs.flush().await?;
    let status = status.ok_or_else(|| StepError::Wait(std::io::Error::other("no exit status")))?;
    Ok(match stopped {
        Some(outcome) => outcome,
        None if status.success() => Outcome::Succeeded,
        None => Outcome::Failed(status.code()),
    })
}

/// Reads `reader` in chunks of at most 8 KiB, sending bounded lines (see [`LineCutter`]).
async fn forward<R: tokio::io::AsyncRead + Unpin>(
    mut reader: R,
    stream: Stream,
    tx: mpsc::Sender<(Stream, String)>,
    max_line_bytes: usize,
) {
    let mut cutter = LineCutter::new(max_line_bytes);
    let mut chunk = vec![0u8; 8192];
    let mut lines = Vec::new();
    loop {
        match reader.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => cutter.feed(&chunk[..n], &mut lines),
        }
        for line in lines.drain(..) {
            if tx.send((stream, line)).await.is_err() {
                return;
            }
        }
    }
    if let Some(last) = cutter.finish() {
        let _ = tx.send((stream, last)).await;
    }
}

fn kill_group(pgid: Option<Pid>) {
    if let Some(pgid) = pgid {
        // ESRCH (already gone) is fine.
        let _ = killpg(pgid, Signal::SIGKILL);
    }
}
