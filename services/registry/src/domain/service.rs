use serde::Deserialize;
use slipway_ids::{ProjectName, ServiceId};

use super::Invalid;

/// A service name: a DNS label (RFC 1035: 1-63 of `a-z`, `0-9`, `-`, starting with a letter,
/// not ending with `-`), so it can name hosts, Kubernetes objects and URL segments unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceName(String);

impl ServiceName {
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let bad = |m: &str| Invalid::new("name", m);
        if raw.is_empty() {
            return Err(bad("must not be empty"));
        }
        if raw.len() > 63 {
            return Err(bad("must be at most 63 characters (a DNS label)"));
        }
        if !raw.starts_with(|c: char| c.is_ascii_lowercase()) {
            return Err(bad("must start with a lowercase letter"));
        }
        if raw.ends_with('-') {
            return Err(bad("must not end with `-`"));
        }
        if let Some(c) = raw
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            return Err(bad(&format!(
                "may contain only lowercase letters, digits and `-` (found {c:?})"
            )));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A git repository URL: `https://`, `http://`, `ssh://`, `git://`, or the scp-like
/// `git@host:path` form git accepts; never with credentials in it (see
/// [`slipway_events::repository::check`]). `file://` URLs and local paths only where the
/// operator allows local repositories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repository(String);

impl Repository {
    pub fn parse(raw: &str, allow_local: bool) -> Result<Self, Invalid> {
        slipway_events::repository::check(raw, allow_local)
            .map_err(|e| Invalid::new("repository", e.to_string()))?;
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The form repositories are matched by: host and path, lowercase, without scheme, user,
    /// trailing `/` or `.git`. The HTTPS, SSH and scp-like URLs of one repository (as a code
    /// host's webhook lists them) all give the same key.
    pub fn key(&self) -> String {
        repository_key(&self.0)
    }
}

/// See [`Repository::key`]; also applied to URLs from webhook payloads.
pub fn repository_key(raw: &str) -> String {
    let raw = raw.trim();
    let host_path = match url::Url::parse(raw) {
        Ok(url) if url.scheme() == "file" => format!("file{}", url.path()),
        Ok(url) => match url.port() {
            Some(port) if url.scheme() != "ssh" => {
                format!(
                    "{}:{port}{}",
                    url.host_str().unwrap_or_default(),
                    url.path()
                )
            }
            _ => format!("{}{}", url.host_str().unwrap_or_default(), url.path()),
        },
        // scp-like `user@host:owner/repo.git`
        Err(_) => match raw.split_once(':') {
            Some((user_host, path)) => {
                let host = user_host.rsplit('@').next().unwrap_or(user_host);
                format!("{host}/{}", path.trim_start_matches('/'))
            }
            None => raw.to_owned(),
        },
    };
    let trimmed = host_path.trim_end_matches('/');
    trimmed
        .strip_suffix(".git")
        .unwrap_or(trimmed)
        .to_ascii_lowercase()
}

/// A branch name as git allows it (a subset: `A-Z a-z 0-9 . _ - /`, no `..`, no leading `-`
/// or `/`, no trailing `/` or `.lock`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Branch(String);

impl Branch {
    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        let bad = |m: &str| Invalid::new("branch", m);
        let ok_chars = raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/'));
        if raw.is_empty() || raw.len() > 255 {
            return Err(bad("must be 1 to 255 characters"));
        }
        if !ok_chars {
            return Err(bad(
                "may contain only letters, digits, `.`, `_`, `-` and `/`",
            ));
        }
        if raw.contains("..")
            || raw.contains("//")
            || raw.starts_with(['-', '/'])
            || raw.ends_with('/')
            || raw.ends_with(".lock")
        {
            return Err(bad("is not a valid git branch name"));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The body of `POST /v1/services` as received.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewServiceRequest {
    /// Set by the gateway, which keys the webhook secret by it; generated when absent.
    pub id: Option<ServiceId>,
    pub name: String,
    /// Set by the gateway, which checked the caller may create services there; default
    /// `default`.
    pub project: Option<String>,
    pub repository: Option<String>,
    pub branch: Option<String>,
}

/// A validated new service.
#[derive(Debug, Clone)]
pub struct NewService {
    pub id: ServiceId,
    pub name: ServiceName,
    pub project: ProjectName,
    pub repository: Option<Repository>,
    pub branch: Branch,
}

impl NewService {
    /// Validates `req`; `allow_local`: the operator's `[services] allow_local_repositories`.
    pub fn parse(req: NewServiceRequest, allow_local: bool) -> Result<Self, Invalid> {
        Ok(Self {
            id: req.id.unwrap_or_default(),
            name: ServiceName::parse(&req.name)?,
            project: match req.project.as_deref() {
                None => ProjectName::default_project(),
                Some(p) => {
                    ProjectName::parse(p).map_err(|e| Invalid::new("project", e.to_string()))?
                }
            },
            repository: req
                .repository
                .as_deref()
                .map(|r| Repository::parse(r, allow_local))
                .transpose()?,
            branch: Branch::parse(req.branch.as_deref().unwrap_or("main"))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_dns_labels() {
        for ok in ["hello", "a", "web-api-2", &"a".repeat(63)] {
            assert!(ServiceName::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Hello",
            "2fast",
            "web_api",
            "api-",
            "a.b",
            &"a".repeat(64),
            "héllo",
        ] {
            let err = ServiceName::parse(bad).unwrap_err();
            assert_eq!(err.field, "name", "{bad}");
        }
    }

    #[test]
    fn repositories_are_git_urls() {
        for ok in [
            "https://github.com/acme/hello.git",
            "ssh://git@git.example:2222/acme/hello.git",
            "git@github.com:acme/hello.git",
        ] {
            assert!(Repository::parse(ok, false).is_ok(), "{ok}");
        }
        for bad in [
            "not a url",
            "ftp://x/y",
            "https://user:pw@github.com/acme/x.git",
            "https://ghp_abcdefabcdefabcdefabcdefabcdefabcdef@github.com/acme/x.git",
            "https://",
        ] {
            let err = Repository::parse(bad, true).unwrap_err();
            assert_eq!(err.field, "repository", "{bad}");
            assert!(
                !err.message.contains("ghp_"),
                "never echoed: {}",
                err.message
            );
        }
    }

    #[test]
    fn local_repositories_need_the_operator_setting() {
        for local in ["file:///srv/git/hello.git", "/srv/git/hello.git"] {
            let err = Repository::parse(local, false).unwrap_err();
            assert!(
                err.message.contains("allow_local_repositories"),
                "{}",
                err.message
            );
            assert!(Repository::parse(local, true).is_ok(), "{local}");
        }
    }

    #[test]
    fn one_repository_has_one_key_however_it_is_written() {
        let forms = [
            "https://github.com/Acme/Hello.git",
            "https://github.com/acme/hello",
            "https://github.com/acme/hello/",
            "git@github.com:acme/hello.git",
            "ssh://git@github.com/acme/hello.git",
            "git://github.com/acme/hello.git",
        ];
        for form in forms {
            assert_eq!(repository_key(form), "github.com/acme/hello", "{form}");
        }
        assert_eq!(
            repository_key("file:///srv/git/hello.git"),
            "file/srv/git/hello"
        );
        assert_ne!(
            repository_key("https://github.com/acme/hello2"),
            "github.com/acme/hello"
        );
        assert_eq!(
            repository_key("https://git.example:8443/a/b.git"),
            "git.example:8443/a/b"
        );
    }

    #[test]
    fn branches_follow_git_rules() {
        for ok in ["main", "release/1.2", "feature_x-y"] {
            assert!(Branch::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a..b", "-x", "x/", "x.lock", "has space", "a//b"] {
            assert!(Branch::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn branch_defaults_to_main() {
        let req = NewServiceRequest {
            id: None,
            name: "hello".into(),
            project: None,
            repository: None,
            branch: None,
        };
        let new = NewService::parse(req, false).unwrap();
        assert_eq!(new.branch.as_str(), "main");
        assert_eq!(new.project, ProjectName::default_project());
    }
}
