//! Real git repositories for build tests: a bare repository (what a code host serves) and a
//! work tree that commits and pushes to it, driven by the git command line.

use std::path::{Path, PathBuf};
use std::process::Command;

/// A bare repository reachable as `file://...`, with a work tree pushing to its `main`.
pub struct Repo {
    /// The clone URL (`file:///.../name.git`).
    pub url: String,
    work: PathBuf,
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .env("GIT_AUTHOR_NAME", "Slipway Test")
        .env("GIT_AUTHOR_EMAIL", "test@slipway.invalid")
        .env("GIT_COMMITTER_NAME", "Slipway Test")
        .env("GIT_COMMITTER_EMAIL", "test@slipway.invalid")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The repository's `examples/<name>` folder.
pub fn example_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name)
}

impl Repo {
    /// A repository whose first commit on `main` holds the files of `source` (one level).
    pub fn from_dir(source: &Path) -> Self {
        let root = std::env::temp_dir().join(format!("slipway-repo-{}", crate::unique()));
        let bare = root.join("service.git");
        let work = root.join("work");
        std::fs::create_dir_all(&bare).expect("create bare dir");
        std::fs::create_dir_all(&work).expect("create work dir");
        git(&bare, &["init", "-q", "--bare", "-b", "main"]);
        git(&work, &["init", "-q", "-b", "main"]);
        for entry in std::fs::read_dir(source).expect("read example") {
            let entry = entry.expect("entry");
            if entry.file_type().expect("type").is_file() {
                std::fs::copy(entry.path(), work.join(entry.file_name())).expect("copy");
            }
        }
        let repo = Self {
            url: format!("file://{}", bare.display()),
            work,
        };
        git(&repo.work, &["remote", "add", "origin", &repo.url]);
        repo.commit("first commit");
        repo
    }

    /// Writes `file` (its folders made as needed), commits and pushes; returns the new commit.
    pub fn change(&self, file: &str, text: &str) -> String {
        let path = self.work.join(file);
        if let Some(folder) = path.parent() {
            std::fs::create_dir_all(folder).expect("create folders");
        }
        std::fs::write(path, text).expect("write");
        self.commit(&format!("change {file}"))
    }

    /// The text of `file` at the head of the work tree.
    pub fn read(&self, file: &str) -> String {
        std::fs::read_to_string(self.work.join(file)).expect("read")
    }

    fn commit(&self, message: &str) -> String {
        git(&self.work, &["add", "-A"]);
        git(&self.work, &["commit", "-q", "-m", message]);
        git(&self.work, &["push", "-q", "origin", "main"]);
        self.head()
    }

    /// The commit at the head of `main`.
    pub fn head(&self) -> String {
        git(&self.work, &["rev-parse", "HEAD"])
    }
}
