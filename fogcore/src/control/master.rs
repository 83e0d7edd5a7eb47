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
use axum::{Extension, Json};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::control::api::{API, Access, ApiError, ApiResult, Body, Caller, QueryArgs, Route, guard, no_route};
use crate::control::db::Db;
use crate::control::model::{
    CheckIn, CheckOut, CopyReport, Group, Heartbeat, Host, Image, NewTask, Node, ProgressReport, Registration,
    Schedule, TaskFilter, TaskId,
};
use crate::control::service::Control;
use crate::error::{Error, Result};
use crate::imaging::replica::{ImageStore, LocalStore};
use crate::imaging::store::Store;

type App = Arc<Control>;

fn task_id(text: &str) -> std::result::Result<TaskId, ApiError> {
    text.parse()
        .map_err(|_| ApiError(Error::invalid("task id", text, "not a number")))
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
            get(|State(c): State<App>| async move { ApiResult::Ok(Json(c.hosts().await?)) }),
        ),
        (
            r(Method::POST, "/hosts", Admin, "Add a host", Some("Host"), "Host"),
            post(
                |State(c): State<App>, Body(h): Body<Host>| async move { ApiResult::Ok(Json(c.create_host(h).await?)) },
            ),
        ),
        (
            r(Method::GET, "/hosts/{name}", Admin, "One host", None, "Host"),
            get(|State(c): State<App>, Path(n): Path<String>| async move { ApiResult::Ok(Json(c.host(&n).await?)) }),
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
            get(|State(c): State<App>| async move { ApiResult::Ok(Json(c.groups().await?)) }),
        ),
        (
            r(Method::POST, "/groups", Admin, "Add a group", Some("Group"), "Group"),
            post(
                |State(c): State<App>, Body(g): Body<Group>| async move { ApiResult::Ok(Json(c.create_group(&g).await?)) },
            ),
        ),
        (
            r(Method::GET, "/groups/{name}", Admin, "One group", None, "Group"),
            get(|State(c): State<App>, Path(n): Path<String>| async move { ApiResult::Ok(Json(c.group(&n).await?)) }),
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
                c.delete_group(&n).await?;
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
            get(|State(c): State<App>| async move { ApiResult::Ok(Json(c.images().await?)) }),
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
            get(|State(c): State<App>, Path(n): Path<String>| async move { ApiResult::Ok(Json(c.image(&n).await?)) }),
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
                Some("CopyReport"),
                "Ok",
            ),
            put(
                |State(c): State<App>,
                 Extension(caller): Extension<Caller>,
                 Path((image, node)): Path<(String, String)>,
                 Body(report): Body<CopyReport>| async move {
                    c.set_copy_state(&caller, &image, &node, &report).await?;
                    ApiResult::Ok(ok_none())
                },
            ),
        ),
        // nodes
        (
            r(Method::GET, "/nodes", Admin, "List nodes", None, "NodeList"),
            get(|State(c): State<App>| async move { ApiResult::Ok(Json(c.nodes().await?)) }),
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
            get(|State(c): State<App>, Path(n): Path<String>| async move { ApiResult::Ok(Json(c.node(&n).await?)) }),
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
                "TaskList",
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
                "BootTaskList",
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
                "ImageCopyList",
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
                "WakeList",
            ),
            post(
                |State(c): State<App>, Extension(caller): Extension<Caller>, Path(n): Path<String>| async move {
                    ApiResult::Ok(Json(c.take_wakes(&caller, &n).await?))
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
                ApiResult::Ok(Json(c.task_history(task_id(&id)?).await?))
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
            get(|State(c): State<App>| async move { ApiResult::Ok(Json(c.schedules().await?)) }),
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
                c.delete_schedule(id).await?;
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
        Control::manifest_stored(self, name).await
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
        let check = middleware::from_fn_with_state((control.clone(), route.access), guard::<App>);
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
}

impl std::fmt::Debug for MasterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterConfig")
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field("database", &self.database.as_deref().map(crate::control::db::redact))
            .field("store", &self.store.is_some())
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
    let first_token = control
        .first_admin_token(config.data_dir.as_deref())
        .await?
        .map(|(token, file)| FirstToken { token, file });
    let master = Master::start(control, listen).await?;
    Ok(Started {
        master,
        first_token,
        store_dir,
    })
}

/// The port a master listens on unless told.
pub const DEFAULT_PORT: u16 = 8090;

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
        self.control.close().await;
        Ok(())
    }
}
