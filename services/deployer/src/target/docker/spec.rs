//! What a container of an instance looks like: labels (what it is, never its config), the
//! environment (the release's config and secrets, the port and the `SLIPWAY_*` markers), the
//! command, the user, limits and the security options; and where it is reached once it runs.

use std::collections::HashMap;

use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, HostConfig, ImageInspect, PortBinding,
    RestartPolicy, RestartPolicyNameEnum,
};

use super::settings::{DockerSettings, Limits};
use crate::target::{InstanceSpec, Placement, TargetError};

/// Which platform (scope) a container belongs to.
pub const SCOPE_LABEL: &str = "dev.slipway.scope";
pub const INSTANCE_LABEL: &str = "dev.slipway.instance";
pub const SERVICE_LABEL: &str = "dev.slipway.service";
pub const SERVICE_ID_LABEL: &str = "dev.slipway.service-id";
pub const ENVIRONMENT_LABEL: &str = "dev.slipway.environment";
pub const RELEASE_LABEL: &str = "dev.slipway.release";
/// The deployer replica that created the container (labels cannot change: a later adopter is
/// in the database, not here).
pub const REPLICA_LABEL: &str = "dev.slipway.replica";

/// The user an image without a numeric non-root user runs as.
pub const FALLBACK_USER: &str = "10001:10001";
/// The container port when the image exposes none.
const DEFAULT_PORT: u16 = 8080;
/// Why an image made of the service's files alone is refused (C1).
pub const NO_BASE: &str = "the image has no base layer: set [image] base in slipway.toml or the \
                           builder's images.default_base";

/// What the target learned from an image.
#[derive(Debug, Clone)]
pub(crate) struct ImageFacts {
    pub user: String,
    pub port: u16,
    pub port_env: String,
}

/// Checks `image` can run as a container and reads what the container needs from it.
pub(crate) fn image_facts(
    spec: &InstanceSpec,
    image: &ImageInspect,
) -> Result<ImageFacts, TargetError> {
    let config = image.config.clone().unwrap_or_default();
    let labels = config.labels.clone().unwrap_or_default();
    let layers = image
        .root_fs
        .as_ref()
        .and_then(|r| r.layers.as_ref())
        .map_or(0, Vec::len);
    // The builder's service-only image is one layer of `/app` and names no base; anything
    // built on a base (by the builder or a Dockerfile) has more layers or says which base.
    if layers <= 1 && !labels.contains_key("org.opencontainers.image.base.digest") {
        return Err(TargetError::Artifact {
            image: spec.image.clone(),
            reason: NO_BASE.into(),
        });
    }
    let port = config
        .exposed_ports
        .iter()
        .flatten()
        .filter_map(|p| p.strip_suffix("/tcp").unwrap_or(p).parse::<u16>().ok())
        .min()
        .unwrap_or(DEFAULT_PORT);
    let port_env = match &spec.run {
        Some(run) => run.port_env.to_string(),
        None => labels
            .get("dev.slipway.port-env")
            .cloned()
            .unwrap_or_else(|| "PORT".into()),
    };
    Ok(ImageFacts {
        user: run_as(config.user.as_deref()),
        port,
        port_env,
    })
}

/// The image's user if it is numeric and not root (`uid` or `uid:gid`), else [`FALLBACK_USER`]:
/// a name cannot be checked for root from outside the image.
pub(crate) fn run_as(user: Option<&str>) -> String {
    let user = user.unwrap_or_default().trim();
    let (uid, gid) = user.split_once(':').unwrap_or((user, user));
    match (uid.parse::<u32>(), gid.parse::<u32>()) {
        (Ok(uid), Ok(gid)) if uid != 0 && gid != 0 => format!("{uid}:{gid}"),
        (Ok(uid), Ok(_)) if uid != 0 => format!("{uid}:{uid}"),
        _ => FALLBACK_USER.into(),
    }
}

/// The labels of `spec`'s container: what it is, never what it is configured with.
pub(crate) fn labels(
    spec: &InstanceSpec,
    settings: &DockerSettings,
    replica: &str,
) -> HashMap<String, String> {
    let scope = settings.scope.as_str();
    let mut labels: HashMap<String, String> = settings.labels.clone().into_iter().collect();
    labels.extend([
        (SCOPE_LABEL.to_owned(), scope.to_owned()),
        (INSTANCE_LABEL.to_owned(), spec.instance_id.to_string()),
        (SERVICE_LABEL.to_owned(), spec.service_name.clone()),
        (SERVICE_ID_LABEL.to_owned(), spec.service_id.to_string()),
        (ENVIRONMENT_LABEL.to_owned(), spec.environment.clone()),
        (RELEASE_LABEL.to_owned(), spec.release.to_string()),
        (REPLICA_LABEL.to_owned(), replica.to_owned()),
    ]);
    labels
}

/// `<scope>-<service>-<instance>`, in the characters container names allow.
pub(crate) fn container_name(spec: &InstanceSpec, scope: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                    c
                } else {
                    '-'
                }
            })
            .collect()
    };
    format!(
        "{}-{}-{}",
        clean(scope),
        clean(&spec.service_name),
        spec.instance_id.simple()
    )
}

/// The instance's environment: the release's config, its port, then what it is (which the
/// config cannot override). The image's own `Env` is merged in by the engine, under these.
fn environment(spec: &InstanceSpec, facts: &ImageFacts) -> Vec<String> {
    let mut env: std::collections::BTreeMap<String, String> = spec.env.clone();
    env.insert(facts.port_env.clone(), facts.port.to_string());
    for (key, value) in [
        ("SLIPWAY_SERVICE", spec.service_name.clone()),
        ("SLIPWAY_ENVIRONMENT", spec.environment.clone()),
        ("SLIPWAY_RELEASE", format!("v{}", spec.release)),
        ("SLIPWAY_INSTANCE", spec.instance_id.to_string()),
    ] {
        env.insert(key.to_owned(), value);
    }
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// How the container is reached.
#[derive(Debug, Clone)]
pub(crate) struct Reach {
    pub network: Option<String>,
    pub publish_host: Option<String>,
}

impl Reach {
    pub fn of(settings: &DockerSettings) -> Self {
        // Neither set: published on loopback, reachable from the engine's machine only.
        let publish_host = match (&settings.network, &settings.publish_host) {
            (None, None) => Some("127.0.0.1".to_owned()),
            (_, publish) => publish.clone(),
        };
        Self {
            network: settings.network.clone(),
            publish_host,
        }
    }
}

/// The container of `spec`.
pub(crate) fn container(
    spec: &InstanceSpec,
    facts: &ImageFacts,
    labels: HashMap<String, String>,
    limits: Limits,
    reach: &Reach,
    read_only: bool,
) -> ContainerCreateBody {
    let port_key = format!("{}/tcp", facts.port);
    let (entrypoint, cmd) = match &spec.run {
        // The run spec's command is the whole command line, as on the process target.
        Some(run) => {
            let command = run.command.to_vec();
            let (program, args) = command.split_first().map_or((None, Vec::new()), |(p, a)| {
                (Some(vec![p.clone()]), a.to_vec())
            });
            (program, Some(args))
        }
        None => (None, None),
    };
    let port_bindings = reach.publish_host.as_ref().map(|host| {
        HashMap::from([(
            port_key.clone(),
            Some(vec![PortBinding {
                host_ip: Some(host.clone()),
                // Empty: an ephemeral port chosen by the engine at every start.
                host_port: Some(String::new()),
            }]),
        )])
    });
    let nano_cpus = (limits.cpus > 0.0).then_some((limits.cpus * 1e9) as i64);
    let memory = (limits.memory_mb > 0).then(|| (limits.memory_mb * 1024 * 1024) as i64);
    let host_config = HostConfig {
        nano_cpus,
        memory,
        // Memory and swap together: no swap beyond the limit.
        memory_swap: memory,
        pids_limit: (limits.pids > 0).then_some(limits.pids),
        // Slipway supervises: the engine never restarts on its own.
        restart_policy: Some(RestartPolicy {
            name: Some(RestartPolicyNameEnum::NO),
            maximum_retry_count: None,
        }),
        privileged: Some(false),
        cap_drop: Some(vec!["ALL".into()]),
        security_opt: Some(vec!["no-new-privileges:true".into()]),
        readonly_rootfs: Some(read_only),
        tmpfs: read_only
            .then(|| HashMap::from([("/tmp".to_owned(), "rw,nosuid,nodev,size=64m".to_owned())])),
        network_mode: reach.network.clone(),
        port_bindings,
        ..Default::default()
    };
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        user: Some(facts.user.clone()),
        env: Some(environment(spec, facts)),
        labels: Some(labels),
        entrypoint,
        cmd,
        exposed_ports: Some(vec![port_key]),
        host_config: Some(host_config),
        ..Default::default()
    }
}

/// Where a running container is reached: its IP on the network and its port, or the
/// published port on the engine's machine (`machine`: its name, for `0.0.0.0`).
pub(crate) fn placement(
    inspect: &ContainerInspectResponse,
    reach: &Reach,
    machine: &str,
) -> Result<Placement, TargetError> {
    let settings = inspect.network_settings.as_ref();
    let container_port = inspect
        .config
        .as_ref()
        .and_then(|c| c.exposed_ports.as_ref())
        .and_then(|p| p.first().cloned())
        .unwrap_or_else(|| format!("{DEFAULT_PORT}/tcp"));
    if let Some(host) = &reach.publish_host {
        let published = settings
            .and_then(|s| s.ports.as_ref())
            .and_then(|ports| ports.get(&container_port).cloned().flatten())
            .into_iter()
            .flatten()
            .find_map(|b| b.host_port.and_then(|p| p.parse::<u16>().ok()));
        let Some(port) = published else {
            return Err(TargetError::Start(format!(
                "the engine published no port for {container_port}"
            )));
        };
        let host = if host == "0.0.0.0" { machine } else { host };
        return Ok(Placement {
            address: format!("{host}:{port}"),
            port,
            process: None,
        });
    }
    let network = reach.network.as_deref().unwrap_or("bridge");
    let ip = settings
        .and_then(|s| s.networks.as_ref())
        .and_then(|n| n.get(network))
        .and_then(|e| e.ip_address.clone())
        .filter(|ip| !ip.is_empty());
    let port = container_port
        .strip_suffix("/tcp")
        .unwrap_or(&container_port)
        .parse::<u16>()
        .unwrap_or(DEFAULT_PORT);
    match ip {
        Some(ip) => Ok(Placement {
            address: format!("{ip}:{port}"),
            port,
            process: None,
        }),
        None => Err(TargetError::Start(format!(
            "the container has no address on the network {network}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use bollard::models::{ImageConfig, ImageInspectRootFs};
    use slipway_ids::ServiceId;
    use uuid::Uuid;

    use super::*;

    fn spec() -> InstanceSpec {
        InstanceSpec {
            instance_id: Uuid::new_v4(),
            service_id: ServiceId::new(),
            service_name: "shop".into(),
            environment: "staging".into(),
            release: 7,
            config_version: 1,
            image: "127.0.0.1:5000/shop@sha256:00".into(),
            run: None,
            env: BTreeMap::from([("API_KEY".to_owned(), "s3cret-value".to_owned())]),
        }
    }

    fn image(layers: usize, user: Option<&str>) -> ImageInspect {
        ImageInspect {
            config: Some(ImageConfig {
                user: user.map(str::to_owned),
                exposed_ports: Some(vec!["9000/tcp".into()]),
                ..Default::default()
            }),
            root_fs: Some(ImageInspectRootFs {
                typ: "layers".into(),
                layers: Some(vec!["sha256:aa".into(); layers]),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn users_are_numeric_and_never_root() {
        assert_eq!(run_as(Some("10002:10003")), "10002:10003");
        assert_eq!(run_as(Some("1000")), "1000:1000");
        assert_eq!(run_as(Some("0")), FALLBACK_USER);
        assert_eq!(run_as(Some("root")), FALLBACK_USER);
        assert_eq!(run_as(Some("app")), FALLBACK_USER);
        assert_eq!(run_as(Some("1000:0")), "1000:1000");
        assert_eq!(run_as(None), FALLBACK_USER);
    }

    #[test]
    fn a_service_only_image_is_refused_with_the_reason() {
        let e = image_facts(&spec(), &image(1, None)).unwrap_err();
        assert!(e.to_string().contains(NO_BASE), "{e}");
        let facts = image_facts(&spec(), &image(2, Some("app"))).unwrap();
        assert_eq!((facts.port, facts.user.as_str()), (9000, FALLBACK_USER));
    }

    #[test]
    fn secrets_go_to_the_environment_never_to_labels() {
        let spec = spec();
        let facts = image_facts(&spec, &image(2, Some("10001"))).unwrap();
        let labels = labels(&spec, &DockerSettings::default(), "replica-1");
        let limits = Limits {
            cpus: 0.5,
            memory_mb: 64,
            pids: 100,
        };
        let reach = Reach {
            network: Some("net".into()),
            publish_host: None,
        };
        let body = container(&spec, &facts, labels, limits, &reach, true);
        let env = body.env.clone().unwrap();
        assert!(env.contains(&"API_KEY=s3cret-value".to_owned()));
        assert!(env.contains(&"PORT=9000".to_owned()));
        assert!(env.contains(&"SLIPWAY_RELEASE=v7".to_owned()));
        let labels = body.labels.clone().unwrap();
        assert!(labels.values().all(|v| !v.contains("s3cret")));
        assert_eq!(labels[RELEASE_LABEL], "7");
        let host = body.host_config.unwrap();
        assert_eq!(host.nano_cpus, Some(500_000_000));
        assert_eq!(host.memory, Some(64 * 1024 * 1024));
        assert_eq!(host.cap_drop, Some(vec!["ALL".to_owned()]));
        assert_eq!(host.network_mode.as_deref(), Some("net"));
        assert!(host.port_bindings.is_none());
    }
}
