//! The authenticated caller of a request.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;

use actix_web::{FromRequest, HttpMessage, HttpRequest, dev::Payload, web};
use slipway_http::Problem;
use slipway_ids::{ProjectName, TokenId};
use sqlx::PgPool;

use super::{Role, tokens};

/// Who is calling: resolved from `Authorization: Bearer <token>` by the access guard (which
/// puts it in the request's extensions, where handlers and the audit middleware find it).
/// Extracting it outside the guard authenticates the same way: 401 when the header is missing
/// or the token unknown or revoked.
#[derive(Debug, Clone)]
pub struct Caller {
    pub token_id: TokenId,
    pub token_name: String,
    /// May act in every project, and manage projects and tokens.
    pub platform_admin: bool,
    /// The token's role in each project it has one in.
    pub grants: BTreeMap<ProjectName, Role>,
}

/// How a caller may act in a project.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acting {
    /// With its grant in the project.
    Role(Role),
    /// As a platform admin (whatever its grant there).
    PlatformAdmin,
}

impl Acting {
    /// As the audit log records it.
    pub fn as_str(self) -> &'static str {
        match self {
            Acting::Role(role) => role.as_str(),
            Acting::PlatformAdmin => "platform-admin",
        }
    }
}

/// What a caller may do with something in a project.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allowed(Acting),
    /// It sees the project but its role there is too low (403).
    TooLow {
        needed: Role,
        has: Role,
    },
    /// It has no role in the project: the thing must look absent (404), so names do not leak.
    Hidden,
}

impl Caller {
    /// The token's role in `project`, if it has one.
    pub fn role_in(&self, project: &ProjectName) -> Option<Role> {
        self.grants.get(project).copied()
    }

    /// Whether the caller may act with `needed` in `project`.
    pub fn may(&self, needed: Role, project: &ProjectName) -> Verdict {
        match self.role_in(project) {
            _ if self.platform_admin => Verdict::Allowed(Acting::PlatformAdmin),
            Some(has) if has >= needed => Verdict::Allowed(Acting::Role(has)),
            Some(has) => Verdict::TooLow { needed, has },
            None => Verdict::Hidden,
        }
    }

    /// The projects whose things the caller may see; `None`: every project.
    pub fn visible_projects(&self) -> Option<Vec<&ProjectName>> {
        (!self.platform_admin).then(|| self.grants.keys().collect())
    }

    /// Authenticates `req` from its bearer token.
    pub async fn authenticate(req: &HttpRequest) -> Result<Self, Problem> {
        let token = bearer(req)?;
        let pool = req
            .app_data::<web::Data<PgPool>>()
            .ok_or_else(Problem::internal)?;
        let found = tokens::lookup(pool, &token).await.map_err(|e| {
            tracing::error!(error = %e, "token lookup failed");
            Problem::unavailable("cannot check the token right now; retry shortly")
        })?;
        found.ok_or_else(|| Problem::unauthorized("the token is unknown or revoked"))
    }
}

fn bearer(req: &HttpRequest) -> Result<String, Problem> {
    let header = req
        .headers()
        .get("authorization")
        .ok_or_else(|| Problem::unauthorized("missing `Authorization: Bearer <token>` header"))?;
    let value = header
        .to_str()
        .map_err(|_| Problem::unauthorized("the Authorization header is not valid text"))?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or_else(|| {
            Problem::unauthorized("the Authorization header must use the Bearer scheme")
        })?;
    Ok(token.trim().to_owned())
}

impl FromRequest for Caller {
    type Error = Problem;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Problem>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let req = req.clone();
        Box::pin(async move {
            if let Some(caller) = req.extensions().get::<Caller>().cloned() {
                return Ok(caller);
            }
            let caller = Caller::authenticate(&req).await?;
            req.extensions_mut().insert(caller.clone());
            Ok(caller)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(platform_admin: bool, grants: &[(&str, Role)]) -> Caller {
        Caller {
            token_id: TokenId::new(),
            token_name: "t".into(),
            platform_admin,
            grants: grants
                .iter()
                .map(|(p, r)| (ProjectName::parse(p).unwrap(), *r))
                .collect(),
        }
    }

    #[test]
    fn roles_count_in_their_project_only() {
        let own = ProjectName::parse("own").unwrap();
        let other = ProjectName::parse("other").unwrap();
        let deployer = caller(false, &[("own", Role::Deployer)]);
        assert_eq!(
            deployer.may(Role::Viewer, &own),
            Verdict::Allowed(Acting::Role(Role::Deployer))
        );
        assert_eq!(
            deployer.may(Role::Admin, &own),
            Verdict::TooLow {
                needed: Role::Admin,
                has: Role::Deployer
            }
        );
        assert_eq!(deployer.may(Role::Viewer, &other), Verdict::Hidden);
        assert_eq!(deployer.visible_projects(), Some(vec![&own]));

        let platform = caller(true, &[]);
        assert_eq!(
            platform.may(Role::Admin, &other),
            Verdict::Allowed(Acting::PlatformAdmin)
        );
        assert_eq!(platform.visible_projects(), None);
    }
}
