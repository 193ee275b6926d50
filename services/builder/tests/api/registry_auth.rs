//! Pushing to a registry that requires a login: the configured credentials work; wrong ones,
//! or none, fail with the registry's refusal named.

use secrecy::SecretString;
use slipway_builder::builds::package::{PackageError, RegistrySettings, package_and_push};
use slipway_builder::builds::spec::{BuildSpec, Step};
use slipway_settings::RegistryAuthSettings;
use slipway_testkit::oci::AuthRegistry;

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
    }
}

#[tokio::test]
async fn pushes_with_the_configured_login_and_names_a_refusal() {
    let registry = AuthRegistry::start("slipway-builder", "right-password").await;
    let source =
        std::env::temp_dir().join(format!("slipway-auth-src-{}", slipway_testkit::unique()));
    std::fs::create_dir_all(&source).unwrap();
    std::fs::write(source.join("app"), "#!/bin/sh\n").unwrap();
    let spec = BuildSpec {
        test: Step {
            command: String::new(),
            package: vec![],
        },
        build: Step {
            command: String::new(),
            package: vec!["app".into()],
        },
        run: None,
    };
    let push = |registry: RegistrySettings| {
        let (source, spec) = (source.clone(), spec.clone());
        async move { package_and_push(&source, &spec, "hello", "abc123", "b1", &registry).await }
    };

    for (what, login) in [
        (
            "wrong password",
            settings(&registry.address, "slipway-builder", "wrong-password"),
        ),
        ("no login", settings(&registry.address, "", "")),
    ] {
        let err = push(login).await.unwrap_err();
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

    let packaged = push(settings(
        &registry.address,
        "slipway-builder",
        "right-password",
    ))
    .await
    .unwrap();
    assert!(
        packaged
            .image
            .starts_with(&format!("{}/auth/hello@sha256:", registry.address)),
        "{}",
        packaged.image
    );
    let _ = std::fs::remove_dir_all(&source);
}
