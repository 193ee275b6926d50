//! Who instances run as, and the file ownership that keeps services apart.
//!
//! Run as root, the target gives every service its own uid from `[process] uid_range` (gid =
//! uid, no supplementary groups), like systemd's `DynamicUser`: the uid is allocated once per
//! service by a [`UidSource`] (the deployer's database) and kept. Then:
//! - `<workdir>` is root's, mode 0711 (others may pass through, not list it);
//! - `instances/` (run records and output files, the deployer's bookkeeping) is 0700 root;
//! - `releases/<service>/` and each release in it are `root:<gid>` 0750, the unpacked files the
//!   service's uid's: only that service (and root) can read its code;
//! - `homes/<instance>/` (the instance's `HOME`) is 0700, owned by the service's uid.
//!
//! Another service's instance can therefore read none of it, nor its `/proc/<pid>/environ`
//! (different uid) nor the deployer's (root's). Not run as root, every instance runs as the
//! deployer's own user and none of this holds: the deployer warns at start-up.

use std::fmt;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt, lchown};
use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde::Deserialize;
use slipway_ids::ServiceId;

/// An inclusive, non-empty range of uids for instances, written `first-last`
/// (`61000-61999`). Below 1000 are system accounts; the top is what the database stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct UidRange {
    first: u32,
    last: u32,
}

impl UidRange {
    /// The lowest uid a range may start at.
    pub const MIN: u32 = 1000;
    /// The highest uid a range may end at (`INTEGER` in the database).
    pub const MAX: u32 = i32::MAX as u32;

    pub fn new(first: u32, last: u32) -> Result<Self, String> {
        if first > last {
            return Err(format!(
                "`{first}-{last}` is inverted: the first uid is above the last"
            ));
        }
        if first < Self::MIN {
            return Err(format!(
                "`{first}-{last}` starts below {}: those uids belong to system accounts",
                Self::MIN
            ));
        }
        if last > Self::MAX {
            return Err(format!("`{first}-{last}` ends above {}", Self::MAX));
        }
        Ok(Self { first, last })
    }

    pub fn first(&self) -> u32 {
        self.first
    }

    pub fn last(&self) -> u32 {
        self.last
    }

    pub fn contains(&self, uid: u32) -> bool {
        (self.first..=self.last).contains(&uid)
    }
}

impl FromStr for UidRange {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, String> {
        let shape = || format!("`{raw}` is not a uid range like `61000-61999`");
        let (first, last) = raw.trim().split_once('-').ok_or_else(shape)?;
        let first = first.trim().parse().map_err(|_| shape())?;
        let last = last.trim().parse().map_err(|_| shape())?;
        Self::new(first, last)
    }
}

impl TryFrom<String> for UidRange {
    type Error = String;
    fn try_from(raw: String) -> Result<Self, String> {
        raw.parse()
    }
}

impl fmt::Display for UidRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// Gives each service its uid, the same one every time.
pub trait UidSource: Send + Sync + 'static {
    fn uid_for(&self, service: ServiceId) -> BoxFuture<'_, Result<u32, String>>;
}

/// Who the target runs instances as.
#[derive(Clone)]
pub enum Users {
    /// As the deployer's own user: no isolation between instances, nor from the deployer.
    Shared,
    /// One uid per service (gid = uid) from the source. Needs root.
    PerService(Arc<dyn UidSource>),
}

impl fmt::Debug for Users {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Users::Shared => f.write_str("Shared"),
            Users::PerService(_) => f.write_str("PerService"),
        }
    }
}

/// Whether the deployer runs as root (and so can give instances other users).
pub fn running_as_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Creates `dir` if missing and gives it `mode`, owned by `owner` (uid = gid) when given. A
/// symlink in its place is refused: the directory must be the one the deployer made.
pub(crate) fn dir_with(dir: &Path, mode: u32, owner: Option<(u32, u32)>) -> io::Result<()> {
    match std::fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.is_dir() {
        return Err(io::Error::other(format!(
            "{} is not a directory (a symlink or file is in its place)",
            dir.display()
        )));
    }
    if let Some((uid, gid)) = owner {
        lchown(dir, Some(uid), Some(gid))?;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
}

/// Gives every entry under `root` (not `root` itself) to `uid:uid`, without following
/// symlinks (a link is re-owned, never its target). `skip` names top-level entries that stay
/// the deployer's.
pub(crate) fn own_tree(root: &Path, uid: u32, skip: &[&str]) -> io::Result<()> {
    for entry in std::fs::read_dir(root)? {
        let entry = entry?;
        if skip.iter().any(|s| entry.file_name() == *s) {
            continue;
        }
        own_entry(&entry.path(), uid)?;
    }
    Ok(())
}

fn own_entry(path: &Path, uid: u32) -> io::Result<()> {
    lchown(path, Some(uid), Some(uid))?;
    if std::fs::symlink_metadata(path)?.is_dir() {
        for entry in std::fs::read_dir(path)? {
            own_entry(&entry?.path(), uid)?;
        }
    }
    Ok(())
}

/// The group that owns `path`, if it exists.
pub(crate) fn group_of(path: &Path) -> Option<u32> {
    std::fs::symlink_metadata(path).ok().map(|m| m.gid())
}

/// Refuses a work directory that other users could tamper with or that instances running as
/// other users cannot reach: it must be root's and not writable by others, and every directory
/// above it must let others pass (`o+x`).
pub(crate) fn check_workdir(scope: &Path) -> io::Result<()> {
    let meta = std::fs::metadata(scope)?;
    if meta.uid() != 0 || meta.mode() & 0o022 != 0 {
        return Err(io::Error::other(format!(
            "{} must belong to root and be writable by root only (owner uid {}, mode {:o})",
            scope.display(),
            meta.uid(),
            meta.mode() & 0o7777
        )));
    }
    for ancestor in scope.ancestors().skip(1) {
        let mode = std::fs::metadata(ancestor)?.mode();
        if mode & 0o001 == 0 {
            return Err(io::Error::other(format!(
                "instances run as their own users and cannot reach {}: {} is not searchable by \
                 others (mode {:o}); choose a workdir outside it, e.g. /var/tmp/slipway-instances",
                scope.display(),
                ancestor.display(),
                mode & 0o7777
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_ranges_parse_and_cannot_be_empty_or_inverted() {
        let range: UidRange = "61000-61999".parse().unwrap();
        assert_eq!((range.first(), range.last()), (61000, 61999));
        assert!(range.contains(61000) && range.contains(61999) && !range.contains(62000));
        assert_eq!(range.to_string(), "61000-61999");
        assert_eq!(" 5000 - 5000 ".parse::<UidRange>().unwrap().first(), 5000);

        for (bad, why) in [
            ("62000-61000", "inverted"),
            ("0-100", "system accounts"),
            ("999-2000", "system accounts"),
            ("61000-4294967295", "ends above"),
            ("61000", "not a uid range"),
            ("", "not a uid range"),
            ("a-b", "not a uid range"),
            ("-5-10", "not a uid range"),
        ] {
            let err = bad.parse::<UidRange>().unwrap_err();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
        let from_settings: Result<UidRange, _> =
            serde_json::from_value(serde_json::json!("70000-60000"));
        assert!(from_settings.unwrap_err().to_string().contains("inverted"));
    }

    #[test]
    fn directories_are_made_with_their_mode_and_symlinks_refused() {
        let root = std::env::temp_dir().join(format!("slipway-users-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&root).unwrap();
        let dir = root.join("home");
        dir_with(&dir, 0o700, None).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o700);
        dir_with(&dir, 0o750, None).unwrap();
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o750);
        let link = root.join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        assert!(dir_with(&link, 0o700, None).is_err());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
