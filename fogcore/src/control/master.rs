//! The master's REST API (JSON over HTTP) on [`Control`]. Every route is one row of [`routes`]:
//! the router, the token check and the OpenAPI document (`GET /api/v1/openapi.json`) are all
//! built from that table, so what is documented is what is served.
//!
//! Tokens travel as `Authorization: Bearer TOKEN`. Admin routes need an admin token; node routes
//! (check-in, progress, check-out, heartbeat, a node's tasks) take an admin token or the token of
//! the node concerned; only `/api/v1/health` and the OpenAPI document are public. Errors are
//! `{"code": "...", "message": "..."}` with a status saying whose fault it was.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, delete, get, post, put};
use axum::{Extension, Json};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::control::db::{TaskFilter, now_ms};
use crate::control::model::{
    CheckIn, CheckOut, CopyReport, Group, Heartbeat, Host, Image, NewTask, Node, ProgressReport, Registration,
    Schedule, TaskId,
};
use crate::control::service::{Caller, Control};
use crate::error::{Error, Result};

/// The prefix of every route.
pub const API: &str = "/api/v1";

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone.
    Public,
    /// Admin tokens.
    Admin,
    /// Admin tokens and node tokens (a node only for its own hosts).
    Node,
}

impl Access {
    fn name(self) -> &'static str {
        match self {
            Access::Public => "public",
            Access::Admin => "admin",
            Access::Node => "node",
        }
    }
}

/// One route of the API, as documented.
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

type App = Arc<Control>;

/// An error as the API answers it.
#[derive(Debug)]
pub struct ApiError(pub Error);

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

/// The HTTP status of an error.
pub fn status_of(e: &Error) -> StatusCode {
    match e.code() {
        "invalid" => StatusCode::BAD_REQUEST,
        "not_found" => StatusCode::NOT_FOUND,
        "conflict" | "illegal_transition" => StatusCode::CONFLICT,
        "unauthorized" => StatusCode::UNAUTHORIZED,
        "forbidden" => StatusCode::FORBIDDEN,
        "upstream" => StatusCode::BAD_GATEWAY,
        "database" => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
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

type ApiResult<T> = std::result::Result<Json<T>, ApiError>;

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

fn task_id(text: &str) -> std::result::Result<TaskId, ApiError> {
    text.parse()
        .map_err(|_| ApiError(Error::invalid("task id", text, "not a number")))
}

fn own_node(caller: &Caller, node: &str) -> std::result::Result<(), ApiError> {
    match caller {
        Caller::Node(me) if me != node => Err(ApiError(Error::Forbidden(format!(
            "node {me} cannot act for node {node}"
        )))),
        _ => Ok(()),
    }
}

fn ok_none() -> Json<Value> {
    Json(json!({ "ok": true }))
}

fn table() -> Vec<(Route, MethodRouter<App>)> {
    let mut rows = control_table();
    rows.extend(crate::control::chunks::table::<App>());
    rows
}

fn control_table() -> Vec<(Route, MethodRouter<App>)> {
    use Access::{Admin, Node as NodeAccess, Public};
    let r = |method: Method, path: &str, access, summary, body, reply| Route {
        method,
        path: format!("{API}{path}"),
        access,
        summary,
        body,
        reply,
    };
    vec![
        (
            r(Method::GET, "/health", Public, "The master is up", None, "Health"),
            get(|| async { Json(json!({ "ok": true, "version": env!("CARGO_PKG_VERSION") })) }),
        ),
        (
            r(Method::GET, "/openapi.json", Public, "This document", None, "OpenApi"),
            get(|| async { Json(openapi()) }),
        ),
        // hosts
        (
            r(Method::GET, "/hosts", Admin, "List hosts", None, "HostList"),
            get(|State(c): State<App>| async move { ApiResult::Ok(Json(c.db().hosts().await?)) }),
        ),
        (
            r(Method::POST, "/hosts", Admin, "Add a host", Some("Host"), "Host"),
            post(
                |State(c): State<App>, Body(h): Body<Host>| async move { ApiResult::Ok(Json(c.create_host(h).await?)) },
            ),
        ),
        (
            r(Method::GET, "/hosts/{name}", Admin, "One host", None, "Host"),
            get(
                |State(c): State<App>, Path(n): Path<String>| async move { ApiResult::Ok(Json(c.db().host(&n).await?)) },
            ),
        ),
        (
            r(
                Method::PUT,
                "/hosts/{name}",
                Admin,
                "Replace a host",
                Some("Host"),
                "Host",
            ),
            put(
                |State(c): State<App>, Path(n): Path<String>, Body(h): Body<Host>| async move {
                    ApiResult::Ok(Json(c.update_host(&n, h).await?))
                },
            ),
        ),
        (
            r(Method::DELETE, "/hosts/{name}", Admin, "Remove a host", None, "Ok"),
            delete(|State(c): State<App>, Path(n): Path<String>| async move {
                c.delete_host(&n).await?;
                ApiResult::Ok(ok_none())
            }),
        ),
        (
            r(
                Method::POST,
                "/hosts/{name}/wake",
                Admin,
                "Ask the host's node to wake it (Wake-on-LAN)",
                None,
                "Wake",
            ),
            post(
                |State(c): State<App>, Path(n): Path<String>| async move { ApiResult::Ok(Json(c.wake_host(&n).await?)) },
            ),
        ),
        // groups
        (
            r(Method::GET, "/groups", Admin, "List groups", None, "GroupList"),
            get(|State(c): State<App>| async move { ApiResult::Ok(Json(c.db().groups().await?)) }),
        ),
        (
            r(Method::POST, "/groups", Admin, "Add a group", Some("Group"), "Group"),
            post(
                |State(c): State<App>, Body(g): Body<Group>| async move { ApiResult::Ok(Json(c.create_group(&g).await?)) },
            ),
        ),
        (
            r(Method::GET, "/groups/{name}", Admin, "One group", None, "Group"),
            get(
                |State(c): State<App>, Path(n): Path<String>| async move { ApiResult::Ok(Json(c.db().group(&n).await?)) },
            ),
        ),
        (
            r(
                Method::DELETE,
                "/groups/{name}",
                Admin,
                "Remove a group (its hosts stay)",
                None,
                "Ok",
            ),
            delete(|State(c): State<App>, Path(n): Path<String>| async move {
                c.db().delete_group(&n).await?;
                ApiResult::Ok(ok_none())
            }),
        ),
        (
            r(
                Method::POST,
                "/groups/{name}/tasks",
                Admin,
                "One task per host of the group",
                Some("NewTask"),
                "GroupTasks",
            ),
            post(
                |State(c): State<App>, Path(n): Path<String>, Body(t): Body<NewTask>| async move {
                    ApiResult::Ok(Json(c.create_group_task(&n, &t).await?))
                },
            ),
        ),
        // images
        (
            r(Method::GET, "/images", Admin, "List images", None, "ImageList"),
            get(|State(c): State<App>| async move { ApiResult::Ok(Json(c.db().images().await?)) }),
        ),
        (
            r(
                Method::POST,
                "/images",
                Admin,
                "Add an image record",
                Some("Image"),
                "Image",
            ),
            post(
                |State(c): State<App>, Body(i): Body<Image>| async move { ApiResult::Ok(Json(c.create_image(&i).await?)) },
            ),
        ),
        (
            r(Method::GET, "/images/{name}", Admin, "One image", None, "Image"),
            get(
                |State(c): State<App>, Path(n): Path<String>| async move { ApiResult::Ok(Json(c.db().image(&n).await?)) },
            ),
        ),
        (
            r(
                Method::PUT,
                "/images/{name}",
                Admin,
                "Replace an image record (placement)",
                Some("Image"),
                "Image",
            ),
            put(
                |State(c): State<App>, Path(n): Path<String>, Body(i): Body<Image>| async move {
                    ApiResult::Ok(Json(c.update_image(&n, &i).await?))
                },
            ),
        ),
        (
            r(
                Method::DELETE,
                "/images/{name}",
                Admin,
                "Remove an image record",
                None,
                "Ok",
            ),
            delete(|State(c): State<App>, Path(n): Path<String>| async move {
                c.delete_image(&n).await?;
                ApiResult::Ok(ok_none())
            }),
        ),
        (
            r(
                Method::GET,
                "/images/{name}/copies",
                Admin,
                "Each node's copy of the image",
                None,
                "ImageCopyList",
            ),
            get(|State(c): State<App>, Path(n): Path<String>| async move {
                c.db().image(&n).await?;
                ApiResult::Ok(Json(c.db().image_copies(&n).await?))
            }),
        ),
        (
            r(
                Method::PUT,
                "/images/{name}/copies/{node}",
                NodeAccess,
                "A node reports its copy of the image: replicating (bytes), complete, failed (reason)",
                Some("CopyReport"),
                "Ok",
            ),
            put(
                |State(c): State<App>,
                 Extension(caller): Extension<Caller>,
                 Path((image, node)): Path<(String, String)>,
                 Body(report): Body<CopyReport>| async move {
                    own_node(&caller, &node)?;
                    c.db().set_copy_state(&report, &image, &node).await?;
                    ApiResult::Ok(ok_none())
                },
            ),
        ),
        // nodes
        (
            r(Method::GET, "/nodes", Admin, "List nodes", None, "NodeList"),
            get(|State(c): State<App>| async move { ApiResult::Ok(Json(c.db().nodes().await?)) }),
        ),
        (
            r(
                Method::POST,
                "/nodes",
                Admin,
                "Add a node; answers its token once",
                Some("Node"),
                "NodeToken",
            ),
            post(
                |State(c): State<App>, Body(n): Body<Node>| async move { ApiResult::Ok(Json(c.create_node(&n).await?)) },
            ),
        ),
        (
            r(Method::GET, "/nodes/{name}", Admin, "One node", None, "Node"),
            get(
                |State(c): State<App>, Path(n): Path<String>| async move { ApiResult::Ok(Json(c.db().node(&n).await?)) },
            ),
        ),
        (
            r(
                Method::PUT,
                "/nodes/{name}",
                Admin,
                "Replace a node's settings",
                Some("Node"),
                "Node",
            ),
            put(
                |State(c): State<App>, Path(n): Path<String>, Body(node): Body<Node>| async move {
                    ApiResult::Ok(Json(c.update_node(&n, &node).await?))
                },
            ),
        ),
        (
            r(
                Method::DELETE,
                "/nodes/{name}",
                Admin,
                "Remove a node and its tokens",
                None,
                "Ok",
            ),
            delete(|State(c): State<App>, Path(n): Path<String>| async move {
                c.delete_node(&n).await?;
                ApiResult::Ok(ok_none())
            }),
        ),
        (
            r(
                Method::POST,
                "/nodes/{name}/token",
                Admin,
                "Revoke the node's tokens and issue a new one",
                None,
                "NodeToken",
            ),
            post(
                |State(c): State<App>, Path(n): Path<String>| async move { ApiResult::Ok(Json(c.node_token(&n).await?)) },
            ),
        ),
        (
            r(
                Method::POST,
                "/nodes/{name}/heartbeat",
                NodeAccess,
                "A node reports it is alive, its free space and images",
                Some("Heartbeat"),
                "Node",
            ),
            post(
                |State(c): State<App>,
                 Extension(caller): Extension<Caller>,
                 Path(n): Path<String>,
                 Body(b): Body<Heartbeat>| async move {
                    own_node(&caller, &n)?;
                    ApiResult::Ok(Json(c.heartbeat(&n, &b).await?))
                },
            ),
        ),
        (
            r(
                Method::GET,
                "/nodes/{name}/tasks",
                NodeAccess,
                "Tasks not over of the node's hosts",
                None,
                "TaskList",
            ),
            get(
                |State(c): State<App>, Extension(caller): Extension<Caller>, Path(n): Path<String>| async move {
                    own_node(&caller, &n)?;
                    ApiResult::Ok(Json(c.node_tasks(&n).await?))
                },
            ),
        ),
        (
            r(
                Method::GET,
                "/nodes/{name}/boot-tasks",
                NodeAccess,
                "Tasks not over of the node's hosts, with each host's MACs and kernel arguments",
                None,
                "BootTaskList",
            ),
            get(
                |State(c): State<App>, Extension(caller): Extension<Caller>, Path(n): Path<String>| async move {
                    own_node(&caller, &n)?;
                    ApiResult::Ok(Json(c.node_boot_tasks(&n).await?))
                },
            ),
        ),
        (
            r(
                Method::GET,
                "/nodes/{name}/copies",
                NodeAccess,
                "The images placed on the node and where its copy of each stands",
                None,
                "ImageCopyList",
            ),
            get(
                |State(c): State<App>, Extension(caller): Extension<Caller>, Path(n): Path<String>| async move {
                    own_node(&caller, &n)?;
                    c.db().node(&n).await?;
                    ApiResult::Ok(Json(c.db().node_copies(&n).await?))
                },
            ),
        ),
        (
            r(
                Method::POST,
                "/nodes/{name}/wakes",
                NodeAccess,
                "The node claims its hosts' wake requests: returned once, then removed",
                None,
                "WakeList",
            ),
            post(
                |State(c): State<App>, Extension(caller): Extension<Caller>, Path(n): Path<String>| async move {
                    own_node(&caller, &n)?;
                    ApiResult::Ok(Json(c.take_wakes(&n).await?))
                },
            ),
        ),
        // tasks
        (
            r(
                Method::GET,
                "/tasks",
                Admin,
                "List tasks, newest first (?state=&host=&node=&open_only=&limit=)",
                None,
                "TaskList",
            ),
            get(|State(c): State<App>, QueryArgs(f): QueryArgs<TaskFilter>| async move {
                ApiResult::Ok(Json(c.tasks(&f).await?))
            }),
        ),
        (
            r(
                Method::POST,
                "/tasks",
                Admin,
                "Create a task for a host",
                Some("NewTask"),
                "Task",
            ),
            post(|State(c): State<App>, Body(t): Body<NewTask>| async move {
                ApiResult::Ok(Json(c.create_task(&t).await?))
            }),
        ),
        (
            r(Method::GET, "/tasks/{id}", Admin, "One task", None, "Task"),
            get(|State(c): State<App>, Path(id): Path<String>| async move {
                ApiResult::Ok(Json(c.task(task_id(&id)?).await?))
            }),
        ),
        (
            r(
                Method::GET,
                "/tasks/{id}/history",
                Admin,
                "A task's state changes",
                None,
                "TaskEventList",
            ),
            get(|State(c): State<App>, Path(id): Path<String>| async move {
                let id = task_id(&id)?;
                c.db().task(id).await?;
                ApiResult::Ok(Json(c.db().task_events(id).await?))
            }),
        ),
        (
            r(
                Method::POST,
                "/tasks/{id}/cancel",
                Admin,
                "Cancel a task not over",
                None,
                "Task",
            ),
            post(|State(c): State<App>, Path(id): Path<String>| async move {
                ApiResult::Ok(Json(c.cancel_task(task_id(&id)?).await?))
            }),
        ),
        (
            r(
                Method::POST,
                "/tasks/{id}/progress",
                NodeAccess,
                "The agent's progress on its running task",
                Some("ProgressReport"),
                "Task",
            ),
            post(
                |State(c): State<App>,
                 Extension(caller): Extension<Caller>,
                 Path(id): Path<String>,
                 Body(p): Body<ProgressReport>| async move {
                    ApiResult::Ok(Json(c.progress(&caller, task_id(&id)?, &p).await?))
                },
            ),
        ),
        (
            r(
                Method::POST,
                "/tasks/{id}/checkout",
                NodeAccess,
                "The agent's last word: complete or failed",
                Some("CheckOut"),
                "Task",
            ),
            post(
                |State(c): State<App>,
                 Extension(caller): Extension<Caller>,
                 Path(id): Path<String>,
                 Body(o): Body<CheckOut>| async move {
                    ApiResult::Ok(Json(c.check_out(&caller, task_id(&id)?, &o).await?))
                },
            ),
        ),
        (
            r(
                Method::POST,
                "/checkin",
                NodeAccess,
                "An agent asks for its host's task: start, or its place in line",
                Some("CheckIn"),
                "CheckInReply",
            ),
            post(
                |State(c): State<App>, Extension(caller): Extension<Caller>, Body(i): Body<CheckIn>| async move {
                    ApiResult::Ok(Json(c.check_in(&caller, &i).await?))
                },
            ),
        ),
        (
            r(
                Method::POST,
                "/register",
                NodeAccess,
                "Quick registration: create the host of these MACs (node: the caller), or update its inventory",
                Some("Registration"),
                "Registered",
            ),
            post(
                |State(c): State<App>, Extension(caller): Extension<Caller>, Body(reg): Body<Registration>| async move {
                    ApiResult::Ok(Json(c.register(&caller, &reg).await?))
                },
            ),
        ),
        // schedules
        (
            r(Method::GET, "/schedules", Admin, "List schedules", None, "ScheduleList"),
            get(|State(c): State<App>| async move { ApiResult::Ok(Json(c.db().schedules().await?)) }),
        ),
        (
            r(
                Method::POST,
                "/schedules",
                Admin,
                "Schedule a task (at a time, or cron) for a host or a group",
                Some("Schedule"),
                "Schedule",
            ),
            post(|State(c): State<App>, Body(s): Body<Schedule>| async move {
                ApiResult::Ok(Json(c.create_schedule(&s).await?))
            }),
        ),
        (
            r(
                Method::DELETE,
                "/schedules/{id}",
                Admin,
                "Remove a schedule",
                None,
                "Ok",
            ),
            delete(|State(c): State<App>, Path(id): Path<String>| async move {
                let id = id
                    .parse::<i64>()
                    .map_err(|_| ApiError(Error::invalid("schedule id", &id, "not a number")))?;
                c.db().delete_schedule(id).await?;
                ApiResult::Ok(ok_none())
            }),
        ),
    ]
}

impl crate::control::chunks::HasStore for App {
    fn image_store(&self) -> Result<Arc<dyn crate::imaging::replica::ImageStore>> {
        Control::image_store(self)
    }

    async fn manifest_stored(&self, name: &str) -> Result<()> {
        // An image the master has no record of (a plain replication) has no copies to mark.
        self.db().mark_copies_stale(name).await
    }
}

/// Every route, as documented.
pub fn routes() -> Vec<Route> {
    table().into_iter().map(|(route, _)| route).collect()
}

async fn authorize(
    State((control, access)): State<(App, Access)>,
    headers: HeaderMap,
    mut req: Request,
    next: Next,
) -> Response {
    if access == Access::Public {
        return next.run(req).await;
    }
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return ApiError(Error::Unauthorized("no token: send Authorization: Bearer TOKEN".into())).into_response();
    };
    let caller = match control.authenticate(token).await {
        Ok(caller) => caller,
        Err(e) => return ApiError(e).into_response(),
    };
    if let (Access::Admin, Caller::Node(node)) = (access, &caller) {
        return ApiError(Error::Forbidden(format!("node {node}'s token cannot use admin routes"))).into_response();
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

/// The API's router over `control`.
pub fn router(control: Arc<Control>) -> Router {
    let mut router = Router::new();
    for (route, method_router) in table() {
        let guard = middleware::from_fn_with_state((control.clone(), route.access), authorize);
        router = router.route(&route.path, method_router.route_layer(guard));
    }
    router
        .fallback(|method: Method, uri: axum::http::Uri| async move {
            ApiError(Error::not_found("route", format!("{method} {uri}")))
        })
        .method_not_allowed_fallback(|method: Method, uri: axum::http::Uri| async move {
            let body = Json(json!({
                "code": "method_not_allowed",
                "message": format!("{uri} does not take {method}"),
            }));
            (StatusCode::METHOD_NOT_ALLOWED, body)
        })
        .with_state(control)
}

/// The OpenAPI 3.1 document of [`routes`].
pub fn openapi() -> Value {
    let mut paths = serde_json::Map::new();
    for route in routes() {
        let params: Vec<Value> = route
            .path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }))
            .collect();
        let mut op = json!({
            "summary": route.summary,
            "operationId": format!("{}{}", route.method.as_str().to_lowercase(), route.path.replace(['/', '{', '}', '.'], "_")),
            "x-fog-access": route.access.name(),
            "security": if route.access == Access::Public { json!([]) } else { json!([{ "bearer": [] }]) },
            "parameters": params,
            "responses": {
                "200": { "description": "OK", "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{}", route.reply) } } } },
                "default": { "description": "An error", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } } },
            },
        });
        if let (Some(body), Some(op)) = (route.body, op.as_object_mut()) {
            op.insert(
                "requestBody".into(),
                json!({ "required": true, "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{body}") } } } }),
            );
        }
        let entry = paths.entry(route.path.clone()).or_insert_with(|| json!({}));
        if let Some(entry) = entry.as_object_mut() {
            entry.insert(route.method.as_str().to_lowercase(), op);
        }
    }
    let mut schemas = serde_json::Map::new();
    for route in routes() {
        for name in route.body.into_iter().chain([route.reply]) {
            schemas.entry(name.to_string()).or_insert_with(
                || json!({ "description": format!("fogcore::control::model::{name} (JSON, see the crate docs)") }),
            );
        }
    }
    schemas.insert(
        "Error".into(),
        json!({ "type": "object", "required": ["code", "message"], "properties": {
            "code": { "type": "string", "enum": ["invalid", "not_found", "conflict", "illegal_transition", "unauthorized", "forbidden", "database", "method_not_allowed", "internal"] },
            "message": { "type": "string" } } }),
    );
    json!({
        "openapi": "3.1.0",
        "info": { "title": "fog master", "version": env!("CARGO_PKG_VERSION") },
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": schemas,
        },
        "paths": paths,
    })
}

/// A running master: the API on a socket and the scheduler.
pub struct Master {
    addr: SocketAddr,
    control: Arc<Control>,
    cancel: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// How often due schedules are looked for.
pub const SCHEDULE_TICK: Duration = Duration::from_secs(15);

impl Master {
    /// Binds `listen` and serves the API and the scheduler until [`Master::stop`].
    pub async fn start(control: Arc<Control>, listen: SocketAddr) -> Result<Master> {
        let listener = TcpListener::bind(listen).await.map_err(|e| {
            let reason = if e.kind() == std::io::ErrorKind::AddrInUse {
                format!("port {} is already in use", listen.port())
            } else {
                e.to_string()
            };
            Error::invalid("listen address", listen.to_string(), reason)
        })?;
        let addr = listener.local_addr().map_err(|e| Error::io("master socket", e))?;
        let cancel = CancellationToken::new();
        let app = router(control.clone());
        let stop = cancel.clone();
        let server = tokio::spawn(async move {
            let result = axum::serve(listener, app)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
            if let Err(e) = result {
                tracing::warn!("master: {e}");
            }
        });
        let stop = cancel.clone();
        let ticker = control.clone();
        let scheduler = tokio::spawn(async move {
            let mut tick = tokio::time::interval(SCHEDULE_TICK);
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = tick.tick() => {
                        match ticker.run_schedules(now_ms()).await {
                            Ok(r) if !r.created.is_empty() || !r.skipped.is_empty() => tracing::info!(
                                created = r.created.len(), skipped = r.skipped.len(), "schedules fired"
                            ),
                            Ok(_) => {}
                            Err(e) => tracing::warn!("schedules: {e}"),
                        }
                    }
                }
            }
        });
        Ok(Master {
            addr,
            control,
            cancel,
            tasks: vec![server, scheduler],
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its logic and database.
    pub fn control(&self) -> &Arc<Control> {
        &self.control
    }

    /// A token that stops it when cancelled.
    pub fn cancellation(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Stops serving (open requests get 5 seconds) and closes the database.
    pub async fn stop(self) -> Result<()> {
        self.cancel.cancel();
        for task in self.tasks {
            if tokio::time::timeout(Duration::from_secs(5), task).await.is_err() {
                tracing::warn!("master: a task did not stop within 5 s");
            }
        }
        if let Err(e) = self.control.flush().await {
            tracing::warn!("master: writing the last progress reports: {e}");
        }
        self.control.db().close().await;
        Ok(())
    }
}
