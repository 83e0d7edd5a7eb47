//! The master's route table: every route is one row (method, path, who may call it, what it
//! takes and answers, its handler), from which the router, the token check, the audit log and
//! the OpenAPI document are all built, so what is documented is what is served.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::middleware;
use axum::routing::{MethodRouter, delete, get, post, put};
use axum::{Extension, Json};
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::control::api::{
    API, Access, ApiError, ApiResult, Body, Caller, Done, Guarded, Payload, QueryArgs, Route, done, guard, json,
    no_route, query,
};
use crate::control::model::{
    Approval, AuditEntry, AuditQuery, BootTask, CheckIn, CheckInReply, CheckOut, CopyReport, Group, GroupTasks,
    Heartbeat, HistoryQuery, Host, HostQuery, Image, ImageCopy, ImageQuery, IssuedToken, NewTask, NewToken, NewUser,
    Node, NodeToken, Page, ProgressReport, Registered, Registration, Schedule, Task, TaskEvent, TaskFilter, TaskId,
    TokenInfo, User as UserInfo, UserUpdate, Wake,
};
use crate::control::service::Control;
use crate::error::Result;

type App = Arc<Control>;

fn task_id(text: &str) -> std::result::Result<TaskId, ApiError> {
    crate::control::api::path_id("task id", text).map_err(ApiError)
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
    use Access::{Node as NodeAccess, Public, User};
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
            get(|| async { Json(super::openapi()) }),
        ),
        // hosts
        (
            Route {
                query: query::<HostQuery>(),
                ..r(
                    Method::GET,
                    "/hosts",
                    User,
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
                User,
                "Add a host",
                Some(json::<Host>()),
                json::<Host>(),
            ),
            post(
                |State(c): State<App>, Body(h): Body<Host>| async move { ApiResult::Ok(Json(c.create_host(h).await?)) },
            ),
        ),
        (
            r(Method::GET, "/hosts/{name}", User, "One host", None, json::<Host>()),
            get(|State(c): State<App>, Path(n): Path<String>| async move { ApiResult::Ok(Json(c.host(&n).await?)) }),
        ),
        (
            r(
                Method::PUT,
                "/hosts/{name}",
                User,
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
                User,
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
                User,
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
            r(Method::GET, "/groups", User, "List groups", None, json::<Vec<Group>>()),
            get(|State(c): State<App>| async move { ApiResult::Ok(Json(c.groups().await?)) }),
        ),
        (
            r(
                Method::POST,
                "/groups",
                User,
                "Add a group",
                Some(json::<Group>()),
                json::<Group>(),
            ),
            post(
                |State(c): State<App>, Body(g): Body<Group>| async move { ApiResult::Ok(Json(c.create_group(&g).await?)) },
            ),
        ),
        (
            r(Method::GET, "/groups/{name}", User, "One group", None, json::<Group>()),
            get(|State(c): State<App>, Path(n): Path<String>| async move { ApiResult::Ok(Json(c.group(&n).await?)) }),
        ),
        (
            r(
                Method::PUT,
                "/groups/{name}",
                User,
                "Replace a group (its description)",
                Some(json::<Group>()),
                json::<Group>(),
            ),
            put(
                |State(c): State<App>, Path(n): Path<String>, Body(g): Body<Group>| async move {
                    ApiResult::Ok(Json(c.update_group(&n, &g).await?))
                },
            ),
        ),
        (
            r(
                Method::DELETE,
                "/groups/{name}",
                User,
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
                User,
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
                    User,
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
                User,
                "Add an image record",
                Some(json::<Image>()),
                json::<Image>(),
            ),
            post(
                |State(c): State<App>, Body(i): Body<Image>| async move { ApiResult::Ok(Json(c.create_image(&i).await?)) },
            ),
        ),
        (
            r(Method::GET, "/images/{name}", User, "One image", None, json::<Image>()),
            get(|State(c): State<App>, Path(n): Path<String>| async move { ApiResult::Ok(Json(c.image(&n).await?)) }),
        ),
        (
            r(
                Method::PUT,
                "/images/{name}",
                User,
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
                User,
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
                User,
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
            r(Method::GET, "/nodes", User, "List nodes", None, json::<Vec<Node>>()),
            get(|State(c): State<App>| async move { ApiResult::Ok(Json(c.nodes().await?)) }),
        ),
        (
            r(
                Method::POST,
                "/nodes",
                User,
                "Add a node; answers its token once",
                Some(json::<Node>()),
                json::<NodeToken>(),
            ),
            post(
                |State(c): State<App>, Body(n): Body<Node>| async move { ApiResult::Ok(Json(c.create_node(&n).await?)) },
            ),
        ),
        (
            r(Method::GET, "/nodes/{name}", User, "One node", None, json::<Node>()),
            get(|State(c): State<App>, Path(n): Path<String>| async move { ApiResult::Ok(Json(c.node(&n).await?)) }),
        ),
        (
            r(
                Method::PUT,
                "/nodes/{name}",
                User,
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
                User,
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
                User,
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
                    User,
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
                User,
                "Create a task for a host",
                Some(json::<NewTask>()),
                json::<Task>(),
            ),
            post(|State(c): State<App>, Body(t): Body<NewTask>| async move {
                ApiResult::Ok(Json(c.create_task(&t).await?))
            }),
        ),
        (
            r(Method::GET, "/tasks/{id}", User, "One task", None, json::<Task>()),
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
                    User,
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
                User,
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
        (
            r(
                Method::POST,
                "/registrations/{name}/approve",
                User,
                "Approve a host that registered itself (listed by GET /hosts?pending=true), giving it an image and a group",
                Some(json::<Approval>()),
                json::<Host>(),
            ),
            post(
                |State(c): State<App>, Path(n): Path<String>, Body(a): Body<Approval>| async move {
                    ApiResult::Ok(Json(c.approve_host(&n, &a).await?))
                },
            ),
        ),
        // tokens and audit
        (
            r(
                Method::GET,
                "/tokens",
                User,
                "People's tokens (names, roles, owners, expiry; never the secrets)",
                None,
                json::<Vec<TokenInfo>>(),
            ),
            get(|State(c): State<App>| async move { ApiResult::Ok(Json(c.tokens(None).await?)) }),
        ),
        (
            r(
                Method::POST,
                "/tokens",
                User,
                "Issue a named token (admin unless a role is given), optionally expiring; answers its secret once",
                Some(json::<NewToken>()),
                json::<IssuedToken>(),
            ),
            post(|State(c): State<App>, Body(t): Body<NewToken>| async move {
                ApiResult::Ok(Json(c.create_token(&t, None).await?))
            }),
        ),
        (
            r(
                Method::DELETE,
                "/tokens/{name}",
                User,
                "Revoke a token: refused from the next request on",
                None,
                json::<Done>(),
            ),
            delete(|State(c): State<App>, Path(n): Path<String>| async move {
                c.revoke_token(&n, None).await?;
                ApiResult::Ok(done())
            }),
        ),
        // users
        (
            r(
                Method::GET,
                "/users",
                User,
                "The users (names, roles, last sign-in)",
                None,
                json::<Vec<UserInfo>>(),
            ),
            get(|State(c): State<App>| async move { ApiResult::Ok(Json(c.users().await?)) }),
        ),
        (
            r(
                Method::POST,
                "/users",
                User,
                "Add a user who signs in to the web pages",
                Some(json::<NewUser>()),
                json::<UserInfo>(),
            ),
            post(|State(c): State<App>, Body(u): Body<NewUser>| async move {
                ApiResult::Ok(Json(c.create_user(&u).await?))
            }),
        ),
        (
            r(
                Method::PUT,
                "/users/{name}",
                User,
                "Change a user's role (their tokens follow it down) or password (their sessions end)",
                Some(json::<UserUpdate>()),
                json::<UserInfo>(),
            ),
            put(
                |State(c): State<App>, Path(n): Path<String>, Body(u): Body<UserUpdate>| async move {
                    ApiResult::Ok(Json(c.update_user(&n, &u).await?))
                },
            ),
        ),
        (
            r(
                Method::DELETE,
                "/users/{name}",
                User,
                "Remove a user, their sessions and their tokens (the last admin stays)",
                None,
                json::<Done>(),
            ),
            delete(|State(c): State<App>, Path(n): Path<String>| async move {
                c.remove_user(&n).await?;
                ApiResult::Ok(done())
            }),
        ),
        (
            Route {
                query: query::<AuditQuery>(),
                ..r(
                    Method::GET,
                    "/audit",
                    User,
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
                User,
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
                User,
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
                User,
                "Remove a schedule",
                None,
                json::<Done>(),
            ),
            delete(|State(c): State<App>, Path(id): Path<String>| async move {
                let id = crate::control::api::path_id("schedule id", &id).map_err(ApiError)?;
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
