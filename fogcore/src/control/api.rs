//! What every HTTP server of the control plane shares: who is calling ([`Caller`]), who may call a
//! route ([`Access`]), the route row ([`Route`]), the one token check ([`Authenticate`] and
//! [`guard`]), and errors as the wire carries them (`{"code", "message"}`, [`ApiError`]).
//!
//! The master, the node's gateway and a stand-alone chunk server each build their routers from
//! route rows, each row behind [`guard`] with its [`Access`], so no route can lack a token check.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, RawPathParams, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::de::DeserializeOwned;

use crate::control::model::{AuditEntry, Role, TaskId};
use crate::error::{Error, Result};

/// The prefix of every route.
pub const API: &str = "/api/v1";

/// Who is asking, as an [`Authenticate`] found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A person: a user signed in to the web pages, or an API token (an admin's or a user's),
    /// with what their role allows.
    User {
        /// How the audit log names them: `user:NAME`, `token:NAME`, `user:OWNER/token:NAME`.
        actor: String,
        /// What they may do.
        role: Role,
    },
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
    /// An admin, named in the audit log as `actor`.
    pub fn admin(actor: impl Into<String>) -> Caller {
        Caller::User {
            actor: actor.into(),
            role: Role::Admin,
        }
    }

    /// The node whose rights the caller has; `None` for a person.
    pub fn node(&self) -> Option<&str> {
        match self {
            Caller::User { .. } => None,
            Caller::Node(node) | Caller::Task { node, .. } => Some(node),
        }
    }

    /// Who it is, as the audit log names it: `user:NAME`, `token:NAME`, `node:NAME`,
    /// `task:ID@NODE`.
    pub fn actor(&self) -> String {
        match self {
            Caller::User { actor, .. } => actor.clone(),
            Caller::Node(node) => format!("node:{node}"),
            Caller::Task { node, task } => format!("task:{task}@{node}"),
        }
    }

    /// Refused unless the caller is a person whose role is `needed` or above.
    pub fn check_role(&self, needed: Role) -> Result<()> {
        match self {
            Caller::User { role, .. } if *role >= needed => Ok(()),
            Caller::User { actor, role } => Err(Error::Forbidden(format!(
                "{actor} is {}: this needs the {needed} role",
                article(*role)
            ))),
            Caller::Node(_) | Caller::Task { .. } => Err(Error::Forbidden(format!(
                "{}'s token cannot use the routes of people",
                self.actor()
            ))),
        }
    }

    /// Refused unless the caller is a person or acts for `node`.
    pub fn check_node(&self, node: &str) -> Result<()> {
        match self.node() {
            Some(me) if me != node => Err(Error::Forbidden(format!("node {me} cannot act for node {node}"))),
            _ => Ok(()),
        }
    }
}

/// `a viewer`, `an operator`, `an admin`.
fn article(role: Role) -> String {
    match role {
        Role::Viewer => "a viewer".into(),
        Role::Operator | Role::Admin => format!("an {role}"),
    }
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone.
    Public,
    /// People (users' and admins' tokens, signed-in users) with the role the route needs: see
    /// [`role_needed`].
    User,
    /// People and node tokens (a node only for its own hosts; the service checks that).
    Node,
}

impl Access {
    /// The name the OpenAPI document gives it (`x-fog-access`).
    pub fn name(self) -> &'static str {
        match self {
            Access::Public => "public",
            Access::User => "user",
            Access::Node => "node",
        }
    }
}

/// Where operators may change things (under [`API`]); everything else people change (nodes,
/// users, tokens) needs an admin.
const OPERATOR_AREAS: [&str; 6] = ["/hosts", "/groups", "/images", "/tasks", "/schedules", "/registrations"];

/// What only admins may read (under [`API`]).
const ADMIN_READS: [&str; 3] = ["/tokens", "/audit", "/users"];

/// The role a person needs for `method` on `path` (a route's path, under [`API`]): reading
/// needs a viewer (but the audit log, tokens and users need an admin); changing hosts, groups,
/// images, tasks and schedules needs an operator; the rest an admin. The one place the API and the
/// web pages take roles from.
pub fn role_needed(method: &Method, path: &str) -> Role {
    let path = path.strip_prefix(API).unwrap_or(path);
    let under = |areas: &[&str]| {
        areas
            .iter()
            .any(|area| path == *area || path.strip_prefix(area).is_some_and(|rest| rest.starts_with('/')))
    };
    if method == Method::GET || method == Method::HEAD {
        if under(&ADMIN_READS) { Role::Admin } else { Role::Viewer }
    } else if under(&OPERATOR_AREAS) {
        Role::Operator
    } else {
        Role::Admin
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
    /// Its query string's fields, if it reads any.
    pub query: Option<SchemaFn>,
    /// The body it takes, if any.
    pub body: Option<Payload>,
    /// What it answers.
    pub reply: Payload,
    /// Called every few seconds by every agent or node (progress, check-ins, heartbeats, chunk
    /// batches): its calls stay out of the audit log (but refusals), their effect shows in the
    /// task's history and the node's state.
    pub quiet: bool,
}

/// Makes a type's JSON schema, registering the types it names with the generator.
pub type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

/// What a route takes or answers, as its OpenAPI document describes it.
#[derive(Debug, Clone, Copy)]
pub enum Payload {
    /// JSON of a Rust type: its schema is derived from the type the handler reads or writes.
    Json(SchemaFn),
    /// Raw bytes (a manifest, a chunk batch), in a binary format described in words.
    Bytes(&'static str),
}

/// The JSON of `T`.
pub fn json<T: JsonSchema>() -> Payload {
    Payload::Json(|generator| generator.subschema_for::<T>())
}

/// The query string read into `T` (its fields are the parameters).
pub fn query<T: JsonSchema>() -> Option<SchemaFn> {
    Some(T::json_schema)
}

/// The answer of routes that only succeed: `{"ok": true}`.
#[derive(Debug, Clone, serde::Serialize, JsonSchema)]
pub struct Done {
    /// Always true.
    pub ok: bool,
}

/// The answer of routes that only succeed.
pub fn done() -> axum::Json<Done> {
    axum::Json(Done { ok: true })
}

/// Turns a bearer token into a [`Caller`], or refuses it (`Error::Unauthorized`), and keeps the
/// audit log of the calls [`guard`] lets through or refuses.
pub trait Authenticate: Clone + Send + Sync + 'static {
    /// Who holds `token`.
    fn authenticate(&self, token: &str) -> impl Future<Output = Result<Caller>> + Send;

    /// Records a call (its `id` and `at` are the log's to set). Servers without an audit log
    /// keep nothing.
    fn record(&self, entry: AuditEntry) -> impl Future<Output = ()> + Send {
        let _ = entry;
        std::future::ready(())
    }
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

/// The actor the audit log names for a call without a known token.
pub const ANONYMOUS: &str = "anonymous";

/// What [`guard`] knows of the route it stands in front of.
#[derive(Debug, Clone)]
pub struct Guarded {
    /// Who may call it.
    pub access: Access,
    /// The role a person needs ([`role_needed`]).
    pub role: Role,
    /// How the audit log names it: `POST /api/v1/hosts`.
    pub action: Arc<str>,
    /// Whether calls let through are recorded (mutating routes that are not [`Route::quiet`]).
    pub audited: bool,
}

impl Guarded {
    /// The guard of `route`.
    pub fn of(route: &Route) -> Self {
        Guarded {
            access: route.access,
            role: role_needed(&route.method, &route.path),
            action: format!("{} {}", route.method, route.path).into(),
            audited: route.method != Method::GET && !route.quiet,
        }
    }
}

/// The token check in front of every route: public routes pass; others need a token that `auth`
/// knows and that the route's access allows. The [`Caller`] goes into the request's extensions
/// for the handler to hand to the service. Every refusal, and every call of an audited route,
/// goes to the audit log with who, what, on what, from where and how it ended.
pub async fn guard<A: Authenticate>(State((auth, check)): State<(A, Guarded)>, req: Request, next: Next) -> Response {
    if check.access == Access::Public {
        return next.run(req).await;
    }
    let (mut parts, body) = req.into_parts();
    let mut entry = AuditEntry {
        id: 0,
        at: 0,
        actor: ANONYMOUS.into(),
        action: check.action.to_string(),
        target: path_target(&mut parts).await,
        address: parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(peer)| peer.ip().to_string()),
        status: 0,
        result: String::new(),
    };
    let admitted = match bearer_token(&parts.headers) {
        None => Err(no_token()),
        Some(token) => match auth.authenticate(token).await {
            Ok(caller) => {
                entry.actor = caller.actor();
                match (check.access, &caller) {
                    // A node's own routes; the service checks which node.
                    (Access::Node, Caller::Node(_) | Caller::Task { .. }) => Ok(caller),
                    _ => caller.check_role(check.role).map(|()| caller),
                }
            }
            Err(e) => Err(e),
        },
    };
    let caller = match admitted {
        Ok(caller) => caller,
        Err(e) => {
            entry.status = status_of(&e).as_u16();
            entry.result = e.to_string();
            auth.record(entry).await;
            return ApiError(e).into_response();
        }
    };
    parts.extensions.insert(caller);
    let body = if check.audited && entry.target.is_empty() {
        let (body, name) = body_name(&parts, body).await;
        entry.target = name.unwrap_or_default();
        body
    } else {
        body
    };
    let response = next.run(Request::from_parts(parts, body)).await;
    // A handler's refusal (a node reading an image not its own) is recorded on any route.
    let refused = matches!(response.status(), StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN);
    if !(check.audited || refused) {
        return response;
    }
    let (response, result) = outcome(response).await;
    entry.status = response.status().as_u16();
    entry.result = result;
    auth.record(entry).await;
    response
}

/// The path's names and ids, `/`-joined: what a call acts on.
async fn path_target(parts: &mut Parts) -> String {
    match RawPathParams::from_request_parts(parts, &()).await {
        Ok(params) => params.iter().map(|(_, value)| value).collect::<Vec<_>>().join("/"),
        Err(_) => String::new(),
    }
}

/// The `name` (or `host`) a small JSON body gives, and the body to pass on.
async fn body_name(parts: &Parts, body: axum::body::Body) -> (axum::body::Body, Option<String>) {
    let json = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    let small = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
        .is_some_and(|n| n <= JSON_BODY_LIMIT);
    if !(json && small) {
        return (body, None);
    }
    let Ok(bytes) = axum::body::to_bytes(body, JSON_BODY_LIMIT).await else {
        return (axum::body::Body::empty(), None);
    };
    let name = serde_json::from_slice::<serde_json::Value>(&bytes).ok().and_then(|v| {
        ["name", "host"]
            .iter()
            .find_map(|field| v.get(field).and_then(|n| n.as_str()).map(str::to_string))
    });
    (
        axum::body::Body::from(bytes),
        name.map(|n| n.chars().take(128).collect()),
    )
}

/// `ok`, or the message of the error the response carries, and the response to send.
async fn outcome(response: Response) -> (Response, String) {
    if response.status().is_success() {
        return (response, "ok".into());
    }
    let (parts, body) = response.into_parts();
    // Error bodies are a short `{code, message}`; none comes near the JSON limit.
    let bytes = axum::body::to_bytes(body, JSON_BODY_LIMIT).await.unwrap_or_default();
    let message = serde_json::from_slice::<ErrorBody>(&bytes)
        .map(|e| e.message)
        .unwrap_or_else(|_| parts.status.to_string());
    (Response::from_parts(parts, axum::body::Body::from(bytes)), message)
}

/// Compares secrets in time that does not depend on where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The body of every error answer.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, JsonSchema)]
pub struct ErrorBody {
    /// What kind of failure: stable, for programs.
    #[schemars(extend("enum" = Error::CODES))]
    pub code: String,
    /// What went wrong, naming the input: for people.
    pub message: String,
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
        let body = Json(ErrorBody {
            code: self.0.code().into(),
            message: self.0.to_string(),
        });
        if status == StatusCode::UNAUTHORIZED {
            (status, [(header::WWW_AUTHENTICATE, "Bearer")], body).into_response()
        } else {
            (status, body).into_response()
        }
    }
}

/// A handler's result: JSON, or a `{code, message}` error.
pub type ApiResult<T> = std::result::Result<Json<T>, ApiError>;

/// The largest JSON body a route takes (axum's default limit, which every JSON route keeps).
pub const JSON_BODY_LIMIT: usize = 2 * 1024 * 1024;

/// A JSON body whose rejection is a `{code, message}` error.
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> std::result::Result<Self, Self::Rejection> {
        match Json::<serde_json::Value>::from_request(req, state).await {
            // Every body is an object; serde would also read a struct from an array.
            Ok(Json(value)) if !value.is_object() => {
                Err(ApiError(Error::invalid("request body", "", "must be a JSON object")))
            }
            Ok(Json(mut value)) => {
                whole_numbers_as_integers(&mut value);
                serde_path_to_error::deserialize(value)
                    .map(Body)
                    .map_err(|e| ApiError(Error::invalid("request body", "", e.to_string())))
            }
            Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(ApiError(Error::TooLarge {
                what: "the request body".into(),
                limit: JSON_BODY_LIMIT,
            })),
            Err(rejection) => Err(ApiError(Error::invalid("request body", "", rejection.body_text()))),
        }
    }
}

/// `f` as an integer when it is a whole number an `i64` holds exactly.
fn whole_integer(f: f64) -> Option<i64> {
    (f.fract() == 0.0 && f.abs() < 9_223_372_036_854_775_808.0).then_some(f as i64)
}

/// A numeric id in a path (a task's, a schedule's), named `what` in the error. The document
/// calls path ids integers, and JSON Schema counts `5.0` as one, so it is read as 5, as in bodies.
pub fn path_id(what: &'static str, text: &str) -> Result<i64> {
    text.parse()
        .ok()
        .or_else(|| text.parse::<f64>().ok().and_then(whole_integer))
        .ok_or_else(|| Error::invalid(what, text, "not a number"))
}

/// JSON Schema counts `5.0` as an integer; serde's integer fields refuse it. Whole numbers
/// written with a fraction become integers (where an integer holds them exactly), so every body
/// the document calls valid is read.
fn whole_numbers_as_integers(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::Number(n) if n.is_f64() => {
            if let Some(i) = n.as_f64().and_then(whole_integer) {
                *value = Value::from(i);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(whole_numbers_as_integers),
        Value::Object(fields) => fields.values_mut().for_each(whole_numbers_as_integers),
        _ => {}
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_ids_are_integers_as_json_schema_counts_them() {
        assert_eq!(path_id("task id", "70072").expect("plain"), 70072);
        assert_eq!(path_id("task id", "70072.0").expect("a zero fraction"), 70072);
        assert_eq!(path_id("task id", "-3").expect("negative"), -3);
        for bad in ["70072.5", "x", "", "1e400", "NaN", "inf", "9223372036854775808.0"] {
            let e = path_id("schedule id", bad).expect_err(bad).to_string();
            assert!(e.contains("schedule id") && e.contains("not a number"), "{bad}: {e}");
        }
    }
}
