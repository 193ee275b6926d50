//! What to do with a service's source: its `slipway.toml`, or defaults for the project kinds
//! slipway recognises (Cargo, Go, Node, Python, Maven) when there is none.

use std::path::Path;

use serde::Deserialize;

/// The build recipe of one service.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct BuildSpec {
    /// The gate: must exit 0 before anything is built.
    pub test: Step,
    pub build: Step,
    pub run: Option<RunSpec>,
}

/// One shell command, run in the checked-out source.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Step {
    /// Run with `sh -c`; empty means "nothing to do".
    #[serde(default)]
    pub command: String,
    /// What the build step leaves to be packaged (paths relative to the source).
    #[serde(default)]
    pub package: Vec<String>,
}

/// How instances are started (used by packaging, the registry's releases and the deployer).
pub use slipway_events::slipway::RunSpec;

/// Why no recipe could be found.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("slipway.toml is invalid: {0}")]
    Invalid(String),
    #[error(
        "no slipway.toml and no recognised project (Cargo.toml, go.mod, package.json, \
         pyproject.toml/requirements.txt, pom.xml): add a slipway.toml"
    )]
    Unknown,
}

impl BuildSpec {
    /// Reads `slipway.toml` in `source`, or detects the project kind.
    pub fn load(source: &Path) -> Result<(Self, &'static str), SpecError> {
        let file = source.join("slipway.toml");
        if file.exists() {
            let text =
                std::fs::read_to_string(&file).map_err(|e| SpecError::Invalid(e.to_string()))?;
            let spec: BuildSpec =
                toml::from_str(&text).map_err(|e| SpecError::Invalid(e.to_string()))?;
            return Ok((spec, "slipway.toml"));
        }
        Self::detect(source).ok_or(SpecError::Unknown)
    }

    fn simple(test: &str, build: &str, package: &[&str]) -> Self {
        Self {
            test: Step {
                command: test.into(),
                package: Vec::new(),
            },
            build: Step {
                command: build.into(),
                package: package.iter().map(|p| p.to_string()).collect(),
            },
            run: None,
        }
    }

    fn detect(source: &Path) -> Option<(Self, &'static str)> {
        let has = |f: &str| source.join(f).exists();
        if has("Cargo.toml") {
            return Some((
                Self::simple(
                    "cargo test --locked",
                    "cargo build --release --locked",
                    &["target/release"],
                ),
                "cargo",
            ));
        }
        if has("go.mod") {
            return Some((
                Self::simple("go test ./...", "go build -o app .", &["app"]),
                "go",
            ));
        }
        if has("package.json") {
            return Some((
                Self::simple("npm ci && npm test", "npm run build --if-present", &["."]),
                "node",
            ));
        }
        if has("pom.xml") {
            return Some((
                Self::simple("mvn -B test", "mvn -B -DskipTests package", &["target"]),
                "maven",
            ));
        }
        if has("pyproject.toml") || has("requirements.txt") {
            return Some((
                Self::simple("python3 -m unittest discover", "", &["."]),
                "python",
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(files: &[(&str, &str)]) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("slipway-spec-{}", uuid_like()));
        std::fs::create_dir_all(&dir).unwrap();
        for (name, text) in files {
            std::fs::write(dir.join(name), text).unwrap();
        }
        dir
    }

    fn uuid_like() -> String {
        format!("{}-{:?}", std::process::id(), std::time::Instant::now())
            .replace(|c: char| !c.is_ascii_alphanumeric(), "")
    }

    #[test]
    fn slipway_toml_wins() {
        let dir = dir_with(&[
            ("Cargo.toml", "[package]"),
            (
                "slipway.toml",
                "[test]\ncommand = \"make check\"\n[build]\ncommand = \"make\"\npackage = [\"out\"]\n[run]\ncommand = [\"./out/app\"]\n",
            ),
        ]);
        let (spec, from) = BuildSpec::load(&dir).unwrap();
        assert_eq!(from, "slipway.toml");
        assert_eq!(spec.test.command, "make check");
        assert_eq!(spec.build.package, ["out"]);
        let run = spec.run.unwrap();
        assert_eq!(run.port_env, "PORT");
        assert_eq!(run.health_path, "/healthz");
    }

    #[test]
    fn project_kinds_are_detected() {
        for (file, kind) in [
            ("Cargo.toml", "cargo"),
            ("go.mod", "go"),
            ("package.json", "node"),
            ("pom.xml", "maven"),
            ("requirements.txt", "python"),
        ] {
            let (_, detected) = BuildSpec::load(&dir_with(&[(file, "")])).unwrap();
            assert_eq!(detected, kind);
        }
        assert!(matches!(
            BuildSpec::load(&dir_with(&[("README", "")])),
            Err(SpecError::Unknown)
        ));
    }

    #[test]
    fn a_broken_file_says_what_is_wrong() {
        let err = BuildSpec::load(&dir_with(&[("slipway.toml", "[test\ncommand=")])).unwrap_err();
        assert!(err.to_string().contains("slipway.toml is invalid"), "{err}");
    }
}
