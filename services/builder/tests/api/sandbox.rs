//! Builds run in a sandbox: their own environment (nothing of the builder's), a directory
//! outside any checkout, and, when the builder is root, an unprivileged uid.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use slipway_builder::builds::sandbox::project_above;
use slipway_testkit::git::{Repo, example_dir};

use crate::helpers::{BUILD_UID, spawn_app};

/// The lines of `logs` after the `marker` line the command printed.
fn section<'a>(logs: &'a str, marker: &str) -> Vec<&'a str> {
    logs.lines()
        .skip_while(|l| *l != marker)
        .skip(1)
        .take_while(|l| !l.starts_with("--"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_build_command_sees_none_of_the_builders_environment_and_runs_outside_the_checkout() {
    let app = spawn_app().await;
    let repo = Repo::from_dir(&example_dir("hello-python"));
    let commit = repo.change(
        "slipway.toml",
        "[test]\ncommand = \"echo --env; env; echo --where; pwd; echo --end\"\n[build]\ncommand = \"\"\n",
    );
    let id = app.request(&repo.url, Some(&commit)).await;
    let build = app.wait_finished(id).await;
    assert_eq!(build["status"], "succeeded", "{build}");
    let logs = app.log_text(id).await;

    let env = section(&logs, "--env");
    let names: Vec<&str> = env
        .iter()
        .filter_map(|l| l.split_once('='))
        .map(|(k, _)| k)
        .collect();
    // The builder (this test process) holds the database URL, the broker and cargo's variables.
    let secret = std::env::var("SLIPWAY_TEST_DATABASE_URL").unwrap();
    assert!(
        !logs.contains(&secret),
        "the builder's database URL reached the build"
    );
    let allowed = [
        "PATH",
        "HOME",
        "TMPDIR",
        "LANG",
        "LC_ALL",
        "CARGO_HOME",
        "GIT_CONFIG_NOSYSTEM",
        "GIT_CONFIG_GLOBAL",
        "GIT_TERMINAL_PROMPT",
        "SLIPWAY_BUILD_ID",
        "SLIPWAY_COMMIT",
        "SLIPWAY_CACHE_DIR",
        "PWD",
        "SHLVL",
        "_",
        "OLDPWD",
    ];
    for name in &names {
        assert!(
            allowed.contains(name),
            "`{name}` is not on the allowlist: {env:?}"
        );
    }
    for (name, _) in std::env::vars() {
        if !allowed.contains(&name.as_str()) {
            assert!(
                !names.contains(&name.as_str()),
                "the builder's {name} reached the build"
            );
        }
    }
    assert!(
        env.contains(&"PATH=/usr/local/bin:/usr/bin:/bin"),
        "{env:?}"
    );
    assert!(
        env.contains(&format!("SLIPWAY_COMMIT={commit}").as_str()),
        "{env:?}"
    );

    let cwd = section(&logs, "--where")[0];
    assert!(
        project_above(Path::new(cwd)).is_none(),
        "a project file above {cwd}"
    );
    let checkout = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap();
    assert!(
        !Path::new(cwd).starts_with(&checkout),
        "{cwd} is inside the checkout"
    );
    let home = env.iter().find_map(|l| l.strip_prefix("HOME=")).unwrap();
    assert!(
        Path::new(home).parent() == Path::new(cwd).parent(),
        "HOME {home} is the build's own, beside {cwd}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn as_root_a_build_runs_as_the_build_user_and_cannot_read_root_files() {
    let app = spawn_app().await;
    // A file only root may read, as the builder's own secrets are.
    let private =
        std::env::temp_dir().join(format!("slipway-private-{}", slipway_testkit::unique()));
    std::fs::write(&private, "root-only-s3cret\n").unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600)).unwrap();
    let repo = Repo::from_dir(&example_dir("hello-python"));
    let command = format!(
        // cat's complaint goes to stdout too: stdout and stderr are separate pipes, read
        // side by side, so a line on stderr may land anywhere among the sections.
        "echo --who; id -u; id -G; stat -c %u .; echo --read; cat {} 2>&1 || echo refused; echo --end",
        private.display()
    );
    let commit = repo.change(
        "slipway.toml",
        &format!("[test]\ncommand = \"{command}\"\n[build]\ncommand = \"\"\n"),
    );
    let id = app.request(&repo.url, Some(&commit)).await;
    let build = app.wait_finished(id).await;
    assert_eq!(build["status"], "succeeded", "{build}");
    let logs = app.log_text(id).await;
    let who = section(&logs, "--who");

    let root = nix::unistd::geteuid().is_root();
    let expected = if root {
        BUILD_UID
    } else {
        // Not root: builds run as the builder's own user (the builder warns at start-up).
        nix::unistd::geteuid().as_raw()
    };
    assert_eq!(who[0], expected.to_string(), "uid: {who:?}");
    assert_eq!(
        who[2],
        expected.to_string(),
        "the checkout belongs to it: {who:?}"
    );
    if root {
        assert_eq!(who[1], BUILD_UID.to_string(), "only its own group: {who:?}");
        assert!(!logs.contains("root-only-s3cret"), "{logs}");
        assert!(logs.lines().any(|l| l == "refused"), "{logs}");
    } else {
        assert!(
            logs.contains("root-only-s3cret"),
            "the builder's user reads its own file"
        );
    }
}
