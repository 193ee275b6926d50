//! Project names: the unit of tenancy (every service belongs to one project; tokens hold roles
//! per project). The gateway owns projects; every other service only carries their names.

use std::fmt;
use std::str::FromStr;

/// The project every service created before projects existed belongs to, and the one a
/// service is created in when the request names none.
pub const DEFAULT_PROJECT: &str = "default";

/// A project name: a DNS label (1-63 of `a-z`, `0-9`, `-`, starting with a letter, not
/// ending with `-`), so it can prefix host names, Kubernetes namespaces and URL segments.
///
/// Parsed on the way in (JSON, text); read from a database as stored, since only parsed names
/// are ever written.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
    sqlx::Type,
)]
#[serde(try_from = "String", into = "String")]
#[sqlx(transparent)]
pub struct ProjectName(String);

/// Why a text is not a project name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidProjectName(pub String);

impl fmt::Display for InvalidProjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidProjectName {}

impl ProjectName {
    pub fn parse(raw: &str) -> Result<Self, InvalidProjectName> {
        let bad = |m: String| Err(InvalidProjectName(m));
        if raw.is_empty() || raw.len() > 63 {
            return bad("must be 1 to 63 characters (a DNS label)".into());
        }
        if !raw.starts_with(|c: char| c.is_ascii_lowercase()) {
            return bad("must start with a lowercase letter".into());
        }
        if raw.ends_with('-') {
            return bad("must not end with `-`".into());
        }
        if let Some(c) = raw
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            return bad(format!(
                "may contain only lowercase letters, digits and `-` (found {c:?})"
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The `default` project.
    pub fn default_project() -> Self {
        Self(DEFAULT_PROJECT.to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for ProjectName {
    fn default() -> Self {
        Self::default_project()
    }
}

impl fmt::Display for ProjectName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for ProjectName {
    type Err = InvalidProjectName;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl TryFrom<String> for ProjectName {
    type Error = InvalidProjectName;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<ProjectName> for String {
    fn from(p: ProjectName) -> Self {
        p.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dns_labels() {
        for ok in ["default", "a", "team-2", &"a".repeat(63)] {
            assert_eq!(ProjectName::parse(ok).unwrap().as_str(), ok);
        }
        for bad in ["", "Team", "2x", "a_b", "a-", "a.b", &"a".repeat(64), "é"] {
            assert!(ProjectName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn json_is_parsed_not_trusted() {
        let p: ProjectName = serde_json::from_str("\"payments\"").unwrap();
        assert_eq!(serde_json::to_string(&p).unwrap(), "\"payments\"");
        assert!(serde_json::from_str::<ProjectName>("\"../etc\"").is_err());
        assert_eq!(ProjectName::default().as_str(), DEFAULT_PROJECT);
    }
}
