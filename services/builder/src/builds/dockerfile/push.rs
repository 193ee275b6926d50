//! Pushing a built image: a `docker save` archive (what the engine exports and buildah
//! writes) becomes an OCI manifest, its config unchanged and each layer gzipped, pushed by
//! the builder with the `[registry]` settings: the same login, plain HTTP only when
//! `insecure`, the `push_timeout_seconds` deadline and the build's cancel as packaging. The
//! digest read back is what the build records.

use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use flate2::Compression;
use flate2::write::GzEncoder;
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::OciImageManifest;
use oci_client::{Client, Reference};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::builds::package::RegistrySettings;

/// Where to push.
pub struct Target<'a> {
    pub service: &'a str,
    pub tag: &'a str,
    pub registry: &'a RegistrySettings,
}

/// What the image config says about running it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImageConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `EXPOSE`d ports, e.g. `8000/tcp`.
    pub exposed: Vec<String>,
}

/// A pushed image.
#[derive(Debug, Clone)]
pub struct Pushed {
    /// `host:port/repository@sha256:...`.
    pub image: String,
    pub digest: String,
    pub purl: String,
    /// Compressed size of all layers.
    pub size: u64,
    pub layers: usize,
    pub config: ImageConfig,
}

/// Why the push failed.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("the exported image cannot be read: {0}")]
    Archive(String),
    #[error("invalid image reference `{0}`: {1}")]
    Reference(String, String),
    #[error("pushing to {registry} failed: {reason}")]
    Push { registry: String, reason: String },
    #[error("pushing to {registry} did not finish within {seconds}s")]
    TimedOut { registry: String, seconds: u64 },
    #[error("the push was cancelled")]
    Cancelled,
}

/// `manifest.json` of a `docker save` archive (one image).
#[derive(Deserialize)]
struct SavedImage {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "Layers")]
    layers: Vec<String>,
}

/// The config fields read back (the config itself is pushed as it is).
#[derive(Deserialize, Default)]
struct ConfigFile {
    #[serde(default)]
    config: Option<RunConfig>,
}

#[derive(Deserialize, Default)]
struct RunConfig {
    #[serde(rename = "Entrypoint", default)]
    entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    cmd: Option<Vec<String>>,
    #[serde(rename = "ExposedPorts", default)]
    exposed: Option<serde_json::Map<String, serde_json::Value>>,
}

/// The unpacked archive: config bytes, gzipped layers.
struct Image {
    config: Vec<u8>,
    layers: Vec<Vec<u8>>,
}

/// A path of the archive's manifest, kept inside the unpacked directory (a member may be a
/// link to another, as `docker save` writes a layer twice; never to outside).
fn member(dir: &Path, name: &str) -> Result<PathBuf, PushError> {
    let rel = Path::new(name);
    let outside = || PushError::Archive(format!("member `{name}` is not a path inside it"));
    if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(outside());
    }
    let path = dir.join(rel);
    if let (Ok(real), Ok(root)) = (path.canonicalize(), dir.canonicalize())
        && !real.starts_with(root)
    {
        return Err(outside());
    }
    Ok(path)
}

/// Unpacks `archive` beside itself and gzips its layers (checking the cancel between chunks).
fn read_archive(archive: &Path, cancel: &CancellationToken) -> Result<Image, PushError> {
    let bad = |e: std::io::Error| PushError::Archive(e.to_string());
    let dir = archive.with_extension("d");
    let file = std::fs::File::open(archive).map_err(bad)?;
    // tar refuses members that would land outside `dir`.
    tar::Archive::new(file).unpack(&dir).map_err(bad)?;
    let manifest = std::fs::read(dir.join("manifest.json")).map_err(bad)?;
    let saved: Vec<SavedImage> = serde_json::from_slice(&manifest)
        .map_err(|e| PushError::Archive(format!("manifest.json: {e}")))?;
    let [saved] = <[SavedImage; 1]>::try_from(saved)
        .map_err(|_| PushError::Archive("manifest.json must list exactly one image".into()))?;
    let config = std::fs::read(member(&dir, &saved.config)?).map_err(bad)?;
    let mut layers = Vec::with_capacity(saved.layers.len());
    for name in &saved.layers {
        let mut raw = std::fs::File::open(member(&dir, name)?).map_err(bad)?;
        let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
        let mut chunk = vec![0u8; 256 * 1024];
        loop {
            if cancel.is_cancelled() {
                return Err(PushError::Cancelled);
            }
            let n = raw.read(&mut chunk).map_err(bad)?;
            if n == 0 {
                break;
            }
            gz.write_all(&chunk[..n]).map_err(bad)?;
        }
        layers.push(gz.finish().map_err(bad)?);
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Image { config, layers })
}

fn image_config(config: &[u8]) -> ImageConfig {
    let file: ConfigFile = serde_json::from_slice(config).unwrap_or_default();
    let run = file.config.unwrap_or_default();
    ImageConfig {
        entrypoint: run.entrypoint.unwrap_or_default(),
        cmd: run.cmd.unwrap_or_default(),
        exposed: run
            .exposed
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default(),
    }
}

/// Pushes the image in `archive` as `<prefix><service>:<tag>`; its digest is read back.
pub async fn push_archive(
    archive: &Path,
    target: &Target<'_>,
    cancel: &CancellationToken,
) -> Result<Pushed, PushError> {
    let Target {
        service,
        tag,
        registry,
    } = *target;
    let path = archive.to_path_buf();
    let token = cancel.clone();
    let image = tokio::task::spawn_blocking(move || read_archive(&path, &token))
        .await
        .map_err(|e| PushError::Archive(e.to_string()))??;
    let config_info = image_config(&image.config);
    let size = image.layers.iter().map(|l| l.len() as u64).sum();
    let layers: Vec<ImageLayer> = image
        .layers
        .into_iter()
        .map(|l| ImageLayer::oci_v1_gzip(l, None))
        .collect();
    let count = layers.len();
    let config = Config::oci_v1(image.config, None);
    let manifest = OciImageManifest::build(&layers, &config, None);

    let repository = format!("{}{}", registry.repository_prefix, service);
    let text = format!("{}/{repository}:{tag}", registry.address);
    let reference: Reference = text
        .parse()
        .map_err(|e: oci_client::ParseError| PushError::Reference(text.clone(), e.to_string()))?;
    let client = Client::new(ClientConfig {
        protocol: if registry.insecure {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        ..Default::default()
    });
    let failed = |reason: String| PushError::Push {
        registry: registry.address.clone(),
        reason,
    };
    let auth = registry.oci_auth().map_err(|e| failed(e.to_string()))?;
    let push = async {
        client
            .push(&reference, &layers, config, &auth, Some(manifest))
            .await
            .map_err(|e| failed(e.to_string()))?;
        client
            .fetch_manifest_digest(&reference, &auth)
            .await
            .map_err(|e| failed(e.to_string()))
    };
    let seconds = registry.push_timeout_seconds;
    // Dropping the push aborts its requests: a cancel or the deadline stops it mid-way.
    let digest = tokio::select! {
        () = cancel.cancelled() => return Err(PushError::Cancelled),
        pushed = tokio::time::timeout(Duration::from_secs(seconds), push) => match pushed {
            Ok(digest) => digest?,
            Err(_) => {
                return Err(PushError::TimedOut {
                    registry: registry.address.clone(),
                    seconds,
                });
            }
        },
    };
    let hex = digest.trim_start_matches("sha256:");
    Ok(Pushed {
        image: format!("{}/{repository}@{digest}", registry.address),
        purl: format!(
            "pkg:oci/{service}@sha256%3A{hex}?repository_url={}/{repository}",
            registry.address
        ),
        digest,
        size,
        layers: count,
        config: config_info,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_run_fields_are_read_from_the_config() {
        let config = br#"{"config":{"Cmd":["python3","app.py"],"ExposedPorts":{"8000/tcp":{}},"Labels":{}}}"#;
        let read = image_config(config);
        assert_eq!(read.cmd, ["python3", "app.py"]);
        assert!(read.entrypoint.is_empty());
        assert_eq!(read.exposed, ["8000/tcp"]);
        assert_eq!(image_config(b"{}"), ImageConfig::default());
    }

    #[test]
    fn members_stay_inside_the_archive() {
        let dir = Path::new("/x");
        assert!(member(dir, "abc/layer.tar").is_ok());
        for bad in ["../etc/passwd", "/etc/passwd", "a/../../b"] {
            assert!(member(dir, bad).is_err(), "{bad}");
        }
    }
}
