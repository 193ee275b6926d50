//! Artifacts: an image pulled by digest from the OCI registry and unpacked once per digest under
//! `<workdir>/releases/<service>/<digest-hex>/`.
//!
//! Invariant: a release directory exists only when it is complete (and, for a service with its
//! own uid, owned by it). Layers are unpacked into a temporary directory beside it and renamed
//! into place, so a deployer that dies mid-unpack leaves a `.tmp-*` directory behind, never a
//! half release that a later start would run.
//!
//! With an owner, `releases/<service>/` and the release directory are `root:<gid>` 0750 (only
//! that service's instances get in), the unpacked files the owner's, and the image config the
//! deployer's alone (it decides what runs, so the instance must not rewrite it).
//!
//! An image made on a base (the builder appends the service's layer to a base image's layers)
//! holds a whole root filesystem the host does not need: only the layers annotated
//! `dev.slipway.layer: service` are pulled and unpacked. An image with no annotated layer (a
//! release from before bases) is unpacked whole, as it holds the service's files only.
//!
//! A pull is bounded (`[process] pull_timeout_seconds`, and a registry that stops sending for
//! [`READ_TIMEOUT`] fails at once) and cancelled when the target shuts down: a registry that
//! hangs fails the start with a reason instead of holding a deployment step forever.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use flate2::read::GzDecoder;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use slipway_settings::RegistryLogin;
use tokio_util::sync::CancellationToken;

use super::users;
use crate::target::TargetError;

/// The image config file kept beside `app/` in a release directory: its presence marks a
/// complete release, and it answers a cache hit without asking the registry.
const CONFIG_FILE: &str = "image-config.json";
/// A registry connection that sends nothing for this long is given up.
pub(crate) const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Connecting to the registry.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The parts of an OCI image config the process target uses.
#[derive(Debug, Clone, Default, Deserialize)]
pub(crate) struct ImageConfig {
    #[serde(default)]
    pub config: Option<ContainerConfig>,
}

/// `config` of an OCI image config (Docker's field names).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ContainerConfig {
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    /// `KEY=value` entries.
    #[serde(default)]
    pub env: Option<Vec<String>>,
    /// Absolute inside the image (`/app`); mapped under the release root.
    #[serde(default)]
    pub working_dir: Option<String>,
    /// Values kept as JSON: images of older builders hold `null` ones.
    #[serde(default)]
    pub labels: Option<HashMap<String, serde_json::Value>>,
}

/// The annotation on the layer(s) the process target runs, and its value.
const LAYER_ANNOTATION: (&str, &str) = ("dev.slipway.layer", "service");
/// The label the builder puts on an image made on a base.
const BASE_LABEL: &str = "org.opencontainers.image.base.digest";

impl ContainerConfig {
    /// Whether the image was made on a base image: its `Env` then describes the base's
    /// filesystem (its `PATH` names the base's directories, not the host's).
    pub fn has_base(&self) -> bool {
        self.labels
            .as_ref()
            .and_then(|l| l.get(BASE_LABEL))
            .and_then(serde_json::Value::as_str)
            .is_some_and(|d| !d.is_empty())
    }
}

/// The layers to unpack on the host: the service's (annotated) when the image names any, else
/// all of them (an image from before bases holds nothing else).
fn service_layers(layers: &[OciDescriptor]) -> Vec<&OciDescriptor> {
    let (key, value) = LAYER_ANNOTATION;
    let annotated: Vec<&OciDescriptor> = layers
        .iter()
        .filter(|l| {
            l.annotations
                .as_ref()
                .is_some_and(|a| a.get(key).is_some_and(|v| v == value))
        })
        .collect();
    if annotated.is_empty() {
        layers.iter().collect()
    } else {
        annotated
    }
}

/// An unpacked release.
#[derive(Debug, Clone)]
pub(crate) struct Release {
    /// `<workdir>/releases/<service>/<digest-hex>`: the image's `/`.
    pub root: PathBuf,
    pub config: ImageConfig,
}

/// Pulls and unpacks images, once per digest.
pub(crate) struct Artifacts {
    releases: PathBuf,
    client: Client,
    /// The registry login (its Debug output redacts the secret).
    auth: RegistryAuth,
    /// One async lock per digest: concurrent starts of one release pull it once; starts of
    /// different releases do not wait for each other.
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// How many pulls went to the registry (cache misses), for tests and diagnostics.
    pulls: AtomicU64,
    /// The longest a pull (waiting for a concurrent pull of the same digest included) may take.
    timeout: Duration,
    /// Cancelled when the target shuts down: pulls under way end.
    cancel: CancellationToken,
}

impl Artifacts {
    pub fn new(
        releases: PathBuf,
        insecure: bool,
        login: RegistryLogin<'_>,
        timeout: Duration,
        cancel: CancellationToken,
    ) -> Self {
        let client = Client::new(ClientConfig {
            protocol: if insecure {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            connect_timeout: Some(CONNECT_TIMEOUT.min(timeout)),
            read_timeout: Some(READ_TIMEOUT.min(timeout)),
            ..Default::default()
        });
        let auth = match login {
            RegistryLogin::Anonymous => RegistryAuth::Anonymous,
            RegistryLogin::Basic { username, password } => {
                RegistryAuth::Basic(username.to_owned(), password.to_owned())
            }
            RegistryLogin::Bearer(token) => RegistryAuth::Bearer(token.to_owned()),
        };
        Self {
            releases,
            client,
            auth,
            locks: Mutex::new(HashMap::new()),
            pulls: AtomicU64::new(0),
            timeout,
            cancel,
        }
    }

    pub fn pulls(&self) -> u64 {
        self.pulls.load(Ordering::Relaxed)
    }

    /// The unpacked release of `image` (`host:port/repository@sha256:<hex>`), pulled if not
    /// cached yet, readable by `owner` (a uid, = gid) alone when given. Fails after the pull
    /// timeout, or when the target shuts down.
    pub async fn ensure(
        &self,
        service_name: &str,
        image: &str,
        owner: Option<u32>,
    ) -> Result<Release, TargetError> {
        let bounded =
            tokio::time::timeout(self.timeout, self.ensure_now(service_name, image, owner));
        tokio::select! {
            _ = self.cancel.cancelled() => Err(TargetError::Cancelled),
            done = bounded => done.unwrap_or_else(|_| Err(TargetError::PullTimeout {
                image: image.to_owned(),
                seconds: self.timeout.as_secs(),
            })),
        }
    }

    async fn ensure_now(
        &self,
        service_name: &str,
        image: &str,
        owner: Option<u32>,
    ) -> Result<Release, TargetError> {
        let fail = |reason: String| TargetError::Artifact {
            image: image.to_owned(),
            reason,
        };
        let hex = digest_hex(image).ok_or_else(|| {
            fail("the image must be pinned by digest (`...@sha256:<64 hex digits>`)".into())
        })?;
        let reference: Reference = image
            .parse()
            .map_err(|e: oci_client::ParseError| fail(format!("invalid reference: {e}")))?;
        let service_dir = self.releases.join(path_component(service_name));
        let dir = service_dir.join(&hex);

        let lock = {
            let mut locks = self.locks.lock().unwrap_or_else(PoisonError::into_inner);
            locks.entry(hex.clone()).or_default().clone()
        };
        let _pulling = lock.lock().await;
        let mode = if owner.is_some() { 0o750 } else { 0o700 };
        let group = owner.map(|gid| (0, gid));
        users::dir_with(&service_dir, mode, group).map_err(|e| fail(e.to_string()))?;
        if let Some(release) = read_release(&dir).map_err(|e| fail(e.to_string()))? {
            // Unpacked for another uid (before the deployer ran as root, or for an earlier
            // service of that name): given to this one before it runs.
            if let Some(uid) = owner
                && users::group_of(&dir) != Some(uid)
            {
                let target = dir.clone();
                tokio::task::spawn_blocking(move || give(&target, uid))
                    .await
                    .map_err(|e| fail(format!("re-owning stopped: {e}")))?
                    .map_err(fail)?;
            }
            return Ok(release);
        }
        self.pulls.fetch_add(1, Ordering::Relaxed);
        self.pull(&reference, &dir, owner).await.map_err(fail)
    }

    async fn pull(
        &self,
        reference: &Reference,
        dir: &Path,
        owner: Option<u32>,
    ) -> Result<Release, String> {
        // The client checks the manifest against the reference's digest and the config blob
        // against the manifest.
        let (manifest, _, config_text) = self
            .client
            .pull_manifest_and_config(reference, &self.auth)
            .await
            .map_err(|e| format!("pulling the manifest failed: {e}"))?;
        let config: ImageConfig = serde_json::from_str(&config_text)
            .map_err(|e| format!("the image config is not valid: {e}"))?;

        let wanted = service_layers(&manifest.layers);
        let mut layers = Vec::with_capacity(wanted.len());
        for layer in wanted {
            let gzip = match layer.media_type.as_str() {
                t if t.ends_with("tar+gzip") || t.ends_with("tar.gzip") => true,
                t if t.ends_with(".tar") || t.ends_with("tar") => false,
                other => return Err(format!("layer media type `{other}` is not supported")),
            };
            let mut data = Vec::new();
            self.client
                .pull_blob(reference, layer, &mut data)
                .await
                .map_err(|e| format!("pulling layer {} failed: {e}", layer.digest))?;
            // Checked here too: what is unpacked must be exactly what the manifest names.
            let actual = format!("sha256:{}", hex::encode(Sha256::digest(&data)));
            if actual != layer.digest {
                return Err(format!(
                    "layer digest mismatch: the manifest says {}, the registry sent {actual}",
                    layer.digest
                ));
            }
            layers.push((data, gzip));
        }

        let target = dir.to_owned();
        tokio::task::spawn_blocking(move || install(&target, &layers, &config_text, owner))
            .await
            .map_err(|e| format!("unpacking stopped: {e}"))??;
        Ok(Release {
            root: dir.to_owned(),
            config,
        })
    }
}

/// `<hex>` of `...@sha256:<hex>`, if the image is pinned by a well-formed sha256 digest.
fn digest_hex(image: &str) -> Option<String> {
    let (_, digest) = image.rsplit_once('@')?;
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| hex.to_ascii_lowercase())
}

/// A service name as one safe directory name (names are validated upstream; this only makes
/// sure a strange one cannot leave `releases/`).
fn path_component(name: &str) -> String {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    match safe.as_str() {
        "" | "." | ".." => "_".into(),
        _ => safe,
    }
}

/// The release in `dir`, if it is complete.
fn read_release(dir: &Path) -> std::io::Result<Option<Release>> {
    let text = match std::fs::read_to_string(dir.join(CONFIG_FILE)) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let config = serde_json::from_str(&text).map_err(std::io::Error::other)?;
    Ok(Some(Release {
        root: dir.to_owned(),
        config,
    }))
}

/// Gives an unpacked release to `uid`: its files, and the directory to its group (0750).
fn give(dir: &Path, uid: u32) -> Result<(), String> {
    let failed = |e: std::io::Error| format!("cannot give {} to uid {uid}: {e}", dir.display());
    users::own_tree(dir, uid, &[CONFIG_FILE]).map_err(failed)?;
    users::dir_with(dir, 0o750, Some((0, uid))).map_err(failed)
}

/// Unpacks `layers` into a temporary directory beside `dir`, gives it to `owner`, then renames
/// it to `dir`.
fn install(
    dir: &Path,
    layers: &[(Vec<u8>, bool)],
    config: &str,
    owner: Option<u32>,
) -> Result<(), String> {
    let parent = dir
        .parent()
        .ok_or_else(|| format!("{} has no parent", dir.display()))?;
    std::fs::create_dir_all(parent)
        .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    let tmp = parent.join(format!(".tmp-{name}-{}", uuid::Uuid::new_v4()));
    let result = (|| {
        std::fs::create_dir(&tmp).map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
        for (data, gzip) in layers {
            unpack_layer(data, *gzip, &tmp)?;
        }
        std::fs::write(tmp.join(CONFIG_FILE), config)
            .map_err(|e| format!("cannot write the image config: {e}"))?;
        match owner {
            Some(uid) => give(&tmp, uid)?,
            None => users::dir_with(&tmp, 0o700, None).map_err(|e| e.to_string())?,
        }
        match std::fs::rename(&tmp, dir) {
            Ok(()) => Ok(()),
            // Another deployer on the same workdir finished first: its copy is as good.
            Err(_) if dir.join(CONFIG_FILE).exists() => {
                let _ = std::fs::remove_dir_all(&tmp);
                Ok(())
            }
            Err(e) => Err(format!("cannot move the release into place: {e}")),
        }
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

/// Unpacks one tar layer under `root`, refusing entries that would land outside it.
pub(crate) fn unpack_layer(data: &[u8], gzip: bool, root: &Path) -> Result<(), String> {
    let reader: Box<dyn Read> = if gzip {
        Box::new(GzDecoder::new(data))
    } else {
        Box::new(data)
    };
    let mut archive = tar::Archive::new(reader);
    archive.set_overwrite(true);
    let bad = |e: std::io::Error| format!("the layer is not a valid tar archive: {e}");
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let path = entry.path().map_err(bad)?.into_owned();
        let Some(relative) = inside(&path) else {
            return Err(format!(
                "entry `{}` points outside the release",
                path.display()
            ));
        };
        if relative.as_os_str().is_empty() {
            continue;
        }
        use tar::EntryType as T;
        match entry.header().entry_type() {
            T::Regular | T::Continuous | T::Directory => {}
            T::Symlink => {
                let target = entry.link_name().map_err(bad)?.unwrap_or_default();
                if !link_stays_inside(&relative, &target) {
                    return Err(format!(
                        "symlink `{}` -> `{}` points outside the release",
                        path.display(),
                        target.display()
                    ));
                }
            }
            T::Link => {
                let target = entry.link_name().map_err(bad)?.unwrap_or_default();
                if inside(&target).is_none_or(|t| t.as_os_str().is_empty()) {
                    return Err(format!(
                        "hard link `{}` -> `{}` points outside the release",
                        path.display(),
                        target.display()
                    ));
                }
            }
            // Devices, fifos, extended headers: an application needs none of them.
            _ => continue,
        }
        // `unpack_in` also refuses to write through a symlinked parent that leaves `root`.
        entry
            .unpack_in(root)
            .map_err(|e| format!("cannot unpack `{}`: {e}", path.display()))?;
    }
    Ok(())
}

/// `path` as plain relative components, or `None` if it is absolute or climbs with `..`.
fn inside(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out)
}

/// Whether a symlink at `link` (relative to the root) pointing to `target` resolves inside the
/// root, judged on the names alone (links are checked as they are unpacked, in order).
fn link_stays_inside(link: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let mut depth: usize = link.parent().map_or(0, |p| p.components().count());
    for component in target.components() {
        match component {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return false,
            },
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_and_names() {
        let hex = "a".repeat(64);
        assert_eq!(
            digest_hex(&format!("h:1/r@sha256:{hex}")),
            Some(hex.clone())
        );
        assert_eq!(digest_hex("h:1/r:latest"), None);
        assert_eq!(digest_hex("h:1/r@sha256:abc"), None);
        assert_eq!(path_component("../etc"), ".._etc");
        assert_eq!(path_component(".."), "_");
    }

    #[test]
    fn only_the_service_layer_is_unpacked_when_one_is_annotated() {
        let layer = |digest: &str, annotated: bool| OciDescriptor {
            digest: digest.into(),
            annotations: annotated.then(|| {
                std::collections::BTreeMap::from([(
                    "dev.slipway.layer".to_owned(),
                    "service".to_owned(),
                )])
            }),
            ..Default::default()
        };
        let based = [layer("base", false), layer("app", true)];
        let picked: Vec<_> = service_layers(&based)
            .iter()
            .map(|l| l.digest.as_str())
            .collect();
        assert_eq!(picked, ["app"]);
        let old = [layer("one", false), layer("two", false)];
        let picked: Vec<_> = service_layers(&old)
            .iter()
            .map(|l| l.digest.as_str())
            .collect();
        assert_eq!(picked, ["one", "two"], "no annotation: the whole image");
    }

    #[test]
    fn links_are_judged_by_where_they_land() {
        assert!(link_stays_inside(Path::new("app/lib/x"), Path::new("../y")));
        assert!(link_stays_inside(Path::new("app/x"), Path::new("../y")));
        assert!(!link_stays_inside(Path::new("app/x"), Path::new("../../y")));
        assert!(!link_stays_inside(Path::new("x"), Path::new("/etc/passwd")));
        assert!(inside(Path::new("./app/x")).is_some());
        assert!(inside(Path::new("app/../../x")).is_none());
        assert!(inside(Path::new("/etc")).is_none());
    }

    /// A tar with one entry named `name` (raw bytes: the builder would refuse the bad ones).
    fn tar_with(name: &str, kind: tar::EntryType, link: Option<&str>) -> Vec<u8> {
        let mut header = tar::Header::new_old();
        let raw = &mut header.as_old_mut().name;
        raw[..name.len()].copy_from_slice(name.as_bytes());
        header.set_entry_type(kind);
        header.set_mode(0o644);
        header.set_size(if link.is_some() { 0 } else { 2 });
        if let Some(link) = link {
            header.set_link_name(link).unwrap();
        }
        header.set_cksum();
        let mut builder = tar::Builder::new(Vec::new());
        let data: &[u8] = if link.is_some() { b"" } else { b"hi" };
        builder.append(&header, data).unwrap();
        builder.into_inner().unwrap()
    }

    #[test]
    fn unpacking_stays_inside_the_root() {
        let root = std::env::temp_dir().join(format!("slipway-unpack-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&root).unwrap();
        let ok = tar_with("app/a.txt", tar::EntryType::Regular, None);
        unpack_layer(&ok, false, &root).unwrap();
        assert_eq!(std::fs::read(root.join("app/a.txt")).unwrap(), b"hi");
        for bad in [
            tar_with("../escape.txt", tar::EntryType::Regular, None),
            tar_with("/tmp/escape.txt", tar::EntryType::Regular, None),
            tar_with("app/up", tar::EntryType::Symlink, Some("../../etc")),
            tar_with("app/abs", tar::EntryType::Symlink, Some("/etc")),
        ] {
            let err = unpack_layer(&bad, false, &root).unwrap_err();
            assert!(err.contains("outside the release"), "{err}");
        }
        assert!(!root.join("app/up").exists() && !root.join("app/abs").exists());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
