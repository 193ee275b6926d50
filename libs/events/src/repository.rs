//! Repository URLs as they travel in `ServiceCreated` and `BuildRequested`: a git transport and
//! never a credential. One rule for the registry (which refuses bad URLs when a service is
//! created) and the builder (which refuses them again at fetch, for requests made before the
//! rule, or by anyone else who can publish a build request).
//!
//! Credentials belong in the builder's per-service clone credential, never in the URL: a URL is
//! shown to viewers, logged and published on Kafka.

/// Why a repository URL is refused. Messages never quote the URL (it may hold a token).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RepositoryError {
    #[error("must be at most 2048 characters")]
    TooLong,
    #[error("not a URL ({0})")]
    NotUrl(String),
    #[error("scheme `{0}` is not a git transport (https, http, ssh, git or file)")]
    Scheme(String),
    #[error("has no host")]
    NoHost,
    #[error(
        "must not carry credentials (a user name, password or token); give the service a clone \
         credential instead (PUT /v1/services/{{name}}/clone-credential)"
    )]
    Credentials,
    #[error("must not have a query or fragment")]
    Query,
    #[error(
        "local repositories (file:// URLs and paths) are not allowed; an operator may allow them \
         with the setting [services] allow_local_repositories"
    )]
    Local,
}

/// The longest URL accepted.
pub const MAX_LEN: usize = 2048;

/// An SSH login (`git` at every code host): short and plain. A long or odd user part is taken
/// for a token (`ghp_...@host`), which is a credential.
fn login_like(user: &str) -> bool {
    (1..=32).contains(&user.len())
        && user.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// The scp-like form git accepts, `user@host:path`: (user, host, path).
fn scp_like(raw: &str) -> Option<(&str, &str, &str)> {
    if raw.contains("://") {
        return None;
    }
    let (user_host, path) = raw.split_once(':')?;
    let (user, host) = user_host.rsplit_once('@')?;
    (!user_host.contains('/') && !host.is_empty() && !path.is_empty() && !path.starts_with("//"))
        .then_some((user, host, path))
}

/// A local path git would read directly: absolute, relative or home-relative.
fn local_path(raw: &str) -> bool {
    raw.starts_with(['/', '.', '~'])
}

/// Whether `raw` names a repository on this machine (`file://` or a path).
pub fn is_local(raw: &str) -> bool {
    local_path(raw)
        || raw
            .get(..7)
            .is_some_and(|s| s.eq_ignore_ascii_case("file://"))
}

/// Accepts `raw` if it is a git URL without credentials; local repositories only when
/// `allow_local`.
pub fn check(raw: &str, allow_local: bool) -> Result<(), RepositoryError> {
    if raw.len() > MAX_LEN {
        return Err(RepositoryError::TooLong);
    }
    if raw.chars().any(char::is_control) {
        return Err(RepositoryError::NotUrl("control characters".into()));
    }
    if let Some((user, _, _)) = scp_like(raw) {
        return if login_like(user) {
            Ok(())
        } else {
            Err(RepositoryError::Credentials)
        };
    }
    if local_path(raw) {
        return if allow_local {
            Ok(())
        } else {
            Err(RepositoryError::Local)
        };
    }
    let url = url::Url::parse(raw).map_err(|e| RepositoryError::NotUrl(e.to_string()))?;
    let scheme = url.scheme();
    if !matches!(scheme, "https" | "http" | "ssh" | "git" | "file") {
        return Err(RepositoryError::Scheme(scheme.to_owned()));
    }
    // Credentials first: the most important refusal, whatever else is wrong.
    let user = url.username();
    let user_ok = user.is_empty() || (scheme == "ssh" && login_like(user));
    if url.password().is_some() || !user_ok {
        return Err(RepositoryError::Credentials);
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(RepositoryError::Query);
    }
    if scheme == "file" {
        return if allow_local {
            Ok(())
        } else {
            Err(RepositoryError::Local)
        };
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(RepositoryError::NoHost);
    }
    Ok(())
}

/// `raw` fit to show: any user part that is not an SSH login, any password, query and
/// fragment removed. For URLs stored before [`check`] refused them; a URL [`check`] accepts
/// comes back unchanged.
pub fn redact(raw: &str) -> String {
    if let Some((user, host, path)) = scp_like(raw) {
        return if login_like(user) {
            raw.to_owned()
        } else {
            format!("***@{host}:{path}")
        };
    }
    if let Ok(mut url) = url::Url::parse(raw)
        && url.has_host()
    {
        let user_ok =
            url.username().is_empty() || (url.scheme() == "ssh" && login_like(url.username()));
        let clean = user_ok
            && url.password().is_none()
            && url.query().is_none()
            && url.fragment().is_none();
        if clean {
            return raw.to_owned();
        }
        let _ = url.set_password(None);
        if !user_ok {
            let _ = url.set_username("");
        }
        url.set_query(None);
        url.set_fragment(None);
        return url.to_string();
    }
    // Not a URL git can use over the network (a path, or garbage): hide any `user@` part.
    match raw.rsplit_once('@') {
        Some((_, rest)) => format!("***@{rest}"),
        None => raw.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_urls_without_credentials_pass() {
        for ok in [
            "https://github.com/acme/hello.git",
            "http://git.internal:8080/acme/hello",
            "ssh://git@git.example:2222/acme/hello.git",
            "ssh://git.example/acme/hello.git",
            "git://git.example/acme/hello.git",
            "git@github.com:acme/hello.git",
        ] {
            assert_eq!(check(ok, false), Ok(()), "{ok}");
            assert_eq!(redact(ok), ok, "clean URLs are shown unchanged");
        }
    }

    #[test]
    fn credentials_in_any_part_are_refused() {
        for bad in [
            "https://user:pw@github.com/acme/x.git",
            "https://ghp_0123456789abcdef0123456789abcdef0123@github.com/acme/x.git",
            "https://x-access-token@github.com/acme/x.git",
            "http://oauth2:glpat-xyz@gitlab.example/acme/x.git",
            "ssh://git:hunter2@git.example/acme/x.git",
            "ssh://ghp_0123456789abcdef0123456789abcdef0123@github.com/acme/x.git",
            "git://token@git.example/x.git",
            "ghp_0123456789abcdef0123456789abcdef0123@github.com:acme/x.git",
        ] {
            assert_eq!(check(bad, true), Err(RepositoryError::Credentials), "{bad}");
            let shown = redact(bad);
            for secret in ["pw", "ghp_", "x-access-token", "glpat", "hunter2", "token"] {
                assert!(!shown.contains(secret), "{bad} shown as {shown}");
            }
        }
        let query = "https://github.com/acme/x.git?private_token=abc";
        assert_eq!(check(query, true), Err(RepositoryError::Query));
        assert!(!redact(query).contains("abc"));
    }

    #[test]
    fn local_repositories_only_when_allowed() {
        for local in [
            "file:///srv/git/hello.git",
            "FILE:///srv/git/hello.git",
            "/srv/git/hello.git",
            "./hello",
            "../hello",
            "~/hello.git",
        ] {
            assert!(is_local(local), "{local}");
            assert_eq!(check(local, false), Err(RepositoryError::Local), "{local}");
            assert_eq!(check(local, true), Ok(()), "{local}");
        }
        assert!(!is_local("https://github.com/acme/hello.git"));
    }

    #[test]
    fn other_input_is_refused_without_echoing_it() {
        assert!(matches!(
            check("not a url", true),
            Err(RepositoryError::NotUrl(_))
        ));
        assert!(matches!(
            check("ftp://x/y", true),
            Err(RepositoryError::Scheme(_))
        ));
        assert!(check("ext::sh -c touch% /tmp/pwned", true).is_err());
        assert!(check("https://", true).is_err());
        assert_eq!(
            check(&format!("https://h/{}", "a".repeat(MAX_LEN)), true),
            Err(RepositoryError::TooLong)
        );
        assert!(check("https://github.com/a\n/b", true).is_err());
        let err = check("https://tok3n@github.com/acme/x.git", true).unwrap_err();
        assert!(!err.to_string().contains("tok3n"));
    }
}
