//! Who may call what: one rule per route (method and pattern), checked in one place (the
//! guard) before any handler runs. A route without a rule is refused, and the authorisation
//! matrix test (`tests/api/access.rs`) fails for it.

use super::Role;

/// What a route needs from its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No token; the handler proves the request otherwise (webhook signatures).
    Public,
    /// Any valid token; the handler answers only what the token may see (lists).
    Authenticated,
    /// A platform admin token (projects and tokens themselves, the whole audit log).
    PlatformAdmin,
    /// At least this role in the project of the thing the request names (platform admins
    /// everywhere). Without any role there the thing answers 404, as if it did not exist.
    Project(Role, Scope),
}

/// How a request names the project it acts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// `{project}` in the path.
    Project,
    /// The project of the service `{name}` in the path (the registry knows it).
    Service,
    /// The project of the service the build `{id}` in the path is of.
    Build,
    /// The project of the service the deployment `{id}` in the path is of.
    Deployment,
    /// The JSON body's `project` field (`default` when absent): a service being created.
    Body,
}

/// One route's rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// `GET`, `POST`, `PUT` or `DELETE`.
    pub method: &'static str,
    /// The route's full pattern, as actix reports it (`/v1/services/{name}`).
    pub pattern: &'static str,
    pub access: Access,
}

const fn rule(method: &'static str, pattern: &'static str, access: Access) -> Rule {
    Rule {
        method,
        pattern,
        access,
    }
}

use Access::{Authenticated, PlatformAdmin, Public};
use Role::{Admin, Deployer, Viewer};

const fn service(role: Role) -> Access {
    Access::Project(role, Scope::Service)
}

/// Every `/v1` route. Keep in step with `routes/*.rs`: a route missing here answers 404 and
/// fails the matrix test; a rule without a route fails it too.
pub const RULES: &[Rule] = &[
    // services.rs
    rule(
        "POST",
        "/v1/services",
        Access::Project(Deployer, Scope::Body),
    ),
    rule("GET", "/v1/services", Authenticated),
    rule("GET", "/v1/services/{name}", service(Viewer)),
    // The new secret is in the answer: who may see it may replace it, a project admin.
    rule("POST", "/v1/services/{name}/webhook-secret", service(Admin)),
    // builds.rs, build_logs.rs
    rule("POST", "/v1/services/{name}/builds", service(Deployer)),
    rule("GET", "/v1/services/{name}/builds", service(Viewer)),
    rule(
        "GET",
        "/v1/builds/{id}",
        Access::Project(Viewer, Scope::Build),
    ),
    rule(
        "POST",
        "/v1/builds/{id}/cancel",
        Access::Project(Deployer, Scope::Build),
    ),
    rule(
        "GET",
        "/v1/builds/{id}/logs",
        Access::Project(Viewer, Scope::Build),
    ),
    // sources.rs
    rule("POST", "/v1/services/{name}/sources", service(Deployer)),
    // clone_credentials.rs: write-only; the builder keeps it sealed.
    rule(
        "PUT",
        "/v1/services/{name}/clone-credential",
        service(Deployer),
    ),
    rule(
        "DELETE",
        "/v1/services/{name}/clone-credential",
        service(Deployer),
    ),
    // releases.rs
    rule("GET", "/v1/services/{name}/releases", service(Viewer)),
    rule("GET", "/v1/services/{name}/releases/{n}", service(Viewer)),
    rule("GET", "/v1/services/{name}/environments", service(Viewer)),
    rule(
        "GET",
        "/v1/services/{name}/environments/{env}/config",
        service(Viewer),
    ),
    rule(
        "PUT",
        "/v1/services/{name}/environments/{env}",
        service(Deployer),
    ),
    rule(
        "PUT",
        "/v1/services/{name}/environments/{env}/config",
        service(Deployer),
    ),
    // deployments.rs
    rule(
        "POST",
        "/v1/services/{name}/environments/{env}/deployments",
        service(Deployer),
    ),
    rule(
        "GET",
        "/v1/services/{name}/environments/{env}/deployments",
        service(Viewer),
    ),
    rule(
        "POST",
        "/v1/services/{name}/environments/{env}/rollback",
        service(Deployer),
    ),
    rule(
        "PUT",
        "/v1/services/{name}/environments/{env}/scale",
        service(Deployer),
    ),
    rule(
        "GET",
        "/v1/services/{name}/environments/{env}/state",
        service(Viewer),
    ),
    rule(
        "GET",
        "/v1/services/{name}/environments/{env}/logs",
        service(Viewer),
    ),
    rule(
        "PUT",
        "/v1/services/{name}/environments/{env}/policy",
        service(Deployer),
    ),
    rule("GET", "/v1/services/{name}/health", service(Viewer)),
    rule("GET", "/v1/services/{name}/instances", service(Viewer)),
    rule(
        "GET",
        "/v1/deployments/{id}",
        Access::Project(Viewer, Scope::Deployment),
    ),
    rule(
        "POST",
        "/v1/deployments/{id}/cancel",
        Access::Project(Deployer, Scope::Deployment),
    ),
    // webhooks.rs: signed by the service's webhook secret instead.
    rule("POST", "/v1/webhooks/github", Public),
    rule("POST", "/v1/webhooks/gitlab", Public),
    // projects.rs
    rule("POST", "/v1/projects", PlatformAdmin),
    rule("GET", "/v1/projects", Authenticated),
    rule(
        "GET",
        "/v1/projects/{project}",
        Access::Project(Viewer, Scope::Project),
    ),
    rule(
        "GET",
        "/v1/projects/{project}/grants",
        Access::Project(Admin, Scope::Project),
    ),
    rule(
        "PUT",
        "/v1/projects/{project}/grants/{token_id}",
        Access::Project(Admin, Scope::Project),
    ),
    rule(
        "DELETE",
        "/v1/projects/{project}/grants/{token_id}",
        Access::Project(Admin, Scope::Project),
    ),
    rule(
        "GET",
        "/v1/projects/{project}/audit",
        Access::Project(Admin, Scope::Project),
    ),
    // admin.rs
    rule("POST", "/v1/tokens", PlatformAdmin),
    rule("GET", "/v1/tokens", PlatformAdmin),
    rule("DELETE", "/v1/tokens/{id}", PlatformAdmin),
    rule("GET", "/v1/audit", PlatformAdmin),
];

/// What the rule table says of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    Found(&'static Rule),
    /// The path has rules, none for this method.
    OtherMethods,
    /// No rule's pattern matches the path.
    Missing,
}

/// The rule for `method` on `path`. The table is matched itself, not actix's resource map
/// (whose `match_pattern` ignores guards, so the edge router's host-guarded catch-all would
/// win); patterns never overlap (a unit test checks), so at most one pattern matches a path.
pub fn find(method: &str, path: &str) -> Lookup {
    let mut matching = RULES
        .iter()
        .filter(|r| params(r.pattern, path).is_some())
        .peekable();
    if matching.peek().is_none() {
        return Lookup::Missing;
    }
    matching
        .find(|r| r.method == method)
        .map_or(Lookup::OtherMethods, Lookup::Found)
}

/// The path parameters of `path` under `pattern` (`{name}` segments, each one non-empty
/// segment, as actix matches them), or `None` when the path has another shape. Segments are
/// taken as sent: names and ids never need escaping, and anything escaped fails to parse as
/// one and is refused.
pub fn params<'a>(pattern: &'a str, path: &'a str) -> Option<Vec<(&'a str, &'a str)>> {
    let pattern: Vec<&str> = pattern.split('/').collect();
    let path: Vec<&str> = path.split('/').collect();
    if pattern.len() != path.len() {
        return None;
    }
    let mut found = Vec::new();
    for (want, got) in pattern.iter().zip(&path) {
        match want.strip_prefix('{').and_then(|w| w.strip_suffix('}')) {
            Some(_) if got.is_empty() => return None,
            Some(name) => found.push((name, *got)),
            None if want == got => {}
            None => return None,
        }
    }
    Some(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_route_has_one_rule() {
        for (i, a) in RULES.iter().enumerate() {
            assert!(a.pattern.starts_with("/v1/"), "{a:?}");
            assert!(
                ["GET", "POST", "PUT", "DELETE"].contains(&a.method),
                "{a:?}"
            );
            for b in &RULES[i + 1..] {
                assert!(
                    !(a.method == b.method && a.pattern == b.pattern),
                    "two rules for {} {}",
                    a.method,
                    a.pattern
                );
            }
        }
    }

    #[test]
    fn rules_are_found_by_method_and_pattern() {
        assert!(matches!(
            find("GET", "/v1/services/web"),
            Lookup::Found(Rule {
                access: Access::Project(Role::Viewer, Scope::Service),
                ..
            })
        ));
        assert_eq!(find("DELETE", "/v1/services/web"), Lookup::OtherMethods);
        assert_eq!(find("GET", "/v1/nothing"), Lookup::Missing);
        assert_eq!(find("GET", "/v1/services/"), Lookup::Missing);
    }

    /// Two patterns that could match one path would let the guard check one route's rule
    /// while actix runs the other.
    #[test]
    fn no_two_patterns_match_one_path() {
        let segments = |p: &'static str| p.split('/').collect::<Vec<_>>();
        for (i, a) in RULES.iter().enumerate() {
            for b in &RULES[i + 1..] {
                if a.pattern == b.pattern {
                    continue;
                }
                let (sa, sb) = (segments(a.pattern), segments(b.pattern));
                let overlap = sa.len() == sb.len()
                    && sa
                        .iter()
                        .zip(&sb)
                        .all(|(x, y)| x == y || x.starts_with('{') || y.starts_with('{'));
                assert!(
                    !overlap,
                    "{} and {} can match one path",
                    a.pattern, b.pattern
                );
            }
        }
    }

    #[test]
    fn params_follow_the_pattern() {
        assert_eq!(
            params("/v1/services/{name}/builds", "/v1/services/web/builds"),
            Some(vec![("name", "web")])
        );
        assert_eq!(params("/v1/services/{name}", "/v1/services/web/x"), None);
        assert_eq!(params("/v1/builds/{id}", "/v1/deployments/1"), None);
    }
}
