//! What to do with a service's source: its `slipway.toml`, or defaults for the project kinds
//! slipway recognises (Cargo, Go, Node, Python, Maven) when there is none. A repository with a
//! `Dockerfile` and no slipway.toml is built from it (kind `dockerfile`, see `super::dockerfile`).

use std::path::Path;

use serde::Deserialize;

/// The build recipe of one service.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct BuildSpec {
    /// The gate: must exit 0 before anything is built. Optional in slipway.toml (a Dockerfile
    /// build may need nothing but `[image]`): absent, there is no command.
    #[serde(default)]
    pub test: Step,
    #[serde(default)]
    pub build: Step,
    pub run: Option<RunSpec>,
    /// How the image is made (its base); absent: the builder's defaults.
    #[serde(default)]
    pub image: ImageSection,
}

/// `[image]` of slipway.toml: how the image is made.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageSection {
    /// The base image (`host[:port]/repo@sha256:<hex>` or a tag, resolved to a digest once).
    #[serde(default)]
    pub base: Option<String>,
    /// Build from this Dockerfile (relative to the source) instead of the build step + packaging.
    #[serde(default)]
    pub dockerfile: Option<String>,
    /// The Dockerfile's build context (relative to the source; default ".").
    #[serde(default)]
    pub context: Option<String>,
}

/// One shell command, run in the checked-out source.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Step {
    /// Run with `sh -c`; empty means "nothing to do".
    #[serde(default)]
    pub command: String,
    /// What the build step leaves to be packaged (paths relative to the source).
    #[serde(default)]
    pub package: Vec<String>,
}

use slipway_events::slipway::Command;
/// How instances are started (used by packaging, the registry's releases and the deployer).
pub use slipway_events::slipway::RunSpec;

/// Why no recipe could be found.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("slipway.toml is invalid: {0}")]
    Invalid(String),
    #[error(
        "no slipway.toml and no recognised project (Cargo.toml, go.mod, package.json, \
         pyproject.toml/requirements.txt, pom.xml, Dockerfile): add a slipway.toml"
    )]
    Unknown,
}

impl BuildSpec {
    /// Reads `slipway.toml` in `source`, or detects the project kind.
    pub fn load(source: &Path) -> Result<(Self, &'static str), SpecError> {
        let file = source.join("slipway.toml");
        if file.symlink_metadata().is_ok() {
            let text = read_regular(&file).map_err(|e| SpecError::Invalid(e.to_string()))?;
            let spec: BuildSpec =
                toml::from_str(&text).map_err(|e| SpecError::Invalid(e.to_string()))?;
            return Ok((spec, "slipway.toml"));
        }
        Self::detect(source).ok_or(SpecError::Unknown)
    }

    /// Cargo: the tests, then a release build; with a `Cargo.lock`, exactly its versions. One
    /// binary is packaged alone and is the run command; otherwise all of `target/release`.
    fn cargo(source: &Path) -> Self {
        let locked = if source.join("Cargo.lock").exists() {
            " --locked"
        } else {
            ""
        };
        let bin = cargo_binary(source);
        let package = match &bin {
            Some(bin) => format!("target/release/{bin}"),
            None => "target/release".to_owned(),
        };
        let mut spec = Self::simple(
            &format!("cargo test{locked}"),
            &format!("cargo build --release{locked}"),
            &[&package],
        );
        spec.run = bin.and_then(|bin| {
            // A Cargo binary name is a valid command word; should one ever not be, the
            // release simply has no run spec rather than a bad one.
            Some(RunSpec {
                command: Command::new(vec![format!("./target/release/{bin}")]).ok()?,
                port_env: "PORT".parse().ok()?,
                health_path: "/healthz".parse().ok()?,
            })
        });
        spec
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
            image: ImageSection::default(),
        }
    }

    /// Reads the source's recipe like [`Self::load`], but a `Dockerfile` beside no slipway.toml
    /// wins over the other kinds: the team said how its image is made. The gate stays the
    /// detected kind's test (if any); `super::dockerfile` prefers the Dockerfile's own `test`
    /// stage when it has one. Nothing is built or packaged outside the Dockerfile, and the run
    /// command comes from its CMD.
    fn dockerfile(source: &Path) -> Option<(Self, &'static str)> {
        if source.join("Dockerfile").symlink_metadata().is_err() {
            return None;
        }
        let test = Self::detect_kind(source).map(|(spec, _)| spec.test.command);
        let mut spec = Self::simple(&test.unwrap_or_default(), "", &[]);
        spec.image.dockerfile = Some("Dockerfile".into());
        Some((spec, "dockerfile"))
    }

    /// The project kind detected in `source` (`cargo`, `go`, `node`, `maven`, `python`), with
    /// or without a slipway.toml: it picks the builder's base image for that language.
    pub fn kind(source: &Path) -> Option<&'static str> {
        Self::detect(source).map(|(_, kind)| kind)
    }

    fn detect(source: &Path) -> Option<(Self, &'static str)> {
        Self::dockerfile(source).or_else(|| Self::detect_kind(source))
    }

    fn detect_kind(source: &Path) -> Option<(Self, &'static str)> {
        let has = |f: &str| source.join(f).exists();
        if has("Cargo.toml") {
            return Some((Self::cargo(source), "cargo"));
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

/// The text of a regular file of the checkout. A symlink is refused: the checkout is the
/// team's, and the builder must not be made to read (and quote in an error) a file of its own.
fn read_regular(path: &Path) -> std::io::Result<String> {
    let meta = path.symlink_metadata()?;
    if !meta.is_file() || meta.len() > 1024 * 1024 {
        return Err(std::io::Error::other(format!(
            "{} must be a regular file of at most 1 MiB (not a link)",
            path.file_name().unwrap_or_default().to_string_lossy()
        )));
    }
    std::fs::read_to_string(path)
}

/// The one binary a Cargo package builds: its single `[[bin]]`, or the package itself when it
/// has `src/main.rs`. `None` for a workspace, a library or several binaries.
fn cargo_binary(source: &Path) -> Option<String> {
    let text = read_regular(&source.join("Cargo.toml")).ok()?;
    let manifest: toml::Table = toml::from_str(&text).ok()?;
    let bins = manifest.get("bin").and_then(|b| b.as_array());
    let name = match bins {
        Some(bins) if bins.len() == 1 => bins[0].get("name")?.as_str()?,
        Some(_) => return None,
        None if source.join("src/main.rs").is_file() => {
            manifest.get("package")?.get("name")?.as_str()?
        }
        None => return None,
    };
    // It becomes a path in the image and the run command.
    let plain = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
    plain.then(|| name.to_owned())
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
        assert_eq!(spec.image, ImageSection::default(), "no [image]: defaults");
    }

    #[test]
    fn the_image_section_is_read_and_strict() {
        let base = "127.0.0.1:5000/base@sha256:".to_owned() + &"a".repeat(64);
        let text = format!("[test]\n[build]\n[image]\nbase = \"{base}\"\n");
        let (spec, _) = BuildSpec::load(&dir_with(&[("slipway.toml", &text)])).unwrap();
        assert_eq!(spec.image.base.as_deref(), Some(base.as_str()));
        assert_eq!(spec.image.dockerfile, None);
        let err = BuildSpec::load(&dir_with(&[(
            "slipway.toml",
            "[test]\n[build]\n[image]\nbsae = \"x\"\n",
        )]))
        .unwrap_err();
        assert!(err.to_string().contains("bsae"), "{err}");
        let kind = BuildSpec::kind(&dir_with(&[("slipway.toml", ""), ("requirements.txt", "")]));
        assert_eq!(
            kind,
            Some("python"),
            "the kind is detected beside a slipway.toml"
        );
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
    fn a_cargo_binary_is_tested_built_packaged_and_run() {
        let dir = dir_with(&[(
            "Cargo.toml",
            "[package]\nname = \"hello-rs\"\nversion = \"0.1.0\"\nedition = \"2021\"\n",
        )]);
        std::fs::create_dir_all(dir.join("src")).unwrap();
        std::fs::write(dir.join("src/main.rs"), "fn main() {}").unwrap();
        let (spec, _) = BuildSpec::load(&dir).unwrap();
        assert_eq!(
            spec.test.command, "cargo test",
            "no Cargo.lock: not --locked"
        );
        assert_eq!(spec.build.command, "cargo build --release");
        assert_eq!(spec.build.package, ["target/release/hello-rs"]);
        assert_eq!(*spec.run.unwrap().command, ["./target/release/hello-rs"]);
        std::fs::write(dir.join("Cargo.lock"), "").unwrap();
        let (spec, _) = BuildSpec::load(&dir).unwrap();
        assert_eq!(spec.test.command, "cargo test --locked");
        // A library (or a workspace) packages the whole release dir and has no run command.
        let lib = dir_with(&[("Cargo.toml", "[package]\nname = \"x\"\n")]);
        let (spec, _) = BuildSpec::load(&lib).unwrap();
        assert_eq!(spec.build.package, ["target/release"]);
        assert!(spec.run.is_none());
    }

    #[test]
    fn a_dockerfile_is_built_from_unless_slipway_toml_says_otherwise() {
        let (spec, kind) = BuildSpec::load(&dir_with(&[("Dockerfile", "FROM x")])).unwrap();
        assert_eq!(kind, "dockerfile");
        assert_eq!(spec.image.dockerfile.as_deref(), Some("Dockerfile"));
        assert_eq!(spec.test.command, "", "a lone Dockerfile has no host gate");
        assert!(spec.build.command.is_empty() && spec.build.package.is_empty());
        // Beside another kind: that kind's test stays the gate, nothing else of it.
        let (spec, kind) =
            BuildSpec::load(&dir_with(&[("Dockerfile", ""), ("go.mod", "")])).unwrap();
        assert_eq!(kind, "dockerfile");
        assert_eq!(spec.test.command, "go test ./...");
        assert!(spec.build.command.is_empty());
        // slipway.toml decides: no [image] dockerfile, no Dockerfile build.
        let (spec, _) = BuildSpec::load(&dir_with(&[
            ("Dockerfile", ""),
            ("slipway.toml", "[test]\ncommand = \"true\"\n"),
        ]))
        .unwrap();
        assert_eq!(spec.image.dockerfile, None);
        // [image] alone is a whole recipe.
        let (spec, _) = BuildSpec::load(&dir_with(&[(
            "slipway.toml",
            "[image]\ndockerfile = \"docker/Dockerfile\"\ncontext = \"app\"\n",
        )]))
        .unwrap();
        assert_eq!(spec.image.dockerfile.as_deref(), Some("docker/Dockerfile"));
        assert_eq!(spec.image.context.as_deref(), Some("app"));
        assert_eq!(spec.test, Step::default());
        let err =
            BuildSpec::load(&dir_with(&[("slipway.toml", "[image]\nfile = \"x\"\n")])).unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
    }

    #[test]
    fn a_recipe_that_is_a_link_is_refused() {
        let secret = dir_with(&[("secret", "[test]\ncommand = \"do-not-quote-me\"\n")]);
        let dir = dir_with(&[]);
        std::os::unix::fs::symlink(secret.join("secret"), dir.join("slipway.toml")).unwrap();
        let err = BuildSpec::load(&dir).unwrap_err();
        assert!(err.to_string().contains("not a link"), "{err}");
        assert!(!err.to_string().contains("do-not-quote-me"), "{err}");
    }

    #[test]
    fn a_broken_file_says_what_is_wrong() {
        let err = BuildSpec::load(&dir_with(&[("slipway.toml", "[test\ncommand=")])).unwrap_err();
        assert!(err.to_string().contains("slipway.toml is invalid"), "{err}");
    }
}
