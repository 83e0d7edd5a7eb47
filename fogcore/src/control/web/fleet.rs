//! Registrations (hosts that registered from the boot menu, to approve), groups (members, group
//! tasks), images (sizes, dedupe, each node's copy), nodes (slots, disk, images held).

use askama::Template;
use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Extension, Router};

use super::view;
use super::{App, Ctx, Fields, Layout, WebResult, done, page};
use crate::control::api::Caller;
use crate::control::model::{
    After, Approval, CopyState, Group, Host, HostQuery, Image, ImageCopy, NewTask, Node, NodeToken, Placement,
    TaskFilter, TaskKind, parse_subnet,
};
use crate::error::Error;

pub(super) fn routes() -> Router<App> {
    Router::new()
        .route("/registrations", get(registrations))
        .route("/registrations/{name}/approve", post(approve))
        .route("/groups", get(groups).post(add_group))
        .route("/groups/{name}", get(group).post(edit_group))
        .route("/groups/{name}/tasks", post(group_task))
        .route("/groups/{name}/delete", post(delete_group))
        .route("/images", get(images).post(add_image))
        .route("/images/{name}/delete", post(delete_image))
        .route("/nodes", get(nodes).post(add_node))
        .route("/nodes/{name}/delete", post(delete_node))
}

/// The web pages read as an admin would (the node-scoped checks are for nodes' tokens).
fn reader() -> Caller {
    Caller::admin("web")
}

// ---- registrations

#[derive(Template)]
#[template(path = "registrations.html")]
struct RegistrationsPage {
    layout: Layout,
    hosts: Vec<(Host, String)>,
    groups: Vec<String>,
    images: Vec<String>,
}

async fn registrations(State(web): State<App>, Extension(ctx): Extension<Ctx>) -> WebResult {
    let query = HostQuery {
        pending: true,
        limit: Some(1000),
        ..HostQuery::default()
    };
    let hosts = web.control.host_page(&query).await?.items;
    let hosts = hosts
        .into_iter()
        .map(|h| {
            let dmi = &h.inventory["dmi"];
            let model = [dmi["vendor"].as_str(), dmi["product"].as_str(), dmi["serial"].as_str()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(" · ");
            (h, model)
        })
        .collect();
    Ok(page(RegistrationsPage {
        layout: ctx.layout("registrations"),
        hosts,
        groups: web.control.groups().await?.into_iter().map(|g| g.name).collect(),
        images: web.control.images().await?.into_iter().map(|i| i.name).collect(),
    }))
}

async fn approve(State(web): State<App>, Path(name): Path<String>, fields: Fields) -> WebResult {
    let host = web
        .control
        .approve_host(
            &name,
            &Approval {
                image: fields.get("image").map(str::to_string),
                group: fields.get("group").map(str::to_string),
            },
        )
        .await?;
    Ok(done(
        &web,
        "/registrations",
        name,
        format!("Host {} approved.", host.name),
    ))
}

// ---- groups

#[derive(Template)]
#[template(path = "groups.html")]
struct GroupsPage {
    layout: Layout,
    groups: Vec<(Group, u64)>,
}

async fn groups(State(web): State<App>, Extension(ctx): Extension<Ctx>) -> WebResult {
    let mut rows = Vec::new();
    for group in web.control.groups().await? {
        let query = HostQuery {
            group: Some(group.name.clone()),
            ..HostQuery::default()
        };
        let members = web.control.host_count(&query).await?;
        rows.push((group, members));
    }
    Ok(page(GroupsPage {
        layout: ctx.layout("groups"),
        groups: rows,
    }))
}

async fn add_group(State(web): State<App>, fields: Fields) -> WebResult {
    let group = Group {
        name: fields.need("name")?.to_string(),
        description: fields.get("description").unwrap_or_default().to_string(),
    };
    let group = web.control.create_group(&group).await?;
    let to = format!("/groups/{}", group.name);
    Ok(done(
        &web,
        &to,
        group.name.clone(),
        format!("Group {} added.", group.name),
    ))
}

#[derive(Template)]
#[template(path = "group.html")]
struct GroupPage {
    layout: Layout,
    group: Group,
    members: Vec<Host>,
    more: bool,
    images: Vec<String>,
    tasks: Vec<super::hosts::TaskRow>,
}

async fn group(State(web): State<App>, Extension(ctx): Extension<Ctx>, Path(name): Path<String>) -> WebResult {
    let group = web.control.group(&name).await?;
    let found = web
        .control
        .host_page(&HostQuery {
            group: Some(name.clone()),
            limit: Some(200),
            ..HostQuery::default()
        })
        .await?;
    let filter = TaskFilter {
        group: Some(name.clone()),
        open_only: true,
        limit: Some(200),
        ..TaskFilter::default()
    };
    Ok(page(GroupPage {
        layout: ctx.layout("groups"),
        group,
        more: found.next.is_some(),
        members: found.items,
        images: web.control.images().await?.into_iter().map(|i| i.name).collect(),
        tasks: super::hosts::task_rows(&web.control, &filter, false).await?,
    }))
}

async fn edit_group(State(web): State<App>, Path(name): Path<String>, fields: Fields) -> WebResult {
    let group = Group {
        name: name.clone(),
        description: fields.get("description").unwrap_or_default().to_string(),
    };
    web.control.update_group(&name, &group).await?;
    let to = format!("/groups/{name}");
    Ok(done(&web, &to, name.clone(), format!("Group {name} saved.")))
}

/// A task for every member, after a confirmation saying how many and what.
async fn group_task(
    State(web): State<App>,
    Extension(ctx): Extension<Ctx>,
    Path(name): Path<String>,
    fields: Fields,
) -> WebResult {
    let kind = TaskKind::parse(fields.need("kind")?)?;
    let image = fields.get("image").map(str::to_string);
    if fields.get("confirmed").is_none() {
        let members = web
            .control
            .host_count(&HostQuery {
                group: Some(name.clone()),
                ..HostQuery::default()
            })
            .await?;
        let what = match (&kind, &image) {
            (TaskKind::Deploy, Some(image)) => format!("deploy image {image}, erasing their disks"),
            (TaskKind::Deploy, None) => "deploy each host's image, erasing their disks".into(),
            (TaskKind::Multicast, Some(image)) => {
                format!("deploy image {image} in one multicast session per node, erasing their disks")
            }
            (TaskKind::Multicast, None) => {
                "deploy each host's image by multicast (a session per image and node), erasing their disks".into()
            }
            (kind, _) => format!("a {} task", kind.as_str()),
        };
        let confirmation = super::hosts::confirm(
            ctx.layout("groups"),
            format!("Queue {what} for the {members} hosts of group {name}?"),
            format!("/groups/{name}/tasks"),
            &fields,
            format!("/groups/{name}"),
        );
        return Ok(super::hosts::asked(page(confirmation), members as usize));
    }
    let new = NewTask {
        kind,
        host: None,
        image,
        after: After::default(),
        wake: fields.get("wake").is_some(),
        layout: None,
    };
    let made = web.control.create_group_task(&name, &new).await?;
    let mut notice = format!("{} tasks queued for group {name}", made.created.len());
    if !made.skipped.is_empty() {
        notice.push_str(&format!("; {} hosts skipped", made.skipped.len()));
    }
    Ok(done(&web, "/tasks", name, notice))
}

async fn delete_group(State(web): State<App>, Path(name): Path<String>) -> WebResult {
    web.control.delete_group(&name).await?;
    Ok(done(&web, "/groups", name.clone(), format!("Group {name} deleted.")))
}

// ---- images

struct ImageRow {
    image: Image,
    size: String,
    disk: String,
    captured: String,
    source: String,
    placement: String,
    copies: Vec<CopyRow>,
}

struct CopyRow {
    copy: ImageCopy,
    class: &'static str,
    progress: String,
}

#[derive(Template)]
#[template(path = "images.html")]
struct ImagesPage {
    layout: Layout,
    images: Vec<ImageRow>,
    stored: String,
    logical: String,
    saved: String,
}

async fn images(State(web): State<App>, Extension(ctx): Extension<Ctx>) -> WebResult {
    let store = web.control.image_store().ok();
    // Reading the store's index takes a moment on a large store: off the async threads.
    let summaries = match store {
        Some(store) => tokio::task::spawn_blocking(move || store.summaries())
            .await
            .map_err(|e| Error::invalid("store", "", e.to_string()))??,
        None => None,
    };
    let (headers, stats) = summaries.unwrap_or_default();
    let mut rows = Vec::new();
    for image in web.control.images().await? {
        let header = headers.iter().find(|h| h.name == image.name);
        let capture = web
            .control
            .task_page(&TaskFilter {
                kind: Some(TaskKind::Capture),
                image: Some(image.name.clone()),
                state: Some("complete".into()),
                limit: Some(1000),
                ..TaskFilter::default()
            })
            .await?
            .items
            .into_iter()
            .max_by_key(|t| t.updated_at);
        let copies = web
            .control
            .image_copies(&image.name)
            .await?
            .into_iter()
            .map(|copy| CopyRow {
                class: match copy.state {
                    CopyState::Complete => "ok",
                    CopyState::Failed | CopyState::Stale => "bad",
                    CopyState::Replicating => "busy",
                    CopyState::Pending => "wait",
                },
                progress: match copy.state {
                    CopyState::Replicating if image.size_bytes > 0 => format!(
                        "{:.0}% ({})",
                        100.0 * copy.bytes as f64 / image.size_bytes as f64,
                        view::bytes(copy.bytes)
                    ),
                    _ => String::new(),
                },
                copy,
            })
            .collect();
        rows.push(ImageRow {
            size: view::bytes(header.map(|h| h.data_bytes).unwrap_or(image.size_bytes)),
            disk: header.map(|h| view::bytes(h.disk_size)).unwrap_or_default(),
            captured: match (&capture, header) {
                (Some(task), _) => view::when(task.updated_at),
                (None, Some(h)) => view::when(i64::try_from(h.created).unwrap_or(0) * 1000),
                (None, None) => "not yet".into(),
            },
            source: capture.map(|t| t.host).unwrap_or_default(),
            placement: match &image.placement {
                Placement::All => "every node".into(),
                Placement::Nodes { nodes } => nodes.join(", "),
            },
            copies,
            image,
        });
    }
    let saved = if stats.logical_bytes > 0 {
        format!(
            "{:.0}%",
            100.0 * (1.0 - stats.stored_bytes as f64 / stats.logical_bytes as f64).max(0.0)
        )
    } else {
        "–".into()
    };
    Ok(page(ImagesPage {
        layout: ctx.layout("images"),
        images: rows,
        stored: view::bytes(stats.stored_bytes),
        logical: view::bytes(stats.logical_bytes),
        saved,
    }))
}

async fn add_image(State(web): State<App>, fields: Fields) -> WebResult {
    let nodes: Vec<String> = fields
        .get("nodes")
        .unwrap_or_default()
        .split([',', ' '])
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .collect();
    let image = Image {
        name: fields.need("name")?.to_string(),
        description: fields.get("description").unwrap_or_default().to_string(),
        os: fields.get("os").unwrap_or_default().to_string(),
        size_bytes: 0,
        placement: if nodes.is_empty() {
            Placement::All
        } else {
            Placement::Nodes { nodes }
        },
    };
    let image = web.control.create_image(&image).await?;
    Ok(done(
        &web,
        "/images",
        image.name.clone(),
        format!("Image {} added.", image.name),
    ))
}

async fn delete_image(State(web): State<App>, Path(name): Path<String>) -> WebResult {
    web.control.delete_image(&name).await?;
    Ok(done(&web, "/images", name.clone(), format!("Image {name} deleted.")))
}

// ---- nodes

/// A node as the nodes page and the dashboard show it.
pub(super) struct NodeRow {
    pub(super) node: Node,
    pub(super) subnets: String,
    pub(super) busy: u32,
    pub(super) free: u32,
    pub(super) waiting: u32,
    pub(super) disk: String,
    pub(super) seen: String,
    pub(super) silent: bool,
    pub(super) images: Vec<String>,
}

#[derive(Template)]
#[template(path = "nodes.html")]
struct NodesPage {
    layout: Layout,
    nodes: Vec<NodeRow>,
    issued: Option<NodeToken>,
}

/// A node not heard from for this long is shown as silent (it beats every 10 s).
pub(super) const SILENT_AFTER_MS: i64 = 120_000;

pub(super) async fn node_rows(web: &super::Web) -> Result<Vec<NodeRow>, Error> {
    let now = web.control.clock().now();
    let loads = web.control.node_loads().await?;
    let mut rows = Vec::new();
    for node in web.control.nodes().await? {
        let load = loads.get(&node.name).copied().unwrap_or_default();
        let images = web
            .control
            .node_copies(&reader(), &node.name)
            .await?
            .into_iter()
            .filter(|c| c.state == CopyState::Complete)
            .map(|c| c.image)
            .collect();
        rows.push(NodeRow {
            subnets: node.subnets.iter().map(|s| s.to_string()).collect::<Vec<_>>().join(" "),
            busy: load.busy,
            free: node.max_clients.saturating_sub(load.busy),
            waiting: load.waiting,
            disk: load.free_bytes.map(view::bytes).unwrap_or_else(|| "–".into()),
            seen: view::ago(now, node.last_seen),
            silent: node.enabled && node.last_seen.is_none_or(|at| now - at > SILENT_AFTER_MS),
            images,
            node,
        });
    }
    Ok(rows)
}

async fn nodes(State(web): State<App>, Extension(ctx): Extension<Ctx>) -> WebResult {
    Ok(page(NodesPage {
        layout: ctx.layout("nodes"),
        nodes: node_rows(&web).await?,
        issued: None,
    }))
}

/// Adds a node and shows its token, once, on the page that answers.
async fn add_node(State(web): State<App>, Extension(ctx): Extension<Ctx>, fields: Fields) -> WebResult {
    let subnets = fields
        .get("subnets")
        .unwrap_or_default()
        .split([',', ' '])
        .filter(|s| !s.is_empty())
        .map(parse_subnet)
        .collect::<Result<Vec<_>, _>>()?;
    let max_clients = match fields.get("max_clients") {
        None => 10,
        Some(n) => n
            .parse()
            .map_err(|_| Error::invalid("max clients", n, "a whole number"))?,
    };
    let node = Node {
        name: fields.need("name")?.to_string(),
        url: fields.need("url")?.to_string(),
        subnets,
        max_clients,
        enabled: true,
        last_seen: None,
    };
    let issued = web.control.create_node(&node).await?;
    let mut response = page(NodesPage {
        layout: ctx.layout("nodes"),
        nodes: node_rows(&web).await?,
        issued: Some(issued),
    });
    response.extensions_mut().insert(super::Outcome {
        target: node.name,
        result: "ok".into(),
    });
    response.headers_mut().insert(
        axum::http::header::CACHE_CONTROL,
        axum::http::HeaderValue::from_static("no-store"),
    );
    Ok(response)
}

async fn delete_node(State(web): State<App>, Path(name): Path<String>) -> WebResult {
    web.control.delete_node(&name).await?;
    Ok(done(&web, "/nodes", name.clone(), format!("Node {name} removed.")))
}
