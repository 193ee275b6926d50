//! The build worker: claims queued builds in order (or builds whose lease ran out, see
//! [`super::lease`]), runs at most `max_parallel` at once, and runs each through fetch → test
//! (the gate) → build → package (an OCI image, pushed), renewing its lease meanwhile; a source
//! built from its Dockerfile goes fetch → test → image build → push instead ([`dockerfile`]).
//! A build whose lease is lost stops at once, writes nothing more and publishes nothing.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use slipway_ids::{BuildId, ReplicaId};
use slipway_secrets::SecretBox;
use sqlx::PgPool;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::dockerfile::{self, DockerSettings, Plan};
use super::ending::with_tail;
use super::image::ImageSettings;
use super::lease::{self, Claimed, Lease, LeaseError, Lost};
use super::logs::{LogLimits, LogWriter, Stream};
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
    /// The fetch step (git or unpacking an upload) is stopped after this many seconds.
    #[serde(default = "default_fetch_timeout")]
    pub fetch_timeout_seconds: u64,
    /// Output lines quoted in a failed build's reason (each cut to 1 KiB, all to 64 KiB).
    pub reason_lines: usize,
    /// Longer output lines are cut, with `… [line truncated: N bytes]`.
    #[serde(default = "default_max_line_bytes")]
    pub max_line_bytes: usize,
    /// Command output kept per build; later lines are counted and dropped (one marker line).
    #[serde(default = "default_max_log_bytes")]
    pub max_log_bytes: usize,
    /// A build's lease lasts this long unless renewed (every third of it) by its replica;
    /// once it ran out another replica takes the build over.
    #[serde(default = "default_lease_ttl")]
    pub lease_ttl_ms: u64,
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

fn default_fetch_timeout() -> u64 {
    300
}

fn default_max_line_bytes() -> usize {
    16 * 1024
}

fn default_max_log_bytes() -> usize {
    8 * 1024 * 1024
}

fn default_lease_ttl() -> u64 {
    15_000
}

impl BuildSettings {
    fn root(&self) -> PathBuf {
        if self.workdir.is_empty() {
            std::env::temp_dir().join("slipway-builds")
        } else {
            PathBuf::from(&self.workdir)
        }
    }

    pub fn lease_ttl(&self) -> Duration {
        Duration::from_millis(self.lease_ttl_ms.max(100))
    }

    fn log_limits(&self) -> LogLimits {
        LogLimits {
            tail_lines: self.reason_lines,
            max_line_bytes: self.max_line_bytes.max(256),
            max_log_bytes: self.max_log_bytes,
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
    /// `[docker]`: the engine Dockerfile builds use (none: buildah).
    pub docker: DockerSettings,
    /// The default base images (`[images]`).
    pub images: ImageSettings,
    pub sandbox: Sandbox,
    /// Opens clone credentials.
    pub sealer: SecretBox,
    /// `[services] allow_local_repositories`.
    pub allow_local: bool,
    /// This process, as the owner of the leases it takes.
    pub replica: ReplicaId,
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
            tracing::warn!(
                requeued,
                "builds interrupted before leases existed are queued again"
            );
        }
        let ttl = self.ctx.settings.lease_ttl();
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
            let next = match super::claim_next(&self.ctx.pool, &self.ctx.replica, ttl).await {
                Ok(next) => next,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot claim a build");
                    None
                }
            };
            match next {
                Some(claimed) => {
                    let job = Job(self.ctx.clone());
                    let cancel = cancel.child_token();
                    let pool = self.ctx.pool.clone();
                    running.spawn(async move {
                        let id = claimed.build.id;
                        // Continues the request's trace, so the build's events carry it on.
                        let span = super::trace::span(&pool, id).await;
                        if let Err(e) = job.execute(claimed, cancel).instrument(span).await {
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
    async fn execute(
        self,
        claimed: Claimed,
        shutdown: CancellationToken,
    ) -> Result<(), LeaseError> {
        let Claimed {
            build,
            lease,
            taken_from,
        } = claimed;
        let id = build.id;
        let span = tracing::info_span!("build", build.id = %id, service = %build.service_name, epoch = lease.epoch());
        // A cancel request (flag in the database), shutdown or a lost lease stops the step.
        let cancel = shutdown.child_token();
        let lost = Lost::default();
        let watcher = tokio::spawn(watch_cancel(self.0.pool.clone(), id, cancel.clone()));
        let keeper = tokio::spawn(lease::keep(
            self.0.pool.clone(),
            lease.clone(),
            self.0.settings.lease_ttl(),
            lost.clone(),
            cancel.clone(),
        ));
        // An attempt's directory is named by its epoch: an earlier owner's (on this machine)
        // is discarded, and that owner, if it wakes up, removes only its own.
        let attempt = format!("{id}.{}", lease.epoch());
        let result = match self.0.sandbox.build_dir(&id.to_string(), &attempt) {
            Ok(dir) => {
                let result = self
                    .pipeline(&build, &lease, taken_from.as_deref(), &dir, &cancel)
                    .instrument(span)
                    .await;
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
            _ if lost.is_lost() => Err(LeaseError::Lost),
            Err(step::StepError::Lease(LeaseError::Lost)) => Err(LeaseError::Lost),
            Ok(ending) => Ok(ending),
            Err(e) => Ok(failed(
                "internal",
                None,
                format!("the builder failed: {e}"),
                None,
            )),
        };
        let recorded = match ending {
            Err(lost) => Err(lost),
            Ok(end) => self.record(&lease, end, &shutdown, &lost).await,
        };
        keeper.abort();
        match recorded {
            Err(LeaseError::Lost) => {
                tracing::warn!(
                    build.id = %id,
                    epoch = lease.epoch(),
                    "another replica took this build over; this attempt stopped without publishing"
                );
                Ok(())
            }
            other => other,
        }
    }

    /// Stores how the build ended (or, when the builder is stopping and the build was cut
    /// short, queues it again for another replica, releasing the lease). A database that is
    /// away is waited for while the lease holds (the keeper renews it meanwhile); once it is
    /// lost the build is another replica's to run again.
    async fn record(
        &self,
        lease: &Lease,
        end: Ending,
        shutdown: &CancellationToken,
        lost: &Lost,
    ) -> Result<(), LeaseError> {
        let requeue = shutdown.is_cancelled() && end.status == "cancelled";
        loop {
            let tried = if requeue {
                super::requeue(&self.0.pool, lease).await
            } else {
                super::finish(&self.0.pool, lease, end.clone())
                    .await
                    .map(|done| {
                        tracing::info!(build.id = %done.id, status = %done.status, step = ?done.step, "build finished");
                    })
            };
            match tried {
                Err(LeaseError::Database(e)) if !lost.is_lost() && !shutdown.is_cancelled() => {
                    tracing::warn!(build.id = %lease.build(), error = %e, "cannot record the build's end yet; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                other => return other,
            }
        }
    }

    async fn pipeline(
        &self,
        build: &Build,
        lease: &Lease,
        taken_from: Option<&str>,
        dir: &BuildDir,
        cancel: &CancellationToken,
    ) -> Result<Ending, step::StepError> {
        let ctx = &self.0;
        let timeout = Duration::from_secs(ctx.settings.step_timeout_seconds);
        let mut logs =
            LogWriter::open(ctx.pool.clone(), lease.clone(), ctx.settings.log_limits()).await?;
        if let Some(from) = taken_from {
            let note = format!(
                "{} takes this build over from {from} (its lease ran out); starting again from the fetch",
                lease.owner()
            );
            logs.line("fetch", Stream::Slipway, &note).await?;
        }

        // Fetch (or unpack the upload); the checkout then belongs to the build user.
        let sources = Sources {
            pool: &ctx.pool,
            sandbox: &ctx.sandbox,
            sealer: &ctx.sealer,
            allow_local: ctx.allow_local,
            timeout: Duration::from_secs(ctx.settings.fetch_timeout_seconds),
        };
        let commit = match source::obtain(&sources, build, dir, &mut logs, cancel).await? {
            Ok(commit) => commit,
            Err(ending) => return Ok(ending),
        };
        let src = dir.src.as_path();

        // Recipe.
        let (spec, from) = match BuildSpec::load(src) {
            Ok((spec, from)) => {
                logs.line(
                    "spec",
                    Stream::Slipway,
                    &format!("build recipe from {from}"),
                )
                .await?;
                (spec, from)
            }
            Err(e) => {
                logs.line("spec", Stream::Slipway, &e.to_string()).await?;
                logs.flush().await?;
                return Ok(failed("spec", None, e.to_string(), Some(commit)));
            }
        };

        // Built from a Dockerfile? Its paths are checked before anything runs.
        let image_plan = match Plan::of(src, &spec, from) {
            Ok(plan) => plan,
            Err(e) => {
                logs.line("spec", Stream::Slipway, &e.to_string()).await?;
                logs.flush().await?;
                return Ok(failed("spec", None, e.to_string(), Some(commit)));
            }
        };
        let host_steps = match &image_plan {
            None => vec![("test", &spec.test.command), ("build", &spec.build.command)],
            // The Dockerfile is the build; its `test` stage, if it is the gate, runs there.
            Some(plan) if plan.test_stage => vec![],
            Some(_) => vec![("test", &spec.test.command)],
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
        for (name, command) in host_steps {
            if command.trim().is_empty() {
                logs.line(
                    name,
                    Stream::Slipway,
                    &format!("no {name} command; skipped"),
                )
                .await?;
                continue;
            }
            super::set_step(&ctx.pool, lease, name).await?;
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
                    let reason = with_tail(what, &logs.tail());
                    logs.line(name, Stream::Slipway, &format!("{name} failed"))
                        .await?;
                    logs.flush().await?;
                    return Ok(failed(name, exit_code(&outcome), reason, Some(commit)));
                }
            }
        }

        if let Some(plan) = &image_plan {
            let attempt = format!("{}.{}", build.id, lease.epoch());
            let work = ctx
                .sandbox
                .image_dir(&build.id.to_string(), &attempt)
                .map_err(step::StepError::Wait)?;
            let job = dockerfile::Job {
                pool: &ctx.pool,
                lease,
                build,
                commit: &commit,
                spec: &spec,
                plan,
                registry: &ctx.registry,
                docker: &ctx.docker,
                work: &work,
                timeout,
            };
            let ended = dockerfile::run(&job, &mut logs, cancel).await;
            if let Err(e) = tokio::fs::remove_dir_all(&work).await {
                tracing::warn!(build.id = %build.id, error = %e, "cannot remove the image build directory");
            }
            return ended;
        }

        // Package and push.
        super::set_step(&ctx.pool, lease, "package").await?;
        let pushing = format!("packaging and pushing to {}", ctx.registry.address);
        logs.line("package", Stream::Slipway, &pushing).await?;
        logs.flush().await?;
        let tag = format!("build-{}", build.id);
        let origin = build
            .repository
            .as_deref()
            .map_or_else(|| "upload".into(), slipway_events::repository::redact);
        let blob_cache = ctx.sandbox.base_blobs().map_err(step::StepError::Wait)?;
        let target = package::Target {
            service: &build.service_name,
            commit: &commit,
            tag: &tag,
            registry: &ctx.registry,
            images: &ctx.images,
            kind: BuildSpec::kind(src),
            source: Some(&origin),
            blob_cache: &blob_cache,
        };
        let pushed = package::package_and_push(src, &spec, &target, cancel).await;
        let packaged = match pushed {
            Ok(p) => p,
            Err(package::PackageError::Cancelled) => return Ok(cancelled("package")),
            Err(e) => {
                logs.line("package", Stream::Slipway, &e.to_string())
                    .await?;
                logs.flush().await?;
                return Ok(failed("package", None, e.to_string(), Some(commit)));
            }
        };
        let on = packaged
            .base
            .as_deref()
            .map_or_else(|| " (no base image)".to_owned(), |b| format!(" on {b}"));
        let done = format!(
            "pushed {}{on} (service layer {} bytes)",
            packaged.image, packaged.layer_size
        );
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
