//! The build worker: takes queued builds in order, runs at most `max_parallel` at once, and
//! runs each through fetch → test (the gate) → build → package (an OCI image, pushed).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use slipway_ids::BuildId;
use slipway_secrets::SecretBox;
use sqlx::PgPool;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::logs::{LogWriter, Stream};
use super::package::{self, RegistrySettings};
use super::sandbox::{BuildDir, BuildUser, Sandbox, SandboxError};
use super::source::{self, Sources};
use super::spec::BuildSpec;
use super::step::{self, Invocation, Outcome};
use super::{Build, Ending, cancelled, describe, exit_code, failed};

/// Settings of section `[builds]`.
#[derive(Debug, Clone, Deserialize)]
pub struct BuildSettings {
    /// Work and cache directories live here; empty: `slipway-builds` in the system temp dir.
    /// Must not be inside a project (see `sandbox::PROJECT_FILES`).
    pub workdir: String,
    pub max_parallel: usize,
    pub step_timeout_seconds: u64,
    /// Output lines quoted in a failed build's reason.
    pub reason_lines: usize,
    /// `PATH` of build commands (nothing else of the builder's environment reaches them).
    #[serde(default = "default_path")]
    pub path: String,
    /// The uid and gid build commands run as when the builder is root; no passwd entry needed.
    #[serde(default = "default_id")]
    pub uid: u32,
    #[serde(default = "default_id")]
    pub gid: u32,
}

fn default_path() -> String {
    "/usr/local/bin:/usr/bin:/bin".into()
}

fn default_id() -> u32 {
    64900
}

impl BuildSettings {
    fn root(&self) -> PathBuf {
        if self.workdir.is_empty() {
            std::env::temp_dir().join("slipway-builds")
        } else {
            PathBuf::from(&self.workdir)
        }
    }

    /// Checks the work dir and decides who builds run as; done before the builder starts.
    pub fn sandbox(&self) -> Result<Sandbox, SandboxError> {
        let user = BuildUser {
            uid: self.uid,
            gid: self.gid,
        };
        Sandbox::prepare(&self.root(), &self.path, user)
    }
}

/// What every build job shares.
#[derive(Clone)]
pub struct Context {
    pub pool: PgPool,
    pub settings: BuildSettings,
    pub registry: RegistrySettings,
    pub sandbox: Sandbox,
    /// Opens clone credentials.
    pub sealer: SecretBox,
    /// `[services] allow_local_repositories`.
    pub allow_local: bool,
}

/// Runs queued builds until cancelled.
pub struct Worker {
    ctx: Context,
    /// Poked when a build is queued, so it starts without waiting for the next poll.
    wake: Arc<Notify>,
}

impl Worker {
    pub fn new(ctx: Context, wake: Arc<Notify>) -> Self {
        Self { ctx, wake }
    }

    pub async fn run(self, cancel: CancellationToken) -> Result<(), sqlx::Error> {
        let requeued = super::requeue_interrupted(&self.ctx.pool).await?;
        if requeued > 0 {
            tracing::warn!(requeued, "builds interrupted by a restart are queued again");
        }
        let slots = Arc::new(Semaphore::new(self.ctx.settings.max_parallel.max(1)));
        let mut running = tokio::task::JoinSet::new();
        loop {
            let permit = tokio::select! {
                () = cancel.cancelled() => break,
                p = slots.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            let next = match super::claim_next(&self.ctx.pool).await {
                Ok(next) => next,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot claim a build");
                    None
                }
            };
            match next {
                Some(build) => {
                    let job = Job(self.ctx.clone());
                    let cancel = cancel.child_token();
                    let pool = self.ctx.pool.clone();
                    running.spawn(async move {
                        let id = build.id;
                        // Continues the request's trace, so the build's events carry it on.
                        let span = super::trace::span(&pool, id).await;
                        if let Err(e) = job.execute(build, cancel).instrument(span).await {
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

struct Job(Context);

impl Job {
    async fn execute(self, build: Build, shutdown: CancellationToken) -> Result<(), sqlx::Error> {
        let id = build.id;
        let span = tracing::info_span!("build", build.id = %id, service = %build.service_name);
        // A cancel request (flag in the database) or shutdown stops the running step.
        let cancel = shutdown.child_token();
        let watcher = tokio::spawn(watch_cancel(self.0.pool.clone(), id, cancel.clone()));
        let result = match self.0.sandbox.build_dir(&id.to_string()) {
            Ok(dir) => {
                let result = self.pipeline(&build, &dir, &cancel).instrument(span).await;
                if let Err(e) = tokio::fs::remove_dir_all(&dir.root).await
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    tracing::warn!(build.id = %id, error = %e, "cannot remove the build directory");
                }
                result
            }
            Err(e) => Err(step::StepError::Wait(e)),
        };
        watcher.abort();
        let ending = match result {
            Ok(ending) => ending,
            Err(e) => failed("internal", None, format!("the builder failed: {e}"), None),
        };
        if shutdown.is_cancelled() && ending.status == "cancelled" {
            // Not the user's cancel: the builder is stopping. Queue it again for the next start.
            super::requeue(&self.0.pool, id).await?;
            return Ok(());
        }
        let done = super::finish(&self.0.pool, id, ending).await?;
        tracing::info!(build.id = %id, status = %done.status, step = ?done.step, "build finished");
        Ok(())
    }

    async fn pipeline(
        &self,
        build: &Build,
        dir: &BuildDir,
        cancel: &CancellationToken,
    ) -> Result<Ending, step::StepError> {
        let ctx = &self.0;
        let timeout = Duration::from_secs(ctx.settings.step_timeout_seconds);
        let mut logs =
            LogWriter::open(ctx.pool.clone(), build.id, ctx.settings.reason_lines).await?;
        let reason_of = |what: String, logs: &LogWriter| {
            let tail = logs.tail();
            if tail.is_empty() {
                what
            } else {
                format!("{what}; last lines of output:\n{}", tail.join("\n"))
            }
        };

        // Fetch (or unpack the upload); the checkout then belongs to the build user.
        let sources = Sources {
            pool: &ctx.pool,
            sandbox: &ctx.sandbox,
            sealer: &ctx.sealer,
            allow_local: ctx.allow_local,
            timeout,
        };
        let commit = match source::obtain(&sources, build, dir, &mut logs, cancel).await? {
            Ok(commit) => commit,
            Err(ending) => return Ok(ending),
        };
        let src = dir.src.as_path();

        // Recipe.
        let spec = match BuildSpec::load(src) {
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

        // Test gate, then build: as the build user, in a cleared environment.
        let cache = ctx
            .sandbox
            .cache_dir(&build.service_name)
            .map_err(step::StepError::Wait)?;
        let mut env = dir.base_env();
        env.extend([
            ("SLIPWAY_BUILD_ID".into(), build.id.to_string()),
            ("SLIPWAY_COMMIT".into(), commit.clone()),
            ("SLIPWAY_CACHE_DIR".into(), cache.display().to_string()),
        ]);
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
            super::set_step(&ctx.pool, build.id, name).await?;
            logs.clear_tail();
            logs.line(name, Stream::Slipway, &format!("$ {command}"))
                .await?;
            let inv = Invocation {
                step: name,
                program: "sh",
                args: vec!["-c".into(), command.clone()],
                cwd: src,
                env: env.clone(),
                user: ctx.sandbox.user(),
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
        super::set_step(&ctx.pool, build.id, "package").await?;
        let pushing = format!("packaging and pushing to {}", ctx.registry.address);
        logs.line("package", Stream::Slipway, &pushing).await?;
        let tag = format!("build-{}", build.id);
        let pushed = package::package_and_push(
            src,
            &spec,
            &build.service_name,
            &commit,
            &tag,
            &ctx.registry,
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
