//! The processes a stack left on the machine, found by what they cannot rewrite: their working
//! directory (under the stack's instances or builds dir) and their uid (one of the stack's
//! instance uids), plus the `SLIPWAY_TARGET_SCOPE` marker in their environment.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::Stack;

/// A live process of the stack's instances or builds.
#[derive(Debug, Clone)]
pub struct Found {
    pub pid: u32,
    pub uid: u32,
    pub cwd: String,
    pub command: String,
}

impl Stack {
    /// Every live process whose working directory is under the instances or builds dir, whose
    /// uid is one of the stack's instance uids, or whose environment names its scope.
    pub fn stack_processes(&self) -> Vec<Found> {
        let marker = format!("SLIPWAY_TARGET_SCOPE={}", self.scope.display());
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let dir = entry.path();
            // A zombie has no cwd and no environ to read: it is gone already.
            let Ok(cwd) = std::fs::read_link(dir.join("cwd")) else {
                continue;
            };
            let uid = std::fs::metadata(&dir).map(|m| m.uid()).unwrap_or(0);
            let by_uid = self
                .uid_range
                .is_some_and(|(low, high)| (low..=high).contains(&uid));
            let by_dir = under(&cwd, &self.scope) || under(&cwd, &self.builds_dir);
            let by_env = std::fs::read(dir.join("environ"))
                .map(|e| e.split(|b| *b == 0).any(|v| v == marker.as_bytes()))
                .unwrap_or(false);
            if by_uid || by_dir || by_env {
                let command = std::fs::read(dir.join("cmdline"))
                    .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                    .unwrap_or_default();
                found.push(Found {
                    pid,
                    uid,
                    cwd: cwd.display().to_string(),
                    command: command.trim().to_owned(),
                });
            }
        }
        found
    }
}

fn under(path: &Path, dir: &Path) -> bool {
    path.starts_with(dir)
        || dir
            .canonicalize()
            .is_ok_and(|canonical| path.starts_with(canonical))
}
