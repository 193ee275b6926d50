//! `docker-compose.yml`: the expected services with health checks, and Debian's
//! `docker-compose` 1.29 accepts the file (`docker-compose config -q`).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::path::PathBuf;
use std::process::Command;

use slipway_manifests::*;

// docker-compose.yml
// ---------------------------------------------------------------------------------------------

fn compose_file() -> PathBuf {
    repo_root().join("docker-compose.yml")
}

#[test]
fn docker_compose_defines_the_platform() {
    let mut compose: Value = serde_yaml::from_str(&read(&compose_file()))
        .unwrap_or_else(|e| panic!("docker-compose.yml: {e}"));
    // The file shares settings through YAML merge keys (`<<: *anchor`); resolve them as compose does.
    compose
        .apply_merge()
        .unwrap_or_else(|e| panic!("docker-compose.yml: merge keys: {e}"));
    let services = compose["services"]
        .as_mapping()
        .unwrap_or_else(|| panic!("docker-compose.yml: no `services` mapping"));
    for name in SERVICES.iter().chain(&[
        "kafka",
        "postgres",
        "prometheus",
        "jaeger",
        "image-registry",
    ]) {
        assert!(
            services.contains_key(*name),
            "docker-compose.yml: no service `{name}`"
        );
    }
    for name in ["kafka", "postgres"] {
        assert!(
            services[name]["healthcheck"]["test"].is_sequence(),
            "docker-compose.yml: `{name}` has no healthcheck"
        );
    }

    for name in SERVICES {
        let service = &services[name];
        assert_eq!(
            service["command"].as_sequence().map(Vec::as_slice),
            Some([Value::from(format!("slipway-{name}"))].as_slice()),
            "docker-compose.yml: command of `{name}`"
        );
        assert!(
            service["build"].is_mapping(),
            "docker-compose.yml: `{name}` is not built from the Dockerfile"
        );
        let test = service["healthcheck"]["test"]
            .as_sequence()
            .unwrap_or_else(|| panic!("docker-compose.yml: `{name}` has no healthcheck"));
        assert!(
            !test.is_empty(),
            "docker-compose.yml: empty healthcheck test for `{name}`"
        );
        let environment = &service["environment"];
        for variable in [
            "SLIPWAY_HTTP__PORT",
            "SLIPWAY_DATABASE__HOST",
            "SLIPWAY_DATABASE__PASSWORD",
            "SLIPWAY_KAFKA__BOOTSTRAP_SERVERS",
            "SLIPWAY_TELEMETRY__OTLP_ENDPOINT",
        ] {
            assert!(
                !environment[variable].is_null(),
                "docker-compose.yml: `{name}` does not set {variable}"
            );
        }
        // Signing keys: its own seed and every public key, each required, never a default.
        let own = format!("${{SLIPWAY_SIGNING_KEY_{}:?", name.to_uppercase());
        let key = environment["SLIPWAY_SIGNING__KEY"]
            .as_str()
            .unwrap_or_default();
        assert!(
            key.starts_with(&own),
            "docker-compose.yml: `{name}` signs with {key:?}"
        );
        for peer in SERVICES {
            let variable = format!("SLIPWAY_SIGNING__PEERS__{}", peer.to_uppercase());
            let value = environment[variable.as_str()].as_str().unwrap_or_default();
            assert!(
                value.starts_with(&format!("${{SLIPWAY_SIGNING_PUB_{}:?", peer.to_uppercase())),
                "docker-compose.yml: `{name}` has {variable} = {value:?}"
            );
        }
        for dependency in ["kafka", "postgres"] {
            assert_eq!(
                service["depends_on"][dependency]["condition"].as_str(),
                Some("service_healthy"),
                "docker-compose.yml: `{name}` must wait for a healthy {dependency}"
            );
        }
    }
    let gateway = &services["gateway"];
    for variable in [
        "SLIPWAY_UPSTREAMS__REGISTRY",
        "SLIPWAY_AUTH__BOOTSTRAP_TOKEN",
    ] {
        assert!(
            !gateway["environment"][variable].is_null(),
            "docker-compose.yml: the gateway does not set {variable}"
        );
    }
    assert_eq!(
        gateway["depends_on"]["registry"]["condition"].as_str(),
        Some("service_healthy")
    );

    // Prometheus scrapes every service on its container port.
    let prometheus_config: Value =
        serde_yaml::from_str(&read(&repo_root().join("deploy/prometheus/prometheus.yml")))
            .unwrap_or_else(|e| panic!("deploy/prometheus/prometheus.yml: {e}"));
    let targets: BTreeSet<&str> = prometheus_config["scrape_configs"]
        .as_sequence()
        .into_iter()
        .flatten()
        .flat_map(|job| job["static_configs"].as_sequence().into_iter().flatten())
        .flat_map(|group| group["targets"].as_sequence().into_iter().flatten())
        .filter_map(Value::as_str)
        .collect();
    for name in SERVICES {
        let target = format!("{name}:{HTTP_PORT}");
        assert!(
            targets.contains(target.as_str()),
            "prometheus.yml does not scrape {target}"
        );
    }
}

#[test]
fn docker_compose_config_accepts_the_file() {
    let file = compose_file();
    let output = match Command::new("docker-compose")
        .arg("-f")
        .arg(&file)
        .args(["config", "-q"])
        // The signing keys have no default: the file refuses to render without them.
        .envs(SERVICES.iter().flat_map(|s| {
            ["KEY", "PUB"].map(|kind| {
                let value = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
                (
                    format!("SLIPWAY_SIGNING_{kind}_{}", s.to_uppercase()),
                    value,
                )
            })
        }))
        .current_dir(repo_root())
        .output()
    {
        Ok(output) => output,
        Err(e) if e.kind() == ErrorKind::NotFound => panic!(
            "`docker-compose` is not on PATH: this test needs it to validate docker-compose.yml \
             (scripts/test installs it: `apt-get install -y docker-compose`); it does not skip"
        ),
        Err(e) => panic!("running docker-compose: {e}"),
    };
    assert!(
        output.status.success(),
        "`docker-compose -f {} config -q` failed ({}):\n{}{}",
        file.display(),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn docker_compose_refuses_to_run_without_signing_keys() {
    let mut command = Command::new("docker-compose");
    command
        .arg("-f")
        .arg(compose_file())
        .args(["config", "-q"])
        .current_dir(repo_root());
    for s in SERVICES {
        for kind in ["KEY", "PUB"] {
            command.env_remove(format!("SLIPWAY_SIGNING_{kind}_{}", s.to_uppercase()));
        }
    }
    let output = command
        .output()
        .expect("docker-compose runs (see the test above)");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "rendered without signing keys");
    assert!(stderr.contains("scripts/signing-keys"), "{stderr}");
}
