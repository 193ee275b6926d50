//! Which requests are the router's: `Host: <service>.<env>.<domain>` (the whole path is
//! proxied, whatever it is, so it wins over the gateway's own routes for such hosts only), and
//! `/apps/<service>/<env>/<rest>` (proxied as `/<rest>`, the query unchanged).

use http::header;
use http::request::Parts;

/// What a request is for.
#[derive(Debug, PartialEq)]
pub enum Target<'a> {
    /// By host name: `(service, environment)`, lower case.
    Host(String, String),
    /// By path: `(service, environment, rest)` with `rest` starting with `/`.
    Path(&'a str, &'a str, &'a str),
    /// Under `/apps` but not `/apps/<service>/<environment>`.
    BadPath,
    /// Anything else: the gateway's own API.
    Gateway,
}

/// The target of a request with `parts` when the router's domain suffix is `suffix`
/// (`.localhost`).
pub fn of<'a>(parts: &'a Parts, suffix: &str) -> Target<'a> {
    let host = match parts.uri.host() {
        Some(host) => Some(host),
        None => parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(strip_port),
    };
    if let Some((service, environment)) = host.and_then(|h| split_host(h, suffix)) {
        return Target::Host(service, environment);
    }
    let path = parts.uri.path();
    if path == "/apps" || path.starts_with("/apps/") {
        return match path_target(path) {
            Some((service, environment, rest)) => Target::Path(service, environment, rest),
            None => Target::BadPath,
        };
    }
    Target::Gateway
}

pub fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // An IPv6 literal never names a service; keep it whole so it does not match.
        return host;
    }
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}

pub fn split_host(host: &str, suffix: &str) -> Option<(String, String)> {
    let host = host.trim_end_matches('.');
    // Compared without allocating: most requests are for the gateway's own host.
    let cut = host.len().checked_sub(suffix.len())?;
    if !host.is_char_boundary(cut) || !host[cut..].eq_ignore_ascii_case(suffix) {
        return None;
    }
    let (service, environment) = host[..cut].split_once('.')?;
    let label = |s: &str| !s.is_empty() && !s.contains('.');
    (label(service) && label(environment)).then(|| {
        (
            service.to_ascii_lowercase(),
            environment.to_ascii_lowercase(),
        )
    })
}

/// `(service, environment, rest)` of `/apps/<service>/<environment>[/<rest>]`.
fn path_target(path: &str) -> Option<(&str, &str, &str)> {
    let after = path.strip_prefix("/apps/")?;
    let (service, after) = after.split_once('/')?;
    let (environment, rest) = match after.find('/') {
        Some(at) => (&after[..at], &after[at..]),
        None => (after, "/"),
    };
    (!service.is_empty() && !environment.is_empty()).then_some((service, environment, rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_a_service_and_environment() {
        let s = ".localhost";
        let want = Some(("hello".to_owned(), "prod".to_owned()));
        assert_eq!(split_host("hello.prod.localhost", s), want);
        assert_eq!(split_host("Hello.PROD.localhost.", s), want);
        assert_eq!(split_host("hello.prod.LOCALHOST", s), want);
        assert_eq!(split_host(strip_port("hello.prod.localhost:8080"), s), want);
        assert_eq!(split_host("prod.localhost", s), None);
        assert_eq!(split_host("a.b.c.localhost", s), None);
        assert_eq!(split_host("hello.prod.example.com", s), None);
        assert_eq!(split_host("127.0.0.1", s), None);
        assert_eq!(split_host("localhost", s), None);
        assert_eq!(split_host(strip_port("[::1]:8080"), s), None);
    }

    #[test]
    fn path_prefix_is_stripped() {
        assert_eq!(
            path_target("/apps/hello/prod/x/y"),
            Some(("hello", "prod", "/x/y"))
        );
        assert_eq!(
            path_target("/apps/hello/prod"),
            Some(("hello", "prod", "/"))
        );
        assert_eq!(
            path_target("/apps/hello/prod/"),
            Some(("hello", "prod", "/"))
        );
        assert_eq!(path_target("/apps/hello"), None);
        assert_eq!(path_target("/apps//prod"), None);
        assert_eq!(path_target("/apps"), None);
    }

    #[test]
    fn everything_else_is_the_gateways() {
        let parts = |uri: &str, host: &str| {
            http::Request::get(uri)
                .header("host", host)
                .body(())
                .unwrap_or_default()
                .into_parts()
                .0
        };
        let s = ".localhost";
        assert_eq!(of(&parts("/v1/ping", "127.0.0.1:8080"), s), Target::Gateway);
        assert_eq!(of(&parts("/apps", "127.0.0.1"), s), Target::BadPath);
        assert_eq!(of(&parts("/application", "127.0.0.1"), s), Target::Gateway);
        assert_eq!(
            of(&parts("/apps/a/b/c?d", "x"), s),
            Target::Path("a", "b", "/c")
        );
        assert_eq!(
            of(&parts("/v1/ping", "a.b.localhost:1"), s),
            Target::Host("a".into(), "b".into())
        );
    }
}
