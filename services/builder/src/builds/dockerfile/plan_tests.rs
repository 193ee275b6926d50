//! The plan (paths kept inside the source, the test gate, the run spec) against real files.

use super::*;
use crate::builds::spec::ImageSection;

fn source(files: &[(&str, &str)]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "slipway-dockerfile-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4()
    ));
    for (name, text) in files {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn spec(dockerfile: &str, context: Option<&str>, test: &str) -> BuildSpec {
    BuildSpec {
        test: crate::builds::spec::Step {
            command: test.into(),
            package: vec![],
        },
        build: Default::default(),
        run: None,
        image: ImageSection {
            base: None,
            dockerfile: Some(dockerfile.into()),
            context: context.map(str::to_owned),
        },
    }
}

#[test]
fn paths_must_stay_inside_the_source() {
    let dir = source(&[("Dockerfile", "FROM x"), ("app/a.py", "")]);
    let plan = Plan::of(&dir, &spec("Dockerfile", Some("app"), ""), "slipway.toml")
        .unwrap()
        .unwrap();
    assert!(
        plan.dockerfile_in_context().is_none(),
        "outside the context"
    );
    for bad in ["../Dockerfile", "/etc/passwd", "a/../../x", ""] {
        let err = Plan::of(&dir, &spec(bad, None, ""), "slipway.toml").unwrap_err();
        assert!(matches!(err, PlanError::Outside { .. }), "{bad}: {err}");
        assert!(err.to_string().contains("inside the source"), "{err}");
    }
    let err = Plan::of(&dir, &spec("Dockerfile", Some("../.."), ""), "x").unwrap_err();
    assert!(matches!(
        err,
        PlanError::Outside {
            field: "context",
            ..
        }
    ));
    let outside = source(&[("Dockerfile", "FROM secret")]);
    std::os::unix::fs::symlink(outside.join("Dockerfile"), dir.join("linked")).unwrap();
    let err = Plan::of(&dir, &spec("linked", None, ""), "x").unwrap_err();
    assert!(matches!(err, PlanError::Outside { .. }), "{err}");
    let err = Plan::of(&dir, &spec("nope", None, ""), "x").unwrap_err();
    assert!(matches!(err, PlanError::Missing { .. }), "{err}");
    let err = Plan::of(&dir, &spec("app", None, ""), "x").unwrap_err();
    assert!(matches!(err, PlanError::Kind { .. }), "{err}");
}

#[test]
fn the_gate_is_the_test_stage_unless_slipway_toml_names_a_command() {
    let text = "FROM base AS build\nRUN make\nfrom build as TEST\nRUN make check\nFROM build\n";
    let dir = source(&[("Dockerfile", text)]);
    let plan = |test: &str, from: &str| {
        Plan::of(&dir, &spec("Dockerfile", None, test), from)
            .unwrap()
            .unwrap()
            .test_stage
    };
    assert!(plan("", "slipway.toml"));
    assert!(!plan("make test", "slipway.toml"));
    assert!(
        plan("go test ./...", "dockerfile"),
        "a detected default yields"
    );
    let plain = source(&[("Dockerfile", "FROM x AS builder\nFROM x\n")]);
    let p = Plan::of(&plain, &spec("Dockerfile", None, ""), "dockerfile").unwrap();
    assert!(!p.unwrap().test_stage);
}

#[test]
fn the_run_spec_comes_from_slipway_toml_or_the_image() {
    let image = push::ImageConfig {
        entrypoint: vec!["python3".into()],
        cmd: vec!["app.py".into()],
        ..Default::default()
    };
    let mut s = spec("Dockerfile", None, "");
    let run = run_spec(&s, &image).unwrap();
    assert_eq!(*run.command, ["python3", "app.py"]);
    assert_eq!(run.port_env, "PORT");
    assert_eq!(run.health_path, "/healthz");
    assert!(run_spec(&s, &push::ImageConfig::default()).is_none());
    s.run = toml::from_str::<BuildSpec>("[run]\ncommand = [\"./srv\"]\n")
        .unwrap()
        .run;
    assert_eq!(*run_spec(&s, &image).unwrap().command, ["./srv"]);
}
