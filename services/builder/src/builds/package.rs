//! Packaging: what the build step produced becomes a content-addressed OCI image (one layer
//! under `/app`, a config holding the run command, environment and exposed port) pushed through
//! the OCI distribution API. No Docker engine is involved.
//!
//! The image holds the service's files only (no base image): the process target runs them on
//! the host, the container targets put a runtime base under them.
//!
//! Bounded and cancellable: writing the layer checks the build's cancel token at every write,
//! and the push (with the digest read back) must end within `push_timeout_seconds`; a cancel
//! stops it at once.

use std::io::Write;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use flate2::Compression;
use flate2::write::GzEncoder;
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::OciImageManifest;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::spec::{BuildSpec, RunSpec};

/// Where images go (section `[registry]`).
#[derive(Debug, Clone, Deserialize)]
pub struct RegistrySettings {
    /// `host:port` of the OCI registry.
    pub address: String,
    /// Plain HTTP (a registry on loopback or a trusted network); HTTPS otherwise.
    #[serde(default)]
    pub insecure: bool,
    /// Repositories are `<prefix><service>`; e.g. `slipway/`.
    #[serde(default)]
    pub repository_prefix: String,
    /// Login (section `[registry.auth]`): anonymous, basic or bearer.
    #[serde(default)]
    pub auth: slipway_settings::RegistryAuthSettings,
    /// The push of one image (every blob, the manifest, the digest read back) must end within
    /// this; a registry that hangs fails the build's package step instead of holding it.
    #[serde(default = "default_push_timeout")]
    pub push_timeout_seconds: u64,
}

fn default_push_timeout() -> u64 {
    300
}

/// The settings section of the registry login, as named in errors.
pub const REGISTRY_AUTH: &str = "registry.auth";

impl RegistrySettings {
    /// The oci-client login of `[registry.auth]` (also checked at start-up).
    pub fn oci_auth(&self) -> Result<RegistryAuth, slipway_settings::RegistryAuthError> {
        use slipway_settings::RegistryLogin;
        Ok(match self.auth.login(REGISTRY_AUTH)? {
            RegistryLogin::Anonymous => RegistryAuth::Anonymous,
            RegistryLogin::Basic { username, password } => {
                RegistryAuth::Basic(username.to_owned(), password.to_owned())
            }
            RegistryLogin::Bearer(token) => RegistryAuth::Bearer(token.to_owned()),
        })
    }
}

/// The port an image exposes, given to instances in `port_env`.
pub const DEFAULT_PORT: u16 = 8080;

/// A pushed image.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Packaged {
    /// `host:port/repository@sha256:...`: pull by digest, never by a tag that can move.
    pub image: String,
    /// The manifest digest, `sha256:<hex>`.
    pub digest: String,
    /// The package URL naming the artifact in events: `pkg:oci/<service>@sha256%3A<hex>?...`.
    pub purl: String,
    /// Size of the compressed layer in bytes.
    pub layer_size: u64,
    /// How to run it.
    pub run: Option<RunSpec>,
}

/// Why packaging failed.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error("`{0}` in build.package must be a relative path inside the source")]
    OutsideSource(String),
    #[error("`{0}` in build.package does not exist after the build")]
    Missing(String),
    #[error("cannot write the image layer: {0}")]
    Io(#[from] std::io::Error),
    #[error("invalid image reference `{0}`: {1}")]
    Reference(String, String),
    #[error("pushing to {registry} failed: {reason}")]
    Push { registry: String, reason: String },
    #[error("pushing to {registry} did not finish within {seconds}s")]
    PushTimedOut { registry: String, seconds: u64 },
    #[error("packaging was cancelled")]
    Cancelled,
}

/// A writer that fails as soon as the build is cancelled: a big layer stops mid-way.
struct Cancellable<W> {
    inner: W,
    cancel: CancellationToken,
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

/// The paths to package, checked to stay inside `source`; the whole source (without `.git`)
/// when the recipe names none.
fn package_paths(source: &Path, spec: &BuildSpec) -> Result<Vec<(PathBuf, String)>, PackageError> {
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

/// The layer: a deterministic tar (fixed owner and times) of the package, and its gzip.
fn layer(
    paths: &[(PathBuf, String)],
    cancel: &CancellationToken,
) -> Result<(Vec<u8>, String), PackageError> {
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
    tar.mode(tar::HeaderMode::Deterministic);
    tar.follow_symlinks(false);
    for (path, name) in paths {
        if cancel.is_cancelled() {
            return Err(PackageError::Cancelled);
        }
        if path.is_dir() {
            tar.append_dir_all(name, path).map_err(stopped)?;
        } else {
            tar.append_path_with_name(path, name).map_err(stopped)?;
        }
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
    Ok((gz.finish().map_err(stopped)?.inner, diff_id))
}

/// The OCI image config: platform, run command, environment, exposed port, labels.
fn image_config(
    diff_id: &str,
    run: Option<&RunSpec>,
    service: &str,
    commit: &str,
) -> serde_json::Value {
    let mut env = vec![
        format!("SLIPWAY_SERVICE={service}"),
        format!("SLIPWAY_COMMIT={commit}"),
    ];
    if let Some(run) = run {
        env.push(format!("{}={DEFAULT_PORT}", run.port_env));
    }
    serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Cmd": run.map(|r| r.command.clone()),
            "Env": env,
            "WorkingDir": "/app",
            "ExposedPorts": { format!("{DEFAULT_PORT}/tcp"): {} },
            "Labels": {
                "dev.slipway.service": service,
                "dev.slipway.health-path": run.map(|r| r.health_path.clone()),
                "org.opencontainers.image.revision": commit,
            },
        },
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
    })
}

/// What to package and where to push it.
pub struct Target<'a> {
    pub service: &'a str,
    pub commit: &'a str,
    pub tag: &'a str,
    pub registry: &'a RegistrySettings,
}

/// Packages `source` per `spec` and pushes it as `<prefix><service>:<tag>`; stops on `cancel`.
pub async fn package_and_push(
    source: &Path,
    spec: &BuildSpec,
    target: &Target<'_>,
    cancel: &CancellationToken,
) -> Result<Packaged, PackageError> {
    let Target {
        service,
        commit,
        tag,
        registry,
    } = *target;
    let paths = package_paths(source, spec)?;
    let token = cancel.clone();
    let (gz, diff_id) = tokio::task::spawn_blocking(move || layer(&paths, &token))
        .await
        .map_err(|e| PackageError::Io(std::io::Error::other(e)))??;
    let layer_size = gz.len() as u64;
    let config_json = image_config(&diff_id, spec.run.as_ref(), service, commit);
    let config = Config::oci_v1(serde_json::to_vec(&config_json).unwrap_or_default(), None);
    let layers = vec![ImageLayer::oci_v1_gzip(gz, None)];
    let manifest = OciImageManifest::build(&layers, &config, None);

    let repository = format!("{}{}", registry.repository_prefix, service);
    let text = format!("{}/{repository}:{tag}", registry.address);
    let reference: Reference = text.parse().map_err(|e: oci_client::ParseError| {
        PackageError::Reference(text.clone(), e.to_string())
    })?;
    let client = Client::new(ClientConfig {
        protocol: if registry.insecure {
            ClientProtocol::Http
        } else {
            ClientProtocol::Https
        },
        ..Default::default()
    });
    let push_err = |e: oci_client::errors::OciDistributionError| PackageError::Push {
        registry: registry.address.clone(),
        reason: e.to_string(),
    };
    let auth = registry.oci_auth().map_err(|e| PackageError::Push {
        registry: registry.address.clone(),
        reason: e.to_string(),
    })?;
    let push = async {
        client
            .push(&reference, &layers, config, &auth, Some(manifest))
            .await
            .map_err(push_err)?;
        client
            .fetch_manifest_digest(&reference, &auth)
            .await
            .map_err(push_err)
    };
    let seconds = registry.push_timeout_seconds;
    // Dropping the push future aborts its requests: a cancel or the deadline stops it mid-way.
    let digest = tokio::select! {
        () = cancel.cancelled() => return Err(PackageError::Cancelled),
        pushed = tokio::time::timeout(Duration::from_secs(seconds), push) => match pushed {
            Ok(digest) => digest?,
            Err(_) => {
                return Err(PackageError::PushTimedOut {
                    registry: registry.address.clone(),
                    seconds,
                });
            }
        },
    };
    let hex = digest.trim_start_matches("sha256:");
    Ok(Packaged {
        image: format!("{}/{repository}@{digest}", registry.address),
        purl: format!(
            "pkg:oci/{service}@sha256%3A{hex}?repository_url={}/{repository}",
            registry.address
        ),
        digest,
        layer_size,
        run: spec.run.clone(),
    })
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
    fn layers_are_reproducible() {
        let dir = std::env::temp_dir().join(format!("slipway-layer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("app.py"), "print('hi')").unwrap();
        let paths = package_paths(&dir, &spec(&["app.py"])).unwrap();
        let never = CancellationToken::new();
        let (a, id_a) = layer(&paths, &never).unwrap();
        // Same content, another modification time: the layer must not change.
        let file = std::fs::File::options()
            .write(true)
            .open(dir.join("app.py"))
            .unwrap();
        file.set_modified(
            std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000),
        )
        .unwrap();
        let (b, id_b) = layer(&paths, &never).unwrap();
        assert_eq!(id_a, id_b, "same files, same diff id");
        assert_eq!(a, b, "same files, same compressed layer");
        // Cancelled: no layer, and it says why.
        let cancelled = CancellationToken::new();
        cancelled.cancel();
        assert!(matches!(
            layer(&paths, &cancelled),
            Err(PackageError::Cancelled)
        ));
    }
}
