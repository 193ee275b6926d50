//! Base images: a reference that cannot hold a bad value, its manifest and config pulled (a tag
//! resolved once to a digest), and its blobs made present in the service's repository: already
//! there, mounted from the base's repository when both are on the same registry (OCI
//! `POST /v2/<name>/blobs/uploads/?mount=<digest>&from=<repo>`), else pulled (through an on-disk
//! cache, by digest) and pushed.

use std::path::{Path, PathBuf};

use oci_client::Reference;
use oci_client::client::Client;
use oci_client::manifest::{OciDescriptor, OciImageManifest};
use oci_client::secrets::RegistryAuth;
use sha2::{Digest, Sha256};

/// A base image as named in slipway.toml or the builder's settings: a valid OCI reference
/// whose digest, when it has one, is a well-formed sha256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseRef(Reference);

/// Why a base reference was refused.
#[derive(Debug, thiserror::Error)]
#[error(
    "`{text}` is not a valid base image reference ({reason}): expected host[:port]/repository@sha256:<64 hex digits> or host[:port]/repository:tag"
)]
pub struct BaseRefError {
    text: String,
    reason: String,
}

impl std::str::FromStr for BaseRef {
    type Err = BaseRefError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let refuse = |reason: &str| BaseRefError {
            // Quoted in a build's reason: bounded, whatever the file held.
            text: text.chars().take(200).collect(),
            reason: reason.to_owned(),
        };
        if text.trim() != text || text.is_empty() {
            return Err(refuse("empty or surrounded by spaces"));
        }
        let reference: Reference = text
            .parse()
            .map_err(|e: oci_client::ParseError| refuse(&e.to_string()))?;
        if let Some(digest) = reference.digest() {
            let hex = digest
                .strip_prefix("sha256:")
                .ok_or_else(|| refuse("only sha256 digests are supported"))?;
            if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
                return Err(refuse("a sha256 digest has 64 lowercase hex digits"));
            }
        }
        Ok(Self(reference))
    }
}

impl std::fmt::Display for BaseRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.whole())
    }
}

impl BaseRef {
    /// The registry it is pulled from (`docker.io` for a short name).
    pub fn registry(&self) -> &str {
        self.0.resolve_registry()
    }

    /// `registry/repository[:tag]`: the `org.opencontainers.image.base.name` label.
    pub fn name(&self) -> String {
        let base = format!("{}/{}", self.0.registry(), self.0.repository());
        match self.0.tag() {
            Some(tag) => format!("{base}:{tag}"),
            None => base,
        }
    }

    pub fn reference(&self) -> &Reference {
        &self.0
    }
}

/// A base image as pulled: pinned to the digest of the manifest read.
#[derive(Debug, Clone)]
pub struct Base {
    pub named: BaseRef,
    /// The base's repository at the manifest's digest.
    pub pinned: Reference,
    /// `sha256:<hex>` of the base manifest.
    pub digest: String,
    pub manifest: OciImageManifest,
    /// The base's image config, kept whole (unknown fields survive into the new config).
    pub config: serde_json::Value,
}

/// Reads the base's manifest (the linux/amd64 one of an index) and config; the client checks
/// both against their digests.
pub async fn resolve(
    client: &Client,
    auth: &RegistryAuth,
    named: &BaseRef,
) -> Result<Base, String> {
    let (manifest, digest, config) = client
        .pull_manifest_and_config(named.reference(), auth)
        .await
        .map_err(|e| format!("cannot read it: {e}"))?;
    let config: serde_json::Value =
        serde_json::from_str(&config).map_err(|e| format!("its image config is not JSON: {e}"))?;
    if !config.is_object() {
        return Err("its image config is not a JSON object".into());
    }
    let diff_ids = config
        .pointer("/rootfs/diff_ids")
        .and_then(|d| d.as_array())
        .map_or(0, Vec::len);
    if diff_ids != manifest.layers.len() {
        return Err(format!(
            "its config names {diff_ids} layer(s) but its manifest {}",
            manifest.layers.len()
        ));
    }
    let pinned = Reference::with_digest(
        named.reference().registry().to_owned(),
        named.reference().repository().to_owned(),
        digest.clone(),
    );
    Ok(Base {
        named: named.clone(),
        pinned,
        digest,
        manifest,
        config,
    })
}

/// How a base blob got into the service's repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transfer {
    Present,
    Mounted,
    Copied,
}

/// Where the blobs come from and go to.
pub struct Blobs<'a> {
    /// Holds the login of the service's registry (and anonymous access to the base's).
    pub client: &'a Client,
    /// The service's repository.
    pub target: &'a Reference,
    pub same_registry: bool,
    /// Blobs pulled from another registry are kept here by digest (builder-private).
    pub cache: &'a Path,
}

impl Blobs<'_> {
    /// Makes `blob` of `base` present in the target repository.
    pub async fn ensure(&self, base: &Base, blob: &OciDescriptor) -> Result<Transfer, String> {
        let digest = blob.digest.as_str();
        let hex =
            digest_hex(digest).ok_or_else(|| format!("blob digest `{digest}` is not sha256"))?;
        if self
            .client
            .blob_exists(self.target, digest)
            .await
            .map_err(|e| format!("cannot check blob {digest}: {e}"))?
        {
            return Ok(Transfer::Present);
        }
        if self.same_registry {
            match self
                .client
                .mount_blob(self.target, &base.pinned, digest)
                .await
            {
                Ok(()) => return Ok(Transfer::Mounted),
                // A registry may refuse to mount (another repository's access, no support):
                // copying is always possible.
                Err(e) => tracing::debug!(blob = digest, error = %e, "mount refused; copying"),
            }
        }
        let data = self.pulled(base, blob, &hex).await?;
        self.client
            .push_blob(self.target, data, digest)
            .await
            .map_err(|e| format!("cannot push base blob {digest}: {e}"))?;
        Ok(Transfer::Copied)
    }

    /// The blob's bytes: from the cache when a verified copy is there, else pulled (checked
    /// against its digest by the client) and cached.
    async fn pulled(
        &self,
        base: &Base,
        blob: &OciDescriptor,
        hex: &str,
    ) -> Result<Vec<u8>, String> {
        let cached = self.cache.join(hex);
        if let Ok(data) = tokio::fs::read(&cached).await {
            if hex::encode(Sha256::digest(&data)) == hex {
                return Ok(data);
            }
            let _ = tokio::fs::remove_file(&cached).await;
        }
        let mut data = Vec::new();
        self.client
            .pull_blob(&base.pinned, blob, &mut data)
            .await
            .map_err(|e| format!("cannot pull base blob {}: {e}", blob.digest))?;
        if let Err(e) = store(&cached, &data).await {
            // A cache that cannot be written costs the next build a pull, not this one.
            tracing::warn!(path = %cached.display(), error = %e, "cannot cache a base blob");
        }
        Ok(data)
    }
}

/// Writes `data` at `path` atomically (a temporary file renamed into place).
async fn store(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().map(PathBuf::from).unwrap_or_default();
    tokio::fs::create_dir_all(&dir).await?;
    let tmp = dir.join(format!(".tmp-{}", uuid::Uuid::new_v4().simple()));
    tokio::fs::write(&tmp, data).await?;
    match tokio::fs::rename(&tmp, path).await {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            Err(e)
        }
    }
}

fn digest_hex(digest: &str) -> Option<String> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| hex.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_references_are_checked() {
        let hex = "0123456789abcdef".repeat(4);
        let pinned: BaseRef = format!("127.0.0.1:5000/slipway/base@sha256:{hex}")
            .parse()
            .unwrap();
        assert_eq!(pinned.registry(), "127.0.0.1:5000");
        assert_eq!(pinned.name(), "127.0.0.1:5000/slipway/base");
        let tagged: BaseRef = "registry.example:5000/base:bookworm".parse().unwrap();
        assert_eq!(tagged.name(), "registry.example:5000/base:bookworm");
        for bad in [
            "",
            " 127.0.0.1:5000/base:1",
            "127.0.0.1:5000/Base:1",
            "127.0.0.1:5000/base@sha256:abc",
            "127.0.0.1:5000/base@md5:0123456789abcdef0123456789abcdef",
            "127.0.0.1:5000/base:bad tag",
        ] {
            let err = bad.parse::<BaseRef>().unwrap_err().to_string();
            assert!(
                err.contains("not a valid base image reference"),
                "{bad}: {err}"
            );
        }
    }
}
