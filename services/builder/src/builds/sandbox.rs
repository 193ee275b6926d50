//! Where and as whom build commands run. Builds are other teams' code: they get a private
//! directory outside the platform's state and outside any checkout, an environment built from
//! an allowlist (nothing of the builder's own), and, when the builder runs as root, a dedicated
//! unprivileged uid that cannot read the builder's files.
//!
//! Layout under the work dir (`[builds] workdir`):
//! - `builds/<id>.<epoch>/` (0700, one per claim of the build): `src/` the checkout, `home/` HOME, `tmp/` TMPDIR; while fetching,
//!   also `fetch/` with the clone credential. It belongs to the builder until the fetch is
//!   done and `fetch/` is gone, then to the build uid.
//! - `cache/<service>/` (0700, the build uid): kept between builds, `SLIPWAY_CACHE_DIR`.
//! - `ssh_known_hosts` (0600, the builder): host keys seen on first use, kept between builds.
//! - `images/<id>.<epoch>/` (0700, the builder, never the build user): what a Dockerfile
//!   build keeps while it runs (buildah's storage, the exported image); removed after it.
//!
//! The work dir and its parents are traversable (0711), not listable.

use std::os::unix::fs::{PermissionsExt, lchown};
use std::path::{Path, PathBuf};

/// Files that make a directory a project: a build under one would see it (cargo looks for a
/// workspace `Cargo.toml` in every parent, git for `.git`, npm for `package.json`...).
pub const PROJECT_FILES: [&str; 7] = [
    "Cargo.toml",
    "package.json",
    "go.mod",
    "pyproject.toml",
    "pom.xml",
    ".git",
    "slipway.toml",
];

/// The uid and gid build commands run as (only when the builder is root).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BuildUser {
    pub uid: u32,
    pub gid: u32,
}

/// Why the work dir cannot be used; the builder does not start.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(
        "builds.workdir {dir} is inside a project ({found} exists): builds would see it; \
         choose a directory outside any checkout, e.g. /var/tmp/slipway-builds"
    )]
    InsideProject { dir: String, found: String },
    #[error("builds.workdir {dir} belongs to uid {owner}, not to the builder (uid {me})")]
    NotOurs { dir: String, owner: u32, me: u32 },
    #[error("builds.uid must not be 0: builds would run as root")]
    RootBuildUser,
    #[error("builds.workdir {dir} is unusable: {source}")]
    Io {
        dir: String,
        #[source]
        source: std::io::Error,
    },
}

/// The work dir, checked, and who builds run as.
#[derive(Debug, Clone)]
pub struct Sandbox {
    root: PathBuf,
    path: String,
    user: Option<BuildUser>,
}

fn io(dir: &Path) -> impl FnOnce(std::io::Error) -> SandboxError + '_ {
    move |source| SandboxError::Io {
        dir: dir.display().to_string(),
        source,
    }
}

/// The first project file in `dir` or any of its ancestors.
pub fn project_above(dir: &Path) -> Option<PathBuf> {
    dir.ancestors()
        .flat_map(|d| PROJECT_FILES.iter().map(move |f| d.join(f)))
        .find(|p| p.symlink_metadata().is_ok())
}

fn private_dir(dir: &Path, mode: u32) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
}

impl Sandbox {
    /// Checks (and creates) `root`; `user` is used only when the builder runs as root.
    pub fn prepare(root: &Path, path: &str, user: BuildUser) -> Result<Self, SandboxError> {
        let me = nix::unistd::geteuid().as_raw();
        if me == 0 && user.uid == 0 {
            return Err(SandboxError::RootBuildUser);
        }
        let inside = |dir: &Path| {
            project_above(dir).map(|found| SandboxError::InsideProject {
                dir: dir.display().to_string(),
                found: found.display().to_string(),
            })
        };
        // Before creating anything, and again once links are resolved.
        if let Some(refused) = inside(&std::path::absolute(root).map_err(io(root))?) {
            return Err(refused);
        }
        std::fs::create_dir_all(root).map_err(io(root))?;
        let root = root.canonicalize().map_err(io(root))?;
        if let Some(refused) = inside(&root) {
            return Err(refused);
        }
        let meta = std::fs::metadata(&root).map_err(io(&root))?;
        let owner = std::os::unix::fs::MetadataExt::uid(&meta);
        if owner != me {
            // E.g. a directory someone else made in /tmp before the builder started.
            return Err(SandboxError::NotOurs {
                dir: root.display().to_string(),
                owner,
                me,
            });
        }
        for dir in [root.clone(), root.join("builds"), root.join("cache")] {
            private_dir(&dir, 0o711).map_err(io(&dir))?;
        }
        let user = (me == 0).then_some(user);
        match user {
            Some(u) => {
                tracing::info!(uid = u.uid, gid = u.gid, workdir = %root.display(), "builds run as an unprivileged user")
            }
            None => tracing::warn!(
                workdir = %root.display(),
                "the builder is not root: build commands run as the builder's own user and can \
                 read what it can read; run the builder as root (builds then use builds.uid) or \
                 in a container"
            ),
        }
        Ok(Self {
            root,
            path: path.to_owned(),
            user,
        })
    }

    /// Who commands run as; `None`: the builder's own user.
    pub fn user(&self) -> Option<BuildUser> {
        self.user
    }

    /// Where first-seen SSH host keys are kept (the builder's, never the build's).
    pub fn known_hosts(&self) -> PathBuf {
        self.root.join("ssh_known_hosts")
    }

    /// A fresh private directory `attempt` for build `id`: every other attempt's directory of
    /// that build (`<id>` or `<id>.<epoch>`, left by a replica that lost it) is removed.
    pub fn build_dir(&self, id: &str, attempt: &str) -> std::io::Result<BuildDir> {
        let builds = self.root.join("builds");
        for entry in std::fs::read_dir(&builds)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            let same_build =
                name == id || name.strip_prefix(id).is_some_and(|r| r.starts_with('.'));
            if same_build {
                match std::fs::remove_dir_all(entry.path()) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
        }
        let root = builds.join(attempt);
        let dir = BuildDir {
            src: root.join("src"),
            home: root.join("home"),
            tmp: root.join("tmp"),
            fetch: root.join("fetch"),
            path: self.path.clone(),
            root,
        };
        for d in [&dir.root, &dir.src, &dir.home, &dir.tmp, &dir.fetch] {
            private_dir(d, 0o700)?;
        }
        Ok(dir)
    }

    /// A fresh private directory of the builder's own for `attempt` of build `id` (what
    /// image builds run as root keep: out of the build user's reach). Earlier attempts' go.
    pub fn image_dir(&self, id: &str, attempt: &str) -> std::io::Result<PathBuf> {
        let images = self.root.join("images");
        private_dir(&images, 0o700)?;
        for entry in std::fs::read_dir(&images)? {
            let entry = entry?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name == id || name.strip_prefix(id).is_some_and(|r| r.starts_with('.')) {
                match std::fs::remove_dir_all(entry.path()) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
        }
        let dir = images.join(attempt);
        private_dir(&dir, 0o700)?;
        Ok(dir)
    }

    /// The service's cache, owned by the build user.
    pub fn cache_dir(&self, service: &str) -> std::io::Result<PathBuf> {
        let dir = self.root.join("cache").join(service);
        private_dir(&dir, 0o700)?;
        if let Some(u) = self.user {
            lchown(&dir, Some(u.uid), Some(u.gid))?;
        }
        Ok(dir)
    }

    /// Where base image blobs pulled from another registry are cached by digest: the
    /// builder's alone (a build must not plant a blob under a digest it does not have).
    pub fn base_blobs(&self) -> std::io::Result<PathBuf> {
        let dir = self.root.join("base-blobs");
        private_dir(&dir, 0o700)?;
        Ok(dir)
    }
}

/// One build's private directory.
#[derive(Debug, Clone)]
pub struct BuildDir {
    pub root: PathBuf,
    /// The checkout, where commands run.
    pub src: PathBuf,
    pub home: PathBuf,
    pub tmp: PathBuf,
    /// Clone credentials while fetching; removed before commands run.
    pub fetch: PathBuf,
    path: String,
}

impl BuildDir {
    /// The environment every process of the build starts from (after `env_clear`).
    pub fn base_env(&self) -> Vec<(String, String)> {
        let s = |p: &Path| p.display().to_string();
        vec![
            ("PATH".into(), self.path.clone()),
            ("HOME".into(), s(&self.home)),
            ("TMPDIR".into(), s(&self.tmp)),
            ("LANG".into(), "C.UTF-8".into()),
            ("LC_ALL".into(), "C.UTF-8".into()),
            // cargo's default is under HOME too; explicit so a toolchain never looks elsewhere.
            ("CARGO_HOME".into(), s(&self.home.join(".cargo"))),
            // Git reads no configuration of the machine or of a user, and never prompts.
            ("GIT_CONFIG_NOSYSTEM".into(), "1".into()),
            ("GIT_CONFIG_GLOBAL".into(), "/dev/null".into()),
            ("GIT_TERMINAL_PROMPT".into(), "0".into()),
        ]
    }

    /// Ends the fetch: the credential goes, and the rest passes to `user` (if any).
    pub fn hand_over(&self, user: Option<BuildUser>) -> std::io::Result<()> {
        if self.fetch.symlink_metadata().is_ok() {
            std::fs::remove_dir_all(&self.fetch)?;
        }
        if let Some(u) = user {
            chown_tree(&self.root, u)?;
        }
        Ok(())
    }
}

/// `lchown` of `dir` and everything under it; symlinks are changed, never followed.
fn chown_tree(dir: &Path, user: BuildUser) -> std::io::Result<()> {
    lchown(dir, Some(user.uid), Some(user.gid))?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            chown_tree(&path, user)?;
        } else {
            lchown(&path, Some(user.uid), Some(user.gid))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "slipway-sandbox-{name}-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir.canonicalize().unwrap()
    }

    const USER: BuildUser = BuildUser {
        uid: 64900,
        gid: 64900,
    };

    #[test]
    fn a_workdir_inside_a_project_is_refused() {
        for file in ["Cargo.toml", ".git", "package.json"] {
            let project = temp("project");
            std::fs::write(project.join(file), "").unwrap();
            let err =
                Sandbox::prepare(&project.join("a/builds"), "/usr/bin:/bin", USER).unwrap_err();
            assert!(matches!(err, SandboxError::InsideProject { .. }), "{err}");
            assert!(err.to_string().contains(file), "{err}");
            assert!(!err.to_string().contains('\n'), "one line: {err}");
        }
    }

    #[test]
    fn build_dirs_are_private_and_the_env_is_the_allowlist() {
        let root = temp("root");
        let sandbox = Sandbox::prepare(&root.join("w"), "/usr/bin:/bin", USER).unwrap();
        let dir = sandbox.build_dir("b1", "b1.1").unwrap();
        let mode = std::fs::metadata(&dir.root).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let env = dir.base_env();
        let names: Vec<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
        assert!(
            !names.iter().any(|n| n.starts_with("SLIPWAY_")),
            "{names:?}"
        );
        let home = &env.iter().find(|(k, _)| k == "HOME").unwrap().1;
        assert!(Path::new(home).starts_with(&dir.root), "{home}");
        assert!(project_above(&dir.src).is_none());
        // A second attempt of the same build starts clean, and the first one's dir is gone.
        std::fs::write(dir.src.join("left-over"), "").unwrap();
        let other = sandbox.build_dir("b10", "b10.1").unwrap();
        let again = sandbox.build_dir("b1", "b1.2").unwrap();
        assert!(!again.src.join("left-over").exists());
        assert!(!dir.root.exists(), "the earlier attempt is discarded");
        assert!(other.root.exists(), "another build's is not");
        again.hand_over(None).unwrap();
        assert!(!again.fetch.exists(), "the credential dir is gone");
    }
}
