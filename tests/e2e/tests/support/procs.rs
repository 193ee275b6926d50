//! The processes a stack left on the machine, found by what they cannot rewrite: their working
//! directory (under the stack's instances or builds dir) and their uid (one of the stack's
//! instance uids). Never their environment: a program may rewrite it.

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
    /// or whose uid is one of the stack's instance uids.
    pub fn stack_processes(&self) -> Vec<Found> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let dir = entry.path();
            // A zombie has no cwd to read: it is gone already.
            let Ok(cwd) = std::fs::read_link(dir.join("cwd")) else {
                continue;
            };
            let uid = std::fs::metadata(&dir).map(|m| m.uid()).unwrap_or(0);
            let by_uid = self
                .uid_range
                .is_some_and(|(low, high)| (low..=high).contains(&uid));
            let by_dir = under(&cwd, &self.scope) || under(&cwd, &self.builds_dir);
            if by_uid || by_dir {
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
