//! The process target pulls from a registry that requires a login: with the configured
//! credentials the release is pulled and started; with wrong ones, or none, the start fails
//! and says the registry refused.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test reports failure

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use flate2::Compression;
use flate2::write::GzEncoder;
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::OciImageManifest;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use secrecy::SecretString;
use slipway_deployer::target::process::{ProcessSettings, ProcessTarget, Users, scope_instances};
use slipway_deployer::target::{InstanceSpec, Target, TargetError};
use slipway_events::slipway::{Command, RunSpec};
use slipway_ids::ServiceId;
use slipway_settings::RegistryAuthSettings;
use slipway_testkit::oci::AuthRegistry;
use tokio::sync::mpsc::unbounded_channel;
use uuid::Uuid;

const USER: &str = "slipway-deployer";
const PASSWORD: &str = "right-password";

/// Pushes a one-file image with the right login; answers the pinned reference.
async fn push(registry: &str) -> String {
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(3);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "app/ok", &b"ok\n"[..])
        .unwrap();
    let raw = tar.into_inner().unwrap();
    let diff_id = format!(
        "sha256:{}",
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&raw))
    );
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(&raw).unwrap();
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "WorkingDir": "/app" },
        "rootfs": { "type": "layers", "diff_ids": [diff_id] },
    });
    let config = Config::oci_v1(serde_json::to_vec(&config).unwrap(), None);
    let layers = vec![ImageLayer::oci_v1_gzip(gz.finish().unwrap(), None)];
    let manifest = OciImageManifest::build(&layers, &config, None);
    let reference: Reference = format!("{registry}/test/auth:v1").parse().unwrap();
    let client = Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..Default::default()
    });
    let auth = RegistryAuth::Basic(USER.into(), PASSWORD.into());
    client
        .push(&reference, &layers, config, &auth, Some(manifest))
        .await
        .unwrap();
    let digest = client
        .fetch_manifest_digest(&reference, &auth)
        .await
        .unwrap();
    format!("{registry}/test/auth@{digest}")
}

fn spec(image: &str) -> InstanceSpec {
    InstanceSpec {
        instance_id: Uuid::new_v4(),
        service_id: ServiceId::new(),
        service_name: "authtest".into(),
        environment: "staging".into(),
        release: 1,
        config_version: 1,
        image: image.into(),
        run: Some(RunSpec {
            command: Command::new(vec!["sleep".into(), "30".into()]).unwrap(),
            port_env: "PORT".parse().unwrap(),
            health_path: "/".parse().unwrap(),
        }),
        env: BTreeMap::new(),
    }
}

fn login(username: &str, password: &str) -> RegistryAuthSettings {
    RegistryAuthSettings {
        username: username.into(),
        password: SecretString::from(password.to_owned()),
        token: SecretString::from(String::new()),
    }
}

/// A target with `auth` in a fresh workdir; the workdir is removed, and whatever runs in it
/// killed, when the guard drops.
fn target(auth: RegistryAuthSettings) -> (ProcessTarget, Guard) {
    let dir = std::env::temp_dir().join(format!("slipway-auth-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut settings = ProcessSettings::new(dir.canonicalize().unwrap());
    settings.registry_auth = auth;
    let (tx, rx) = unbounded_channel();
    let target = ProcessTarget::new(settings, tx, Users::Shared).unwrap();
    let guard = Guard(target.scope().to_owned(), rx);
    (target, guard)
}

/// The workdir, and the target's events (not under test, kept so the channel stays open).
struct Guard(
    std::path::PathBuf,
    #[allow(dead_code)] tokio::sync::mpsc::UnboundedReceiver<slipway_deployer::target::TargetEvent>,
);

impl Drop for Guard {
    fn drop(&mut self) {
        for (_, run) in scope_instances(&self.0) {
            for pid in run.members() {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[tokio::test]
async fn pulls_with_the_configured_login_and_names_a_refusal() {
    let registry = AuthRegistry::start(USER, PASSWORD).await;
    let image = push(&registry.address).await;

    for (what, auth) in [
        ("wrong password", login(USER, "wrong-password")),
        ("no login", RegistryAuthSettings::default()),
    ] {
        let (target, _guard) = target(auth);
        let err = target.start(spec(&image)).await.unwrap_err();
        let TargetError::Artifact { reason, .. } = &err else {
            panic!("{what}: expected an artifact error, got {err}");
        };
        let lower = reason.to_lowercase();
        assert!(
            lower.contains("authoriz") || lower.contains("authenticat"),
            "{what}: the reason should say the registry refused: {reason}"
        );
        assert!(!reason.contains("wrong-password"), "{what}: {reason}");
        assert_eq!(target.pulls(), 1);
    }

    let (target, guard) = target(login(USER, PASSWORD));
    let instance = spec(&image);
    let id = instance.instance_id;
    target.start(instance).await.unwrap();
    assert!(
        guard
            .0
            .join("releases")
            .join("authtest")
            .read_dir()
            .unwrap()
            .count()
            == 1,
        "the release was pulled and unpacked"
    );
    target.stop(id, Duration::from_secs(5)).await.unwrap();
}
