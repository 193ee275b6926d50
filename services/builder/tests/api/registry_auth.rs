//! Pushing to a registry that requires a login: the configured credentials work; wrong ones,
//! or none, fail with the registry's refusal named.

use secrecy::SecretString;
use std::time::Duration;

use slipway_builder::builds::package::{PackageError, RegistrySettings, Target, package_and_push};
use slipway_builder::builds::spec::{BuildSpec, Step};
use slipway_settings::RegistryAuthSettings;
use slipway_testkit::oci::AuthRegistry;
use tokio_util::sync::CancellationToken;

fn settings(address: &str, username: &str, password: &str) -> RegistrySettings {
    RegistrySettings {
        address: address.to_owned(),
        insecure: true,
        repository_prefix: "auth/".into(),
        auth: RegistryAuthSettings {
            username: username.into(),
            password: SecretString::from(password.to_owned()),
            token: SecretString::from(String::new()),
        },
        push_timeout_seconds: 30,
    }
}

fn spec() -> BuildSpec {
    BuildSpec {
        test: Step {
            command: String::new(),
            package: vec![],
        },
        build: Step {
            command: String::new(),
            package: vec!["app".into()],
        },
        run: None,
        image: Default::default(),
    }
}

fn source() -> std::path::PathBuf {
    let source =
        std::env::temp_dir().join(format!("slipway-auth-src-{}", slipway_testkit::unique()));
    std::fs::create_dir_all(&source).unwrap();
    std::fs::write(source.join("app"), "#!/bin/sh\n").unwrap();
    source
}

async fn push(
    source: &std::path::Path,
    registry: &RegistrySettings,
    cancel: &CancellationToken,
) -> Result<slipway_builder::builds::package::Packaged, PackageError> {
    let target = Target {
        service: "hello",
        commit: "abc123",
        tag: "b1",
        registry,
        images: &Default::default(),
        kind: None,
        source: None,
        blob_cache: &std::env::temp_dir(),
    };
    package_and_push(source, &spec(), &target, cancel).await
}

#[tokio::test]
async fn pushes_with_the_configured_login_and_names_a_refusal() {
    let registry = AuthRegistry::start("slipway-builder", "right-password").await;
    let source = source();
    let never = CancellationToken::new();

    for (what, login) in [
        (
            "wrong password",
            settings(&registry.address, "slipway-builder", "wrong-password"),
        ),
        ("no login", settings(&registry.address, "", "")),
    ] {
        let err = push(&source, &login, &never).await.unwrap_err();
        let PackageError::Push { reason, .. } = &err else {
            panic!("{what}: expected a push error, got {err}");
        };
        let lower = reason.to_lowercase();
        assert!(
            lower.contains("authoriz") || lower.contains("authenticat"),
            "{what}: the reason should say the registry refused: {reason}"
        );
        assert!(!err.to_string().contains("wrong-password"), "{what}: {err}");
    }

    let login = settings(&registry.address, "slipway-builder", "right-password");
    let packaged = push(&source, &login, &never).await.unwrap();
    assert!(
        packaged
            .image
            .starts_with(&format!("{}/auth/hello@sha256:", registry.address)),
        "{}",
        packaged.image
    );
    let _ = std::fs::remove_dir_all(&source);
}

/// A registry that accepts connections and never answers: the push ends at its deadline, or
/// at once when the build is cancelled, instead of hanging the build.
#[tokio::test]
async fn a_hanging_registry_times_out_and_a_cancel_stops_the_push() {
    let (address, held) = crate::helpers::hanging_server().await;
    let source = source();
    let mut hanging = settings(&address, "", "");
    hanging.push_timeout_seconds = 2;

    let started = std::time::Instant::now();
    let err = push(&source, &hanging, &CancellationToken::new())
        .await
        .unwrap_err();
    assert!(
        matches!(err, PackageError::PushTimedOut { seconds: 2, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("within 2s"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));

    hanging.push_timeout_seconds = 600;
    let cancel = CancellationToken::new();
    let stopper = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        stopper.cancel();
    });
    let started = std::time::Instant::now();
    let err = push(&source, &hanging, &cancel).await.unwrap_err();
    assert!(matches!(err, PackageError::Cancelled), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        !held.lock().await.is_empty(),
        "the push did reach the registry"
    );
    let _ = std::fs::remove_dir_all(&source);
}
