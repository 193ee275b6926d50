//! The authenticated caller of a request.

use std::future::Future;
use std::pin::Pin;

use actix_web::{FromRequest, HttpMessage, HttpRequest, dev::Payload, web};
use slipway_http::Problem;
use slipway_ids::TokenId;
use sqlx::PgPool;

use super::{Role, tokens};

/// Who is calling: resolved from `Authorization: Bearer <token>`. Extracting it answers 401
/// when the header is missing or the token unknown or revoked. It is also put in the request's
/// extensions, where the audit middleware finds it.
#[derive(Debug, Clone)]
pub struct Caller {
    pub token_id: TokenId,
    pub token_name: String,
    pub role: Role,
}

impl Caller {
    /// 403 unless the caller's role includes `needed`.
    pub fn require(&self, needed: Role) -> Result<(), Problem> {
        if self.role >= needed {
            Ok(())
        } else {
            Err(Problem::forbidden(format!(
                "this action needs the `{needed}` role; the token `{}` has `{}`",
                self.token_name, self.role
            )))
        }
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
            let token = bearer(&req)?;
            let pool = req
                .app_data::<web::Data<PgPool>>()
                .ok_or_else(Problem::internal)?;
            let found = tokens::lookup(pool, &token).await.map_err(|e| {
                tracing::error!(error = %e, "token lookup failed");
                Problem::unavailable("cannot check the token right now; retry shortly")
            })?;
            let (token_id, token_name, role) =
                found.ok_or_else(|| Problem::unauthorized("the token is unknown or revoked"))?;
            let caller = Caller {
                token_id,
                token_name,
                role,
            };
            req.extensions_mut().insert(caller.clone());
            Ok(caller)
        })
    }
}
