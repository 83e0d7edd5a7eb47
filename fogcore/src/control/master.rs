//! The master's REST API (JSON over HTTP) on [`Control`]. Every route is one row of [`routes`]:
//! the router, the token check and the OpenAPI document (`GET /api/v1/openapi.json`) are all
//! built from that table, so what is documented is what is served.
//!
//! Tokens travel as `Authorization: Bearer TOKEN`. Admin routes need an admin token; node routes
//! (check-in, progress, check-out, heartbeat, a node's tasks) take an admin token or the token of
//! the node concerned; only `/api/v1/health` and the OpenAPI document are public. Errors are
//! `{"code": "...", "message": "..."}` with a status saying whose fault it was.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::middleware;
use axum::routing::{MethodRouter, delete, get, post, put};
use axum::serve::ListenerExt;
use axum::{Extension, Json};
use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::control::api::{
    API, Access, ApiError, ApiResult, Body, Caller, Done, ErrorBody, Guarded, Payload, QueryArgs, Route, SchemaFn,
    done, guard, json, no_route, query,
};
use crate::control::db::Db;
use crate::control::model::{
    AuditEntry, AuditQuery, BootTask, CheckIn, CheckInReply, CheckOut, CopyReport, Group, GroupTasks, Heartbeat,
    HistoryQuery, Host, HostQuery, Image, ImageCopy, ImageQuery, IssuedToken, NewTask, NewToken, Node, NodeToken, Page,
    ProgressReport, Registered, Registration, Schedule, Task, TaskEvent, TaskFilter, TaskId, TokenInfo, Wake,
};
use crate::control::service::Control;
use crate::error::{Error, Result};
use crate::imaging::replica::{ImageStore, LocalStore};
use crate::imaging::store::Store;
use crate::names::NAME_PATTERN;
use crate::net::tls::ServerTls;

type App = Arc<Control>;

fn task_id(text: &str) -> std::result::Result<TaskId, ApiError> {
    text.parse()
        .map_err(|_| ApiError(Error::invalid("task id", text, "not a number")))
}

fn table() -> Vec<(Route, MethodRouter<App>)> {
    let mut rows = control_table();
    rows.extend(crate::control::chunks::table::<App>());
    rows
}

/// Routes every agent or node calls every few seconds: their calls stay out of the audit log
/// ([`Route::quiet`]).
const QUIET: [&str; 5] = [
    "/checkin",
    "/tasks/{id}/progress",
    "/nodes/{name}/heartbeat",
    "/nodes/{name}/wakes",
    "/images/{name}/copies/{node}",
];

fn control_table() -> Vec<(Route, MethodRouter<App>)> {
    use Access::{Admin, Node as NodeAccess, Public};
    let r = |method: Method, path: &str, access, summary, body, reply| Route {
        method,
        path: format!("{API}{path}"),
        access,
        summary,
        query: None,
        body,
        reply,
        quiet: QUIET.contains(&path),
    };
    vec![
        (
            r(
                Method::GET,
                "/health",
                Public,
                "The master is up",
                None,
                json::<Health>(),
            ),
            get(|| async {
                Json(Health {
                    ok: true,
                    version: env!("CARGO_PKG_VERSION").into(),
                })
            }),
        ),
        (
            r(
                Method::GET,
                "/openapi.json",
                Public,
                "This document",
                None,
                Payload::Json(document_schema),
            ),
            get(|| async { Json(openapi()) }),
        ),
        // hosts
        (
            Route {
                query: query::<HostQuery>(),
                ..r(
                    Method::GET,
                    "/hosts",
                    Admin,
                    "A page of hosts by name: search (q) over name, MACs, address and inventory; filters",
                    None,
                    json::<Page<Host>>(),
                )
            },
            get(|State(c): State<App>, QueryArgs(q): QueryArgs<HostQuery>| async move {
                ApiResult::Ok(Json(c.host_page(&q).await?))
            }),
        ),
        (
            r(
                Method::POST,
                "/hosts",
                Admin,
                "Add a host",
                Some(json::<Host>()),
                json::<Host>(),
            ),
            post(
                |State(c): State<App>, Body(h): Body<Host>| async move { ApiResult::Ok(Json(c.create_host(h).await?)) },
            ),
        ),
        (
            r(Method::GET, "/hosts/{name}", Admin, "One host", None, json::<Host>()),
            get(|State(c): State<App>, Path(n): Path<String>| async move { ApiResult::Ok(Json(c.host(&n).await?)) }),
        ),
        (
            r(
                Method::PUT,
                "/hosts/{name}",
                Admin,
                "Replace a host",
                Some(json::<Host>()),
                json::<Host>(),
            ),
            put(
                |State(c): State<App>, Path(n): Path<String>, Body(h): Body<Host>| async move {
                    ApiResult::Ok(Json(c.update_host(&n, h).await?))
                },
            ),
        ),
        (
            r(
                Method::DELETE,
                "/hosts/{name}",
                Admin,
                "Remove a host",
                None,
                json::<Done>(),
            ),
            delete(|State(c): State<App>, Path(n): Path<String>| async move {
                c.delete_host(&n).await?;
                ApiResult::Ok(done())
            }),
        ),
        (
            r(
                Method::POST,
                "/hosts/{name}/wake",
                Admin,
                "Ask the host's node to wake it (Wake-on-LAN)",
                None,
                json::<Wake>(),
            ),
            post(
                |State(c): State<App>, Path(n): Path<String>| async move { ApiResult::Ok(Json(c.wake_host(&n).await?)) },
            ),
        ),
        // groups
        (
            r(Method::GET, "/groups", Admin, "List groups", None, json::<Vec<Group>>()),
            get(|State(c): State<App>| async move { ApiResult::Ok(Json(c.groups().await?)) }),
        ),
        (
            r(
                Method::POST,
                "/groups",
                Admin,
                "Add a group",
                Some(json::<Group>()),
                json::<Group>(),
            ),
            post(
                |State(c): State<App>, Body(g): Body<Group>| async move { ApiResult::Ok(Json(c.create_group(&g).await?)) },
            ),
        ),
        (
            r(Method::GET, "/groups/{name}", Admin, "One group", None, json::<Group>()),
            get(|State(c): State<App>, Path(n): Path<String>| async move { ApiResult::Ok(Json(c.group(&n).await?)) }),
        ),
        (
            r(
                Method::DELETE,
                "/groups/{name}",
                Admin,
                "Remove a group (its hosts stay)",
                None,
                json::<Done>(),
            ),
            delete(|State(c): State<App>, Path(n): Path<String>| async move {
                c.delete_group(&n).await?;
                ApiResult::Ok(done())
            }),
        ),
        (
            r(
                Method::POST,
                "/groups/{name}/tasks",
                Admin,
                "One task per host of the group",
                Some(json::<NewTask>()),
                json::<GroupTasks>(),
            ),
            post(
                |State(c): State<App>, Path(n): Path<String>, Body(t): Body<NewTask>| async move {
                    ApiResult::Ok(Json(c.create_group_task(&n, &t).await?))
                },
            ),
        ),
        // images
        (
            Route {
                query: query::<ImageQuery>(),
                ..r(
                    Method::GET,
                    "/images",
                    Admin,
                    "A page of image records by name",
                    None,
                    json::<Page<Image>>(),
                )
            },
            get(|State(c): State<App>, QueryArgs(q): QueryArgs<ImageQuery>| async move {
                ApiResult::Ok(Json(c.image_page(&q).await?))
            }),
        ),
        (
            r(
                Method::POST,
                "/images",
                Admin,
                "Add an image record",
                Some(json::<Image>()),
                json::<Image>(),
            ),
            post(
                |State(c): State<App>, Body(i): Body<Image>| async move { ApiResult::Ok(Json(c.create_image(&i).await?)) },
            ),
        ),
        (
            r(Method::GET, "/images/{name}", Admin, "One image", None, json::<Image>()),
            get(|State(c): State<App>, Path(n): Path<String>| async move { ApiResult::Ok(Json(c.image(&n).await?)) }),
        ),
        (
            r(
                Method::PUT,
                "/images/{name}",
                Admin,
                "Replace an image record (placement)",
                Some(json::<Image>()),
                json::<Image>(),
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
                json::<Done>(),
            ),
            delete(|State(c): State<App>, Path(n): Path<String>| async move {
                c.delete_image(&n).await?;
                ApiResult::Ok(done())
            }),
        ),
        (
            r(
                Method::GET,
                "/images/{name}/copies",
                Admin,
                "Each node's copy of the image",
                None,
                json::<Vec<ImageCopy>>(),
            ),
            get(
                |State(c): State<App>, Path(n): Path<String>| async move { ApiResult::Ok(Json(c.image_copies(&n).await?)) },
            ),
        ),
        (
            r(
                Method::PUT,
                "/images/{name}/copies/{node}",
                NodeAccess,
                "A node reports its copy of the image: replicating (bytes), complete, failed (reason)",
                Some(json::<CopyReport>()),
                json::<Done>(),
            ),
            put(
                |State(c): State<App>,
                 Extension(caller): Extension<Caller>,
                 Path((image, node)): Path<(String, String)>,
                 Body(report): Body<CopyReport>| async move {
                    c.set_copy_state(&caller, &image, &node, &report).await?;
                    ApiResult::Ok(done())
                },
            ),
        ),
        // nodes
        (
            r(Method::GET, "/nodes", Admin, "List nodes", None, json::<Vec<Node>>()),
            get(|State(c): State<App>| async move { ApiResult::Ok(Json(c.nodes().await?)) }),
        ),
        (
            r(
                Method::POST,
                "/nodes",
                Admin,
                "Add a node; answers its token once",
                Some(json::<Node>()),
                json::<NodeToken>(),
            ),
            post(
                |State(c): State<App>, Body(n): Body<Node>| async move { ApiResult::Ok(Json(c.create_node(&n).await?)) },
            ),
        ),
        (
            r(Method::GET, "/nodes/{name}", Admin, "One node", None, json::<Node>()),
            get(|State(c): State<App>, Path(n): Path<String>| async move { ApiResult::Ok(Json(c.node(&n).await?)) }),
        ),
        (
            r(
                Method::PUT,
                "/nodes/{name}",
                Admin,
                "Replace a node's settings",
                Some(json::<Node>()),
                json::<Node>(),
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
                json::<Done>(),
            ),
            delete(|State(c): State<App>, Path(n): Path<String>| async move {
                c.delete_node(&n).await?;
                ApiResult::Ok(done())
            }),
        ),
        (
            r(
                Method::POST,
                "/nodes/{name}/token",
                Admin,
                "Revoke the node's tokens and issue a new one",
                None,
                json::<NodeToken>(),
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
                Some(json::<Heartbeat>()),
                json::<Node>(),
            ),
            post(
                |State(c): State<App>,
                 Extension(caller): Extension<Caller>,
                 Path(n): Path<String>,
                 Body(b): Body<Heartbeat>| async move {
                    ApiResult::Ok(Json(c.heartbeat(&caller, &n, &b).await?))
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
                json::<Vec<Task>>(),
            ),
            get(
                |State(c): State<App>, Extension(caller): Extension<Caller>, Path(n): Path<String>| async move {
                    ApiResult::Ok(Json(c.node_tasks(&caller, &n).await?))
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
                json::<Vec<BootTask>>(),
            ),
            get(
                |State(c): State<App>, Extension(caller): Extension<Caller>, Path(n): Path<String>| async move {
                    ApiResult::Ok(Json(c.node_boot_tasks(&caller, &n).await?))
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
                json::<Vec<ImageCopy>>(),
            ),
            get(
                |State(c): State<App>, Extension(caller): Extension<Caller>, Path(n): Path<String>| async move {
                    ApiResult::Ok(Json(c.node_copies(&caller, &n).await?))
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
                json::<Vec<Wake>>(),
            ),
            post(
                |State(c): State<App>, Extension(caller): Extension<Caller>, Path(n): Path<String>| async move {
                    ApiResult::Ok(Json(c.take_wakes(&caller, &n).await?))
                },
            ),
        ),
        // tasks
        (
            Route {
                query: query::<TaskFilter>(),
                ..r(
                    Method::GET,
                    "/tasks",
                    Admin,
                    "A page of tasks, newest first, filtered",
                    None,
                    json::<Page<Task>>(),
                )
            },
            get(|State(c): State<App>, QueryArgs(f): QueryArgs<TaskFilter>| async move {
                ApiResult::Ok(Json(c.task_page(&f).await?))
            }),
        ),
        (
            r(
                Method::POST,
                "/tasks",
                Admin,
                "Create a task for a host",
                Some(json::<NewTask>()),
                json::<Task>(),
            ),
            post(|State(c): State<App>, Body(t): Body<NewTask>| async move {
                ApiResult::Ok(Json(c.create_task(&t).await?))
            }),
        ),
        (
            r(Method::GET, "/tasks/{id}", Admin, "One task", None, json::<Task>()),
            get(|State(c): State<App>, Path(id): Path<String>| async move {
                ApiResult::Ok(Json(c.task(task_id(&id)?).await?))
            }),
        ),
        (
            Route {
                query: query::<HistoryQuery>(),
                ..r(
                    Method::GET,
                    "/tasks/{id}/history",
                    Admin,
                    "A page of a task's state changes, oldest first",
                    None,
                    json::<Page<TaskEvent>>(),
                )
            },
            get(
                |State(c): State<App>, Path(id): Path<String>, QueryArgs(q): QueryArgs<HistoryQuery>| async move {
                    ApiResult::Ok(Json(c.task_history(task_id(&id)?, &q).await?))
                },
            ),
        ),
        (
            r(
                Method::POST,
                "/tasks/{id}/cancel",
                Admin,
                "Cancel a task not over",
                None,
                json::<Task>(),
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
                Some(json::<ProgressReport>()),
                json::<Task>(),
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
                Some(json::<CheckOut>()),
                json::<Task>(),
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
                Some(json::<CheckIn>()),
                json::<CheckInReply>(),
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
                Some(json::<Registration>()),
                json::<Registered>(),
            ),
            post(
                |State(c): State<App>, Extension(caller): Extension<Caller>, Body(reg): Body<Registration>| async move {
                    ApiResult::Ok(Json(c.register(&caller, &reg).await?))
                },
            ),
        ),
        // tokens and audit
        (
            r(
                Method::GET,
                "/tokens",
                Admin,
                "The admin tokens (names and expiry; never the secrets)",
                None,
                json::<Vec<TokenInfo>>(),
            ),
            get(|State(c): State<App>| async move { ApiResult::Ok(Json(c.admin_tokens().await?)) }),
        ),
        (
            r(
                Method::POST,
                "/tokens",
                Admin,
                "Issue a named admin token, optionally expiring; answers its secret once",
                Some(json::<NewToken>()),
                json::<IssuedToken>(),
            ),
            post(|State(c): State<App>, Body(t): Body<NewToken>| async move {
                ApiResult::Ok(Json(c.create_admin_token(&t).await?))
            }),
        ),
        (
            r(
                Method::DELETE,
                "/tokens/{name}",
                Admin,
                "Revoke an admin token: refused from the next request on",
                None,
                json::<Done>(),
            ),
            delete(|State(c): State<App>, Path(n): Path<String>| async move {
                c.revoke_admin_token(&n).await?;
                ApiResult::Ok(done())
            }),
        ),
        (
            Route {
                query: query::<AuditQuery>(),
                ..r(
                    Method::GET,
                    "/audit",
                    Admin,
                    "A page of the audit log, newest first: every mutating call and every refused one",
                    None,
                    json::<Page<AuditEntry>>(),
                )
            },
            get(|State(c): State<App>, QueryArgs(q): QueryArgs<AuditQuery>| async move {
                ApiResult::Ok(Json(c.audit_page(&q).await?))
            }),
        ),
        // schedules
        (
            r(
                Method::GET,
                "/schedules",
                Admin,
                "List schedules",
                None,
                json::<Vec<Schedule>>(),
            ),
            get(|State(c): State<App>| async move { ApiResult::Ok(Json(c.schedules().await?)) }),
        ),
        (
            r(
                Method::POST,
                "/schedules",
                Admin,
                "Schedule a task (at a time, or cron) for a host or a group",
                Some(json::<Schedule>()),
                json::<Schedule>(),
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
                json::<Done>(),
            ),
            delete(|State(c): State<App>, Path(id): Path<String>| async move {
                let id = id
                    .parse::<i64>()
                    .map_err(|_| ApiError(Error::invalid("schedule id", &id, "not a number")))?;
                c.delete_schedule(id).await?;
                ApiResult::Ok(done())
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
        Control::manifest_stored(self, name).await
    }

    async fn check_image_read(&self, caller: &Caller, name: &str) -> Result<()> {
        Control::check_image_read(self, caller, name).await
    }

    async fn readable_images(&self, caller: &Caller, names: Vec<String>) -> Result<Vec<String>> {
        Control::readable_images(self, caller, names).await
    }
}

/// Every route, as documented.
pub fn routes() -> Vec<Route> {
    table().into_iter().map(|(route, _)| route).collect()
}

/// The API's router over `control`.
pub fn router(control: Arc<Control>) -> Router {
    let mut router = Router::new();
    for (route, method_router) in table() {
        let check = middleware::from_fn_with_state((control.clone(), Guarded::of(&route)), guard::<App>);
        router = router.route(&route.path, method_router.route_layer(check));
    }
    router
        .fallback(no_route)
        .method_not_allowed_fallback(|method: Method, uri: axum::http::Uri| async move {
            let body = Json(json!({
                "code": "method_not_allowed",
                "message": format!("{uri} does not take {method}"),
            }));
            (StatusCode::METHOD_NOT_ALLOWED, body)
        })
        .with_state(control)
}

/// The master's answer to `GET /api/v1/health`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Health {
    /// Always true: the master answers.
    pub ok: bool,
    /// Its version.
    pub version: String,
}

fn document_schema(_: &mut SchemaGenerator) -> Schema {
    schemars::json_schema!({ "type": "object", "description": "An OpenAPI 3.1 document" })
}

/// A path parameter's schema, from its name: ids are numbers, the rest record names.
fn path_parameter(name: &str) -> Value {
    let schema = match name {
        "id" => json!({ "type": "integer", "format": "int64" }),
        _ => json!({ "type": "string", "pattern": NAME_PATTERN }),
    };
    json!({ "name": name, "in": "path", "required": true, "schema": schema })
}

/// The query parameters a route reads: the fields of its query type.
fn query_parameters(generator: &mut SchemaGenerator, make: SchemaFn) -> Vec<Value> {
    let schema = make(generator);
    let required: Vec<&str> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
        return Vec::new();
    };
    properties
        .iter()
        .map(|(name, field)| {
            let mut field = field.clone();
            let description = field.as_object_mut().and_then(|f| f.remove("description"));
            not_null(&mut field);
            json!({
                "name": name,
                "in": "query",
                "required": required.contains(&name.as_str()),
                "description": description.unwrap_or(Value::Null),
                "schema": field,
            })
        })
        .map(|mut p| {
            if let Some(p) = p.as_object_mut() {
                p.retain(|_, v| !v.is_null());
            }
            p
        })
        .collect()
}

/// Gives every integer schema the bounds its Rust type (and JSON's exact range) sets: the
/// derived schemas name a format (`uint32`) that validators do not enforce.
fn bound_integers(value: &mut Value) {
    match value {
        Value::Object(fields) => {
            let bounds = match fields.get("format").and_then(Value::as_str) {
                Some("uint8") => Some((json!(0), json!(u8::MAX))),
                Some("uint16") => Some((json!(0), json!(u16::MAX))),
                Some("uint32") => Some((json!(0), json!(u32::MAX))),
                Some("int32") => Some((json!(i32::MIN), json!(i32::MAX))),
                Some("uint64" | "uint") => Some((json!(0), json!(u64::MAX))),
                Some("int64" | "int") => Some((json!(i64::MIN), json!(i64::MAX))),
                _ => None,
            };
            if let Some((min, max)) = bounds {
                fields.entry("minimum").or_insert(min);
                fields.entry("maximum").or_insert(max);
            }
            fields.values_mut().for_each(bound_integers);
        }
        Value::Array(items) => items.iter_mut().for_each(bound_integers),
        _ => {}
    }
}

/// A query parameter is absent or a value, never JSON's null: drops null from its type.
fn not_null(schema: &mut Value) {
    let Some(fields) = schema.as_object_mut() else {
        return;
    };
    if fields.get("default") == Some(&Value::Null) {
        fields.remove("default");
    }
    if let Some(Value::Array(types)) = fields.get_mut("type") {
        types.retain(|t| t != "null");
        if let [only] = types.as_slice() {
            let only = only.clone();
            fields.insert("type".into(), only);
        }
    }
}

fn content(generator: &mut SchemaGenerator, payload: Payload) -> Value {
    match payload {
        Payload::Json(make) => json!({ "application/json": { "schema": make(generator) } }),
        Payload::Bytes(what) => json!({
            "application/octet-stream": { "schema": { "type": "string", "format": "binary", "description": what } }
        }),
    }
}

/// The OpenAPI 3.1 document of [`routes`]: every body, reply and query schema is derived from
/// the Rust type its handler reads or writes, so the document cannot drift from the code.
pub fn openapi() -> Value {
    let mut generator = SchemaSettings::draft2020_12()
        .with(|s| s.definitions_path = "/components/schemas".into())
        .into_generator();
    let error = json!({ "application/json": { "schema": generator.subschema_for::<ErrorBody>() } });
    let mut paths = serde_json::Map::new();
    for route in routes() {
        let mut parameters: Vec<Value> = route
            .path
            .split('/')
            .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(path_parameter)
            .collect();
        if let Some(make) = route.query {
            parameters.extend(query_parameters(&mut generator, make));
        }
        let mut responses = json!({
            "200": { "description": "OK", "content": content(&mut generator, route.reply) },
            "default": { "description": "An error: 4xx the caller's, 5xx the master's", "content": error },
        });
        let mut op = json!({
            "summary": route.summary,
            "operationId": format!("{}{}", route.method.as_str().to_lowercase(), route.path.replace(['/', '{', '}', '.', '-'], "_")),
            "x-fog-access": route.access.name(),
            "security": if route.access == Access::Public { json!([]) } else { json!([{ "bearer": [] }]) },
            "parameters": parameters,
        });
        if let Some(body) = route.body {
            responses["413"] = json!({ "description": "The body is over the route's limit", "content": error });
            // A binary body may be empty (no ids: nothing to do); a JSON body is always sent.
            let required = matches!(body, Payload::Json(_));
            op["requestBody"] = json!({ "required": required, "content": content(&mut generator, body) });
        }
        op["responses"] = responses;
        let entry = paths.entry(route.path.clone()).or_insert_with(|| json!({}));
        entry[route.method.as_str().to_lowercase()] = op;
    }
    let mut document = json!({
        "openapi": "3.1.0",
        "info": { "title": "fog master", "version": env!("CARGO_PKG_VERSION") },
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": generator.take_definitions(true),
        },
        "paths": paths,
    });
    bound_integers(&mut document);
    document
}

/// How to start a master: what `fog master` and Python's `fog.start_master` both fill in.
#[derive(Clone, Default)]
pub struct MasterConfig {
    /// Where it listens.
    pub listen: Option<SocketAddr>,
    /// Its directory: `fog.db` (unless `database` is given), `admin-token`, `store/`.
    pub data_dir: Option<PathBuf>,
    /// A database URL (`sqlite://...`, `postgres://...`) instead of `DATA_DIR/fog.db`.
    pub database: Option<String>,
    /// The image store its chunk routes serve. `None`: `DATA_DIR/store` (created).
    pub store: Option<Arc<dyn ImageStore>>,
    /// HTTPS, and with which certificate.
    pub tls: MasterTls,
}

/// Whether a master speaks HTTPS, and with which certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum MasterTls {
    /// Plain HTTP.
    #[default]
    Off,
    /// This certificate chain and key (PEM files).
    Files {
        /// The certificate chain, the server's first.
        cert: PathBuf,
        /// Its private key.
        key: PathBuf,
    },
    /// A self-signed certificate made on the first start and kept in the data directory
    /// (`tls-cert.pem`, `tls-key.pem`), for these extra names besides localhost and the host's.
    SelfSigned {
        /// Extra DNS names or IP addresses the certificate names.
        names: Vec<String>,
    },
}

impl std::fmt::Debug for MasterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterConfig")
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field("database", &self.database.as_deref().map(crate::control::db::redact))
            .field("store", &self.store.is_some())
            .field("tls", &self.tls)
            .finish()
    }
}

/// The admin token a first start issued.
#[derive(Debug, Clone)]
pub struct FirstToken {
    /// The token (shown once).
    pub token: String,
    /// The file it was written to (mode 0600), when the master has a data directory.
    pub file: Option<PathBuf>,
}

/// A master started by [`serve`]: the server, and the admin token when this start issued one.
pub struct Started {
    /// The running master.
    pub master: Master,
    /// The first admin token, on a first start (no admin token in the database yet).
    pub first_token: Option<FirstToken>,
    /// The store directory it serves, when it opened one itself.
    pub store_dir: Option<PathBuf>,
    /// Its certificate, when it speaks HTTPS.
    pub tls: Option<ServerTls>,
}

/// Opens the database and the store `config` names, issues the first admin token on a first
/// start, and serves the API and the scheduler.
pub async fn serve(config: &MasterConfig) -> Result<Started> {
    let listen = config
        .listen
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)));
    if let Some(dir) = &config.data_dir {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let db = match (&config.database, &config.data_dir) {
        (Some(url), _) => Db::open(url).await?,
        (None, Some(dir)) => Db::open_dir(dir).await?,
        (None, None) => {
            return Err(Error::invalid(
                "master",
                "",
                "give a data directory or a database URL (where the inventory is kept)",
            ));
        }
    };
    let control = Arc::new(Control::new(db));
    let mut store_dir = None;
    match (&config.store, &config.data_dir) {
        (Some(store), _) => control.set_image_store(store.clone()),
        (None, Some(dir)) => {
            let dir = dir.join("store");
            control.set_image_store(Arc::new(LocalStore::new(Store::open(&dir)?)));
            store_dir = Some(dir);
        }
        (None, None) => {}
    }
    let tls = match (&config.tls, &config.data_dir) {
        (MasterTls::Off, _) => None,
        (MasterTls::Files { cert, key }, _) => Some(ServerTls::load(cert, key)?),
        (MasterTls::SelfSigned { names }, Some(dir)) => Some(ServerTls::self_signed(dir, names)?),
        (MasterTls::SelfSigned { .. }, None) => {
            return Err(Error::invalid(
                "tls",
                "self-signed",
                "a self-signed certificate is kept in the data directory: give one",
            ));
        }
    };
    let first_token = control
        .first_admin_token(config.data_dir.as_deref())
        .await?
        .map(|(token, file)| FirstToken { token, file });
    let master = Master::start_with_tls(control, listen, tls.as_ref()).await?;
    Ok(Started {
        master,
        first_token,
        store_dir,
        tls,
    })
}

/// The port a master listens on unless told.
pub const DEFAULT_PORT: u16 = 8090;

/// A running master: the API on a socket and the scheduler.
pub struct Master {
    addr: SocketAddr,
    https: bool,
    control: Arc<Control>,
    cancel: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// How often due schedules are looked for.
pub const SCHEDULE_TICK: Duration = Duration::from_secs(15);

impl Master {
    /// Binds `listen` and serves the API (plain HTTP) and the scheduler until [`Master::stop`].
    pub async fn start(control: Arc<Control>, listen: SocketAddr) -> Result<Master> {
        Master::start_with_tls(control, listen, None).await
    }

    /// Binds `listen` and serves the API, over HTTPS when given a certificate, and the scheduler
    /// until [`Master::stop`].
    pub async fn start_with_tls(control: Arc<Control>, listen: SocketAddr, tls: Option<&ServerTls>) -> Result<Master> {
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
        let app = router(control.clone()).into_make_service_with_connect_info::<SocketAddr>();
        let stop = cancel.clone();
        let server = match tls {
            None => tokio::spawn(async move {
                let result = axum::serve(listener, app)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await;
                if let Err(e) = result {
                    tracing::warn!("master: {e}");
                }
            }),
            Some(tls) => {
                // `tap_io` makes the TLS listener's peer address reach handlers as ConnectInfo.
                let listener = tls.listener(listener, cancel.child_token())?.tap_io(|_| {});
                tokio::spawn(async move {
                    let result = axum::serve(listener, app)
                        .with_graceful_shutdown(stop.cancelled_owned())
                        .await;
                    if let Err(e) = result {
                        tracing::warn!("master: {e}");
                    }
                })
            }
        };
        let stop = cancel.clone();
        let ticker = control.clone();
        let scheduler = tokio::spawn(async move {
            let mut tick = tokio::time::interval(SCHEDULE_TICK);
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = tick.tick() => {
                        match ticker.run_schedules(ticker.clock().now()).await {
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
            https: tls.is_some(),
            control,
            cancel,
            tasks: vec![server, scheduler],
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its base URL: `http://` or `https://` and the address it listens on.
    pub fn url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
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
        self.control.close().await;
        Ok(())
    }
}
