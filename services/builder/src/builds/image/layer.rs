//! The service layer: what the build step left (`build.package`), as one deterministic tar
//! under `app/`, gzipped.
//!
//! Deterministic: entries in name order, fixed times and modes normalised (the tar crate's
//! `Deterministic` header mode), every entry owned by [`APP_UID`]:[`APP_UID`] so the image's
//! non-root user can read (and, for its own files, write) what it runs. Two builds of the same
//! files give the same bytes, hence the same digests.

use std::io::Write;
use std::path::{Component, Path, PathBuf};

use flate2::Compression;
use flate2::write::GzEncoder;
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::super::package::PackageError;
use super::super::spec::BuildSpec;

/// The uid and gid owning the service's files, and the image's user unless its base names
/// another non-root one.
pub const APP_UID: u32 = 10001;

/// Every entry's mtime (the tar crate's deterministic value, kept for directories it did not
/// write too): same files, same bytes, whenever they were checked out.
const MTIME: u64 = 1_153_704_088;

/// A writer that fails as soon as the build is cancelled: a big layer stops mid-way.
pub(crate) struct Cancellable<W> {
    pub(crate) inner: W,
    pub(crate) cancel: CancellationToken,
}

impl<W: Write> Write for Cancellable<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.cancel.is_cancelled() {
            // Not `Interrupted`: `write_all` retries those forever.
            return Err(std::io::Error::other("cancelled"));
        }
        self.inner.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A packed layer.
pub struct Layer {
    /// The gzipped tar (the blob pushed).
    pub gzip: Vec<u8>,
    /// `sha256:<hex>` of the uncompressed tar (the config's `rootfs.diff_ids` entry).
    pub diff_id: String,
}

/// The paths to package, checked to stay inside `source`; the whole source (without `.git`)
/// when the recipe names none. Each with its name in the image (`app/...`).
pub fn package_paths(
    source: &Path,
    spec: &BuildSpec,
) -> Result<Vec<(PathBuf, String)>, PackageError> {
    let names: Vec<String> = if spec.build.package.is_empty() {
        let mut all: Vec<String> = std::fs::read_dir(source)?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n != ".git")
            .collect();
        all.sort();
        all
    } else {
        spec.build.package.clone()
    };
    names
        .into_iter()
        .map(|name| {
            let rel = Path::new(&name);
            let inside = rel
                .components()
                .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
            if !inside || name.is_empty() {
                return Err(PackageError::OutsideSource(name));
            }
            let full = source.join(rel);
            // A symlink could still point outside: resolve and compare.
            let real = full
                .canonicalize()
                .map_err(|_| PackageError::Missing(name.clone()))?;
            let root = source.canonicalize()?;
            if !real.starts_with(&root) {
                return Err(PackageError::OutsideSource(name));
            }
            let in_image = format!("app/{}", rel.to_string_lossy().trim_start_matches("./"));
            Ok((real, in_image.trim_end_matches('/').to_owned()))
        })
        .collect()
}

/// The layer of `paths`; stops (with [`PackageError::Cancelled`]) once `cancel` fires.
pub fn pack(
    paths: &[(PathBuf, String)],
    cancel: &CancellationToken,
) -> Result<Layer, PackageError> {
    let stopped = |e: std::io::Error| {
        if cancel.is_cancelled() {
            PackageError::Cancelled
        } else {
            PackageError::Io(e)
        }
    };
    let mut tar = tar::Builder::new(Cancellable {
        inner: Vec::new(),
        cancel: cancel.clone(),
    });
    // `/app` itself, so the working directory belongs to the service's user too.
    let mut dirs_done = std::collections::BTreeSet::new();
    append_dir_header(&mut tar, "app", &mut dirs_done).map_err(stopped)?;
    for (path, name) in paths {
        if cancel.is_cancelled() {
            return Err(PackageError::Cancelled);
        }
        // Parents of a nested package path (`out/bin/app` -> `app/out`, `app/out/bin`).
        let mut parent = Path::new(name).parent();
        let mut parents = Vec::new();
        while let Some(p) = parent.filter(|p| p.as_os_str() != "app" && !p.as_os_str().is_empty()) {
            parents.push(p.to_string_lossy().into_owned());
            parent = p.parent();
        }
        for p in parents.iter().rev() {
            append_dir_header(&mut tar, p, &mut dirs_done).map_err(stopped)?;
        }
        append_tree(&mut tar, path, name, &mut dirs_done, cancel).map_err(stopped)?;
    }
    let raw = tar.into_inner().map_err(stopped)?.inner;
    let diff_id = format!("sha256:{}", hex::encode(Sha256::digest(&raw)));
    let mut gz = GzEncoder::new(
        Cancellable {
            inner: Vec::new(),
            cancel: cancel.clone(),
        },
        Compression::default(),
    );
    gz.write_all(&raw).map_err(stopped)?;
    Ok(Layer {
        gzip: gz.finish().map_err(stopped)?.inner,
        diff_id,
    })
}

type Tar = tar::Builder<Cancellable<Vec<u8>>>;

/// A header for `meta` with the fixed owner, times and normalised mode.
fn header(meta: &std::fs::Metadata) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_metadata_in_mode(meta, tar::HeaderMode::Deterministic);
    header.set_mtime(MTIME);
    header.set_uid(APP_UID.into());
    header.set_gid(APP_UID.into());
    header
}

/// A directory entry `name`, once.
fn append_dir_header(
    tar: &mut Tar,
    name: &str,
    done: &mut std::collections::BTreeSet<String>,
) -> std::io::Result<()> {
    if !done.insert(name.to_owned()) {
        return Ok(());
    }
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Directory);
    header.set_mode(0o755);
    header.set_size(0);
    header.set_mtime(MTIME);
    header.set_uid(APP_UID.into());
    header.set_gid(APP_UID.into());
    tar.append_data(&mut header, format!("{name}/"), std::io::empty())
}

/// `path` (a file, a link kept as a link, or a directory walked in name order) as `name`.
fn append_tree(
    tar: &mut Tar,
    path: &Path,
    name: &str,
    done: &mut std::collections::BTreeSet<String>,
    cancel: &CancellationToken,
) -> std::io::Result<()> {
    if cancel.is_cancelled() {
        return Err(std::io::Error::other("cancelled"));
    }
    let meta = std::fs::symlink_metadata(path)?;
    if meta.is_symlink() {
        let mut header = header(&meta);
        let target = std::fs::read_link(path)?;
        return tar.append_link(&mut header, name, target);
    }
    if meta.is_dir() {
        if done.insert(name.to_owned()) {
            let mut header = header(&meta);
            tar.append_data(&mut header, format!("{name}/"), std::io::empty())?;
        }
        let mut children: Vec<_> = std::fs::read_dir(path)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()?;
        children.sort();
        for child in children {
            let child_name = format!("{name}/{}", child.to_string_lossy());
            append_tree(tar, &path.join(&child), &child_name, done, cancel)?;
        }
        return Ok(());
    }
    if meta.is_file() {
        let mut header = header(&meta);
        return tar.append_data(&mut header, name, std::fs::File::open(path)?);
    }
    // Sockets, fifos, devices: nothing a service's package needs.
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builds::spec::Step;

    fn spec(package: &[&str]) -> BuildSpec {
        BuildSpec {
            test: Step {
                command: String::new(),
                package: vec![],
            },
            build: Step {
                command: String::new(),
                package: package.iter().map(|s| s.to_string()).collect(),
            },
            run: None,
            image: Default::default(),
        }
    }

    #[test]
    fn package_paths_stay_inside_the_source() {
        let dir = std::env::temp_dir().join(format!("slipway-pkg-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("out")).unwrap();
        std::fs::write(dir.join("out/app"), "x").unwrap();
        assert!(package_paths(&dir, &spec(&["out"])).is_ok());
        for bad in ["../etc", "/etc/passwd", "out/../../x"] {
            assert!(
                matches!(
                    package_paths(&dir, &spec(&[bad])),
                    Err(PackageError::OutsideSource(_))
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            package_paths(&dir, &spec(&["nope"])),
            Err(PackageError::Missing(_))
        ));
        #[cfg(unix)]
        {
            let _ = std::os::unix::fs::symlink("/etc", dir.join("escape"));
            assert!(matches!(
                package_paths(&dir, &spec(&["escape"])),
                Err(PackageError::OutsideSource(_))
            ));
        }
    }

    #[test]
    fn a_cancel_stops_a_layer_mid_write() {
        let cancel = CancellationToken::new();
        let mut out = Cancellable {
            inner: Vec::new(),
            cancel: cancel.clone(),
        };
        out.write_all(&[1; 4096]).unwrap();
        cancel.cancel();
        let err = out.write_all(&[2; 4096]).unwrap_err();
        assert_eq!(err.to_string(), "cancelled");
        assert_eq!(out.inner.len(), 4096, "nothing written after the cancel");
    }

    #[test]
    fn layers_are_reproducible_and_owned_by_the_app_user() {
        let dir = std::env::temp_dir().join(format!("slipway-layer-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("lib/deep")).unwrap();
        std::fs::write(dir.join("app.py"), "print('hi')").unwrap();
        std::fs::write(dir.join("lib/deep/b.py"), "b").unwrap();
        std::fs::write(dir.join("lib/a.py"), "a").unwrap();
        let paths = package_paths(&dir, &spec(&["app.py", "lib"])).unwrap();
        let never = CancellationToken::new();
        let a = pack(&paths, &never).unwrap();
        // Same content, another modification time: the layer must not change.
        let file = std::fs::File::options()
            .write(true)
            .open(dir.join("app.py"))
            .unwrap();
        file.set_modified(
            std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000),
        )
        .unwrap();
        let b = pack(&paths, &never).unwrap();
        assert_eq!(a.diff_id, b.diff_id, "same files, same diff id");
        assert_eq!(a.gzip, b.gzip, "same files, same compressed layer");

        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(&a.gzip[..]));
        let mut names = Vec::new();
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            assert_eq!(entry.header().uid().unwrap(), u64::from(APP_UID));
            assert_eq!(entry.header().gid().unwrap(), u64::from(APP_UID));
            names.push(entry.path().unwrap().display().to_string());
        }
        assert_eq!(
            names,
            [
                "app/",
                "app/app.py",
                "app/lib/",
                "app/lib/a.py",
                "app/lib/deep/",
                "app/lib/deep/b.py"
            ],
            "in name order, /app first"
        );
        // Cancelled: no layer, and it says why.
        let cancelled = CancellationToken::new();
        cancelled.cancel();
        assert!(matches!(
            pack(&paths, &cancelled),
            Err(PackageError::Cancelled)
        ));
    }
}
