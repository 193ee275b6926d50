//! The access guard: the one place every `/v1` request is authorised, before its handler runs.
//!
//! It finds the request's rule ([`super::rules`]) by method and path, authenticates
//! the token, resolves the project the request acts in (from the path, the service, the build
//! or deployment, or the body) and checks the caller's role there. Anything without a rule is
//! refused. What it learnt is left in the request's extensions: the [`Caller`] and a
//! [`Scoped`] (project, role acted with, the service), read by handlers and the audit log.

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::middleware::Next;
use actix_web::{Error, FromRequest, HttpMessage, HttpRequest, ResponseError, web};
use slipway_http::Problem;
use slipway_ids::{BuildId, ProjectName};
use sqlx::PgPool;
use uuid::Uuid;

use super::rules::{self, Access, Lookup, Scope};
use super::{Acting, Caller, Verdict};
use crate::upstream::{Upstream, Upstreams, bad_upstream};
use slipway_wire::service::Service;

/// What the guard learnt about an allowed (or refused) request.
#[derive(Debug, Clone, Default)]
pub struct Scoped {
    /// The project the request acts in, when its rule names one.
    pub project: Option<ProjectName>,
    /// How the caller acted; `None` when it was refused before it could.
    pub acting: Option<Acting>,
    /// The service the request is about (service, build and deployment routes).
    pub service: Option<Service>,
}

impl Scoped {
    /// The service the guard resolved; only routes whose rule has a service scope have one.
    pub fn service(&self) -> Result<Service, Problem> {
        self.service.clone().ok_or_else(|| {
            tracing::error!("a handler asked for the service of a route without one");
            Problem::internal()
        })
    }

    /// The project the guard resolved.
    pub fn project(&self) -> Result<ProjectName, Problem> {
        self.project.clone().ok_or_else(|| {
            tracing::error!("a handler asked for the project of a route without one");
            Problem::internal()
        })
    }
}

impl FromRequest for Scoped {
    type Error = Problem;
    type Future = std::future::Ready<Result<Self, Problem>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        std::future::ready(Ok(req
            .extensions()
            .get::<Scoped>()
            .cloned()
            .unwrap_or_default()))
    }
}

/// The middleware (`middleware::from_fn(guard)` on the `/v1` scope, inside the audit log).
pub async fn guard(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody + 'static>>, Error> {
    let method = req.method().as_str().to_owned();
    let path = req.path().to_owned();
    let rule = match rules::find(&method, &path) {
        Lookup::Found(rule) => rule,
        Lookup::OtherMethods => {
            let problem = Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                format!("{method} is not allowed on {path}"),
            );
            return refuse(req, problem);
        }
        // No route, or one without a rule (which the route-table test reports): either way no
        // handler runs unchecked.
        Lookup::Missing => {
            return refuse(
                req,
                Problem::not_found(format!("no route for {method} {path}")),
            );
        }
    };
    let pattern = rule.pattern;
    if rule.access == Access::Public {
        return next
            .call(req)
            .await
            .map(ServiceResponse::map_into_left_body);
    }
    let caller = match Caller::authenticate(req.request()).await {
        Ok(caller) => caller,
        Err(problem) => return refuse(req, problem),
    };
    req.extensions_mut().insert(caller.clone());
    let scoped = match rule.access {
        Access::Public | Access::Authenticated => Scoped::default(),
        Access::PlatformAdmin if caller.platform_admin => Scoped {
            acting: Some(Acting::PlatformAdmin),
            ..Scoped::default()
        },
        Access::PlatformAdmin => {
            let problem = Problem::forbidden(format!(
                "this action needs a platform admin token; `{}` is not one",
                caller.token_name
            ));
            return refuse(req, problem);
        }
        Access::Project(needed, scope) => {
            let target = match resolve(&mut req, scope, pattern, &path).await {
                Ok(target) => target,
                Err(problem) => return refuse(req, problem),
            };
            let mut scoped = Scoped {
                project: Some(target.project.clone()),
                acting: None,
                service: target.service,
            };
            match caller.may(needed, &target.project) {
                Verdict::Allowed(acting) => {
                    scoped.acting = Some(acting);
                    scoped
                }
                Verdict::TooLow { needed, has } => {
                    scoped.acting = Some(Acting::Role(has));
                    req.extensions_mut().insert(scoped);
                    let problem = Problem::forbidden(format!(
                        "this action needs the `{needed}` role in project `{}`; the token `{}` has `{has}`",
                        target.project, caller.token_name
                    ));
                    return refuse(req, problem);
                }
                Verdict::Hidden => {
                    req.extensions_mut().insert(scoped);
                    return refuse(req, target.hidden);
                }
            }
        }
    };
    req.extensions_mut().insert(scoped);
    next.call(req)
        .await
        .map(ServiceResponse::map_into_left_body)
}

fn refuse<B>(
    req: ServiceRequest,
    problem: Problem,
) -> Result<ServiceResponse<EitherBody<B>>, Error> {
    Ok(req
        .into_response(problem.error_response())
        .map_into_right_body())
}

/// The project a request acts in, and how to answer when the caller may not see it.
struct Target {
    project: ProjectName,
    service: Option<Service>,
    /// The 404 the caller gets if it has no role in the project: the very answer it would
    /// get if the thing did not exist.
    hidden: Problem,
}

impl Target {
    fn of_service(service: Service, hidden: Problem) -> Self {
        Self {
            project: service.project.clone(),
            service: Some(service),
            hidden,
        }
    }
}

async fn resolve(
    req: &mut ServiceRequest,
    scope: Scope,
    pattern: &str,
    path: &str,
) -> Result<Target, Problem> {
    let param = |name: &str| -> Result<String, Problem> {
        rules::params(pattern, path)
            .and_then(|found| found.into_iter().find(|(n, _)| *n == name))
            .map(|(_, value)| value.to_owned())
            .ok_or_else(|| {
                tracing::error!(%pattern, name, "access rule names a parameter its route lacks");
                Problem::internal()
            })
    };
    let upstreams = req
        .app_data::<web::Data<Upstreams>>()
        .cloned()
        .ok_or_else(Problem::internal)?;
    let pool = req
        .app_data::<web::Data<PgPool>>()
        .cloned()
        .ok_or_else(Problem::internal)?;
    match scope {
        Scope::Project => {
            let name = param("project")?;
            let hidden = Problem::not_found(format!("no project named `{name}`"));
            let project = ProjectName::parse(&name).map_err(|_| hidden.clone())?;
            Ok(Target {
                project,
                service: None,
                hidden,
            })
        }
        Scope::Service => {
            let name = param("name")?;
            let service = upstreams.service(&name).await?;
            Ok(Target::of_service(
                service,
                Problem::not_found(format!("no service named `{name}`")),
            ))
        }
        Scope::Build => {
            let id = param("id")?;
            let hidden = Problem::not_found(format!("no build with id {id}"));
            let id: BuildId = id.parse().map_err(|_| hidden.clone())?;
            let name = match operation_service(&pool, id.as_uuid(), "kind = 'build'").await? {
                Some(name) => name,
                None => owner_service(&upstreams, Upstream::Builder, &format!("/v1/builds/{id}"))
                    .await?
                    .ok_or_else(|| hidden.clone())?,
            };
            let service = service_of(&upstreams, &name, &hidden).await?;
            Ok(Target::of_service(service, hidden))
        }
        Scope::Deployment => {
            let id = param("id")?;
            let hidden = Problem::not_found(format!("no deployment {id}"));
            let id: Uuid = id.parse().map_err(|_| hidden.clone())?;
            let kinds = "kind IN ('deploy', 'rollback', 'scale')";
            let name = match operation_service(&pool, id, kinds).await? {
                Some(name) => name,
                None => {
                    let path = format!("/v1/deployments/{id}");
                    owner_service(&upstreams, Upstream::Deployer, &path)
                        .await?
                        .ok_or_else(|| hidden.clone())?
                }
            };
            let service = service_of(&upstreams, &name, &hidden).await?;
            Ok(Target::of_service(service, hidden))
        }
        Scope::Body => {
            let project = body_project(req).await?;
            let hidden = Problem::not_found(format!("no project named `{project}`"));
            Ok(Target {
                project,
                service: None,
                hidden,
            })
        }
    }
}

/// The service name of an operation the gateway accepted (every build and every deployment
/// asked for through the API or a webhook has one).
async fn operation_service(
    pool: &PgPool,
    id: Uuid,
    kinds: &'static str,
) -> Result<Option<String>, Problem> {
    let sql = format!("SELECT service_name FROM operations WHERE id = $1 AND {kinds}");
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .bind(id)
        .fetch_optional(pool)
        .await
        .map_err(|e| slipway_http::problem::unexpected("read operation", e))
}

/// The `service_name` of what `upstream` holds at `path`; `None` when it has nothing there.
async fn owner_service(
    upstreams: &Upstreams,
    upstream: Upstream,
    path: &str,
) -> Result<Option<String>, Problem> {
    let answer = upstreams
        .call(upstream, reqwest::Method::GET, path, None)
        .await?;
    if answer.status == StatusCode::NOT_FOUND {
        return Ok(None);
    }
    let body = answer.ok_json()?;
    body["service_name"]
        .as_str()
        .map(|name| Some(name.to_owned()))
        .ok_or_else(|| bad_upstream("service_name", "missing"))
}

/// The registry's service `name`; its absence makes the build or deployment absent too.
async fn service_of(
    upstreams: &Upstreams,
    name: &str,
    hidden: &Problem,
) -> Result<Service, Problem> {
    upstreams.service(name).await.map_err(|problem| {
        if problem.status == StatusCode::NOT_FOUND.as_u16() {
            hidden.clone()
        } else {
            problem
        }
    })
}

/// The `project` field of a JSON body (`default` when absent), read without consuming the
/// body: it is put back for the handler, which then sees the same bytes.
async fn body_project(req: &mut ServiceRequest) -> Result<ProjectName, Problem> {
    let bytes = req.extract::<web::Bytes>().await.map_err(|e| {
        let status = e.as_response_error().status_code();
        Problem::new(status, "bad-request", format!("cannot read the body: {e}"))
    })?;
    req.set_payload(Payload::from(bytes.clone()));
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| Problem::bad_request(format!("the body is not valid JSON: {e}")))?;
    match value.get("project") {
        None | Some(serde_json::Value::Null) => Ok(ProjectName::default_project()),
        Some(serde_json::Value::String(name)) => {
            ProjectName::parse(name).map_err(|e| Problem::validation("project", e.to_string()))
        }
        Some(_) => Err(Problem::validation("project", "must be a project name")),
    }
}
