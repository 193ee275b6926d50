//! The objects a release is made of, built as k8s-openapi types (so that only valid fields can
//! be sent) and applied with server-side apply. Names, labels and the instance annotation.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapEnvSource, Container, ContainerPort, EnvFromSource, EnvVar,
    HTTPGetAction, PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SeccompProfile, Secret,
    SecretEnvSource, SecurityContext, Service, ServicePort, ServiceSpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sha2::{Digest, Sha256};

use super::route::{
    ApiVersion, BackendRef, HttpRoute, HttpRouteRule, HttpRouteSpec, Kind, ParentRef,
};
use crate::target::InstanceSpec;

pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const SERVICE: &str = "slipway.dev/service";
pub const ENVIRONMENT: &str = "slipway.dev/environment";
pub const RELEASE: &str = "slipway.dev/release";
/// On a release's Deployment: the JSON list of the instance ids it runs, how a restarted
/// deployer (or another replica) knows which instances a Deployment's replicas are.
pub const INSTANCES: &str = "slipway.dev/instances";
/// The container every release pod runs its service in.
pub const CONTAINER: &str = "app";
/// The port the service listens on inside its pod (the image's `ExposedPorts`).
pub const PORT: u16 = 8080;

/// Kubernetes names: lowercase DNS labels of at most 63 characters (Service names are the
/// strictest: they must also start with a letter). A longer name keeps a hash of the whole.
pub fn fit(raw: &str) -> String {
    let mut name: String = raw
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '-') => c,
            _ => '-',
        })
        .collect();
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        name.insert(0, 's');
    }
    if name.len() > 63 {
        let hash = hex::encode(&Sha256::digest(raw.as_bytes())[..4]);
        name.truncate(54);
        name.push('-');
        name.push_str(&hash);
    }
    name.trim_end_matches('-').to_owned()
}

/// A DNS-1123 label (what a namespace name must be).
pub fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// Names of one service's objects in one environment.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Names {
    pub service: String,
    pub environment: String,
}

impl Names {
    pub fn new(service: &str, environment: &str) -> Self {
        Self {
            service: service.to_owned(),
            environment: environment.to_owned(),
        }
    }
    /// The stable Service and the HTTPRoute.
    pub fn stable(&self) -> String {
        fit(&format!("{}-{}", self.service, self.environment))
    }
    /// A release's Deployment and Service.
    pub fn release(&self, release: i32) -> String {
        fit(&format!("{}-{}-v{release}", self.service, self.environment))
    }
    /// A config version's ConfigMap and Secret.
    pub fn config(&self, version: i32) -> String {
        fit(&format!("{}-{}-c{version}", self.service, self.environment))
    }
    /// The labels of everything of this service in this environment.
    pub fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (MANAGED_BY.to_owned(), "slipway".to_owned()),
            (SERVICE.to_owned(), fit(&self.service)),
            (ENVIRONMENT.to_owned(), fit(&self.environment)),
        ])
    }
    /// The labels (and selector) of one release's pods.
    pub fn release_labels(&self, release: i32) -> BTreeMap<String, String> {
        let mut labels = self.labels();
        labels.insert(RELEASE.to_owned(), release.to_string());
        labels
    }
}

fn meta(name: String, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        labels: Some(labels),
        ..ObjectMeta::default()
    }
}

/// The config version's non-secret part: Slipway's own markers. Immutable: a config version
/// never changes, and its name is what a Deployment refers to, so rolling back to an older
/// release brings back exactly its config.
pub fn config_map(names: &Names, spec: &InstanceSpec) -> ConfigMap {
    ConfigMap {
        metadata: meta(names.config(spec.config_version), names.labels()),
        immutable: Some(true),
        data: Some(BTreeMap::from([
            ("SLIPWAY_SERVICE".to_owned(), spec.service_name.clone()),
            ("SLIPWAY_ENVIRONMENT".to_owned(), spec.environment.clone()),
            (
                "SLIPWAY_CONFIG_VERSION".to_owned(),
                spec.config_version.to_string(),
            ),
        ])),
        ..ConfigMap::default()
    }
}

/// The release's config (variables and secrets alike: the deployer is not told which is
/// which, so all of it is kept as a Secret), immutable like [`config_map`].
pub fn secret(names: &Names, spec: &InstanceSpec) -> Secret {
    Secret {
        metadata: meta(names.config(spec.config_version), names.labels()),
        immutable: Some(true),
        type_: Some("Opaque".to_owned()),
        data: Some(
            spec.env
                .iter()
                .map(|(k, v)| (k.clone(), ByteString(v.clone().into_bytes())))
                .collect(),
        ),
        ..Secret::default()
    }
}

/// A release's Deployment listing `instances` (their ids), one replica each.
pub fn deployment(
    names: &Names,
    spec: &InstanceSpec,
    instances: &BTreeSet<String>,
    progress_deadline_seconds: i32,
    resource_version: Option<String>,
) -> Deployment {
    let labels = names.release_labels(spec.release);
    let mut metadata = meta(names.release(spec.release), labels.clone());
    metadata.annotations = Some(BTreeMap::from([(
        INSTANCES.to_owned(),
        serde_json::to_string(instances).unwrap_or_default(),
    )]));
    // Applied with the version read: another deployer replica's change in between is a
    // conflict, read again, not a lost instance.
    metadata.resource_version = resource_version;
    let config = names.config(spec.config_version);
    let port_env = spec
        .run
        .as_ref()
        .map_or_else(|| "PORT".to_owned(), |r| r.port_env.to_string());
    let health_path = spec.run.as_ref().map_or_else(
        || "/healthz".to_owned(),
        |r| r.health_path.as_str().to_owned(),
    );
    let (command, args) = match &spec.run {
        Some(run) => (
            Some(vec![run.command.program().to_owned()]),
            Some(run.command[1..].to_vec()),
        ),
        None => (None, None),
    };
    let container = Container {
        name: CONTAINER.to_owned(),
        image: Some(spec.image.clone()),
        command,
        args,
        ports: Some(vec![ContainerPort {
            name: Some("http".to_owned()),
            container_port: i32::from(PORT),
            ..ContainerPort::default()
        }]),
        env: Some(vec![
            EnvVar {
                name: port_env,
                value: Some(PORT.to_string()),
                ..EnvVar::default()
            },
            EnvVar {
                name: "SLIPWAY_RELEASE".to_owned(),
                value: Some(format!("v{}", spec.release)),
                ..EnvVar::default()
            },
        ]),
        env_from: Some(vec![
            EnvFromSource {
                config_map_ref: Some(ConfigMapEnvSource {
                    name: config.clone(),
                    optional: Some(false),
                }),
                ..EnvFromSource::default()
            },
            EnvFromSource {
                secret_ref: Some(SecretEnvSource {
                    name: config,
                    optional: Some(false),
                }),
                ..EnvFromSource::default()
            },
        ]),
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some(health_path),
                port: IntOrString::String("http".to_owned()),
                ..HTTPGetAction::default()
            }),
            period_seconds: Some(2),
            ..Probe::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            privileged: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };
    Deployment {
        metadata,
        spec: Some(DeploymentSpec {
            replicas: Some(i32::try_from(instances.len()).unwrap_or(i32::MAX)),
            selector: LabelSelector {
                match_labels: Some(labels.clone()),
                ..LabelSelector::default()
            },
            progress_deadline_seconds: Some(progress_deadline_seconds),
            template: PodTemplateSpec {
                metadata: Some(meta_labels(labels)),
                spec: Some(PodSpec {
                    containers: vec![container],
                    // Other teams' code: no API token, no other services' addresses.
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".to_owned(),
                            ..SeccompProfile::default()
                        }),
                        ..PodSecurityContext::default()
                    }),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

fn meta_labels(labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        labels: Some(labels),
        ..ObjectMeta::default()
    }
}

/// A Service selecting `release`'s pods: named after the release, or the stable one.
pub fn service(names: &Names, name: String, release: i32) -> Service {
    Service {
        metadata: meta(name, names.labels()),
        spec: Some(ServiceSpec {
            selector: Some(names.release_labels(release)),
            ports: Some(vec![ServicePort {
                name: Some("http".to_owned()),
                port: i32::from(PORT),
                target_port: Some(IntOrString::String("http".to_owned())),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The route splitting traffic between the releases' Services by `weights` (release,
/// relative weight).
pub fn http_route(
    names: &Names,
    gateway: &str,
    gateway_namespace: Option<&str>,
    hostnames: &[String],
    weights: &[(i32, u32)],
) -> HttpRoute {
    HttpRoute {
        api_version: ApiVersion::V1,
        kind: Kind::HttpRoute,
        metadata: meta(names.stable(), names.labels()),
        spec: HttpRouteSpec {
            parent_refs: vec![ParentRef {
                name: gateway.to_owned(),
                namespace: gateway_namespace.map(str::to_owned),
            }],
            hostnames: (!hostnames.is_empty()).then(|| hostnames.to_vec()),
            rules: vec![HttpRouteRule {
                backend_refs: weights
                    .iter()
                    .map(|&(release, weight)| BackendRef {
                        name: names.release(release),
                        port: PORT,
                        weight: Some(weight),
                    })
                    .collect(),
            }],
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dns_labels_and_long_ones_stay_distinct() {
        assert_eq!(fit("Shop_API"), "shop-api");
        assert_eq!(fit("9lives"), "s9lives");
        let long = "a".repeat(70);
        let (a, b) = (fit(&format!("{long}-v1")), fit(&format!("{long}-v2")));
        assert!(a.len() <= 63 && is_dns_label(&a), "{a}");
        assert_ne!(a, b);
        let names = Names::new("shop", "staging");
        assert_eq!(names.release(3), "shop-staging-v3");
        assert_eq!(names.config(2), "shop-staging-c2");
        assert_eq!(names.stable(), "shop-staging");
    }
}
