//! Who may call which route: a table each service declares next to its routes.
//!
//! A rule names a route by its pattern, exactly as registered with actix
//! (`/v1/services/{name}/releases/{number}`), and the services that may call it. A route with
//! no rule is refused to every caller: adding a route without deciding who may call it fails
//! closed, and the service's tests show it at once.

use crate::ServiceCaller;

/// The callers allowed on one route pattern (any method).
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    pub pattern: &'static str,
    pub callers: &'static [ServiceCaller],
}

impl Rule {
    pub const fn new(pattern: &'static str, callers: &'static [ServiceCaller]) -> Self {
        Self { pattern, callers }
    }
}

/// One service's rule table.
#[derive(Debug, Clone, Copy)]
pub struct AccessRules {
    /// The service the rules protect, named in refusals.
    pub service: ServiceCaller,
    pub rules: &'static [Rule],
}

/// What the table says about one authenticated request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// The path matches no route: let it through to the 404 (the caller is authenticated).
    NoRoute,
    /// The route's rule does not list this caller.
    Forbidden {
        allowed: &'static [ServiceCaller],
    },
    /// The route has no rule at all (deny by default).
    NoRule,
}

impl AccessRules {
    pub const fn new(service: ServiceCaller, rules: &'static [Rule]) -> Self {
        Self { service, rules }
    }

    /// `pattern` is the matched route's pattern, `None` when no route matches the path.
    pub fn decide(&self, pattern: Option<&str>, caller: ServiceCaller) -> Decision {
        let Some(pattern) = pattern else {
            return Decision::NoRoute;
        };
        match self.rules.iter().find(|r| r.pattern == pattern) {
            None => Decision::NoRule,
            Some(rule) if rule.callers.contains(&caller) => Decision::Allow,
            Some(rule) => Decision::Forbidden {
                allowed: rule.callers,
            },
        }
    }

    /// The refusal's detail for a caller (or `None` for the rule-less case) on a route.
    pub fn refusal(&self, caller: ServiceCaller, route: &str, decision: Decision) -> String {
        let service = self.service;
        match decision {
            Decision::Forbidden { allowed } => {
                let allowed: Vec<&str> = allowed.iter().map(|s| s.name()).collect();
                format!(
                    "the {caller} may not call `{route}` on the {service} (allowed: {})",
                    if allowed.is_empty() {
                        "none".to_owned()
                    } else {
                        allowed.join(", ")
                    }
                )
            }
            _ => format!(
                "the {caller} may not call `{route}` on the {service}: no rule allows any caller"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ServiceCaller::*;

    const RULES: AccessRules = AccessRules::new(
        Registry,
        &[
            Rule::new("/internal/v1/config/{version}", &[Deployer]),
            Rule::new("/v1/discovery", &[Gateway]),
            Rule::new("/v1/closed", &[]),
        ],
    );

    #[test]
    fn allows_only_listed_callers() {
        assert_eq!(
            RULES.decide(Some("/internal/v1/config/{version}"), Deployer),
            Decision::Allow
        );
        let refused = RULES.decide(Some("/internal/v1/config/{version}"), Gateway);
        assert_eq!(
            refused,
            Decision::Forbidden {
                allowed: &[Deployer]
            }
        );
        assert_eq!(
            RULES.refusal(Gateway, "/internal/v1/config/{version}", refused),
            "the gateway may not call `/internal/v1/config/{version}` on the registry (allowed: deployer)"
        );
        let closed = RULES.decide(Some("/v1/closed"), Gateway);
        assert!(
            RULES
                .refusal(Gateway, "/v1/closed", closed)
                .ends_with("(allowed: none)")
        );
    }

    #[test]
    fn a_route_without_a_rule_is_refused_to_everyone() {
        for caller in ServiceCaller::ALL {
            assert_eq!(
                RULES.decide(Some("/v1/new-route"), caller),
                Decision::NoRule
            );
        }
        assert!(
            RULES
                .refusal(Monitor, "/v1/new-route", Decision::NoRule)
                .contains("no rule allows any caller")
        );
    }

    #[test]
    fn patterns_match_exactly_not_by_prefix() {
        assert_eq!(
            RULES.decide(Some("/v1/discovery/x"), Gateway),
            Decision::NoRule
        );
        assert_eq!(RULES.decide(Some("/v1"), Gateway), Decision::NoRule);
        assert_eq!(RULES.decide(None, Gateway), Decision::NoRoute);
    }
}
