//! How a build ends, and storing it (fenced on the lease, with `build.finished`).
//!
//! Reasons travel in `build.finished`, so they are bounded: the output lines a reason quotes are
//! cut to [`REASON_LINE_BYTES`] each and the whole reason to [`MAX_REASON_BYTES`], far below
//! the broker's message limit however long the build's lines were.

use sqlx::PgPool;

use super::lease::{Lease, LeaseError, release};
use super::output::cut;
use super::{Build, COLUMNS, announce, announce_artifact, package, step};

/// The most a reason (and so the `reason` of an event) holds.
pub const MAX_REASON_BYTES: usize = 64 * 1024;

/// The most of one output line a reason quotes.
pub const REASON_LINE_BYTES: usize = 1024;

/// `what` happened, followed by the last lines of output (each cut, the whole bounded).
pub fn with_tail(what: String, tail: &[String]) -> String {
    if tail.is_empty() {
        return cut(&what, MAX_REASON_BYTES).into_owned();
    }
    let mut reason = format!("{what}; last lines of output:");
    for line in tail {
        reason.push('\n');
        reason.push_str(&cut(line, REASON_LINE_BYTES));
    }
    // Over the bound (many lines, a long `what`): keep the end, where the failure is, after
    // the start of `what` (at most 32 bytes and its marker: within the 128 left free).
    if reason.len() > MAX_REASON_BYTES {
        let mut start = reason.len() - MAX_REASON_BYTES + 128;
        while !reason.is_char_boundary(start) {
            start += 1;
        }
        reason = format!("{} … {}", cut(&what, 32), &reason[start..]);
    }
    reason
}

/// How a build ended.
#[derive(Debug, Clone)]
pub struct Ending {
    pub status: &'static str,
    pub step: Option<String>,
    pub exit_code: Option<i32>,
    pub reason: Option<String>,
    pub commit_built: Option<String>,
    /// The image, when the build succeeded.
    pub packaged: Option<package::Packaged>,
}

/// A build that failed at `step`.
pub fn failed(
    step: &str,
    exit_code: Option<i32>,
    reason: String,
    commit: Option<String>,
) -> Ending {
    Ending {
        status: "failed",
        step: Some(step.to_owned()),
        exit_code,
        reason: Some(reason),
        commit_built: commit,
        packaged: None,
    }
}

/// A build cancelled during `step`.
pub fn cancelled(step: &str) -> Ending {
    Ending {
        status: "cancelled",
        step: Some(step.to_owned()),
        exit_code: None,
        reason: Some(format!("cancelled during {step}")),
        commit_built: None,
        packaged: None,
    }
}

/// The exit code of a command that failed.
pub fn exit_code(outcome: &step::Outcome) -> Option<i32> {
    match outcome {
        step::Outcome::Failed(code) => *code,
        _ => None,
    }
}

/// What happened to `what`, for a failed build's reason.
pub fn describe(outcome: &step::Outcome, what: &str, timeout: std::time::Duration) -> String {
    match outcome {
        step::Outcome::Failed(Some(code)) => format!("{what} exited with code {code}"),
        step::Outcome::Failed(None) => format!("{what} was killed by a signal"),
        step::Outcome::TimedOut => format!("{what} did not finish within {}s", timeout.as_secs()),
        step::Outcome::Cancelled => format!("{what} was cancelled"),
        step::Outcome::Succeeded => format!("{what} succeeded"),
    }
}

/// Stores the end of a build and announces `build.finished`, if `lease` still holds it (and
/// it is still running); else nothing is written or published.
pub async fn finish(pool: &PgPool, lease: &Lease, end: Ending) -> Result<Build, LeaseError> {
    let reason = end.reason.as_deref().map(|r| cut(r, MAX_REASON_BYTES));
    let mut tx = pool.begin().await?;
    let build: Option<Build> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE builds SET status = $4, step = $5, exit_code = $6, reason = $7, \
         commit_built = coalesce($8, commit_built), image = $9, artifact_digest = $10, \
         artifact_purl = $11, finished_at = now(), lease_expires_at = NULL \
         WHERE id = $1 AND lease_owner = $2 AND lease_epoch = $3 AND status = 'running' \
         RETURNING {COLUMNS}"
    )))
    .bind(lease.build())
    .bind(lease.owner().as_str())
    .bind(lease.epoch())
    .bind(end.status)
    .bind(&end.step)
    .bind(end.exit_code)
    .bind(reason.as_deref())
    .bind(&end.commit_built)
    .bind(end.packaged.as_ref().map(|p| p.image.clone()))
    .bind(end.packaged.as_ref().map(|p| p.digest.clone()))
    .bind(end.packaged.as_ref().map(|p| p.purl.clone()))
    .fetch_optional(&mut *tx)
    .await?;
    // Dropping the transaction rolls it back: nothing of a stale owner is kept.
    let build = build.ok_or(LeaseError::Lost)?;
    release(&mut tx, lease).await?;
    if let Some(packaged) = &end.packaged {
        announce_artifact(&mut tx, &build, packaged).await?;
    }
    let purl = end.packaged.as_ref().map(|p| p.purl.as_str());
    let event = slipway_events::cdevents::CdEvent::build_finished(
        slipway_events::slipway::sources::BUILDER,
        &build.id.to_string(),
        purl,
    );
    announce(&mut tx, &build, event).await?;
    tx.commit().await?;
    Ok(build)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_bounded_whatever_the_output() {
        let huge = "x".repeat(2_000_000);
        let reason = with_tail(
            "the test command failed".into(),
            &[huge.clone(), "last".into()],
        );
        assert!(reason.len() < REASON_LINE_BYTES + 200, "{}", reason.len());
        assert!(reason.contains("[line truncated: 2000000 bytes]"));
        assert!(reason.ends_with("\nlast"));
        let many: Vec<String> = (0..1000).map(|_| huge[..2000].to_owned()).collect();
        let reason = with_tail("failed".into(), &many);
        assert!(reason.len() <= MAX_REASON_BYTES, "{}", reason.len());
        assert!(reason.starts_with("failed … "));
        assert_eq!(with_tail("plain".into(), &[]), "plain");
    }
}
