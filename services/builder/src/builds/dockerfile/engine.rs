//! Dockerfile builds through a Docker Engine's build API (bollard, the classic builder).
//!
//! The context is sent as a tar made here from the context directory (links kept as links,
//! never followed; `.git` left out); the engine resolves every `COPY` inside it. `RUN` steps
//! run on the engine's default bridge network, never the host's. Closing the build request
//! stops the build (the engine cancels it and removes its containers): a cancel or the step's
//! deadline drops the request.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use bollard::Docker;
use bollard::auth::DockerCredentials;
use bollard::errors::Error as DockerError;
use bollard::query_parameters::{BuildImageOptionsBuilder, BuilderVersion, RemoveImageOptions};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::{Built, Job};
use crate::builds::logs::{LogWriter, Stream};
use crate::builds::output::LineCutter;
use crate::builds::step::StepError;

/// The Dockerfile's name in the context tar when it lives outside the context directory.
const OUTSIDE_DOCKERFILE: &str = ".slipway.Dockerfile";

/// A connected engine (its API version negotiated).
pub struct Engine {
    docker: Docker,
}

impl Engine {
    /// Connects to `host` and checks that it answers; the error says which engine did not.
    pub async fn connect(host: &str, step_timeout: Duration) -> Result<Self, String> {
        // bollard's timeout bounds whole requests: a build may stream for the step's length.
        let secs = step_timeout.as_secs() + 60;
        let version = bollard::API_DEFAULT_VERSION;
        let connected = if host.starts_with("unix://") {
            Docker::connect_with_unix(host, secs, version)
        } else if host.starts_with("tcp://") || host.starts_with("http://") {
            Docker::connect_with_http(host, secs, version)
        } else {
            return Err(format!(
                "docker.host `{host}` must be unix:///path/to/docker.sock or tcp://host:port"
            ));
        };
        let no_answer =
            |e: DockerError| format!("the Docker Engine at {host} does not answer: {e}");
        let docker = connected.map_err(no_answer)?;
        // An engine older than the client's API answers in its own version.
        let docker = tokio::time::timeout(Duration::from_secs(30), docker.negotiate_version())
            .await
            .map_err(|_| format!("the Docker Engine at {host} does not answer (30s)"))?
            .map_err(no_answer)?;
        Ok(Self { docker })
    }

    /// Builds the plan's Dockerfile (up to `target`) as `tag`, the output into the log.
    #[allow(clippy::too_many_arguments)] // one call site, every argument distinct
    pub async fn build(
        &self,
        job: &Job<'_>,
        target: Option<&str>,
        tag: &str,
        labels: &BTreeMap<String, String>,
        step: &str,
        logs: &mut LogWriter,
        cancel: &CancellationToken,
    ) -> Result<Built, StepError> {
        let plan = job.plan.clone();
        let context = tokio::task::spawn_blocking(move || context_tar(&plan))
            .await
            .map_err(|e| StepError::Wait(std::io::Error::other(e)))?
            .map_err(StepError::Wait)?;
        let dockerfile = job.plan.dockerfile_in_context().map_or_else(
            || OUTSIDE_DOCKERFILE.to_owned(),
            |p| p.display().to_string(),
        );
        let args = job.plan.build_args();
        let labels: HashMap<&String, &String> = labels.iter().collect();
        let mut options = BuildImageOptionsBuilder::new()
            .dockerfile(&dockerfile)
            .t(tag)
            .rm(true)
            .forcerm(true)
            .networkmode("default")
            .labels(&labels)
            .buildargs(&args.iter().collect::<HashMap<_, _>>())
            .version(BuilderVersion::BuilderV1);
        if let Some(target) = target {
            options = options.target(target);
        }
        let stream = self.docker.build_image(
            options.build(),
            pull_credentials(job),
            Some(bollard::body_full(bytes::Bytes::from(context))),
        );
        let mut stream = std::pin::pin!(stream);
        let mut cutter = LineCutter::new(logs.max_line_bytes());
        let mut lines = Vec::new();
        let deadline = tokio::time::sleep(job.timeout);
        let mut deadline = std::pin::pin!(deadline);
        let mut failure = None;
        loop {
            // Returning drops the request: the engine stops the build and its container.
            let item = tokio::select! {
                () = cancel.cancelled() => return Ok(Built::Cancelled),
                () = &mut deadline => return Ok(Built::TimedOut),
                item = stream.next() => item,
            };
            match item {
                None => break,
                Some(Ok(info)) => {
                    if let Some(text) = info.stream {
                        cutter.feed(text.as_bytes(), &mut lines);
                    }
                    // Pull progress without its bars: one line per layer state.
                    if let Some(status) = info.status
                        && info.progress_detail.is_none_or(|p| p.total.is_none())
                    {
                        let id = info.id.map(|id| format!("{id}: ")).unwrap_or_default();
                        lines.push(format!("{id}{status}"));
                    }
                }
                Some(Err(DockerError::DockerStreamError { error })) => failure = Some(error),
                Some(Err(e)) => failure = Some(format!("the Docker Engine failed: {e}")),
            }
            for line in lines.drain(..) {
                logs.line(step, Stream::Stdout, &line).await?;
            }
        }
        if let Some(last) = cutter.finish() {
            logs.line(step, Stream::Stdout, &last).await?;
        }
        if let Some(error) = &failure {
            logs.line(step, Stream::Stderr, error).await?;
        }
        logs.flush().await?;
        Ok(match failure {
            None => Built::Done,
            Some(error) => {
                let code = exit_code(&error);
                Built::Failed(error, code)
            }
        })
    }

    /// Writes `tag` as a `docker save` archive to `to`.
    pub async fn export(
        &self,
        tag: &str,
        to: &Path,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> Result<(), String> {
        let write = async {
            let mut file = std::fs::File::create(to).map_err(|e| e.to_string())?;
            let mut stream = std::pin::pin!(self.docker.export_image(tag));
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| e.to_string())?;
                file.write_all(&chunk).map_err(|e| e.to_string())?;
            }
            file.flush().map_err(|e| e.to_string())
        };
        tokio::select! {
            () = cancel.cancelled() => Err("cancelled".into()),
            done = tokio::time::timeout(timeout, write) => match done {
                Ok(done) => done,
                Err(_) => Err(format!("not done within {}s", timeout.as_secs())),
            },
        }
    }

    /// Removes what the build tagged (best effort: an image in use stays, said in the log).
    pub async fn remove(&self, tags: &[String]) {
        for tag in tags {
            let options = RemoveImageOptions {
                force: false,
                noprune: false,
                platforms: None,
            };
            match self.docker.remove_image(tag, Some(options), None).await {
                Ok(_)
                | Err(DockerError::DockerResponseServerError {
                    status_code: 404, ..
                }) => {}
                Err(e) => tracing::warn!(image = %tag, error = %e, "cannot remove a built image"),
            }
        }
    }
}

/// The builder's registry login for `FROM` images pulled from it (the engine uses it for the
/// pull only; no build step sees it).
fn pull_credentials(job: &Job<'_>) -> Option<HashMap<String, DockerCredentials>> {
    use slipway_settings::RegistryLogin;
    let login = job
        .registry
        .auth
        .login(crate::builds::package::REGISTRY_AUTH)
        .ok()?;
    let credentials = match login {
        RegistryLogin::Anonymous => return None,
        RegistryLogin::Basic { username, password } => DockerCredentials {
            username: Some(username.to_owned()),
            password: Some(password.to_owned()),
            serveraddress: Some(job.registry.address.clone()),
            ..Default::default()
        },
        RegistryLogin::Bearer(token) => DockerCredentials {
            registrytoken: Some(token.to_owned()),
            serveraddress: Some(job.registry.address.clone()),
            ..Default::default()
        },
    };
    Some(HashMap::from([(job.registry.address.clone(), credentials)]))
}

/// The context directory as a tar: links as links, `.git` left out; the Dockerfile added as
/// [`OUTSIDE_DOCKERFILE`] when it is not inside the context.
fn context_tar(plan: &super::Plan) -> std::io::Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    tar.follow_symlinks(false);
    let mut entries: Vec<_> = std::fs::read_dir(&plan.context)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        if name == ".git" {
            continue;
        }
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            tar.append_dir_all(&name, &path)?;
        } else {
            tar.append_path_with_name(&path, &name)?;
        }
    }
    if plan.dockerfile_in_context().is_none() {
        tar.append_path_with_name(&plan.dockerfile, OUTSIDE_DOCKERFILE)?;
    }
    tar.into_inner()
}

/// The exit code in the classic builder's "The command '…' returned a non-zero code: N".
fn exit_code(error: &str) -> Option<i32> {
    error
        .rsplit_once("returned a non-zero code: ")
        .and_then(|(_, code)| code.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_failing_run_step_gives_its_exit_code() {
        let error = "The command '/bin/sh -c python3 test.py' returned a non-zero code: 3";
        assert_eq!(exit_code(error), Some(3));
        assert_eq!(exit_code("pull access denied"), None);
    }
}
