//! The guard in front of an internal API: authenticates the calling service by its
//! credential, then applies the service's rule table (see `slipway_identity::rules`).
//!
//! Runs inside the metrics and trace middlewares, so refusals are counted and traced like any
//! answer. The ops endpoints stay open: probes and Prometheus carry no credential, and they
//! reveal nothing a caller could use.

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage, ResponseError, web};
use slipway_http::Problem;
use slipway_identity::{AccessRules, Callers, Decision, ServiceCaller};

/// Who may call which route of an HTTP server started by [`crate::Runtime::start`].
#[derive(Debug, Clone, Copy)]
pub enum Access {
    /// An internal API: every route but the ops endpoints needs a known service's credential
    /// and a rule in this table that lists that service.
    Services(AccessRules),
    /// The gateway's API: people and outside systems call it, and its routes authenticate
    /// API tokens themselves.
    Public,
}

/// What the guard knows, shared with every worker as app data.
pub(crate) struct Guard {
    pub callers: Callers,
    pub rules: AccessRules,
}

/// Routes every service serves to anyone (see the module docs).
const OPEN: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// The middleware (`middleware::from_fn`); the [`Guard`] comes from app data.
pub(crate) async fn guard(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody + 'static>>, Error> {
    let pattern = req.match_pattern();
    if pattern.as_deref().is_some_and(|p| OPEN.contains(&p)) {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_left_body);
    }
    let Some(guard) = req.app_data::<web::Data<Guard>>().cloned() else {
        // Only `Runtime::start` installs this middleware, always with the data: fail closed.
        return Ok(refuse(req, Problem::internal()));
    };
    let service = guard.rules.service;
    let Some(presented) = bearer(&req) else {
        tracing::info!(path = %req.path(), "refused a call without a service credential");
        return Ok(refuse(
            req,
            Problem::unauthorized(format!(
                "the {service}'s API is for slipway's own services: present the calling \
                 service's credential as `Authorization: Bearer <credential>`"
            )),
        ));
    };
    let Some(caller) = guard.callers.identify(presented) else {
        tracing::warn!(path = %req.path(), "refused a call with an unknown service credential");
        return Ok(refuse(
            req,
            Problem::unauthorized(format!(
                "the credential presented is not that of any service the {service} knows"
            )),
        ));
    };
    match guard.rules.decide(pattern.as_deref(), caller) {
        Decision::Allow | Decision::NoRoute => {
            req.extensions_mut().insert(caller);
            next.call(req)
                .await
                .map(ServiceResponse::map_into_left_body)
        }
        refused => {
            let route = pattern.unwrap_or_default();
            let detail = guard.rules.refusal(caller, &route, refused);
            tracing::warn!(caller = %caller, route = %route, "refused a service call: {detail}");
            Ok(refuse(req, Problem::forbidden(detail)))
        }
    }
}

fn refuse<B>(req: ServiceRequest, problem: Problem) -> ServiceResponse<EitherBody<B>> {
    let mut response = problem.error_response();
    if problem.status == 401 {
        response.headers_mut().insert(
            actix_web::http::header::WWW_AUTHENTICATE,
            actix_web::http::header::HeaderValue::from_static("Bearer"),
        );
    }
    req.into_response(response).map_into_right_body()
}

/// The token of `Authorization: Bearer <token>` (scheme compared case-insensitively).
fn bearer(req: &ServiceRequest) -> Option<&str> {
    let value = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The authenticated caller of this request, for handlers that want to name it.
pub fn caller(req: &actix_web::HttpRequest) -> Option<ServiceCaller> {
    req.extensions().get::<ServiceCaller>().copied()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use serde::Deserialize;
    use slipway_identity::{CredentialHash, IdentitySettings, ServiceCaller};

    #[derive(Debug, Deserialize)]
    struct OnlyIdentity {
        identity: IdentitySettings,
    }

    const DEFAULTS: &str = "[identity]\ncredential = \"\"\n\n[identity.callers]\n";

    fn load(env: &[(&str, &str)]) -> Result<OnlyIdentity, String> {
        slipway_settings::load_from(
            DEFAULTS,
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
        .map_err(|e| e.to_string())
    }

    #[test]
    fn the_environment_sets_the_credential_and_callers() {
        let gateway = "g".repeat(40);
        let hash = CredentialHash::of(&gateway).to_hex();
        let own = "o".repeat(40);
        let s = load(&[
            ("SLIPWAY_IDENTITY__CREDENTIAL", own.as_str()),
            ("SLIPWAY_IDENTITY__CALLERS__GATEWAY", hash.as_str()),
        ])
        .unwrap();
        assert_eq!(
            s.identity.callers.identify(&gateway),
            Some(ServiceCaller::Gateway)
        );
        assert_eq!(s.identity.credential.hash(), CredentialHash::of(&own));
    }

    #[test]
    fn the_defaults_alone_do_not_start_a_service() {
        let err = load(&[]).unwrap_err();
        assert!(err.contains("`identity.credential` is empty"), "{err}");
        let err = load(&[
            ("SLIPWAY_IDENTITY__CREDENTIAL", &"o".repeat(40)),
            ("SLIPWAY_IDENTITY__CALLERS__GATEWAY", "not-hex"),
        ])
        .unwrap_err();
        assert!(err.contains("`identity.callers.gateway`"), "{err}");
    }
}
