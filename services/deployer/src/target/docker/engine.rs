//! The Docker Engines of the target: connecting (unix socket, TCP, TCP with TLS; the API
//! version negotiated down to what the engine speaks, e.g. 1.41 for Engine 20.10), pulling
//! images by digest with the registry login, and the network instances join.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use bollard::Docker;
use bollard::auth::DockerCredentials;
use bollard::errors::Error as DockerError;
use bollard::models::{ImageInspect, NetworkCreateRequest};
use bollard::query_parameters::CreateImageOptionsBuilder;
use futures::StreamExt;
use slipway_settings::RegistryLogin;
use tokio_util::sync::CancellationToken;

use super::settings::DockerSettings;
use super::spec::SCOPE_LABEL;
use crate::target::TargetError;

/// The settings section of the registry login, as named in errors.
pub const REGISTRY_AUTH: &str = "docker.registry_auth";

/// One Docker Engine.
pub(crate) struct Host {
    /// As configured (`unix:///var/run/docker.sock`, `https://h:2376`...): names it in logs,
    /// errors and the target's bookkeeping.
    pub url: String,
    pub docker: Docker,
    /// Images known to be on this engine (pulled by digest: they never change).
    present: Mutex<HashSet<String>>,
    /// Whether the network was checked (and created) already.
    network_ready: tokio::sync::OnceCell<()>,
}

/// Why an engine cannot be used, with the host named.
fn engine_error(url: &str, e: impl std::fmt::Display) -> TargetError {
    TargetError::Start(format!("the Docker Engine at {url} does not answer: {e}"))
}

impl Host {
    /// Connects and negotiates the API version (the lower of the engine's and the client's).
    pub async fn connect(url: &str, settings: &DockerSettings) -> Result<Self, TargetError> {
        let timeout = settings
            .engine_timeout_seconds
            .max(settings.stop_grace_seconds + 30);
        let version = bollard::API_DEFAULT_VERSION;
        let docker = if let Some(path) = url.strip_prefix("unix://") {
            Docker::connect_with_unix(path, timeout, version)
        } else if let Some(rest) = url.strip_prefix("http://") {
            Docker::connect_with_http(&format!("tcp://{rest}"), timeout, version)
        } else if url.starts_with("https://") || url.starts_with("tcp://") {
            let (Some(cert), Some(key), Some(ca)) = (
                settings.tls_cert_file.as_deref(),
                settings.tls_key_file.as_deref(),
                settings.tls_ca_file.as_deref(),
            ) else {
                return Err(TargetError::Start(format!(
                    "the Docker host {url} needs TLS: set docker.tls_cert_file, \
                     docker.tls_key_file and docker.tls_ca_file"
                )));
            };
            Docker::connect_with_ssl(url, key, cert, ca, timeout, version)
        } else {
            return Err(TargetError::Start(format!(
                "unsupported Docker host `{url}`: use unix://PATH, https://HOST:PORT, \
                 tcp://HOST:PORT (TLS) or http://HOST:PORT"
            )));
        }
        .map_err(|e| engine_error(url, e))?;
        let docker = docker
            .negotiate_version()
            .await
            .map_err(|e| engine_error(url, e))?;
        docker.ping().await.map_err(|e| engine_error(url, e))?;
        Ok(Self {
            url: url.to_owned(),
            docker,
            present: Mutex::default(),
            network_ready: tokio::sync::OnceCell::new(),
        })
    }

    /// The engine machine's name, from its URL (`localhost` for a unix socket).
    pub fn machine(&self) -> String {
        let rest = self.url.split_once("://").map_or("", |(_, r)| r);
        if self.url.starts_with("unix://") || rest.is_empty() {
            return "127.0.0.1".to_owned();
        }
        let hostport = rest.split('/').next().unwrap_or(rest);
        match hostport.rsplit_once(':') {
            Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host.to_owned(),
            _ => hostport.to_owned(),
        }
    }

    /// Pulls `image` (`registry/repository@sha256:...`) unless this engine has it, within
    /// `timeout`; answers its config.
    pub async fn ensure_image(
        &self,
        image: &str,
        login: RegistryLogin<'_>,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> Result<ImageInspect, TargetError> {
        let artifact = |reason: String| TargetError::Artifact {
            image: image.to_owned(),
            reason,
        };
        let known = self
            .present
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(image);
        if !known {
            match self.docker.inspect_image(image).await {
                Ok(_) => {}
                Err(e) if not_found(&e) => {
                    let pull = self.pull(image, login);
                    tokio::select! {
                        _ = cancel.cancelled() => return Err(TargetError::Cancelled),
                        pulled = tokio::time::timeout(timeout, pull) => match pulled {
                            Ok(result) => result.map_err(artifact)?,
                            Err(_) => return Err(TargetError::PullTimeout {
                                image: image.to_owned(),
                                seconds: timeout.as_secs(),
                            }),
                        },
                    }
                }
                Err(e) => return Err(engine_error(&self.url, e)),
            }
        }
        let inspect = self
            .docker
            .inspect_image(image)
            .await
            .map_err(|e| artifact(format!("not on {} after the pull: {e}", self.url)))?;
        self.present
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(image.to_owned());
        Ok(inspect)
    }

    async fn pull(&self, image: &str, login: RegistryLogin<'_>) -> Result<(), String> {
        let Some((repository, digest)) = image.split_once('@') else {
            return Err("not pinned by digest (`repository@sha256:...`)".into());
        };
        let registry = repository.split('/').next().unwrap_or_default();
        let credentials = match login {
            RegistryLogin::Anonymous => None,
            RegistryLogin::Basic { username, password } => Some(DockerCredentials {
                username: Some(username.to_owned()),
                password: Some(password.to_owned()),
                serveraddress: Some(registry.to_owned()),
                ..Default::default()
            }),
            RegistryLogin::Bearer(token) => Some(DockerCredentials {
                registrytoken: Some(token.to_owned()),
                serveraddress: Some(registry.to_owned()),
                ..Default::default()
            }),
        };
        let options = CreateImageOptionsBuilder::default()
            .from_image(repository)
            .tag(digest)
            .build();
        let mut progress =
            std::pin::pin!(self.docker.create_image(Some(options), None, credentials));
        while let Some(step) = progress.next().await {
            // The engine's messages name the image and the registry, never the credentials.
            step.map_err(|e| format!("the pull on {} failed: {e}", self.url))?;
        }
        Ok(())
    }

    /// Makes sure `network` exists on this engine: a user-defined bridge, created (labelled
    /// with the scope) if missing. Containers on it reach each other and the outside world
    /// through NAT, not the engine machine's loopback, where the platform's own services listen.
    pub async fn ensure_network(&self, network: &str, scope: &str) -> Result<(), TargetError> {
        self.network_ready
            .get_or_try_init(|| async {
                match self.docker.inspect_network(network, None).await {
                    Ok(_) => return Ok(()),
                    Err(e) if not_found(&e) => {}
                    Err(e) => return Err(engine_error(&self.url, e)),
                }
                let request = NetworkCreateRequest {
                    name: network.to_owned(),
                    driver: Some("bridge".into()),
                    labels: Some(HashMap::from([(SCOPE_LABEL.to_owned(), scope.to_owned())])),
                    ..Default::default()
                };
                match self.docker.create_network(request).await {
                    Ok(_) => Ok(()),
                    // Created meanwhile by another replica.
                    Err(e) if conflict(&e) => Ok(()),
                    Err(e) => Err(TargetError::Start(format!(
                        "cannot create the network {network} on {}: {e}",
                        self.url
                    ))),
                }
            })
            .await
            .map(|_| ())
    }
}

/// A 404 from the engine.
pub(crate) fn not_found(e: &DockerError) -> bool {
    matches!(
        e,
        DockerError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// A 409 from the engine.
pub(crate) fn conflict(e: &DockerError) -> bool {
    matches!(
        e,
        DockerError::DockerResponseServerError {
            status_code: 409,
            ..
        }
    )
}

/// A 304 (already started / already stopped).
pub(crate) fn not_modified(e: &DockerError) -> bool {
    matches!(
        e,
        DockerError::DockerResponseServerError {
            status_code: 304,
            ..
        }
    )
}

/// Connects to every host; the first that does not answer stops the start-up with its name.
pub(crate) async fn connect_all(
    settings: &DockerSettings,
) -> Result<Vec<std::sync::Arc<Host>>, TargetError> {
    let mut hosts = Vec::new();
    for url in settings.all_hosts() {
        hosts.push(std::sync::Arc::new(Host::connect(&url, settings).await?));
    }
    if hosts.is_empty() {
        return Err(TargetError::Start("docker.hosts is empty".into()));
    }
    Ok(hosts)
}

/// Checks the TLS files exist before anything connects (a clearer message than rustls').
pub(crate) fn check_files(settings: &DockerSettings) -> Result<(), TargetError> {
    for (name, path) in [
        ("docker.tls_cert_file", &settings.tls_cert_file),
        ("docker.tls_key_file", &settings.tls_key_file),
        ("docker.tls_ca_file", &settings.tls_ca_file),
    ] {
        if let Some(path) = path
            && !Path::new(path).is_file()
        {
            return Err(TargetError::Start(format!(
                "{name}: {} is not a file",
                path.display()
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_host_url_names_the_machine_and_tls_needs_its_files() {
        let settings = DockerSettings::default();
        let e = Host::connect("tcp://build-1.example:2376", &settings)
            .await
            .err()
            .unwrap();
        assert!(e.to_string().contains("needs TLS"), "{e}");
        let e = Host::connect("ssh://h", &settings).await.err().unwrap();
        assert!(e.to_string().contains("unsupported Docker host"), "{e}");
    }
}
