//! Values that come from users (deploy requests, `slipway.toml`) and end up steering the
//! platform: the path health checks probe, the command an instance runs, environment variable
//! names. Each is a type that only holds a valid value; serde parses them (`try_from`), so every
//! service that reads one (the gateway, the builder, the registry, the deployer, the monitor)
//! refuses the same inputs with the same words. On the wire they stay plain strings and arrays.

use std::fmt;
use std::ops::Deref;

use serde::{Deserialize, Deserializer, Serialize};

/// Longest probe path, query included.
pub const MAX_PROBE_PATH: usize = 1024;

/// An HTTP path (with an optional query) that a probe appends to an instance's own address:
/// starts with a single `/`, and holds nothing that could name another host or be read
/// differently by another parser (no `//` prefix, no `@`, `#` or `\`, no whitespace, control or
/// non-ASCII characters), at most [`MAX_PROBE_PATH`] bytes.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ProbePath(String);

/// Why a probe path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidInput(pub String);

impl ProbePath {
    /// Parses `raw`; the error says what is wrong, for people.
    pub fn parse(raw: &str) -> Result<Self, InvalidInput> {
        let bad = |why: &str| Err(InvalidInput(format!("`{}`: {why}", shorten(raw))));
        if raw.is_empty() {
            return bad("must be an absolute path such as `/healthz`");
        }
        if raw.len() > MAX_PROBE_PATH {
            return bad(&format!("must be at most {MAX_PROBE_PATH} bytes"));
        }
        if !raw.starts_with('/') {
            return bad("must start with `/` (a path on the instance, not a URL)");
        }
        if raw.starts_with("//") {
            return bad("must not start with `//` (that names a host)");
        }
        if let Some(c) = raw
            .chars()
            .find(|c| !c.is_ascii_graphic() || matches!(c, '@' | '#' | '\\'))
        {
            return bad(&format!(
                "must not contain {}",
                match c {
                    '@' | '#' | '\\' => format!("`{c}`"),
                    c if c.is_whitespace() => "whitespace".to_owned(),
                    c if c.is_control() => "control characters".to_owned(),
                    _ => "non-ASCII characters (percent-encode them)".to_owned(),
                }
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The path part (before `?`).
    pub fn path(&self) -> &str {
        self.0.split_once('?').map_or(&self.0, |(path, _)| path)
    }

    /// The query (after the first `?`), if any.
    pub fn query(&self) -> Option<&str> {
        self.0.split_once('?').map(|(_, query)| query)
    }

    /// Deserialises a probe path whose errors name `field` (serde alone would not say which
    /// field a refused string was in).
    pub(crate) fn named<'de, D: Deserializer<'de>>(
        field: &'static str,
        deserializer: D,
    ) -> Result<Self, D::Error> {
        let raw = String::deserialize(deserializer)?;
        Self::parse(&raw).map_err(|e| serde::de::Error::custom(format!("{field}: {e}")))
    }
}

/// The default health path.
impl Default for ProbePath {
    fn default() -> Self {
        Self("/healthz".to_owned())
    }
}

/// Longest environment variable name.
pub const MAX_ENV_NAME: usize = 128;

/// An environment variable name as shells accept it: `[A-Za-z_][A-Za-z0-9_]*`, at most
/// [`MAX_ENV_NAME`] bytes.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EnvName(String);

impl EnvName {
    pub fn parse(raw: &str) -> Result<Self, InvalidInput> {
        let bad = |why: &str| Err(InvalidInput(format!("`{}`: {why}", shorten(raw))));
        let mut chars = raw.chars();
        match chars.next() {
            None => return bad("must not be empty"),
            Some(c) if !(c.is_ascii_alphabetic() || c == '_') => {
                return bad("must start with a letter or `_`");
            }
            Some(_) => {}
        }
        if !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return bad("may hold only letters, digits and `_`");
        }
        if raw.len() > MAX_ENV_NAME {
            return bad(&format!("must be at most {MAX_ENV_NAME} bytes"));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Most arguments a run command may have, and the longest one.
pub const MAX_COMMAND_ARGS: usize = 256;
pub const MAX_COMMAND_ARG: usize = 4096;

/// A program and its arguments: at least the program, which is not empty; no NUL byte
/// anywhere (it cannot be passed to `exec`); bounded in count and length.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Vec<String>", into = "Vec<String>")]
pub struct Command(Vec<String>);

impl Command {
    pub fn new(args: Vec<String>) -> Result<Self, InvalidInput> {
        let bad = |why: String| Err(InvalidInput(why));
        match args.first() {
            None => return bad("must name a program (an empty command runs nothing)".into()),
            Some(program) if program.trim().is_empty() => {
                return bad("the program (first element) must not be empty".into());
            }
            Some(_) => {}
        }
        if args.len() > MAX_COMMAND_ARGS {
            return bad(format!("must have at most {MAX_COMMAND_ARGS} elements"));
        }
        for (i, arg) in args.iter().enumerate() {
            if arg.len() > MAX_COMMAND_ARG {
                return bad(format!(
                    "element {i} must be at most {MAX_COMMAND_ARG} bytes"
                ));
            }
            if arg.contains('\0') {
                return bad(format!("element {i} must not contain a NUL byte"));
            }
        }
        Ok(Self(args))
    }

    /// The program (never empty).
    pub fn program(&self) -> &str {
        &self.0[0]
    }
}

/// A value as shown in an error: long ones are cut (the error is for people, and may be
/// logged).
fn shorten(raw: &str) -> String {
    const SHOWN: usize = 64;
    let escaped: String = raw.escape_debug().collect();
    match escaped.char_indices().nth(SHOWN) {
        Some((at, _)) => format!("{}…", &escaped[..at]),
        None => escaped,
    }
}

macro_rules! string_like {
    ($ty:ident) => {
        impl TryFrom<String> for $ty {
            type Error = InvalidInput;
            fn try_from(raw: String) -> Result<Self, InvalidInput> {
                Self::parse(&raw)
            }
        }
        impl std::str::FromStr for $ty {
            type Err = InvalidInput;
            fn from_str(raw: &str) -> Result<Self, InvalidInput> {
                Self::parse(raw)
            }
        }
        impl From<$ty> for String {
            fn from(value: $ty) -> String {
                value.0
            }
        }
        impl Deref for $ty {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }
        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&self.0, f)
            }
        }
        impl PartialEq<str> for $ty {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }
        impl PartialEq<&str> for $ty {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    };
}

string_like!(ProbePath);
string_like!(EnvName);

impl TryFrom<Vec<String>> for Command {
    type Error = InvalidInput;
    fn try_from(args: Vec<String>) -> Result<Self, InvalidInput> {
        Self::new(args)
    }
}

impl From<Command> for Vec<String> {
    fn from(command: Command) -> Vec<String> {
        command.0
    }
}

impl Deref for Command {
    type Target = [String];
    fn deref(&self) -> &[String] {
        &self.0
    }
}

impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_paths_are_absolute_paths_on_the_instance() {
        for ok in [
            "/",
            "/healthz",
            "/ready?full=1&x=%20y",
            "/a/b/../c",
            "/~user/x:y",
        ] {
            let path = ProbePath::parse(ok).unwrap();
            assert_eq!(path, ok);
        }
        let q = ProbePath::parse("/ready?full=1").unwrap();
        assert_eq!((q.path(), q.query()), ("/ready", Some("full=1")));
        assert_eq!(ProbePath::default().query(), None);

        for (bad, why) in [
            ("", "absolute path"),
            ("healthz", "start with `/`"),
            ("@169.254.169.254/latest", "start with `/`"),
            ("http://169.254.169.254/", "start with `/`"),
            ("//169.254.169.254/latest", "`//`"),
            ("/@169.254.169.254/latest", "`@`"),
            ("/x#frag", "`#`"),
            ("/\\\\evil/x", "`\\`"),
            ("/a b", "whitespace"),
            ("/a\tb", "whitespace"),
            ("/a\r\nHost: evil", "whitespace"),
            ("/a\u{7f}", "control"),
            ("/caf\u{e9}", "non-ASCII"),
        ] {
            let err = ProbePath::parse(bad).unwrap_err().to_string();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
        let long = format!("/{}", "a".repeat(MAX_PROBE_PATH));
        let err = ProbePath::parse(&long).unwrap_err().to_string();
        assert!(err.contains("at most 1024") && err.len() < 200, "{err}");
    }

    #[test]
    fn probe_paths_are_plain_strings_on_the_wire() {
        let path: ProbePath = serde_json::from_str("\"/healthz\"").unwrap();
        assert_eq!(serde_json::to_string(&path).unwrap(), "\"/healthz\"");
        let err = serde_json::from_str::<ProbePath>("\"@evil/x\"").unwrap_err();
        assert!(err.to_string().contains("must start with `/`"), "{err}");
    }

    #[test]
    fn env_names_and_commands() {
        for ok in ["PORT", "_x", "HTTP_PORT_2"] {
            assert_eq!(EnvName::parse(ok).unwrap(), ok);
        }
        for bad in ["", "2PORT", "PO-RT", "A=B", "A B", "PÖRT"] {
            assert!(EnvName::parse(bad).is_err(), "{bad:?}");
        }
        assert!(EnvName::parse(&"A".repeat(MAX_ENV_NAME + 1)).is_err());

        let command = Command::new(vec!["python3".into(), "app.py".into()]).unwrap();
        assert_eq!(command.program(), "python3");
        assert_eq!(command.len(), 2);
        assert!(Command::new(vec![]).is_err());
        assert!(Command::new(vec![" ".into()]).is_err());
        assert!(Command::new(vec!["sh".into(), "a\0b".into()]).is_err());
        assert!(Command::new(vec!["x".into(); MAX_COMMAND_ARGS + 1]).is_err());
        let wire: Command = serde_json::from_str(r#"["./run", "--fast"]"#).unwrap();
        assert_eq!(
            serde_json::to_string(&wire).unwrap(),
            r#"["./run","--fast"]"#
        );
    }
}
