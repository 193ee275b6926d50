//! What the deployer asks the registry: releases (artifact and run spec), environments (the
//! target each runs on and its newest config version), config versions
//! (secrets decrypted, from the registry's internal API; held in memory only, never stored),
//! and the traffic status route steps wait on. The answers are `slipway-wire`'s types, the
//! ones the registry serialises.
//! Every call presents the deployer's service credential (`[identity] credential`): the
//! registry answers decrypted config to the deployer only.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use slipway_ids::ServiceId;
use slipway_wire::releases::{Environment, Environments, RunConfig};
use slipway_wire::routes::TrafficStatus;

/// A release as the deployer needs it (the registry's answer, whole).
pub type ReleaseInfo = slipway_wire::releases::Release;

/// Why the registry could not answer.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{0}")]
    NotFound(String),
    #[error("registry unreachable or failing: {0}")]
    Unavailable(String),
}

/// (service, environment, version).
type ConfigKey = (String, String, i32);

/// A client of the registry's API with a cache of config versions (immutable once written).
#[derive(Clone)]
pub struct RegistryClient {
    base: String,
    http: reqwest::Client,
    configs: Arc<Mutex<HashMap<ConfigKey, BTreeMap<String, String>>>>,
}

impl RegistryClient {
    pub fn new(
        base: &str,
        credential: &slipway_runtime::Credential,
    ) -> Result<Self, reqwest::Error> {
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            http: reqwest::Client::builder()
                // Marked sensitive: never shown in reqwest's Debug output or our logs.
                .default_headers(credential.headers())
                .no_proxy()
                .timeout(Duration::from_secs(10))
                .build()?,
            configs: Arc::default(),
        })
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, RegistryError> {
        let url = format!("{}{path}", self.base);
        let answer = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| RegistryError::Unavailable(format!("GET {path}: {e}")))?;
        match answer.status().as_u16() {
            200 => answer
                .json()
                .await
                .map_err(|e| RegistryError::Unavailable(format!("GET {path}: {e}"))),
            404 => {
                let body: serde_json::Value = answer.json().await.unwrap_or_default();
                Err(RegistryError::NotFound(
                    body["detail"].as_str().unwrap_or(path).to_owned(),
                ))
            }
            // The registry refused the deployer's credential: `[identity]` is misconfigured on
            // one side; retrying will not help until it is fixed, but it is not a missing thing.
            s @ (401 | 403) => {
                let body: serde_json::Value = answer.json().await.unwrap_or_default();
                Err(RegistryError::Unavailable(format!(
                    "GET {path}: the registry refused the deployer's credential (HTTP {s}): {}",
                    body["detail"].as_str().unwrap_or("no detail")
                )))
            }
            s => Err(RegistryError::Unavailable(format!("GET {path}: HTTP {s}"))),
        }
    }

    pub async fn release(&self, service: &str, number: i32) -> Result<ReleaseInfo, RegistryError> {
        self.get(&format!("/v1/services/{service}/releases/{number}"))
            .await
    }

    /// One environment of a service as the registry records it: the target its instances run
    /// on and its newest config version. Never cached: the target may change between two
    /// deployments.
    pub async fn environment(
        &self,
        service: &str,
        environment: &str,
    ) -> Result<Environment, RegistryError> {
        let envs: Environments = self
            .get(&format!("/v1/services/{service}/environments"))
            .await?;
        envs.items
            .into_iter()
            .find(|e| e.name == environment)
            .ok_or_else(|| {
                RegistryError::NotFound(format!(
                    "service `{service}` has no environment `{environment}`"
                ))
            })
    }

    /// What the routing table holds for `service` in `environment`, at which version, and the
    /// version each edge router serves. A 404 (a registry older than this route) is an
    /// outage here, not a missing thing: it must not fail the deployment as one.
    pub async fn traffic(
        &self,
        service: ServiceId,
        environment: &str,
    ) -> Result<TrafficStatus, RegistryError> {
        self.get(&format!("/internal/v1/traffic/{service}/{environment}"))
            .await
            .map_err(|e| match e {
                RegistryError::NotFound(m) => RegistryError::Unavailable(m),
                other => other,
            })
    }

    /// The variables and decrypted secrets of one config version, as instance environment.
    pub async fn config(
        &self,
        service: &str,
        environment: &str,
        version: i32,
    ) -> Result<BTreeMap<String, String>, RegistryError> {
        let key = (service.to_owned(), environment.to_owned(), version);
        if let Ok(cache) = self.configs.lock()
            && let Some(hit) = cache.get(&key)
        {
            return Ok(hit.clone());
        }
        if version == 0 {
            return Ok(BTreeMap::new());
        }
        let answer: RunConfig = self
            .get(&format!(
                "/internal/v1/services/{service}/environments/{environment}/config/{version}"
            ))
            .await?;
        let mut env = answer.vars;
        env.extend(answer.secrets);
        if answer.version == version
            && let Ok(mut cache) = self.configs.lock()
        {
            cache.insert(key, env.clone());
        }
        Ok(env)
    }
}
