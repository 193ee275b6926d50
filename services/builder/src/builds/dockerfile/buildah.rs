//! Daemonless Dockerfile builds with buildah (`buildah bud`), when the builder has no engine.
//!
//! Each attempt gets its own buildah storage, run root and OCI runtime (runc) root in the
//! builder's private work directory (the build user cannot reach them), all removed with it.
//! `RUN` steps run in containers (`--isolation oci`: namespaces, runc's default capability
//! set) on a private network namespace (`--network private`: out through NAT, not on the
//! builder's loopback). The base is pulled by buildah with the builder's registry login (in a
//! private auth file); plain HTTP is allowed for the builder's own registry only when
//! `[registry] insecure` says so.
//!
//! buildah runs as a step ([`crate::builds::step::run`]): bounded output into the log, the
//! deadline and cancellation kill its process group. A `RUN` container lives outside that
//! group, so after a stopped build every container of the attempt's runc root is killed.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use tokio_util::sync::CancellationToken;

use super::{Built, Job};
use crate::builds::logs::{LogWriter, Stream};
use crate::builds::step::{self, Invocation, Outcome, StepError};

/// The tools' PATH: buildah finds runc in the sbin directories (the builds' PATH has none).
const TOOLS_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// buildah for one attempt, its state under `work`.
pub struct Buildah {
    work: PathBuf,
}

impl Buildah {
    pub fn new(work: &Path) -> Self {
        Self {
            work: work.to_path_buf(),
        }
    }

    fn runc_root(&self) -> PathBuf {
        self.work.join("runc")
    }

    /// The global options: this attempt's storage (vfs: works in any file system, also in a
    /// container) and runtime root.
    fn global_args(&self) -> Vec<String> {
        let p = |name: &str| self.work.join(name).display().to_string();
        vec![
            "--root".into(),
            p("storage"),
            "--runroot".into(),
            p("run"),
            "--storage-driver".into(),
            "vfs".into(),
        ]
    }

    /// The environment: nothing of the builder's, only the registries configuration.
    fn env(&self) -> Vec<(String, String)> {
        let p = |name: &str| self.work.join(name).display().to_string();
        vec![
            ("PATH".into(), TOOLS_PATH.into()),
            ("HOME".into(), p("home")),
            ("TMPDIR".into(), p("tmp")),
            ("LANG".into(), "C.UTF-8".into()),
            ("CONTAINERS_REGISTRIES_CONF".into(), p("registries.conf")),
        ]
    }

    /// Writes the registries configuration and the auth file (0600) of this attempt.
    fn prepare(&self, job: &Job<'_>) -> std::io::Result<()> {
        for dir in ["home", "tmp", "runc"] {
            std::fs::create_dir_all(self.work.join(dir))?;
        }
        let mut conf = String::from(
            "unqualified-search-registries = [\"docker.io\"]\nshort-name-mode = \"permissive\"\n",
        );
        if job.registry.insecure {
            conf.push_str(&format!(
                "[[registry]]\nlocation = {}\ninsecure = true\n",
                toml::Value::String(job.registry.address.clone())
            ));
        }
        std::fs::write(self.work.join("registries.conf"), conf)?;
        let auth = self.work.join("auth.json");
        std::fs::write(&auth, auth_file(job))?;
        std::fs::set_permissions(&auth, std::fs::Permissions::from_mode(0o600))
    }

    /// `buildah bud` of the plan (up to `target`) as `tag`.
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
        self.prepare(job).map_err(StepError::Wait)?;
        let mut args = self.global_args();
        args.extend(
            [
                "bud",
                "--isolation",
                "oci",
                "--network",
                "private",
                "--format",
                "docker",
            ]
            .map(str::to_owned),
        );
        args.push(format!(
            "--runtime-flag=root={}",
            self.runc_root().display()
        ));
        args.push(format!(
            "--authfile={}",
            self.work.join("auth.json").display()
        ));
        args.extend(["-f".into(), job.plan.dockerfile.display().to_string()]);
        args.extend(["-t".into(), local(tag)]);
        if let Some(target) = target {
            args.extend(["--target".into(), target.to_owned()]);
        }
        for (k, v) in labels {
            args.extend(["--label".into(), format!("{k}={v}")]);
        }
        let build_args = job.plan.build_args();
        for (k, v) in &build_args {
            args.extend(["--build-arg".into(), format!("{k}={v}")]);
        }
        args.push(job.plan.context.display().to_string());
        // The command line is not logged: build args and labels stay out of the log.
        let outcome = self.run(step, args, job.timeout, logs, cancel).await?;
        Ok(match outcome {
            Outcome::Succeeded => Built::Done,
            Outcome::Cancelled => Built::Cancelled,
            Outcome::TimedOut => Built::TimedOut,
            Outcome::Failed(code) => Built::Failed(
                format!(
                    "buildah exited with {}",
                    code.map_or_else(|| "a signal".to_owned(), |c| format!("code {c}"))
                ),
                code,
            ),
        })
    }

    /// Writes `tag` as a `docker save` archive to `to`.
    pub async fn export(
        &self,
        job: &Job<'_>,
        tag: &str,
        to: &Path,
        logs: &mut LogWriter,
        cancel: &CancellationToken,
    ) -> Result<Result<(), String>, StepError> {
        let mut args = self.global_args();
        args.extend(["push".into(), "--quiet".into(), local(tag)]);
        args.push(format!("docker-archive:{}:{}", to.display(), local(tag)));
        Ok(
            match self.run("package", args, job.timeout, logs, cancel).await? {
                Outcome::Succeeded => Ok(()),
                Outcome::Cancelled => Err("cancelled".into()),
                outcome => Err(format!("buildah push to an archive ended: {outcome:?}")),
            },
        )
    }

    async fn run(
        &self,
        step: &str,
        args: Vec<String>,
        timeout: Duration,
        logs: &mut LogWriter,
        cancel: &CancellationToken,
    ) -> Result<Outcome, StepError> {
        let inv = Invocation {
            step,
            program: "buildah",
            args,
            cwd: &self.work,
            env: self.env(),
            // As the builder (root): buildah needs it for its containers' namespaces.
            user: None,
            timeout,
        };
        let outcome = step::run(inv, logs, cancel).await;
        if !matches!(outcome, Ok(Outcome::Succeeded)) {
            self.kill_containers().await;
        }
        if let Err(StepError::Spawn { source, .. }) = &outcome
            && source.kind() == std::io::ErrorKind::NotFound
        {
            let why = "buildah is not installed (and no [docker] host is set): install buildah \
                       or give the builder a Docker Engine";
            logs.line(step, Stream::Slipway, why).await?;
            return Ok(Outcome::Failed(None));
        }
        outcome
    }

    /// Kills and removes every container left in this attempt's runc root (a killed buildah
    /// leaves its `RUN` container running).
    async fn kill_containers(&self) {
        let root = self.runc_root();
        let Ok(entries) = std::fs::read_dir(&root) else {
            return;
        };
        for entry in entries.flatten() {
            let id = entry.file_name().to_string_lossy().into_owned();
            let deleted = tokio::time::timeout(
                Duration::from_secs(20),
                tokio::process::Command::new("runc")
                    .arg("--root")
                    .arg(&root)
                    .args(["delete", "--force", &id])
                    .env_clear()
                    .env("PATH", TOOLS_PATH)
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .kill_on_drop(true)
                    .status(),
            )
            .await;
            if !matches!(deleted, Ok(Ok(s)) if s.success()) {
                tracing::warn!(container = %id, "cannot remove a buildah build container");
            }
        }
    }
}

/// The name in buildah's storage: `localhost/` says it is no registry's.
fn local(tag: &str) -> String {
    format!("localhost/{tag}")
}

/// containers-auth.json with the builder's registry login (basic only: a bearer token is
/// not a form buildah takes; anonymous then).
fn auth_file(job: &Job<'_>) -> String {
    use slipway_settings::RegistryLogin;
    let login = job
        .registry
        .auth
        .login(crate::builds::package::REGISTRY_AUTH);
    let mut auths = serde_json::Map::new();
    if let Ok(RegistryLogin::Basic { username, password }) = login {
        let auth =
            base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
        auths.insert(
            job.registry.address.clone(),
            serde_json::json!({ "auth": auth }),
        );
    }
    serde_json::json!({ "auths": auths }).to_string()
}
