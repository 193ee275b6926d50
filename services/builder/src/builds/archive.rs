//! Uploaded sources: a `.tar.gz` of a folder, checked before it is accepted and again when it
//! is unpacked. Refused: absolute paths, `..`, links that leave the folder, hard links, devices
//! and other special files, and bombs (too many entries, or more bytes unpacked than allowed,
//! counted while decompressing so a bomb is stopped early).

use std::io::Read;
use std::path::{Component, Path};

use flate2::read::GzDecoder;
use serde::Serialize;

/// Limits on what an upload may unpack to.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_entries: usize,
    pub max_unpacked_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_entries: 20_000,
            max_unpacked_bytes: 512 * 1024 * 1024,
        }
    }
}

/// Why an archive is refused (a client error: 422).
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ArchiveError {
    #[error("not a gzip-compressed tar archive: {0}")]
    Format(String),
    #[error("`{0}` is an absolute path; paths must be relative to the folder")]
    Absolute(String),
    #[error("`{0}` climbs out of the folder with `..`")]
    Traversal(String),
    #[error("`{path}` is a link to `{target}`, outside the folder")]
    LinkEscapes { path: String, target: String },
    #[error(
        "`{0}` is a hard link, device or other special file; only files, folders and relative links are accepted"
    )]
    Special(String),
    #[error("more than {0} entries")]
    TooManyEntries(usize),
    #[error("unpacks to more than {0} bytes")]
    TooLarge(u64),
    #[error("the archive is empty")]
    Empty,
}

/// What a valid archive holds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Summary {
    pub files: usize,
    pub unpacked_bytes: u64,
}

fn check_path(path: &Path) -> Result<(), ArchiveError> {
    let shown = path.display().to_string();
    for c in path.components() {
        match c {
            Component::RootDir | Component::Prefix(_) => return Err(ArchiveError::Absolute(shown)),
            Component::ParentDir => return Err(ArchiveError::Traversal(shown)),
            Component::Normal(_) | Component::CurDir => {}
        }
    }
    Ok(())
}

/// A relative link target stays inside if, from the link's folder, it never climbs above the root.
fn link_stays_inside(link: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let mut depth: i64 = link.parent().map_or(0, |p| {
        p.components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .count() as i64
    });
    for c in target.components() {
        match c {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            _ => return false,
        }
        if depth < 0 {
            return false;
        }
    }
    true
}

/// Walks the whole archive, checking every entry; unpacks into `into` when given.
pub fn inspect(bytes: &[u8], limits: Limits, into: Option<&Path>) -> Result<Summary, ArchiveError> {
    let mut archive = tar::Archive::new(GzDecoder::new(bytes));
    let entries = archive
        .entries()
        .map_err(|e| ArchiveError::Format(e.to_string()))?;
    let (mut count, mut files, mut total) = (0usize, 0usize, 0u64);
    for entry in entries {
        let mut entry = entry.map_err(|e| ArchiveError::Format(e.to_string()))?;
        count += 1;
        if count > limits.max_entries {
            return Err(ArchiveError::TooManyEntries(limits.max_entries));
        }
        let path = entry
            .path()
            .map_err(|e| ArchiveError::Format(e.to_string()))?
            .into_owned();
        check_path(&path)?;
        let shown = path.display().to_string();
        match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => files += 1,
            tar::EntryType::Directory => {}
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(|e| ArchiveError::Format(e.to_string()))?
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                if !link_stays_inside(&path, &target) {
                    return Err(ArchiveError::LinkEscapes {
                        path: shown,
                        target: target.display().to_string(),
                    });
                }
            }
            // PAX/GNU metadata records are consumed by the tar reader; anything else is refused.
            _ => return Err(ArchiveError::Special(shown)),
        }
        // Count what really decompresses, not the header's claim.
        let budget = limits.max_unpacked_bytes - total;
        let read = match into {
            Some(root) => {
                let size = entry.header().size().unwrap_or(0);
                if size > budget {
                    return Err(ArchiveError::TooLarge(limits.max_unpacked_bytes));
                }
                // `false`: the tar crate itself found the path unsafe and skipped it.
                let written = entry
                    .unpack_in(root)
                    .map_err(|e| ArchiveError::Format(e.to_string()))?;
                if !written {
                    return Err(ArchiveError::Traversal(shown));
                }
                size
            }
            None => std::io::copy(&mut (&mut entry).take(budget + 1), &mut std::io::sink())
                .map_err(|e| ArchiveError::Format(e.to_string()))?,
        };
        total += read;
        if total > limits.max_unpacked_bytes {
            return Err(ArchiveError::TooLarge(limits.max_unpacked_bytes));
        }
    }
    if count == 0 {
        return Err(ArchiveError::Empty);
    }
    Ok(Summary {
        files,
        unpacked_bytes: total,
    })
}

#[cfg(test)]
mod tests {
    use flate2::Compression;
    use flate2::write::GzEncoder;

    use super::*;

    /// Builds a tar.gz with raw headers, so malicious names can be written as-is.
    fn archive(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(GzEncoder::new(Vec::new(), Compression::fast()));
        for (name, kind, data, link) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(*kind);
            header.set_size(data.len() as u64);
            header.set_mode(0o644);
            // Write the name bytes directly: `set_path` itself refuses `..` and absolute paths.
            let raw = &mut header.as_old_mut().name;
            raw[..name.len()].copy_from_slice(name.as_bytes());
            if let Some(l) = link {
                header.set_link_name(l).unwrap();
            }
            header.set_cksum();
            builder.append(&header, *data).unwrap();
        }
        builder.into_inner().unwrap().finish().unwrap()
    }

    const FILE: tar::EntryType = tar::EntryType::Regular;

    #[test]
    fn a_plain_folder_is_accepted_and_unpacked() {
        let bytes = archive(&[
            ("app.py", FILE, b"print(1)", None),
            ("lib/x.py", FILE, b"", None),
        ]);
        let dir = std::env::temp_dir().join(format!("slipway-archive-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap(); // the worker unpacks into its build directory
        let summary = inspect(&bytes, Limits::default(), Some(&dir)).unwrap();
        assert_eq!(
            summary,
            Summary {
                files: 2,
                unpacked_bytes: 8
            }
        );
        assert_eq!(
            std::fs::read_to_string(dir.join("app.py")).unwrap(),
            "print(1)"
        );
    }

    #[test]
    fn escapes_are_refused() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (archive(&[("../evil", FILE, b"x", None)]), "climbs out"),
            (archive(&[("/etc/passwd", FILE, b"x", None)]), "absolute"),
            (archive(&[("a/../../evil", FILE, b"x", None)]), "climbs out"),
            (
                archive(&[("link", tar::EntryType::Symlink, b"", Some("/etc"))]),
                "outside the folder",
            ),
            (
                archive(&[("a/link", tar::EntryType::Symlink, b"", Some("../../x"))]),
                "outside the folder",
            ),
            (
                archive(&[("hard", tar::EntryType::Link, b"", Some("app.py"))]),
                "special",
            ),
            (
                archive(&[("dev", tar::EntryType::Char, b"", None)]),
                "special",
            ),
        ];
        for (bytes, expected) in cases {
            let err = inspect(&bytes, Limits::default(), None)
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{err} (expected {expected})");
        }
        // A link that stays inside is fine.
        let ok = archive(&[("a/link", tar::EntryType::Symlink, b"", Some("../b"))]);
        assert!(inspect(&ok, Limits::default(), None).is_ok());
    }

    #[test]
    fn bombs_and_garbage_are_refused() {
        let big = vec![0u8; 4096];
        let bytes = archive(&[("a", FILE, &big, None), ("b", FILE, &big, None)]);
        let limits = Limits {
            max_entries: 10,
            max_unpacked_bytes: 5000,
        };
        assert_eq!(
            inspect(&bytes, limits, None).unwrap_err(),
            ArchiveError::TooLarge(5000)
        );
        let limits = Limits {
            max_entries: 1,
            max_unpacked_bytes: 1 << 20,
        };
        assert_eq!(
            inspect(&bytes, limits, None).unwrap_err(),
            ArchiveError::TooManyEntries(1)
        );
        assert!(matches!(
            inspect(b"not gzip", Limits::default(), None),
            Err(ArchiveError::Format(_))
        ));
    }
}
