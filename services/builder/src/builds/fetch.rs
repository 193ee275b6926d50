//! Fetching the exact commit to build, with the git command line, output going to the build
//! log. Git runs with an environment built here: no configuration of the machine or of a user
//! (so no credential helper, no `insteadOf`, none of the builder's keys), only the transports
//! allowed, and the service's own clone credential if it has one.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::logs::{LogWriter, Stream};
use super::sandbox::BuildDir;
use super::step::{self, Invocation, Outcome, StepError};
use crate::credentials::CloneCredential;

/// The fetched commit, or how fetching failed.
pub enum Fetched {
    Commit(String),
    Failed(Outcome, String),
}

/// How git is run for one build.
pub struct Git<'a> {
    /// The empty checkout directory.
    pub cwd: &'a Path,
    /// The whole environment of every git process (see [`git_env`]).
    pub env: Vec<(String, String)>,
    pub timeout: Duration,
}

/// `'...'` for `sh`, which git runs `GIT_SSH_COMMAND` with.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// `scheme://host[:port]/` of an HTTP(S) repository: the scope of its token, so that the header
/// goes to that host only (not to another one a redirect or a submodule names).
fn http_origin(repository: &str) -> Option<String> {
    let url = url::Url::parse(repository).ok()?;
    if !matches!(url.scheme(), "https" | "http") {
        return None;
    }
    let host = url.host_str()?;
    Some(match url.port() {
        Some(port) => format!("{}://{host}:{port}/", url.scheme()),
        None => format!("{}://{host}/", url.scheme()),
    })
}

/// Whether git reaches `repository` over SSH (`ssh://` or `user@host:path`).
fn is_ssh(repository: &str) -> bool {
    repository.starts_with("ssh://") || (!repository.contains("://") && repository.contains('@'))
}

/// What [`git_env`] gives.
pub struct GitEnv {
    pub env: Vec<(String, String)>,
    /// For the build log, when the service's credential does not fit the transport.
    pub note: Option<String>,
}

/// Git's environment for fetching `repository`: the build's base environment, the allowed
/// transports, an SSH command that uses no key but the service's, and the service's token as
/// an HTTP header scoped to the repository's host. Secrets go through the environment (git's
/// `GIT_CONFIG_*`) and a 0600 file in the builder-only `fetch/` dir, never argv or the URL.
pub fn git_env(
    dir: &BuildDir,
    repository: &str,
    credential: Option<&CloneCredential>,
    known_hosts: &Path,
    allow_local: bool,
) -> std::io::Result<GitEnv> {
    let mut env = dir.base_env();
    let protocols = if allow_local {
        "https:http:ssh:git:file"
    } else {
        "https:http:ssh:git"
    };
    env.push(("GIT_ALLOW_PROTOCOL".into(), protocols.into()));
    // A server that stops sending (under 1 KB/s for a minute) ends the fetch early rather
    // than at the step's deadline; the deadline (the process killed) bounds the rest.
    env.push(("GIT_HTTP_LOW_SPEED_LIMIT".into(), "1000".into()));
    env.push(("GIT_HTTP_LOW_SPEED_TIME".into(), "60".into()));
    let mut note = None;
    // Without a key of the service, point `-i` at a file that does not exist: ssh then tries
    // no identity at all (not the builder's ~/.ssh, which it would read whatever HOME says).
    let mut identity = dir.fetch.join("no-key");
    match credential {
        Some(CloneCredential::SshKey { key }) if is_ssh(repository) => {
            identity = dir.fetch.join("deploy-key");
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&identity)?;
            file.write_all(key.as_bytes())?;
        }
        Some(token @ CloneCredential::Token { .. }) => match (http_origin(repository), token.authorization()) {
            (Some(origin), Some(header)) => {
                env.push(("GIT_CONFIG_COUNT".into(), "1".into()));
                env.push(("GIT_CONFIG_KEY_0".into(), format!("http.{origin}.extraHeader")));
                env.push(("GIT_CONFIG_VALUE_0".into(), header));
            }
            _ => note = Some("the service's clone credential is a token (for HTTPS); this repository is not HTTPS, so it is not used".to_owned()),
        },
        Some(CloneCredential::SshKey { .. }) => {
            note = Some("the service's clone credential is an SSH key; this repository is not SSH, so it is not used".to_owned());
        }
        None => {}
    }
    let ssh = format!(
        "ssh -F /dev/null -o IdentitiesOnly=yes -o IdentityAgent=none -o BatchMode=yes \
         -o ConnectTimeout=30 -o ServerAliveInterval=15 -o ServerAliveCountMax=4 \
         -o StrictHostKeyChecking=accept-new -o UserKnownHostsFile={} -i {}",
        shell_quote(&known_hosts.display().to_string()),
        shell_quote(&identity.display().to_string()),
    );
    env.push(("GIT_SSH_COMMAND".into(), ssh));
    Ok(GitEnv { env, note })
}

async fn git(
    g: &Git<'_>,
    args: &[&str],
    logs: &mut LogWriter,
    cancel: &CancellationToken,
) -> Result<Outcome, StepError> {
    let inv = Invocation {
        step: "fetch",
        program: "git",
        args: args.iter().map(|a| a.to_string()).collect(),
        cwd: g.cwd,
        env: g.env.clone(),
        // Git runs as the builder (it holds the credential); the checkout is handed over after.
        user: None,
        timeout: g.timeout,
    };
    step::run(inv, logs, cancel).await
}

/// Checks out `commit` (or the head of `git_ref`) of `repository` into the empty `g.cwd`.
/// The repository is logged redacted (see `slipway_events::repository::redact`).
pub async fn fetch(
    g: &Git<'_>,
    repository: &str,
    git_ref: &str,
    commit: Option<&str>,
    logs: &mut LogWriter,
    cancel: &CancellationToken,
) -> Result<Fetched, StepError> {
    let shown = slipway_events::repository::redact(repository);
    let want = commit.unwrap_or(git_ref);
    logs.line(
        "fetch",
        Stream::Slipway,
        &format!("fetching {want} from {shown}"),
    )
    .await?;
    let outcome = git(g, &["init", "-q", "."], logs, cancel).await?;
    if outcome != Outcome::Succeeded {
        return Ok(Fetched::Failed(outcome, "git init failed".into()));
    }
    // Shallow fetch of just what is built; a server that refuses to serve a commit by id gets
    // asked for the ref instead, and the commit is checked out from its history.
    let mut outcome = git(
        g,
        &["fetch", "-q", "--depth", "1", "--", repository, want],
        logs,
        cancel,
    )
    .await?;
    if outcome != Outcome::Succeeded && commit.is_some() && !cancel.is_cancelled() {
        logs.line(
            "fetch",
            Stream::Slipway,
            &format!("fetching {git_ref} to find {want}"),
        )
        .await?;
        outcome = git(g, &["fetch", "-q", "--", repository, git_ref], logs, cancel).await?;
    }
    if outcome != Outcome::Succeeded {
        return Ok(Fetched::Failed(
            outcome,
            format!("cannot fetch {want} from {shown}"),
        ));
    }
    let target = if commit.is_some() { want } else { "FETCH_HEAD" };
    let outcome = git(
        g,
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
    )
    .await?;
    if outcome != Outcome::Succeeded {
        return Ok(Fetched::Failed(
            outcome,
            format!("commit {want} is not in {shown}"),
        ));
    }
    // Local, but still bounded: a wedged git (a full disk, a lock) must not hang the build.
    let head = tokio::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(g.cwd)
        .env_clear()
        .envs(g.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .kill_on_drop(true)
        .output();
    let head = tokio::time::timeout(g.timeout, head)
        .await
        .map_err(|_| StepError::Wait(std::io::Error::other("git rev-parse timed out")))?
        .map_err(StepError::Wait)?;
    let sha = String::from_utf8_lossy(&head.stdout).trim().to_owned();
    logs.line("fetch", Stream::Slipway, &format!("checked out {sha}"))
        .await?;
    Ok(Fetched::Commit(sha))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builds::sandbox::{BuildUser, Sandbox};

    fn dir() -> (Sandbox, BuildDir) {
        let root = std::env::temp_dir().join(format!(
            "slipway-fetch-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        let user = BuildUser {
            uid: 64900,
            gid: 64900,
        };
        let sandbox = Sandbox::prepare(&root, "/usr/bin:/bin", user).unwrap();
        let dir = sandbox.build_dir("b", "b.1").unwrap();
        (sandbox, dir)
    }

    fn value<'a>(env: &'a [(String, String)], key: &str) -> Option<&'a str> {
        env.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    #[test]
    fn a_token_becomes_a_header_scoped_to_the_host() {
        let (sandbox, dir) = dir();
        let token = CloneCredential::Token {
            username: "bot".into(),
            token: "s3cret".into(),
        };
        let repo = "https://git.example:8443/acme/app.git";
        let GitEnv { env, note } =
            git_env(&dir, repo, Some(&token), &sandbox.known_hosts(), false).unwrap();
        assert!(note.is_none());
        assert_eq!(value(&env, "GIT_CONFIG_COUNT"), Some("1"));
        assert_eq!(
            value(&env, "GIT_CONFIG_KEY_0"),
            Some("http.https://git.example:8443/.extraHeader")
        );
        assert_eq!(
            value(&env, "GIT_CONFIG_VALUE_0"),
            token.authorization().as_deref()
        );
        assert_eq!(
            value(&env, "GIT_ALLOW_PROTOCOL"),
            Some("https:http:ssh:git")
        );
        assert_eq!(value(&env, "GIT_CONFIG_GLOBAL"), Some("/dev/null"));
        assert_eq!(value(&env, "GIT_CONFIG_NOSYSTEM"), Some("1"));
        assert!(
            env.iter()
                .all(|(k, v)| k == "GIT_CONFIG_VALUE_0" || !v.contains("czNjcmV0")),
            "the token appears once"
        );
    }

    #[test]
    fn a_deploy_key_is_a_private_file_and_the_only_identity() {
        use std::os::unix::fs::PermissionsExt;
        let (sandbox, dir) = dir();
        let key = CloneCredential::SshKey {
            key: "-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n"
                .into(),
        };
        let repo = "git@github.com:acme/app.git";
        let GitEnv { env, .. } =
            git_env(&dir, repo, Some(&key), &sandbox.known_hosts(), false).unwrap();
        let ssh = value(&env, "GIT_SSH_COMMAND").unwrap();
        let file = dir.fetch.join("deploy-key");
        assert!(ssh.contains(&format!("-i '{}'", file.display())), "{ssh}");
        for option in [
            "IdentitiesOnly=yes",
            "StrictHostKeyChecking=accept-new",
            "-F /dev/null",
        ] {
            assert!(ssh.contains(option), "{ssh}");
        }
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(value(&env, "GIT_CONFIG_COUNT").is_none());
        // Gone before any build command runs.
        dir.hand_over(None).unwrap();
        assert!(!file.exists());
    }

    #[test]
    fn without_a_credential_no_key_is_used_and_mismatches_are_noted() {
        let (sandbox, dir) = dir();
        let GitEnv { env, note } = git_env(
            &dir,
            "ssh://git@h/x.git",
            None,
            &sandbox.known_hosts(),
            true,
        )
        .unwrap();
        assert!(note.is_none());
        assert!(value(&env, "GIT_SSH_COMMAND").unwrap().contains("no-key"));
        assert_eq!(
            value(&env, "GIT_ALLOW_PROTOCOL"),
            Some("https:http:ssh:git:file")
        );
        let token = CloneCredential::Token {
            username: "u".into(),
            token: "t".into(),
        };
        let GitEnv { env, note } = git_env(
            &dir,
            "ssh://git@h/x.git",
            Some(&token),
            &sandbox.known_hosts(),
            false,
        )
        .unwrap();
        assert!(note.unwrap().contains("not used"));
        assert!(value(&env, "GIT_CONFIG_COUNT").is_none());
    }
}
