//! Fetching the exact commit to build, with the git command line (every transport git knows,
//! credentials from the machine's git configuration, and output that goes to the build log).

use std::path::Path;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::logs::{LogWriter, Stream};
use super::step::{self, Invocation, Outcome, StepError};

/// The fetched commit, or how fetching failed.
pub enum Fetched {
    Commit(String),
    Failed(Outcome, String),
}

async fn git(
    dir: &Path,
    args: &[&str],
    logs: &mut LogWriter,
    cancel: &CancellationToken,
    timeout: Duration,
) -> Result<Outcome, StepError> {
    let inv = Invocation {
        step: "fetch",
        program: "git",
        args: args.iter().map(|a| a.to_string()).collect(),
        cwd: dir,
        env: Vec::new(),
        timeout,
    };
    step::run(inv, logs, cancel).await
}

/// Checks out `commit` (or the head of `git_ref`) of `repository` into the empty `dir`.
pub async fn fetch(
    dir: &Path,
    repository: &str,
    git_ref: &str,
    commit: Option<&str>,
    logs: &mut LogWriter,
    cancel: &CancellationToken,
    timeout: Duration,
) -> Result<Fetched, StepError> {
    let want = commit.unwrap_or(git_ref);
    logs.line(
        "fetch",
        Stream::Slipway,
        &format!("fetching {want} from {repository}"),
    )
    .await?;
    let outcome = git(dir, &["init", "-q", "."], logs, cancel, timeout).await?;
    if outcome != Outcome::Succeeded {
        return Ok(Fetched::Failed(outcome, "git init failed".into()));
    }
    // Shallow fetch of just what is built; a server that refuses to serve a commit by id gets
    // asked for the ref instead, and the commit is checked out from its history.
    let mut outcome = git(
        dir,
        &["fetch", "-q", "--depth", "1", "--", repository, want],
        logs,
        cancel,
        timeout,
    )
    .await?;
    if outcome != Outcome::Succeeded && commit.is_some() && !cancel.is_cancelled() {
        logs.line(
            "fetch",
            Stream::Slipway,
            &format!("fetching {git_ref} to find {want}"),
        )
        .await?;
        outcome = git(
            dir,
            &["fetch", "-q", "--", repository, git_ref],
            logs,
            cancel,
            timeout,
        )
        .await?;
    }
    if outcome != Outcome::Succeeded {
        return Ok(Fetched::Failed(
            outcome,
            format!("cannot fetch {want} from {repository}"),
        ));
    }
    let target = if commit.is_some() { want } else { "FETCH_HEAD" };
    let outcome = git(
        dir,
        &[
            "-c",
            "advice.detachedHead=false",
            "checkout",
            "-q",
            "--detach",
            target,
        ],
        logs,
        cancel,
        timeout,
    )
    .await?;
    if outcome != Outcome::Succeeded {
        return Ok(Fetched::Failed(
            outcome,
            format!("commit {want} is not in {repository}"),
        ));
    }
    let head = tokio::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(dir)
        .output()
        .await
        .map_err(StepError::Wait)?;
    let sha = String::from_utf8_lossy(&head.stdout).trim().to_owned();
    logs.line("fetch", Stream::Slipway, &format!("checked out {sha}"))
        .await?;
    Ok(Fetched::Commit(sha))
}
