//! The build worker: takes queued builds in order, runs at most `max_parallel` at once, and
//! runs each through fetch → test (the gate) → build → package (an OCI image, pushed).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use slipway_ids::BuildId;
use sqlx::PgPool;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::fetch::{self, Fetched};
use super::logs::{LogWriter, Stream};
use super::package::{self, RegistrySettings};
use super::spec::BuildSpec;
use super::step::{self, Invocation, Outcome};
use super::{Build, Ending};

/// Settings of section `[builds]`.
#[derive(Debug, Clone, Deserialize)]
pub struct BuildSettings {
    /// Work and cache directories live here; empty: the system temp dir.
    pub workdir: String,
    pub max_parallel: usize,
    pub step_timeout_seconds: u64,
    /// Output lines quoted in a failed build's reason.
    pub reason_lines: usize,
}

impl BuildSettings {
    fn root(&self) -> PathBuf {
        if self.workdir.is_empty() {
            std::env::temp_dir().join("slipway-builder")
        } else {
            PathBuf::from(&self.workdir)
        }
    }
}

/// Runs queued builds until cancelled.
pub struct Worker {
    pool: PgPool,
    settings: BuildSettings,
    registry: RegistrySettings,
    /// Poked when a build is queued, so it starts without waiting for the next poll.
    wake: Arc<Notify>,
}

impl Worker {
    pub fn new(
        pool: PgPool,
        settings: BuildSettings,
        registry: RegistrySettings,
        wake: Arc<Notify>,
    ) -> Self {
        Self {
            pool,
            settings,
            registry,
            wake,
        }
    }

    pub async fn run(self, cancel: CancellationToken) -> Result<(), sqlx::Error> {
        let requeued = super::requeue_interrupted(&self.pool).await?;
        if requeued > 0 {
            tracing::warn!(requeued, "builds interrupted by a restart are queued again");
        }
        let slots = Arc::new(Semaphore::new(self.settings.max_parallel.max(1)));
        let mut running = tokio::task::JoinSet::new();
        loop {
            let permit = tokio::select! {
                () = cancel.cancelled() => break,
                p = slots.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let next = match super::claim_next(&self.pool).await {
                Ok(next) => next,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot claim a build");
                    None
                }
            };
            match next {
                Some(build) => {
                    let job = Job {
                        pool: self.pool.clone(),
                        settings: self.settings.clone(),
                        registry: self.registry.clone(),
                    };
                    let cancel = cancel.child_token();
                    running.spawn(async move {
                        let id = build.id;
                        if let Err(e) = job.execute(build, cancel).await {
                            tracing::error!(build.id = %id, error = %e, "build could not be recorded");
                        }
                        drop(permit);
                    });
                }
                None => {
                    drop(permit);
                    tokio::select! {
                        () = cancel.cancelled() => break,
                        () = self.wake.notified() => {}
                        () = tokio::time::sleep(Duration::from_secs(2)) => {}
                    }
                }
            }
            while running.try_join_next().is_some() {}
        }
        // Running builds were cancelled with the token; they record themselves as cancelled.
        while running.join_next().await.is_some() {}
        Ok(())
    }
}

struct Job {
    pool: PgPool,
    settings: BuildSettings,
    registry: RegistrySettings,
}

fn failed(step: &str, exit_code: Option<i32>, reason: String, commit: Option<String>) -> Ending {
    Ending {
        status: "failed",
        step: Some(step.to_owned()),
        exit_code,
        reason: Some(reason),
        commit_built: commit,
        packaged: None,
    }
}

impl Job {
    async fn execute(self, build: Build, shutdown: CancellationToken) -> Result<(), sqlx::Error> {
        let id = build.id;
        let span = tracing::info_span!("build", build.id = %id, service = %build.service_name);
        // A cancel request (flag in the database) or shutdown stops the running step.
        let cancel = shutdown.child_token();
        let watcher = tokio::spawn(watch_cancel(self.pool.clone(), id, cancel.clone()));
        let dir = self.settings.root().join("builds").join(id.to_string());
        let result = self.pipeline(&build, &dir, &cancel).instrument(span).await;
        watcher.abort();
        if let Err(e) = tokio::fs::remove_dir_all(&dir).await
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(build.id = %id, error = %e, "cannot remove the build directory");
        }
        let ending = match result {
            Ok(ending) => ending,
            Err(e) => failed("internal", None, format!("the builder failed: {e}"), None),
        };
        if shutdown.is_cancelled() && ending.status == "cancelled" {
            // Not the user's cancel: the builder is stopping. Queue it again for the next start.
            super::requeue(&self.pool, id).await?;
            return Ok(());
        }
        let done = super::finish(&self.pool, id, ending).await?;
        tracing::info!(build.id = %id, status = %done.status, step = ?done.step, "build finished");
        Ok(())
    }

    async fn pipeline(
        &self,
        build: &Build,
        dir: &Path,
        cancel: &CancellationToken,
    ) -> Result<Ending, step::StepError> {
        let timeout = Duration::from_secs(self.settings.step_timeout_seconds);
        let mut logs =
            LogWriter::open(self.pool.clone(), build.id, self.settings.reason_lines).await?;
        let reason_of = |what: String, logs: &LogWriter| {
            let tail = logs.tail();
            if tail.is_empty() {
                what
            } else {
                format!("{what}; last lines of output:\n{}", tail.join("\n"))
            }
        };
        std::fs::create_dir_all(dir).map_err(step::StepError::Wait)?;

        // Fetch (or unpack the upload).
        let commit = if let Some(upload) = build.upload_id {
            match super::upload(&self.pool, upload).await? {
                Some((bytes, sha)) => {
                    logs.line(
                        "fetch",
                        Stream::Slipway,
                        &format!("unpacking upload {upload} (sha256 {sha})"),
                    )
                    .await?;
                    let target = dir.to_owned();
                    let unpacked = tokio::task::spawn_blocking(move || {
                        super::archive::inspect(
                            &bytes,
                            super::archive::Limits::default(),
                            Some(&target),
                        )
                    })
                    .await
                    .map_err(|e| step::StepError::Wait(std::io::Error::other(e)))?;
                    if let Err(e) = unpacked {
                        return Ok(failed(
                            "fetch",
                            None,
                            format!("the upload cannot be unpacked: {e}"),
                            None,
                        ));
                    }
                    format!("upload-{sha}")
                }
                None => {
                    return Ok(failed(
                        "fetch",
                        None,
                        format!("upload {upload} is gone"),
                        None,
                    ));
                }
            }
        } else {
            let Some(repository) = build.repository.as_deref() else {
                return Ok(failed(
                    "fetch",
                    None,
                    "the build has no repository to fetch".into(),
                    None,
                ));
            };
            let fetched = fetch::fetch(
                dir,
                repository,
                &build.git_ref,
                build.commit_requested.as_deref(),
                &mut logs,
                cancel,
                timeout,
            )
            .await?;
            match fetched {
                Fetched::Commit(sha) => sha,
                Fetched::Failed(Outcome::Cancelled, _) => return Ok(cancelled("fetch")),
                Fetched::Failed(outcome, what) => {
                    let reason = reason_of(describe(&outcome, &what, timeout), &logs);
                    return Ok(failed("fetch", exit_code(&outcome), reason, None));
                }
            }
        };

        // Recipe.
        let spec = match BuildSpec::load(dir) {
            Ok((spec, from)) => {
                logs.line(
                    "spec",
                    Stream::Slipway,
                    &format!("build recipe from {from}"),
                )
                .await?;
                spec
            }
            Err(e) => {
                logs.line("spec", Stream::Slipway, &e.to_string()).await?;
                logs.flush().await?;
                return Ok(failed("spec", None, e.to_string(), Some(commit)));
            }
        };

        // Test gate, then build.
        let cache = self.settings.root().join("cache").join(&build.service_name);
        std::fs::create_dir_all(&cache).map_err(step::StepError::Wait)?;
        for (name, command) in [("test", &spec.test.command), ("build", &spec.build.command)] {
            if command.trim().is_empty() {
                logs.line(
                    name,
                    Stream::Slipway,
                    &format!("no {name} command; skipped"),
                )
                .await?;
                continue;
            }
            super::set_step(&self.pool, build.id, name).await?;
            logs.clear_tail();
            logs.line(name, Stream::Slipway, &format!("$ {command}"))
                .await?;
            let inv = Invocation {
                step: name,
                program: "sh",
                args: vec!["-c".into(), command.clone()],
                cwd: dir,
                env: vec![
                    ("SLIPWAY_BUILD_ID".into(), build.id.to_string()),
                    ("SLIPWAY_COMMIT".into(), commit.clone()),
                    ("SLIPWAY_CACHE_DIR".into(), cache.display().to_string()),
                ],
                timeout,
            };
            match step::run(inv, &mut logs, cancel).await? {
                Outcome::Succeeded => {}
                Outcome::Cancelled => return Ok(cancelled(name)),
                outcome => {
                    let what = describe(
                        &outcome,
                        &format!("the {name} command `{command}`"),
                        timeout,
                    );
                    let reason = reason_of(what, &logs);
                    logs.line(name, Stream::Slipway, &format!("{name} failed"))
                        .await?;
                    logs.flush().await?;
                    return Ok(failed(name, exit_code(&outcome), reason, Some(commit)));
                }
            }
        }

        // Package and push.
        super::set_step(&self.pool, build.id, "package").await?;
        let pushing = format!("packaging and pushing to {}", self.registry.address);
        logs.line("package", Stream::Slipway, &pushing).await?;
        let tag = format!("build-{}", build.id);
        let pushed = package::package_and_push(
            dir,
            &spec,
            &build.service_name,
            &commit,
            &tag,
            &self.registry,
        )
        .await;
        let packaged = match pushed {
            Ok(p) => p,
            Err(e) => {
                logs.line("package", Stream::Slipway, &e.to_string())
                    .await?;
                logs.flush().await?;
                return Ok(failed("package", None, e.to_string(), Some(commit)));
            }
        };
        let done = format!("pushed {} ({} bytes)", packaged.image, packaged.layer_size);
        logs.line("package", Stream::Slipway, &done).await?;
        logs.line("package", Stream::Slipway, "build succeeded")
            .await?;
        logs.flush().await?;
        Ok(Ending {
            status: "succeeded",
            step: None,
            exit_code: Some(0),
            reason: None,
            commit_built: Some(commit),
            packaged: Some(packaged),
        })
    }
}

fn cancelled(step: &str) -> Ending {
    Ending {
        status: "cancelled",
        step: Some(step.to_owned()),
        exit_code: None,
        reason: Some(format!("cancelled during {step}")),
        commit_built: None,
        packaged: None,
    }
}

fn exit_code(outcome: &Outcome) -> Option<i32> {
    match outcome {
        Outcome::Failed(code) => *code,
        _ => None,
    }
}

fn describe(outcome: &Outcome, what: &str, timeout: Duration) -> String {
    match outcome {
        Outcome::Failed(Some(code)) => format!("{what} exited with code {code}"),
        Outcome::Failed(None) => format!("{what} was killed by a signal"),
        Outcome::TimedOut => format!("{what} did not finish within {}s", timeout.as_secs()),
        Outcome::Cancelled => format!("{what} was cancelled"),
        Outcome::Succeeded => format!("{what} succeeded"),
    }
}

/// Cancels `token` once the build's `cancel_requested` flag is set.
async fn watch_cancel(pool: PgPool, id: BuildId, token: CancellationToken) {
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let flag: Result<Option<bool>, _> =
            sqlx::query_scalar("SELECT cancel_requested FROM builds WHERE id = $1")
                .bind(id)
                .fetch_optional(&pool)
                .await;
        if let Ok(Some(true)) = flag {
            token.cancel();
            return;
        }
    }
}
