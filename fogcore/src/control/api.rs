//! What every HTTP server of the control plane shares: who is calling ([`Caller`]), who may call a
//! route ([`Access`]), the route row ([`Route`]), the one token check ([`Authenticate`] and
//! [`guard`]), and errors as the wire carries them (`{"code", "message"}`, [`ApiError`]).
//!
//! The master, the node's gateway and a stand-alone chunk server each build their routers from
//! route rows, each row behind [`guard`] with its [`Access`], so no route can lack a token check.

use std::future::Future;

use axum::Json;
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::control::model::TaskId;
use crate::error::{Error, Result};

/// The prefix of every route.
pub const API: &str = "/api/v1";

/// Who is asking, as an [`Authenticate`] found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// An admin token: everything.
    Admin,
    /// A node's token: check-ins, progress and check-outs of its hosts, its heartbeat, the store.
    Node(String),
    /// A task token (see `service::task_token`): its node's rights while the task is open.
    Task {
        /// The task's node.
        node: String,
        /// The task.
        task: TaskId,
    },
}

impl Caller {
    /// The node whose rights the caller has; `None` for an admin.
    pub fn node(&self) -> Option<&str> {
        match self {
            Caller::Admin => None,
            Caller::Node(node) | Caller::Task { node, .. } => Some(node),
        }
    }

    /// Refused unless the caller is an admin or acts for `node`.
    pub fn check_node(&self, node: &str) -> Result<()> {
        match self.node() {
            Some(me) if me != node => Err(Error::Forbidden(format!("node {me} cannot act for node {node}"))),
            _ => Ok(()),
        }
    }

    /// Refused unless the caller is an admin.
    pub fn check_admin(&self) -> Result<()> {
        match self.node() {
            None => Ok(()),
            Some(node) => Err(Error::Forbidden(format!("node {node}'s token cannot use admin routes"))),
        }
    }
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone.
    Public,
    /// Admin tokens.
    Admin,
    /// Admin tokens and node tokens (a node only for its own hosts; the service checks that).
    Node,
}

impl Access {
    /// The name the OpenAPI document gives it (`x-fog-access`).
    pub fn name(self) -> &'static str {
        match self {
            Access::Public => "public",
            Access::Admin => "admin",
            Access::Node => "node",
        }
    }

    /// Refused when `caller` may not call a route of this access.
    pub fn check(self, caller: &Caller) -> Result<()> {
        match self {
            Access::Public | Access::Node => Ok(()),
            Access::Admin => caller.check_admin(),
        }
    }
}

/// One route of an API, as documented.
#[derive(Debug, Clone)]
pub struct Route {
    /// HTTP method.
    pub method: Method,
    /// Path under the server root, with `{param}`s.
    pub path: String,
    /// Who may call it.
    pub access: Access,
    /// What it does.
    pub summary: &'static str,
    /// The JSON body's schema name, if it takes one.
    pub body: Option<&'static str>,
    /// The reply's schema name.
    pub reply: &'static str,
}

/// Turns a bearer token into a [`Caller`], or refuses it (`Error::Unauthorized`).
pub trait Authenticate: Clone + Send + Sync + 'static {
    /// Who holds `token`.
    fn authenticate(&self, token: &str) -> impl Future<Output = Result<Caller>> + Send;
}

/// The bearer token of a request, if it carries one.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// The error of a request without a token.
pub fn no_token() -> Error {
    Error::Unauthorized("no token: send Authorization: Bearer TOKEN".into())
}

/// The token check in front of every route: public routes pass; others need a token that `auth`
/// knows and that `access` allows. The [`Caller`] goes into the request's extensions for the
/// handler to hand to the service.
pub async fn guard<A: Authenticate>(
    State((auth, access)): State<(A, Access)>,
    mut req: Request,
    next: Next,
) -> Response {
    if access == Access::Public {
        return next.run(req).await;
    }
    let Some(token) = bearer_token(req.headers()) else {
        return ApiError(no_token()).into_response();
    };
    let caller = match auth.authenticate(token).await {
        Ok(caller) => caller,
        Err(e) => return ApiError(e).into_response(),
    };
    if let Err(e) = access.check(&caller) {
        return ApiError(e).into_response();
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

/// Compares secrets in time that does not depend on where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// An error as the API answers it.
#[derive(Debug)]
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

/// The HTTP status of an error (from its kind).
pub fn status_of(e: &Error) -> StatusCode {
    StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = status_of(&self.0);
        if status.is_server_error() {
            tracing::warn!("api: {}", self.0);
        }
        let body = Json(json!({ "code": self.0.code(), "message": self.0.to_string() }));
        if status == StatusCode::UNAUTHORIZED {
            (status, [(header::WWW_AUTHENTICATE, "Bearer")], body).into_response()
        } else {
            (status, body).into_response()
        }
    }
}

/// A handler's result: JSON, or a `{code, message}` error.
pub type ApiResult<T> = std::result::Result<Json<T>, ApiError>;

/// A JSON body whose rejection is a `{code, message}` error.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> std::result::Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(value)) => Ok(Body(value)),
            Err(rejection) => Err(ApiError(Error::invalid("request body", "", rejection.body_text()))),
        }
    }
}

/// A query string whose rejection is a `{code, message}` error.
pub struct QueryArgs<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for QueryArgs<T> {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> std::result::Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(QueryArgs(value)),
            Err(rejection) => Err(ApiError(Error::invalid(
                "query",
                parts.uri.query().unwrap_or(""),
                rejection.body_text(),
            ))),
        }
    }
}

/// The answer to a route that does not exist.
pub async fn no_route(method: Method, uri: axum::http::Uri) -> ApiError {
    ApiError(Error::not_found("route", format!("{method} {uri}")))
}
