//! The OCI image config of a release image: the base's config (when there is one) with the
//! service's run command, environment, port, working dir, user and labels over it.
//!
//! Nothing in it depends on the time or the machine (`created` is the epoch): the same base,
//! files and recipe give the same config, hence the same image digest.

use serde_json::{Map, Value, json};

use super::base::Base;
use super::layer::APP_UID;
use crate::builds::spec::RunSpec;

/// The port an image exposes, given to instances in `port_env`.
pub const DEFAULT_PORT: u16 = 8080;

/// Fixed creation time: a rebuild of the same input must not change the digest.
const CREATED: &str = "1970-01-01T00:00:00Z";

/// Label prefixes of the base that describe the base itself (its version, source, revision...)
/// and would be wrong on the service's image: dropped, ours are written instead.
const OWN_LABEL_PREFIXES: [&str; 2] = ["org.opencontainers.image.", "dev.slipway."];

/// What the config says about the service.
pub struct ConfigInput<'a> {
    pub base: Option<&'a Base>,
    /// The service layer's diff id.
    pub diff_id: &'a str,
    pub run: Option<&'a RunSpec>,
    pub service: &'a str,
    pub commit: &'a str,
    /// The repository it was built from (redacted), or `upload`.
    pub source: Option<&'a str>,
}

/// The image config.
pub fn image_config(input: &ConfigInput<'_>) -> Value {
    let mut image = match input.base {
        Some(base) => base.config.as_object().cloned().unwrap_or_default(),
        None => Map::new(),
    };
    image.insert("created".into(), json!(CREATED));
    image.entry("architecture").or_insert(json!("amd64"));
    image.entry("os").or_insert(json!("linux"));

    let mut config = image
        .get("config")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let port_env = input.run.map_or("PORT", |r| r.port_env.as_str());
    let ours = [
        ("SLIPWAY_SERVICE", input.service.to_owned()),
        ("SLIPWAY_COMMIT", input.commit.to_owned()),
        (port_env, DEFAULT_PORT.to_string()),
    ];
    // The base's variables (PATH, LANG...) first; ours replace any of the same name.
    let mut env: Vec<String> = strings(config.get("Env"))
        .into_iter()
        .filter(|entry| {
            let name = entry.split_once('=').map_or(entry.as_str(), |(k, _)| k);
            !ours.iter().any(|(k, _)| *k == name)
        })
        .collect();
    env.extend(ours.iter().map(|(k, v)| format!("{k}={v}")));
    config.insert("Env".into(), json!(env));
    if let Some(run) = input.run {
        // The run spec is the whole command: a base's entrypoint would wrap it.
        config.remove("Entrypoint");
        config.insert("Cmd".into(), json!(run.command.to_vec()));
    }
    config.insert("WorkingDir".into(), json!("/app"));
    config.insert(
        "ExposedPorts".into(),
        json!({ format!("{DEFAULT_PORT}/tcp"): {} }),
    );
    let base_user = config.get("User").and_then(Value::as_str).unwrap_or("");
    let user = if non_root_numeric(base_user) {
        base_user.to_owned()
    } else {
        format!("{APP_UID}:{APP_UID}")
    };
    config.insert("User".into(), json!(user));
    config.insert("Labels".into(), Value::Object(labels(&config, input)));
    image.insert("config".into(), Value::Object(config));

    let mut diff_ids = input
        .base
        .map(|b| strings(b.config.pointer("/rootfs/diff_ids")))
        .unwrap_or_default();
    diff_ids.push(input.diff_id.to_owned());
    image.insert(
        "rootfs".into(),
        json!({ "type": "layers", "diff_ids": diff_ids }),
    );
    // History lines up with the layers; only a base that keeps one gets our line added.
    if let Some(Value::Array(history)) = image.get_mut("history") {
        history.push(json!({
            "created": CREATED,
            "created_by": "slipway builder: the service's files under /app",
        }));
    }
    Value::Object(image)
}

/// The base's labels that are not about the base itself, then ours.
fn labels(config: &Map<String, Value>, input: &ConfigInput<'_>) -> Map<String, Value> {
    let mut labels: Map<String, Value> = config
        .get("Labels")
        .and_then(Value::as_object)
        .map(|l| {
            l.iter()
                .filter(|(k, _)| !OWN_LABEL_PREFIXES.iter().any(|p| k.starts_with(p)))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default();
    let mut put = |k: &str, v: &str| {
        labels.insert(k.to_owned(), json!(v));
    };
    put("dev.slipway.service", input.service);
    put("org.opencontainers.image.revision", input.commit);
    if let Some(source) = input.source {
        put("org.opencontainers.image.source", source);
    }
    if let Some(run) = input.run {
        put("dev.slipway.port-env", run.port_env.as_str());
        put("dev.slipway.health-path", run.health_path.as_str());
    }
    if let Some(base) = input.base {
        put("org.opencontainers.image.base.digest", &base.digest);
        put("org.opencontainers.image.base.name", &base.named.name());
    }
    labels
}

/// `uid` or `uid:gid`, numeric, uid not 0: a base that chose its own user keeps it.
fn non_root_numeric(user: &str) -> bool {
    let (uid, gid) = user.split_once(':').unwrap_or((user, "0"));
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    numeric(uid) && numeric(gid) && uid.parse::<u32>().is_ok_and(|u| u != 0)
}

fn strings(value: Option<&Value>) -> Vec<String> {
    value
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builds::image::base::BaseRef;
    use oci_client::manifest::OciImageManifest;
    use slipway_events::slipway::Command;

    fn run() -> RunSpec {
        RunSpec {
            command: Command::new(vec!["python3".into(), "app.py".into()]).unwrap(),
            port_env: "PORT".parse().unwrap(),
            health_path: "/healthz".parse().unwrap(),
        }
    }

    fn base(user: &str) -> Base {
        let named: BaseRef = "127.0.0.1:5000/base:bookworm".parse().unwrap();
        Base {
            pinned: named.reference().clone(),
            named,
            digest: format!("sha256:{}", "b".repeat(64)),
            manifest: OciImageManifest::default(),
            config: json!({
                "architecture": "amd64",
                "os": "linux",
                "created": "2024-05-01T00:00:00Z",
                "config": {
                    "Env": ["PATH=/usr/bin:/bin", "PORT=1", "LANG=C.UTF-8"],
                    "Entrypoint": ["/bin/sh", "-c"],
                    "User": user,
                    "Labels": {
                        "org.opencontainers.image.version": "12",
                        "maintainer": "debian",
                    },
                },
                "rootfs": { "type": "layers", "diff_ids": ["sha256:base"] },
                "history": [{ "created_by": "debootstrap" }],
            }),
        }
    }

    #[test]
    fn the_base_config_is_merged_with_the_service() {
        let base = base("app");
        let run = run();
        let input = ConfigInput {
            base: Some(&base),
            diff_id: "sha256:ours",
            run: Some(&run),
            service: "hello",
            commit: "abc",
            source: Some("https://git.example/hello.git"),
        };
        let image = image_config(&input);
        let config = &image["config"];
        assert_eq!(image["created"], CREATED);
        assert_eq!(
            config["Env"],
            json!([
                "PATH=/usr/bin:/bin",
                "LANG=C.UTF-8",
                "SLIPWAY_SERVICE=hello",
                "SLIPWAY_COMMIT=abc",
                "PORT=8080"
            ])
        );
        assert!(config.get("Entrypoint").is_none(), "{config}");
        assert_eq!(config["Cmd"], json!(["python3", "app.py"]));
        assert_eq!(config["WorkingDir"], "/app");
        assert_eq!(config["ExposedPorts"], json!({ "8080/tcp": {} }));
        assert_eq!(config["User"], "10001:10001", "a named user is replaced");
        let labels = &config["Labels"];
        assert_eq!(labels["maintainer"], "debian");
        assert!(labels.get("org.opencontainers.image.version").is_none());
        assert_eq!(
            labels["org.opencontainers.image.base.name"],
            "127.0.0.1:5000/base:bookworm"
        );
        assert_eq!(labels["org.opencontainers.image.base.digest"], base.digest);
        assert_eq!(
            labels["org.opencontainers.image.source"],
            "https://git.example/hello.git"
        );
        assert_eq!(labels["org.opencontainers.image.revision"], "abc");
        assert_eq!(labels["dev.slipway.port-env"], "PORT");
        assert_eq!(labels["dev.slipway.health-path"], "/healthz");
        assert!(
            labels.get("dev.slipway.release").is_none(),
            "not known at build time"
        );
        assert_eq!(
            image["rootfs"]["diff_ids"],
            json!(["sha256:base", "sha256:ours"])
        );
        assert_eq!(image["history"].as_array().unwrap().len(), 2);
        assert_eq!(
            image_config(&input),
            image,
            "the same input, the same config"
        );
    }

    #[test]
    fn users_of_the_base() {
        for (user, kept) in [
            ("1000", true),
            ("1000:1000", true),
            ("0", false),
            ("0:0", false),
            ("root", false),
            ("", false),
            ("1000:staff", false),
        ] {
            let base = base(user);
            let image = image_config(&ConfigInput {
                base: Some(&base),
                diff_id: "sha256:ours",
                run: None,
                service: "hello",
                commit: "abc",
                source: None,
            });
            let expected = if kept { user } else { "10001:10001" };
            assert_eq!(image["config"]["User"], expected, "{user}");
            // No run spec: the base's own entrypoint stays.
            assert_eq!(image["config"]["Entrypoint"], json!(["/bin/sh", "-c"]));
        }
    }

    #[test]
    fn without_a_base_the_image_holds_the_service_only() {
        let run = run();
        let image = image_config(&ConfigInput {
            base: None,
            diff_id: "sha256:ours",
            run: Some(&run),
            service: "hello",
            commit: "abc",
            source: None,
        });
        assert_eq!(image["rootfs"]["diff_ids"], json!(["sha256:ours"]));
        assert!(image.get("history").is_none());
        assert!(
            image["config"]["Labels"]
                .get("org.opencontainers.image.base.digest")
                .is_none()
        );
        assert_eq!(image["architecture"], "amd64");
    }
}
