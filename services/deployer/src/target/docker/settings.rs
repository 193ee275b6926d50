//! Section `[docker]` of the deployer's settings.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use slipway_events::slipway::RunSpec;

/// Section `[docker]` of the deployer's settings.
#[derive(Debug, Clone, Deserialize)]
pub struct DockerSettings {
    /// The Docker Engines instances run on unless the environment names its own:
    /// `unix:///var/run/docker.sock`, `https://host:2376` or `tcp://host:2376` (TLS with the
    /// `tls_*` files), `http://host:2375` (plain: a trusted network only). A list, or one string
    /// with commas (as an environment variable gives it).
    #[serde(
        default = "default_hosts",
        deserialize_with = "crate::target::comma_list"
    )]
    pub hosts: Vec<String>,
    /// Per environment: its own hosts and limits (`[docker.environments.<name>]`).
    #[serde(default)]
    pub environments: BTreeMap<String, DockerEnvironment>,
    /// Client certificate, key and CA (PEM files) for TLS hosts.
    #[serde(default, deserialize_with = "non_empty_path")]
    pub tls_cert_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "non_empty_path")]
    pub tls_key_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "non_empty_path")]
    pub tls_ca_file: Option<PathBuf>,
    /// A user-defined bridge network the instances join (created if missing). With it and no
    /// `publish_host`, an instance is reached at its IP on this network and its container port:
    /// the edge router and the monitor must be on it too (or on the engine's machine).
    #[serde(default, deserialize_with = "non_empty")]
    pub network: Option<String>,
    /// Publish each instance's port on this address of the engine's machine (an ephemeral host
    /// port), and announce it there (`0.0.0.0`: the engine host's name from its URL). Used when
    /// `network` is not set, or as well as it when set.
    #[serde(default, deserialize_with = "non_empty")]
    pub publish_host: Option<String>,
    /// Told apart from other platforms on the same engines by this label value: containers of
    /// another scope are never adopted or swept.
    #[serde(default = "default_scope")]
    pub scope: String,
    /// Labels added to every container (e.g. a team's); they are not secret and must not be.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// CPUs an instance may use (0: no limit) unless its environment says otherwise: the
    /// default for releases that do not say (`[run] cpus`), and the most one may ask for.
    #[serde(default = "default_cpus")]
    pub cpus: f64,
    /// Memory an instance may use, in MiB (0: no limit), swap included; like `cpus`.
    #[serde(default = "default_memory_mb")]
    pub memory_mb: u64,
    /// Most processes (threads) in one container (0: no limit).
    #[serde(default = "default_pids_limit")]
    pub pids_limit: i64,
    /// Mount the image read-only (a tmpfs on `/tmp` for what the service writes).
    #[serde(default = "default_true")]
    pub read_only_root: bool,
    /// Login to the OCI registry for pulls (section `[docker.registry_auth]`).
    #[serde(default)]
    pub registry_auth: slipway_settings::RegistryAuthSettings,
    #[serde(default = "default_restart_initial_ms")]
    pub restart_initial_ms: u64,
    #[serde(default = "default_restart_max_ms")]
    pub restart_max_ms: u64,
    #[serde(default = "default_crash_loop_restarts")]
    pub crash_loop_restarts: u32,
    #[serde(default = "default_crash_loop_window_seconds")]
    pub crash_loop_window_seconds: u64,
    /// `docker stop -t` for orphans swept (stops asked by the engine bring their own grace).
    #[serde(default = "default_stop_grace_seconds")]
    pub stop_grace_seconds: u64,
    #[serde(default = "default_log_batch_ms")]
    pub log_batch_ms: u64,
    #[serde(default = "default_pull_timeout_seconds")]
    pub pull_timeout_seconds: u64,
    /// How long one Engine API call may wait for its answer (streams excluded).
    #[serde(default = "default_engine_timeout_seconds")]
    pub engine_timeout_seconds: u64,
}

/// `[docker.environments.<name>]`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct DockerEnvironment {
    #[serde(default, deserialize_with = "crate::target::comma_list")]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub cpus: Option<f64>,
    #[serde(default)]
    pub memory_mb: Option<u64>,
}

fn non_empty<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let value = Option::<String>::deserialize(d)?;
    Ok(value.filter(|v| !v.trim().is_empty()))
}

fn non_empty_path<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    Ok(non_empty(d)?.map(PathBuf::from))
}

fn default_hosts() -> Vec<String> {
    vec!["unix:///var/run/docker.sock".into()]
}
fn default_scope() -> String {
    "slipway".into()
}
fn default_cpus() -> f64 {
    1.0
}
fn default_memory_mb() -> u64 {
    512
}
fn default_pids_limit() -> i64 {
    512
}
fn default_true() -> bool {
    true
}
fn default_restart_initial_ms() -> u64 {
    500
}
fn default_restart_max_ms() -> u64 {
    30_000
}
fn default_crash_loop_restarts() -> u32 {
    5
}
fn default_crash_loop_window_seconds() -> u64 {
    60
}
fn default_stop_grace_seconds() -> u64 {
    10
}
fn default_log_batch_ms() -> u64 {
    200
}
fn default_pull_timeout_seconds() -> u64 {
    300
}
fn default_engine_timeout_seconds() -> u64 {
    120
}

impl Default for DockerSettings {
    fn default() -> Self {
        Self {
            hosts: default_hosts(),
            environments: BTreeMap::new(),
            tls_cert_file: None,
            tls_key_file: None,
            tls_ca_file: None,
            network: None,
            publish_host: None,
            scope: default_scope(),
            labels: BTreeMap::new(),
            cpus: default_cpus(),
            memory_mb: default_memory_mb(),
            pids_limit: default_pids_limit(),
            read_only_root: true,
            registry_auth: Default::default(),
            restart_initial_ms: default_restart_initial_ms(),
            restart_max_ms: default_restart_max_ms(),
            crash_loop_restarts: default_crash_loop_restarts(),
            crash_loop_window_seconds: default_crash_loop_window_seconds(),
            stop_grace_seconds: default_stop_grace_seconds(),
            log_batch_ms: default_log_batch_ms(),
            pull_timeout_seconds: default_pull_timeout_seconds(),
            engine_timeout_seconds: default_engine_timeout_seconds(),
        }
    }
}

/// Limits of one instance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Limits {
    pub cpus: f64,
    pub memory_mb: u64,
    pub pids: i64,
}

impl DockerSettings {
    /// The hosts of `environment` (its own, else the default ones).
    pub fn hosts_for(&self, environment: &str) -> &[String] {
        match self.environments.get(environment) {
            Some(env) if !env.hosts.is_empty() => &env.hosts,
            _ => &self.hosts,
        }
    }

    /// Every host of every environment, once each, in the order first named.
    pub fn all_hosts(&self) -> Vec<String> {
        let mut all: Vec<String> = Vec::new();
        let named = self.environments.values().flat_map(|e| e.hosts.iter());
        for host in self.hosts.iter().chain(named) {
            if !all.contains(host) {
                all.push(host.clone());
            }
        }
        all
    }

    /// The limits of an instance of `environment` whose release asks for `run`'s: the
    /// release's CPUs and memory where it names them, else the environment's settings
    /// (`docker.environments.<env>.*`, else `docker.*`), which are also the ceiling (0: none).
    /// A release asking for more than the ceiling is refused, naming the limit and the setting.
    pub(crate) fn limits_for(
        &self,
        environment: &str,
        run: Option<&RunSpec>,
    ) -> Result<Limits, String> {
        let env = self.environments.get(environment);
        let setting = |field: &str, own: bool| {
            if own {
                format!("docker.environments.{environment}.{field}")
            } else {
                format!("docker.{field}")
            }
        };
        let env_cpus = env.and_then(|e| e.cpus);
        let env_memory = env.and_then(|e| e.memory_mb);
        let ceiling_cpus = env_cpus.unwrap_or(self.cpus);
        let ceiling_memory = env_memory.unwrap_or(self.memory_mb);
        let cpus = match run.and_then(|r| r.cpus) {
            Some(asked) if ceiling_cpus > 0.0 && asked.as_f64() > ceiling_cpus => {
                return Err(format!(
                    "the release asks for run.cpus = {asked}, more than the {ceiling_cpus} CPUs \
                     instances of environment `{environment}` may use on the Docker target \
                     (the ceiling `{}`)",
                    setting("cpus", env_cpus.is_some())
                ));
            }
            Some(asked) => asked.as_f64(),
            None => ceiling_cpus,
        };
        let memory_mb = match run.and_then(|r| r.memory) {
            Some(asked) if ceiling_memory > 0 && asked.mib() > ceiling_memory => {
                return Err(format!(
                    "the release asks for run.memory = {asked}, more than the {ceiling_memory} MiB \
                     instances of environment `{environment}` may use on the Docker target \
                     (the ceiling `{}`)",
                    setting("memory_mb", env_memory.is_some())
                ));
            }
            Some(asked) => asked.mib(),
            None => ceiling_memory,
        };
        Ok(Limits {
            cpus,
            memory_mb,
            pids: self.pids_limit,
        })
    }

    pub(crate) fn restart_initial(&self) -> Duration {
        Duration::from_millis(self.restart_initial_ms)
    }
    pub(crate) fn restart_max(&self) -> Duration {
        Duration::from_millis(self.restart_max_ms.max(self.restart_initial_ms))
    }
    pub(crate) fn crash_loop_window(&self) -> Duration {
        Duration::from_secs(self.crash_loop_window_seconds)
    }
    pub(crate) fn stop_grace(&self) -> Duration {
        Duration::from_secs(self.stop_grace_seconds)
    }
    pub(crate) fn log_batch(&self) -> Duration {
        Duration::from_millis(self.log_batch_ms)
    }
    pub(crate) fn pull_timeout(&self) -> Duration {
        Duration::from_secs(self.pull_timeout_seconds.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_come_as_a_list_or_a_comma_separated_string_and_environments_override() {
        let s: DockerSettings = toml::from_str(
            r#"
            hosts = "unix:///a.sock, https://b:2376"
            [environments.production]
            hosts = ["https://p1:2376", "https://p2:2376"]
            memory_mb = 1024
            "#,
        )
        .unwrap();
        assert_eq!(s.hosts, ["unix:///a.sock", "https://b:2376"]);
        assert_eq!(s.hosts_for("staging"), s.hosts.as_slice());
        assert_eq!(
            s.hosts_for("production"),
            ["https://p1:2376", "https://p2:2376"]
        );
        assert_eq!(s.all_hosts().len(), 4);
        assert_eq!(s.limits_for("production", None).unwrap().memory_mb, 1024);
        assert_eq!(s.limits_for("staging", None).unwrap().memory_mb, 512);
        assert_eq!(s.network, None);
    }

    fn run(cpus: Option<f64>, memory: Option<&str>) -> RunSpec {
        let mut run: RunSpec =
            serde_json::from_value(serde_json::json!({"command": ["./app"]})).unwrap();
        run.cpus = cpus.map(|c| slipway_events::slipway::Cpus::parse(c).unwrap());
        run.memory = memory.map(|m| m.parse().unwrap());
        run
    }

    #[test]
    fn the_run_spec_sets_limits_under_the_environments_ceiling() {
        let s: DockerSettings = toml::from_str(
            r#"
            cpus = 2.0
            memory_mb = 1024
            [environments.small]
            cpus = 0.5
            memory_mb = 256
            [environments.free]
            cpus = 0.0
            memory_mb = 0
            "#,
        )
        .unwrap();
        // The release's own, within the ceiling.
        let l = s
            .limits_for("staging", Some(&run(Some(1.5), Some("512MiB"))))
            .unwrap();
        assert_eq!((l.cpus, l.memory_mb), (1.5, 512));
        // What it does not name: the environment's settings.
        let l = s
            .limits_for("small", Some(&run(None, Some("128MiB"))))
            .unwrap();
        assert_eq!((l.cpus, l.memory_mb), (0.5, 128));
        // More than the ceiling: refused, naming the limit and the setting.
        let e = s
            .limits_for("small", Some(&run(Some(1.0), None)))
            .unwrap_err();
        assert!(
            e.starts_with("the release asks for run.cpus = 1, more than the 0.5 CPUs"),
            "{e}"
        );
        assert!(e.contains("`docker.environments.small.cpus`"), "{e}");
        let e = s
            .limits_for("staging", Some(&run(None, Some("2GiB"))))
            .unwrap_err();
        assert!(
            e.contains("run.memory = 2GiB, more than the 1024 MiB"),
            "{e}"
        );
        assert!(e.contains("`docker.memory_mb`"), "{e}");
        // No ceiling (0): whatever the release asks.
        let l = s
            .limits_for("free", Some(&run(Some(8.0), Some("4GiB"))))
            .unwrap();
        assert_eq!((l.cpus, l.memory_mb), (8.0, 4096));
    }
}
