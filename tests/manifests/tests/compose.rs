//! `docker-compose.yml`: the expected services with health checks, each with its own database
//! role and no default for any secret, and Debian's `docker-compose` 1.29 accepts the file
//! (`docker-compose config -q`) once the required secrets are set, and refuses it before.
//! Also: every key-shaped value printed in the docs and manifests is one the services refuse.

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

    // It loads the alert rules, compose mounts them, and a dead-lettered outbox event alerts.
    assert!(
        prometheus_config["rule_files"]
            .as_sequence()
            .is_some_and(|files| files.iter().any(|f| f.as_str() == Some("alerts.yml"))),
        "prometheus.yml does not load alerts.yml"
    );
    let mounts: Vec<&str> = services["prometheus"]["volumes"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        mounts.contains(&"./deploy/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro"),
        "{mounts:?}"
    );
    let alerts: Value =
        serde_yaml::from_str(&read(&repo_root().join("deploy/prometheus/alerts.yml")))
            .unwrap_or_else(|e| panic!("deploy/prometheus/alerts.yml: {e}"));
    let exprs: Vec<&str> = alerts["groups"]
        .as_sequence()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_sequence().into_iter().flatten())
        .filter_map(|r| r["expr"].as_str())
        .collect();
    assert!(
        exprs
            .iter()
            .any(|e| e.contains("slipway_outbox_dead_lettered_total")),
        "{exprs:?}"
    );
}

/// The variables compose requires (`${VAR:?...}`), all secrets without defaults.
const REQUIRED: [&str; 7] = [
    "SLIPWAY_SECRETS_KEY",
    "SLIPWAY_DB_PASSWORD",
    "SLIPWAY_DB_PASSWORD_GATEWAY",
    "SLIPWAY_DB_PASSWORD_BUILDER",
    "SLIPWAY_DB_PASSWORD_REGISTRY",
    "SLIPWAY_DB_PASSWORD_DEPLOYER",
    "SLIPWAY_DB_PASSWORD_MONITOR",
];

/// `docker-compose config -q` with exactly `set` of the required variables set (and no .env
/// file, so the developer's own one does not count).
fn compose_config(set: &[&str]) -> std::process::Output {
    compose_run(&[compose_file()], set, &["config", "-q"])
}

/// `docker-compose -f FILE... ARGS` with exactly `set` of the required variables set.
fn compose_run(files: &[PathBuf], set: &[&str], args: &[&str]) -> std::process::Output {
    // An empty file (docker-compose wants a regular one, not /dev/null).
    let no_env = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("empty.env");
    std::fs::write(&no_env, "").unwrap();
    let mut command = Command::new("docker-compose");
    command.arg("--env-file").arg(&no_env);
    for file in files {
        command.arg("-f").arg(file);
    }
    command.args(args).current_dir(repo_root());
    for variable in REQUIRED {
        command.env_remove(variable);
    }
    for variable in set {
        command.env(variable, "set-by-the-test");
    }
    // The group of the Docker socket the deployer joins (no default: it differs per machine).
    command.env("SLIPWAY_DOCKER_GID", "999");
    // The signing keys have no default either (their own test below).
    for s in SERVICES {
        for kind in ["KEY", "PUB"] {
            command.env(
                format!("SLIPWAY_SIGNING_{kind}_{}", s.to_uppercase()),
                "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
            );
        }
    }
    match command.output() {
        Ok(output) => output,
        Err(e) if e.kind() == ErrorKind::NotFound => panic!(
            "`docker-compose` is not on PATH: this test needs it to validate docker-compose.yml \
             (scripts/test installs it: `apt-get install -y docker-compose`); it does not skip"
        ),
        Err(e) => panic!("running docker-compose: {e}"),
    }
}

#[test]
fn docker_compose_config_accepts_the_file() {
    let file = compose_file();
    let output = compose_config(&REQUIRED);
    assert!(
        output.status.success(),
        "`docker-compose -f {} config -q` failed ({}):\n{}{}",
        file.display(),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

// docker-compose.local.yml over docker-compose.yml (scripts/compose)
// ---------------------------------------------------------------------------------------------

fn local_files() -> [PathBuf; 2] {
    [compose_file(), repo_root().join("docker-compose.local.yml")]
}

#[test]
fn docker_compose_config_accepts_the_local_override() {
    let output = compose_run(&local_files(), &REQUIRED, &["config", "-q"]);
    assert!(
        output.status.success(),
        "`docker-compose -f docker-compose.yml -f docker-compose.local.yml config -q` failed \
         ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// What compose makes of both files: every image it would run is built here (nothing to
/// pull), the broker is Tansu, Jaeger is never started and nothing exports traces to it.
#[test]
fn the_local_override_runs_only_images_built_here() {
    let output = compose_run(&local_files(), &REQUIRED, &["config"]);
    assert!(output.status.success(), "{output:?}");
    let config: Value = serde_yaml::from_slice(&output.stdout).unwrap();
    let services = config["services"].as_mapping().unwrap();
    for (name, service) in services {
        let name = name.as_str().unwrap();
        let image = service["image"].as_str().unwrap_or_default();
        if name == "jaeger" {
            assert!(
                service["profiles"].is_sequence(),
                "jaeger must be in a profile nobody enables: {service:?}"
            );
            continue;
        }
        assert!(
            image.starts_with("slipway-local/"),
            "`{name}` runs {image:?}, which cannot be pulled here"
        );
        for dependency in service["depends_on"].as_mapping().into_iter().flatten() {
            assert_ne!(
                dependency.0.as_str(),
                Some("jaeger"),
                "`{name}` waits for jaeger, which never starts"
            );
        }
    }
    assert!(
        services["kafka"]["image"]
            .as_str()
            .is_some_and(|i| i.starts_with("slipway-local/tansu:")),
        "{:?}",
        services["kafka"]
    );
    for name in SERVICES {
        assert_eq!(
            services[name]["environment"]["SLIPWAY_TELEMETRY__OTLP_ENDPOINT"].as_str(),
            Some(""),
            "`{name}` exports traces to a collector that does not run"
        );
        assert!(
            services[name]["image"]
                .as_str()
                .is_some_and(|i| i.starts_with("slipway-local/platform:")),
            "`{name}`: {:?}",
            services[name]["image"]
        );
    }
}

/// One run (docker-compose takes seconds to start); that every key and password is required
/// the same way is checked on the file's text below.
#[test]
fn docker_compose_refuses_to_start_without_a_secrets_key() {
    let missing = "SLIPWAY_SECRETS_KEY";
    let set: Vec<&str> = REQUIRED.into_iter().filter(|v| *v != missing).collect();
    let output = compose_config(&set);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success() && stderr.contains(&format!("set {missing},")),
        "docker-compose accepted the file without {missing} ({}): {stderr}",
        output.status
    );
}

#[test]
fn every_service_has_its_own_database_role_and_no_secret_has_a_default() {
    let text = read(&compose_file());
    // `${VAR:-default}` or `${VAR-default}` of a key or password: a value anyone can read.
    for (index, _) in text.match_indices("${") {
        let reference = &text[index
            ..text[index..]
                .find('}')
                .map_or(text.len(), |end| index + end)];
        let name: String = reference[2..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if name.contains("KEY") || name.contains("PASSWORD") {
            assert!(
                reference[2 + name.len()..].starts_with(":?"),
                "docker-compose.yml: {reference}}} must be required (`:?`), not defaulted"
            );
        }
    }
    let mut compose: Value = serde_yaml::from_str(&text).unwrap();
    compose.apply_merge().unwrap();
    let services = &compose["services"];
    let superuser = services["postgres"]["environment"]["POSTGRES_USER"]
        .as_str()
        .expect("postgres: POSTGRES_USER");
    let roles_job = &services["db-roles"];
    assert_eq!(
        roles_job["environment"]["PGUSER"].as_str(),
        Some(superuser),
        "db-roles runs roles.sql as the superuser"
    );
    let mut users = BTreeSet::new();
    for name in SERVICES {
        let environment = &services[name]["environment"];
        let user = environment["SLIPWAY_DATABASE__USERNAME"]
            .as_str()
            .unwrap_or_else(|| panic!("docker-compose.yml: `{name}` sets no database user"));
        assert_eq!(
            user, name,
            "docker-compose.yml: `{name}`'s role (roles.sql names it so)"
        );
        assert_ne!(
            user, superuser,
            "docker-compose.yml: `{name}` logs in as the superuser"
        );
        assert!(users.insert(user), "docker-compose.yml: role {user} shared");
        let variable = format!("SLIPWAY_DB_PASSWORD_{}", name.to_uppercase());
        let password = environment["SLIPWAY_DATABASE__PASSWORD"]
            .as_str()
            .unwrap_or_default();
        assert!(
            password.starts_with(&format!("${{{variable}:?")),
            "docker-compose.yml: `{name}`'s password must be {variable}, not {password}"
        );
        assert_eq!(
            roles_job["environment"][variable.as_str()].as_str(),
            Some(password),
            "docker-compose.yml: db-roles sets {variable} as `{name}` uses it"
        );
        assert_eq!(
            services[name]["depends_on"]["db-roles"]["condition"].as_str(),
            Some("service_completed_successfully"),
            "docker-compose.yml: `{name}` must wait for its role"
        );
        if let Some(key) = environment["SLIPWAY_SECRETS__KEY"].as_str() {
            assert!(
                key.starts_with("${SLIPWAY_SECRETS_KEY:?"),
                "docker-compose.yml: `{name}` has a default secrets key: {key}"
            );
        }
    }
}

/// Every value in the docs and manifests that looks like a secrets key (base64 of 32 bytes).
fn printed_keys() -> Vec<(String, String)> {
    use base64::Engine;
    let root = repo_root();
    let mut files = vec![
        root.join("README.md"),
        root.join("docker-compose.yml"),
        root.join("libs/secrets/src/lib.rs"),
    ];
    for dir in [
        "k8s",
        "k8s/base",
        "docs",
        "deploy/postgres",
        "deploy/prometheus",
    ] {
        for entry in std::fs::read_dir(root.join(dir))
            .into_iter()
            .flatten()
            .flatten()
        {
            if entry.path().is_file() {
                files.push(entry.path());
            }
        }
    }
    for service in SERVICES {
        files.push(root.join(format!("services/{service}/config/default.toml")));
    }
    let mut keys = Vec::new();
    for file in files {
        let text = read(&file);
        let words = text.split(|c: char| !(c.is_ascii_alphanumeric() || "+/=".contains(c)));
        for word in words.filter(|word| word.len() == 44) {
            let decoded = base64::engine::general_purpose::STANDARD.decode(word);
            if decoded.is_ok_and(|bytes| bytes.len() == 32) {
                keys.push((file.display().to_string(), word.to_owned()));
            }
        }
    }
    keys
}

#[test]
fn keys_printed_in_the_repository_are_refused_by_the_services() {
    let keys = printed_keys();
    // The secrets library lists the published ones in its own tests: the scan finds them.
    assert!(
        keys.iter().any(|(file, _)| file.ends_with("lib.rs")),
        "the scan found no key at all in libs/secrets/src/lib.rs: is it looking?"
    );
    for (file, key) in keys {
        assert!(
            matches!(
                slipway_secrets::SecretBox::from_base64(&key),
                Err(slipway_secrets::SecretError::KnownKey)
            ),
            "{file}: {key} would be accepted as secrets.key; add it to libs/secrets' PUBLISHED_KEYS"
        );
    }
    // The example Secret of k8s/base holds no usable key either.
    let documents = load_base();
    for document in &documents {
        if let Object::Secret(secret) = &document.object
            && let Some(key) = secret
                .string_data
                .as_ref()
                .and_then(|d| d.get("secrets-key"))
        {
            assert!(
                slipway_secrets::SecretBox::from_base64(key).is_err(),
                "{}: the example secrets-key is usable",
                document.origin
            );
        }
    }
}

#[test]
fn docker_compose_refuses_to_run_without_signing_keys() {
    let mut command = Command::new("docker-compose");
    command
        .arg("-f")
        .arg(compose_file())
        .args(["config", "-q"])
        .current_dir(repo_root());
    command.env("SLIPWAY_DOCKER_GID", "999");
    for variable in REQUIRED {
        command.env(variable, "set-by-the-test");
    }
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
