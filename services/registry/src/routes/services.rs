//! `/v1/services`: create, list, get.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use slipway_events::CloudEvent;
use slipway_events::EventData;
use slipway_events::slipway::{ServiceCreated, sources};
use slipway_http::Problem;
use slipway_ids::ProjectName;
use slipway_wire::service::{CreateService, Service, ServicePage};
use sqlx::PgPool;

use super::internal;
use crate::db::services::{self, InsertError};
use crate::domain::{NewService, NewServiceRequest, repository_key};
use crate::startup::ServiceSettings;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/v1/services", web::post().to(create))
        .route("/v1/services", web::get().to(list))
        .route("/v1/services/{name}", web::get().to(get));
}

/// Stores the service and its "service created" event in one transaction.
async fn create(
    pool: web::Data<PgPool>,
    settings: web::Data<ServiceSettings>,
    body: web::Json<CreateService>,
) -> Result<HttpResponse, Problem> {
    let new = NewService::parse(
        request(body.into_inner()),
        settings.allow_local_repositories,
    )
    .map_err(|e| Problem::validation(e.field, e.message))?;

    let mut tx = pool.begin().await.map_err(|e| internal("begin", e))?;
    let service = services::insert(&mut tx, &new).await.map_err(|e| match e {
        InsertError::NameTaken(_) | InsertError::IdTaken(_) => Problem::conflict(e.to_string()),
        InsertError::Database(e) => internal("insert service", e),
    })?;
    let data = ServiceCreated {
        service_id: service.id,
        name: service.name.clone(),
        project: service.project.clone(),
        repository: service.repository.clone(),
        branch: service.branch.clone(),
        created_at: service.created_at,
    };
    let mut event = CloudEvent::new(
        sources::REGISTRY,
        service.id,
        Some(service.name.clone()),
        &data,
    )
    .map_err(|e| internal("serialise event", e))?;
    let trace = slipway_telemetry::current_context();
    event.traceparent = trace.get("traceparent").cloned();
    event.tracestate = trace.get("tracestate").cloned();
    event.project = Some(service.project.clone());
    slipway_outbox::enqueue(&mut tx, ServiceCreated::TOPIC, &event)
        .await
        .map_err(|e| internal("enqueue event", e))?;
    tx.commit().await.map_err(|e| internal("commit", e))?;

    tracing::info!(service.id = %service.id, service.name = %service.name, "service created");
    Ok(HttpResponse::Created()
        .insert_header(("location", format!("/v1/services/{}", service.name)))
        .json(answer(service)))
}

/// The wire form of a create, as the domain parses it.
fn request(body: CreateService) -> NewServiceRequest {
    NewServiceRequest {
        id: body.id,
        name: body.name,
        project: body.project,
        repository: body.repository,
        branch: body.branch,
    }
}

/// A stored service as the wire contract shows it: its repository redacted, since a URL stored
/// before credentials in URLs were refused may still hold one.
fn answer(service: services::Service) -> Service {
    Service {
        id: service.id,
        name: service.name,
        project: service.project,
        repository: service
            .repository
            .as_deref()
            .map(slipway_events::repository::redact),
        branch: service.branch,
        created_at: service.created_at,
    }
}

#[derive(Deserialize)]
struct ListQuery {
    /// Return services whose name sorts after this one (the previous page's `next`).
    after: Option<String>,
    /// Page size, 1 to 500 (default 100).
    limit: Option<i64>,
    /// Only services built from this repository (any URL form of it).
    repository: Option<String>,
}

/// `GET /v1/services[?after=&limit=&repository=&project=...]`; `project` may repeat.
async fn list(
    pool: web::Data<PgPool>,
    req: HttpRequest,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, Problem> {
    let limit = query.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(Problem::validation("limit", "must be between 1 and 500"));
    }
    let filter = services::Filter {
        after: query.after.as_deref(),
        repository_key: query.repository.as_deref().map(repository_key),
        projects: projects(&req)?,
    };
    let items = services::list(&pool, &filter, limit)
        .await
        .map_err(|e| internal("list services", e))?;
    let next = (items.len() as i64 == limit)
        .then(|| items.last().map(|s| s.name.clone()))
        .flatten();
    Ok(HttpResponse::Ok().json(ServicePage {
        items: items.into_iter().map(answer).collect(),
        next,
    }))
}

async fn get(pool: web::Data<PgPool>, name: web::Path<String>) -> Result<HttpResponse, Problem> {
    match services::by_name(&pool, &name).await {
        Ok(Some(service)) => Ok(HttpResponse::Ok().json(answer(service))),
        Ok(None) => Err(Problem::not_found(format!("no service named `{name}`"))),
        Err(e) => Err(internal("get service", e)),
    }
}

/// The `project` filters of a list query; `None` when there are none (every project).
fn projects(req: &HttpRequest) -> Result<Option<Vec<ProjectName>>, Problem> {
    let projects = url::form_urlencoded::parse(req.query_string().as_bytes())
        .filter(|(key, _)| key == "project")
        .map(|(_, value)| {
            ProjectName::parse(&value).map_err(|e| Problem::validation("project", e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((!projects.is_empty()).then_some(projects))
}
