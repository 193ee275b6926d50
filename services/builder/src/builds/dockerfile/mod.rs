//! Dockerfile builds: a source with a `Dockerfile` (and no slipway.toml, or one whose
//! `[image] dockerfile` names it) is built from it instead of the build step + packaging.
//!
//! Where: through the Docker Engine's build API (`[docker] host`, see [`engine`]) when the
//! builder has one, else daemonless with buildah ([`buildah`]). Either way the image is then
//! exported as a `docker save` archive and pushed by the builder itself ([`push`]) with the
//! `[registry]` settings, login, deadline and cancel of packaging, and recorded by digest as
//! packaged images are.
//!
//! The test gate still runs first: slipway.toml's `[test]` command when it has one; else the
//! Dockerfile's stage named `test`, when it has one (built up to that stage: a failing `RUN`
//! fails the gate); else the detected project kind's test (a Dockerfile beside a `go.mod` runs
//! `go test ./...` on the builder, as the go kind would); else none.
//!
//! Builds are other teams' code: the context holds only the source, no host path is mounted,
//! build args hold nothing of the platform's (only `BASE` = `[image] base`, when set) and are
//! never logged; `RUN` steps get a network namespace of their own (not the builder's loopback).

pub mod buildah;
pub mod engine;
pub mod ignore;
pub mod push;

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use slipway_events::slipway::Command;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::ending::with_tail;
use super::lease::Lease;
use super::logs::{LogWriter, Stream};
use super::output::cut;
use super::package::{Packaged, RegistrySettings};
use super::spec::{BuildSpec, RunSpec};
use super::step::StepError;
use super::{Build, Ending, cancelled, failed};

/// Settings of section `[docker]` (the builder's): the engine Dockerfile builds go through.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct DockerSettings {
    /// `unix:///var/run/docker.sock` or `tcp://host:2375` (plain HTTP: a trusted network
    /// only); empty: no engine, Dockerfiles are built with buildah.
    #[serde(default)]
    pub host: String,
}

/// The most of a Dockerfile read to look for its stages.
const MAX_DOCKERFILE_BYTES: u64 = 1024 * 1024;

/// Why a Dockerfile build cannot even start (the `spec` step fails with it).
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(
        "[image] {field} = \"{path}\" must be a relative path inside the source \
         (no `..`, not absolute, no link leading out of it)"
    )]
    Outside { field: &'static str, path: String },
    #[error("[image] {field} = \"{path}\" does not exist in the source")]
    Missing { field: &'static str, path: String },
    #[error("[image] {field} = \"{path}\" must be {what}")]
    Kind {
        field: &'static str,
        path: String,
        what: &'static str,
    },
    #[error(transparent)]
    Ignore(#[from] ignore::IgnoreError),
}

/// A Dockerfile build, its paths checked to stay inside the source.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The Dockerfile (resolved, inside the source).
    pub dockerfile: PathBuf,
    /// The build context (resolved, inside the source).
    pub context: PathBuf,
    /// The Dockerfile as slipway.toml names it (what the log shows).
    pub shown: String,
    /// The gate is the Dockerfile's `test` stage (no host test command runs).
    pub test_stage: bool,
    /// `[image] base`, given to the build as `BASE`.
    pub base: Option<String>,
    /// The context's `.dockerignore` (no rules without one), applied by both builders.
    pub ignore: ignore::DockerIgnore,
}

impl Plan {
    /// The Dockerfile build `spec` asks for, if any; `from` is where the recipe came from.
    pub fn of(source: &Path, spec: &BuildSpec, from: &str) -> Result<Option<Self>, PlanError> {
        let Some(name) = spec.image.dockerfile.as_deref() else {
            return Ok(None);
        };
        let root = source.canonicalize().map_err(|_| PlanError::Missing {
            field: "dockerfile",
            path: shown(name),
        })?;
        let dockerfile = inside(&root, "dockerfile", name)?;
        let meta = std::fs::metadata(&dockerfile).map_err(|_| missing("dockerfile", name))?;
        if !meta.is_file() || meta.len() > MAX_DOCKERFILE_BYTES {
            return Err(PlanError::Kind {
                field: "dockerfile",
                path: shown(name),
                what: "a regular file of at most 1 MiB",
            });
        }
        let context_name = spec.image.context.as_deref().unwrap_or(".");
        let context = inside(&root, "context", context_name)?;
        if !context.is_dir() {
            return Err(PlanError::Kind {
                field: "context",
                path: shown(context_name),
                what: "a directory",
            });
        }
        let ignore = ignore::DockerIgnore::read(&root, &context, MAX_DOCKERFILE_BYTES)?;
        let text = std::fs::read_to_string(&dockerfile).unwrap_or_default();
        // slipway.toml's own [test] command wins; detected defaults yield to the Dockerfile.
        let host_test = from == "slipway.toml" && !spec.test.command.trim().is_empty();
        Ok(Some(Self {
            dockerfile,
            context,
            shown: shown(name),
            test_stage: !host_test && has_stage(&text, "test"),
            base: spec.image.base.clone().filter(|b| !b.trim().is_empty()),
            ignore,
        }))
    }

    /// The Dockerfile's path inside the context, when it is there (the engine needs one).
    pub fn dockerfile_in_context(&self) -> Option<PathBuf> {
        self.dockerfile
            .strip_prefix(&self.context)
            .ok()
            .map(Path::to_path_buf)
    }

    /// The build args (`BASE` only, when `[image] base` is set).
    pub fn build_args(&self) -> BTreeMap<String, String> {
        self.base
            .iter()
            .map(|b| ("BASE".to_owned(), b.clone()))
            .collect()
    }
}

fn shown(path: &str) -> String {
    cut(path, 200).into_owned()
}

fn missing(field: &'static str, path: &str) -> PlanError {
    PlanError::Missing {
        field,
        path: shown(path),
    }
}

/// `rel` resolved under `root`, refused when it is not plainly relative or leads out of it.
fn inside(root: &Path, field: &'static str, rel: &str) -> Result<PathBuf, PlanError> {
    let outside = || PlanError::Outside {
        field,
        path: shown(rel),
    };
    let path = Path::new(rel);
    let plain = !rel.trim().is_empty()
        && path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if !plain {
        return Err(outside());
    }
    let full = root.join(path);
    if full.symlink_metadata().is_err() {
        return Err(missing(field, rel));
    }
    // A link (or a link among its parents) may still lead out: compare the resolved path.
    let real = full.canonicalize().map_err(|_| missing(field, rel))?;
    if !real.starts_with(root) {
        return Err(outside());
    }
    Ok(real)
}

/// Whether the Dockerfile has a stage named `name` (`FROM <image> AS <name>`, any case).
fn has_stage(text: &str, name: &str) -> bool {
    text.lines().any(|line| {
        let words: Vec<&str> = line.split_whitespace().collect();
        matches!(words.as_slice(),
            [from, .., as_, stage] if from.eq_ignore_ascii_case("FROM")
                && as_.eq_ignore_ascii_case("AS")
                && stage.eq_ignore_ascii_case(name))
    })
}

/// What an image build needs besides the plan.
pub struct Job<'a> {
    pub pool: &'a PgPool,
    pub lease: &'a Lease,
    pub build: &'a Build,
    pub commit: &'a str,
    pub spec: &'a BuildSpec,
    pub plan: &'a Plan,
    pub registry: &'a RegistrySettings,
    pub docker: &'a DockerSettings,
    /// A private directory of the builder's own for this attempt (never the build user's).
    pub work: &'a Path,
    /// Each step (the test stage, the build) is stopped after this long.
    pub timeout: Duration,
}

/// How one image build (up to a target stage, or whole) ended.
#[derive(Debug)]
pub enum Built {
    Done,
    /// It failed: what happened, and the exit code of the failing `RUN` when known.
    Failed(String, Option<i32>),
    TimedOut,
    Cancelled,
}

/// The labels every Dockerfile image carries: where it comes from and how it is run.
fn labels(job: &Job<'_>) -> BTreeMap<String, String> {
    let run = job.spec.run.as_ref();
    let mut labels = BTreeMap::from([
        (
            "dev.slipway.service".to_owned(),
            job.build.service_name.clone(),
        ),
        (
            "org.opencontainers.image.revision".to_owned(),
            job.commit.to_owned(),
        ),
        (
            "dev.slipway.port-env".to_owned(),
            run.map_or_else(|| "PORT".to_owned(), |r| r.port_env.to_string()),
        ),
        (
            "dev.slipway.health-path".to_owned(),
            run.map_or_else(|| "/healthz".to_owned(), |r| r.health_path.to_string()),
        ),
    ]);
    if let Some(repository) = &job.build.repository {
        labels.insert(
            "org.opencontainers.image.source".to_owned(),
            slipway_events::repository::redact(repository),
        );
    }
    if let Some(base) = &job.plan.base {
        labels.insert(
            "org.opencontainers.image.base.name".to_owned(),
            base.clone(),
        );
    }
    labels
}

/// The run spec: slipway.toml's `[run]`, else the image's ENTRYPOINT + CMD with the defaults.
fn run_spec(spec: &BuildSpec, image: &push::ImageConfig) -> Option<RunSpec> {
    if let Some(run) = &spec.run {
        return Some(run.clone());
    }
    let args: Vec<String> = image.entrypoint.iter().chain(&image.cmd).cloned().collect();
    Some(RunSpec {
        command: Command::new(args).ok()?,
        port_env: "PORT".parse().ok()?,
        health_path: Default::default(),
        cpus: None,
        memory: None,
    })
}

/// The engine or buildah, whichever this builder has.
enum Builder {
    Engine(engine::Engine),
    Buildah(buildah::Buildah),
}

impl Builder {
    async fn build(
        &self,
        job: &Job<'_>,
        target: Option<&str>,
        tag: &str,
        step: &str,
        logs: &mut LogWriter,
        cancel: &CancellationToken,
    ) -> Result<Built, StepError> {
        // The test stage is thrown away: labels (a build step each, for the engine) only on
        // the image.
        let labels = match target {
            None => labels(job),
            Some(_) => BTreeMap::new(),
        };
        match self {
            Self::Engine(e) => e.build(job, target, tag, &labels, step, logs, cancel).await,
            Self::Buildah(b) => b.build(job, target, tag, &labels, step, logs, cancel).await,
        }
    }

    async fn export(
        &self,
        job: &Job<'_>,
        tag: &str,
        to: &Path,
        logs: &mut LogWriter,
        cancel: &CancellationToken,
    ) -> Result<Result<(), String>, StepError> {
        match self {
            Self::Engine(e) => Ok(e.export(tag, to, job.timeout, cancel).await),
            Self::Buildah(b) => b.export(job, tag, to, logs, cancel).await,
        }
    }

    async fn remove(&self, tags: &[String]) {
        if let Self::Engine(e) = self {
            e.remove(tags).await;
        }
    }
}

/// Runs the gate (when it is the `test` stage), builds the image and pushes it.
pub async fn run(
    job: &Job<'_>,
    logs: &mut LogWriter,
    cancel: &CancellationToken,
) -> Result<Ending, StepError> {
    let commit = Some(job.commit.to_owned());
    let builder = if job.docker.host.trim().is_empty() {
        Builder::Buildah(buildah::Buildah::new(job.work))
    } else {
        match engine::Engine::connect(&job.docker.host, job.timeout).await {
            Ok(e) => Builder::Engine(e),
            Err(why) => {
                logs.line("build", Stream::Slipway, &why).await?;
                logs.flush().await?;
                return Ok(failed("build", None, why, commit));
            }
        }
    };
    let how = match &builder {
        Builder::Engine(_) => format!("the Docker Engine at {}", job.docker.host),
        Builder::Buildah(_) => "buildah (no Docker Engine configured)".to_owned(),
    };
    let tag = format!("slipway-build/{}", job.build.id);
    let mut tags = Vec::new();
    let ending = async {
        if job.plan.test_stage {
            super::set_step(job.pool, job.lease, "test").await?;
            logs.clear_tail();
            let note = format!(
                "test gate: the `test` stage of {}, with {how}",
                job.plan.shown
            );
            logs.line("test", Stream::Slipway, &note).await?;
            let test_tag = format!("{tag}:test");
            tags.push(test_tag.clone());
            let built = builder
                .build(job, Some("test"), &test_tag, "test", logs, cancel)
                .await?;
            if let Some(end) = ended("test", built, job, logs).await? {
                return Ok(end);
            }
        }
        super::set_step(job.pool, job.lease, "build").await?;
        logs.clear_tail();
        let note = format!("building {} with {how}", job.plan.shown);
        logs.line("build", Stream::Slipway, &note).await?;
        let image_tag = format!("{tag}:image");
        tags.push(image_tag.clone());
        let built = builder
            .build(job, None, &image_tag, "build", logs, cancel)
            .await?;
        if let Some(end) = ended("build", built, job, logs).await? {
            return Ok(end);
        }

        super::set_step(job.pool, job.lease, "package").await?;
        let pushing = format!(
            "exporting the image and pushing it to {}",
            job.registry.address
        );
        logs.line("package", Stream::Slipway, &pushing).await?;
        logs.flush().await?;
        let archive = job.work.join("image.tar");
        if let Err(why) = builder
            .export(job, &image_tag, &archive, logs, cancel)
            .await?
        {
            if cancel.is_cancelled() {
                return Ok(cancelled("package"));
            }
            let reason = format!("exporting the built image failed: {why}");
            logs.line("package", Stream::Slipway, &reason).await?;
            logs.flush().await?;
            return Ok(failed("package", None, reason, commit.clone()));
        }
        let target = push::Target {
            service: &job.build.service_name,
            tag: &format!("build-{}", job.build.id),
            registry: job.registry,
        };
        let pushed = match push::push_archive(&archive, &target, cancel).await {
            Ok(p) => p,
            Err(push::PushError::Cancelled) => return Ok(cancelled("package")),
            Err(e) => {
                logs.line("package", Stream::Slipway, &e.to_string())
                    .await?;
                logs.flush().await?;
                return Ok(failed("package", None, e.to_string(), commit.clone()));
            }
        };
        let run = run_spec(job.spec, &pushed.config);
        if run.is_none() {
            let note = "the image has no CMD/ENTRYPOINT and slipway.toml no [run]: its release \
                        has no run command";
            logs.line("package", Stream::Slipway, note).await?;
        }
        if let Some(run) = &run
            && !pushed.config.exposed.is_empty()
        {
            // EXPOSE stays in the image config; the platform gives the port in the variable.
            let note = format!(
                "the image exposes {}; instances get their port in ${}",
                pushed.config.exposed.join(", "),
                run.port_env
            );
            logs.line("package", Stream::Slipway, &note).await?;
        }
        let done = format!(
            "pushed {} ({} bytes in {} layers)",
            pushed.image, pushed.size, pushed.layers
        );
        logs.line("package", Stream::Slipway, &done).await?;
        logs.line("package", Stream::Slipway, "build succeeded")
            .await?;
        logs.flush().await?;
        Ok::<_, StepError>(Ending {
            status: "succeeded",
            step: None,
            exit_code: Some(0),
            reason: None,
            commit_built: commit.clone(),
            packaged: Some(Packaged {
                image: pushed.image,
                digest: pushed.digest,
                purl: pushed.purl,
                layer_size: pushed.size,
                run,
                // The BASE build arg when given; a Dockerfile's own FROM is not pinned here.
                base: job.plan.base.clone(),
            }),
        })
    }
    .await;
    // The engine keeps what it built otherwise; buildah's storage goes with `work`.
    builder.remove(&tags).await;
    ending
}

/// The build's end when `built` did not succeed.
async fn ended(
    step: &str,
    built: Built,
    job: &Job<'_>,
    logs: &mut LogWriter,
) -> Result<Option<Ending>, StepError> {
    let (what, code) = match built {
        Built::Done => return Ok(None),
        Built::Cancelled => return Ok(Some(cancelled(step))),
        Built::TimedOut => (
            format!(
                "the Dockerfile build did not finish within {}s and was stopped",
                job.timeout.as_secs()
            ),
            None,
        ),
        Built::Failed(what, code) => (format!("the Dockerfile build failed: {what}"), code),
    };
    let reason = with_tail(what, &logs.tail());
    logs.line(step, Stream::Slipway, &format!("{step} failed"))
        .await?;
    logs.flush().await?;
    Ok(Some(failed(
        step,
        code,
        reason,
        Some(job.commit.to_owned()),
    )))
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;
