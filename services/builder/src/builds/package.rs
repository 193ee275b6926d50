//! Packaging: what the build step produced becomes a content-addressed OCI image pushed through
//! the OCI distribution API, no Docker engine involved: the base image's layers (unchanged, by
//! digest) + one service layer under `/app` (annotated `dev.slipway.layer: service`, the one the
//! process target unpacks), under a config holding the run command, environment, port, user and
//! labels (see [`super::image`]). Without a base the image holds the service's files only.
//!
//! Pushed by digest: the manifest is serialised here and its digest is the sha256 of those
//! bytes, so the same input gives the same digest (nothing depends on time or machine).
//!
//! Bounded and cancellable: writing the layer checks the build's cancel token at every write,
//! and the rest (base read, base blobs mounted or copied, the push) must end within
//! `push_timeout_seconds`; a cancel stops it at once.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::{
    IMAGE_CONFIG_MEDIA_TYPE, IMAGE_LAYER_GZIP_MEDIA_TYPE, OCI_IMAGE_MEDIA_TYPE, OciDescriptor,
    OciImageManifest,
};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::image::base::{self, Base, Blobs, Transfer};
use super::image::config::{ConfigInput, image_config};
use super::image::{BadBase, ImageSettings, layer};
use super::spec::{BuildSpec, RunSpec};

pub use super::image::config::DEFAULT_PORT;

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

/// The annotation on the service layer's descriptor: the layer the process target unpacks.
pub const LAYER_ANNOTATION: &str = "dev.slipway.layer";
/// Its value on the service layer.
pub const SERVICE_LAYER: &str = "service";

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
    /// The base it was made on, pinned (`host/repository@sha256:...`); `None`: the service's
    /// files only.
    #[serde(default)]
    pub base: Option<String>,
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
    #[error("invalid base image, named by {0}")]
    BadBase(#[from] BadBase),
    #[error("the base image {base} cannot be used: {reason}")]
    Base { base: String, reason: String },
    #[error("pushing to {registry} failed: {reason}")]
    Push { registry: String, reason: String },
    #[error("pushing to {registry} did not finish within {seconds}s")]
    PushTimedOut { registry: String, seconds: u64 },
    #[error("packaging was cancelled")]
    Cancelled,
}

/// What to package and where to push it.
pub struct Target<'a> {
    pub service: &'a str,
    pub commit: &'a str,
    pub tag: &'a str,
    pub registry: &'a RegistrySettings,
    /// The builder's default bases (`[images]`).
    pub images: &'a ImageSettings,
    /// The detected project kind, which picks `images.base.<kind>`.
    pub kind: Option<&'a str>,
    /// Where the source came from (a redacted URL, or `upload`): the image's source label.
    pub source: Option<&'a str>,
    /// Base blobs pulled from another registry are cached here by digest (builder-private).
    pub blob_cache: &'a Path,
}

/// Packages `source` per `spec` and pushes it as `<prefix><service>:<tag>`; stops on `cancel`.
pub async fn package_and_push(
    source: &Path,
    spec: &BuildSpec,
    target: &Target<'_>,
    cancel: &CancellationToken,
) -> Result<Packaged, PackageError> {
    let registry = target.registry;
    // A bad base fails before anything is packed or sent.
    let chosen = target
        .images
        .choose(spec.image.base.as_deref(), target.kind)?;
    let paths = layer::package_paths(source, spec)?;
    let token = cancel.clone();
    let packed = tokio::task::spawn_blocking(move || layer::pack(&paths, &token))
        .await
        .map_err(|e| PackageError::Io(std::io::Error::other(e)))??;

    let repository = format!("{}{}", registry.repository_prefix, target.service);
    let text = format!("{}/{repository}:{}", registry.address, target.tag);
    let reference: Reference = text.parse().map_err(|e: oci_client::ParseError| {
        PackageError::Reference(text.clone(), e.to_string())
    })?;
    let auth = registry.oci_auth().map_err(|e| PackageError::Push {
        registry: registry.address.clone(),
        reason: e.to_string(),
    })?;
    let client = Client::new(ClientConfig {
        protocol: protocol(registry, target.images),
        ..Default::default()
    });
    let push = Push {
        client: &client,
        auth: &auth,
        reference: &reference,
        target,
        spec,
    };
    let seconds = registry.push_timeout_seconds;
    // Dropping the push future aborts its requests: a cancel or the deadline stops it mid-way.
    let (digest, base) = tokio::select! {
        () = cancel.cancelled() => return Err(PackageError::Cancelled),
        pushed = tokio::time::timeout(Duration::from_secs(seconds), push.run(chosen.map(|(b, _)| b), &packed)) => match pushed {
            Ok(done) => done?,
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
            "pkg:oci/{}@sha256%3A{hex}?repository_url={}/{repository}",
            target.service, registry.address
        ),
        digest,
        layer_size: packed.gzip.len() as u64,
        run: spec.run.clone(),
        base: base.map(|b| {
            format!(
                "{}/{}@{}",
                b.pinned.registry(),
                b.pinned.repository(),
                b.digest
            )
        }),
    })
}

/// Plain HTTP for the push registry when it is `insecure`, and for the base registries named
/// in `images.insecure_registries`; HTTPS for every other.
fn protocol(registry: &RegistrySettings, images: &ImageSettings) -> ClientProtocol {
    let mut plain = images.insecure_registries.clone();
    if registry.insecure {
        plain.push(registry.address.clone());
    }
    if plain.is_empty() {
        ClientProtocol::Https
    } else {
        ClientProtocol::HttpsExcept(plain)
    }
}

/// One push: the base's blobs, the service layer, the config, the manifest.
struct Push<'a> {
    client: &'a Client,
    auth: &'a RegistryAuth,
    reference: &'a Reference,
    target: &'a Target<'a>,
    spec: &'a BuildSpec,
}

impl Push<'_> {
    /// Pushes the image; answers its manifest digest and the base it was made on.
    async fn run(
        &self,
        named: Option<base::BaseRef>,
        packed: &layer::Layer,
    ) -> Result<(String, Option<Base>), PackageError> {
        let registry = &self.target.registry.address;
        let pushing = |e: oci_client::errors::OciDistributionError| PackageError::Push {
            registry: registry.clone(),
            reason: e.to_string(),
        };
        self.client.store_auth_if_needed(registry, self.auth).await;
        let base = match named {
            Some(named) => Some(self.base(named).await?),
            None => None,
        };

        let layer_digest = sha256(&packed.gzip);
        let config = image_config(&ConfigInput {
            base: base.as_ref(),
            diff_id: &packed.diff_id,
            run: self.spec.run.as_ref(),
            service: self.target.service,
            commit: self.target.commit,
            source: self.target.source,
        });
        let config = serde_json::to_vec(&config).map_err(std::io::Error::other)?;
        let config_digest = sha256(&config);
        self.client
            .push_blob(self.reference, packed.gzip.clone(), &layer_digest)
            .await
            .map_err(pushing)?;
        self.client
            .push_blob(self.reference, config.clone(), &config_digest)
            .await
            .map_err(pushing)?;

        let manifest = manifest(base.as_ref(), &config, &packed.gzip);
        let body = serde_json::to_vec(&manifest).map_err(std::io::Error::other)?;
        let digest = sha256(&body);
        let media_type = reqwest::header::HeaderValue::from_static(OCI_IMAGE_MEDIA_TYPE);
        self.client
            .push_manifest_raw(self.reference, body, media_type)
            .await
            .map_err(pushing)?;
        Ok((digest, base))
    }

    /// Reads the base and makes its layers present in the service's repository.
    async fn base(&self, named: base::BaseRef) -> Result<Base, PackageError> {
        let registry = &self.target.registry.address;
        let same_registry = named.registry() == registry;
        let failed = |reason: String| PackageError::Base {
            base: named.to_string(),
            reason,
        };
        // The push login is for the push registry only; another registry's bases are public.
        let auth = if same_registry {
            self.auth.clone()
        } else {
            RegistryAuth::Anonymous
        };
        let base = base::resolve(self.client, &auth, &named)
            .await
            .map_err(failed)?;
        let blobs = Blobs {
            client: self.client,
            target: self.reference,
            same_registry,
            cache: self.target.blob_cache,
        };
        let mut moved = BTreeMap::<&str, usize>::new();
        for blob in &base.manifest.layers {
            let how = blobs.ensure(&base, blob).await.map_err(failed)?;
            *moved
                .entry(match how {
                    Transfer::Present => "present",
                    Transfer::Mounted => "mounted",
                    Transfer::Copied => "copied",
                })
                .or_default() += 1;
        }
        tracing::info!(base = %named, digest = %base.digest, layers = ?moved, "base image layers in place");
        Ok(base)
    }
}

/// The image manifest: the base's layers as they are, then the service layer, annotated.
fn manifest(base: Option<&Base>, config: &[u8], layer: &[u8]) -> OciImageManifest {
    let mut layers = base.map(|b| b.manifest.layers.clone()).unwrap_or_default();
    layers.push(OciDescriptor {
        media_type: IMAGE_LAYER_GZIP_MEDIA_TYPE.into(),
        digest: sha256(layer),
        size: layer.len() as i64,
        urls: None,
        artifact_type: None,
        annotations: Some(BTreeMap::from([(
            LAYER_ANNOTATION.to_owned(),
            SERVICE_LAYER.to_owned(),
        )])),
    });
    OciImageManifest {
        schema_version: 2,
        media_type: Some(OCI_IMAGE_MEDIA_TYPE.into()),
        config: OciDescriptor {
            media_type: IMAGE_CONFIG_MEDIA_TYPE.into(),
            digest: sha256(config),
            size: config.len() as i64,
            urls: None,
            artifact_type: None,
            annotations: None,
        },
        layers,
        annotations: base.map(|b| {
            BTreeMap::from([
                (
                    "org.opencontainers.image.base.digest".to_owned(),
                    b.digest.clone(),
                ),
                (
                    "org.opencontainers.image.base.name".to_owned(),
                    b.named.name(),
                ),
            ])
        }),
        ..Default::default()
    }
}

fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_manifest_appends_an_annotated_service_layer() {
        let plain = manifest(None, b"{}", b"layer");
        assert_eq!(plain.layers.len(), 1);
        assert_eq!(
            plain.layers[0].annotations.as_ref().unwrap()[LAYER_ANNOTATION],
            SERVICE_LAYER
        );
        assert_eq!(plain.layers[0].digest, sha256(b"layer"));
        assert_eq!(plain.config.digest, sha256(b"{}"));
        assert!(plain.annotations.is_none());
        assert_eq!(
            serde_json::to_vec(&plain).unwrap(),
            serde_json::to_vec(&manifest(None, b"{}", b"layer")).unwrap(),
            "same input, same manifest bytes"
        );
    }
}
