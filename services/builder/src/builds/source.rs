//! Getting a build's source into its checkout directory: the uploaded archive unpacked, or the
//! repository fetched with the service's clone credential. Either way the directory is then
//! handed to the build user, with the credential gone.

use std::time::Duration;

use slipway_secrets::SecretBox;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::fetch::{self, Fetched, Git};
use super::logs::{LogWriter, Stream};
use super::sandbox::{BuildDir, Sandbox};
use super::step::{Outcome, StepError};
use super::{Build, Ending, cancelled, describe, exit_code, failed};
use crate::credentials;

/// What fetching needs besides the build.
pub struct Sources<'a> {
    pub pool: &'a PgPool,
    pub sandbox: &'a Sandbox,
    pub sealer: &'a SecretBox,
    /// `[services] allow_local_repositories`.
    pub allow_local: bool,
    pub timeout: Duration,
}

/// The commit (or `upload-<sha256>`) now in `dir.src`, owned by the build user; or how the
/// fetch step ended the build.
pub async fn obtain(
    s: &Sources<'_>,
    build: &Build,
    dir: &BuildDir,
    logs: &mut LogWriter,
    cancel: &CancellationToken,
) -> Result<Result<String, Ending>, StepError> {
    let got = if let Some(upload) = build.upload_id {
        unpack(s.pool, upload, dir, logs).await?
    } else {
        fetch_repository(s, build, dir, logs, cancel).await?
    };
    if got.is_ok() {
        dir.hand_over(s.sandbox.user()).map_err(StepError::Wait)?;
    }
    Ok(got)
}

async fn unpack(
    pool: &PgPool,
    upload: uuid::Uuid,
    dir: &BuildDir,
    logs: &mut LogWriter,
) -> Result<Result<String, Ending>, StepError> {
    let Some((bytes, sha)) = super::upload(pool, upload).await? else {
        let reason = format!("upload {upload} is gone");
        return Ok(Err(failed("fetch", None, reason, None)));
    };
    logs.line(
        "fetch",
        Stream::Slipway,
        &format!("unpacking upload {upload} (sha256 {sha})"),
    )
    .await?;
    let target = dir.src.clone();
    let unpacked = tokio::task::spawn_blocking(move || {
        super::archive::inspect(&bytes, super::archive::Limits::default(), Some(&target))
    })
    .await
    .map_err(|e| StepError::Wait(std::io::Error::other(e)))?;
    Ok(match unpacked {
        Ok(_) => Ok(format!("upload-{sha}")),
        Err(e) => Err(failed(
            "fetch",
            None,
            format!("the upload cannot be unpacked: {e}"),
            None,
        )),
    })
}

async fn fetch_repository(
    s: &Sources<'_>,
    build: &Build,
    dir: &BuildDir,
    logs: &mut LogWriter,
    cancel: &CancellationToken,
) -> Result<Result<String, Ending>, StepError> {
    let Some(repository) = build.repository.as_deref() else {
        let reason = "the build has no repository to fetch".to_owned();
        return Ok(Err(failed("fetch", None, reason, None)));
    };
    // Checked again here: a request made before the registry refused such URLs, or published
    // by anyone else, must not make the builder read local files or send a URL's credential.
    if let Err(e) = slipway_events::repository::check(repository, s.allow_local) {
        let reason = format!("the repository URL is refused: {e}");
        logs.line("fetch", Stream::Slipway, &reason).await?;
        logs.flush().await?;
        return Ok(Err(failed("fetch", None, reason, None)));
    }
    let credential = match credentials::get(s.pool, s.sealer, build.service_id).await {
        Ok(c) => c,
        Err(credentials::CredentialError::Database(e)) => return Err(StepError::Database(e)),
        Err(e) => {
            // E.g. the secrets key changed: say so, rather than fetching without it.
            let reason = format!("{e}; set the clone credential again");
            return Ok(Err(failed("fetch", None, reason, None)));
        }
    };
    let fetch::GitEnv { env, note } = fetch::git_env(
        dir,
        repository,
        credential.as_ref(),
        &s.sandbox.known_hosts(),
        s.allow_local,
    )
    .map_err(StepError::Wait)?;
    if let Some(c) = &credential {
        let what =
            note.unwrap_or_else(|| format!("using the service's clone credential ({})", c.kind()));
        logs.line("fetch", Stream::Slipway, &what).await?;
    }
    let git = Git {
        cwd: &dir.src,
        env,
        timeout: s.timeout,
    };
    let fetched = fetch::fetch(
        &git,
        repository,
        &build.git_ref,
        build.commit_requested.as_deref(),
        logs,
        cancel,
    )
    .await?;
    Ok(match fetched {
        Fetched::Commit(sha) => Ok(sha),
        Fetched::Failed(Outcome::Cancelled, _) => Err(cancelled("fetch")),
        Fetched::Failed(outcome, what) => {
            let what = describe(&outcome, &what, s.timeout);
            let reason = super::ending::with_tail(what, &logs.tail());
            Err(failed("fetch", exit_code(&outcome), reason, None))
        }
    })
}
