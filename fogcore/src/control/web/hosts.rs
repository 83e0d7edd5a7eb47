//! Hosts: the paged, searchable table with bulk actions behind a confirmation; adding a host;
//! a host's page (fields, MACs, inventory, tasks and their history).

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Extension, Router};

use super::view;
use super::{App, Ctx, Fields, Layout, WebError, WebResult, done, filled, page, percent_encode};
use crate::control::model::{
    After, HistoryQuery, Host, HostQuery, LayoutMode, NewTask, Task, TaskEvent, TaskFilter, TaskKind,
};
use crate::control::service::Control;
use crate::error::Error;

/// Rows per page unless the URL asks for another number.
const PAGE_ROWS: u32 = 50;

/// The most hosts one bulk action touches ("all matching" included).
const BULK_MAX: usize = 20_000;

pub(super) fn routes() -> Router<App> {
    Router::new()
        .route("/hosts", get(list).post(create))
        .route("/hosts/new", get(new_form))
        .route("/hosts/bulk", post(bulk))
        .route("/hosts/{name}", get(show).post(edit))
        .route("/hosts/{name}/delete", post(remove))
}

/// The filter a URL (or the bulk form's `f_` fields) gives.
#[derive(Debug, Clone, Default, serde::Deserialize)]
struct Filter {
    #[serde(default)]
    q: Option<String>,
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    node: Option<String>,
    #[serde(default)]
    image: Option<String>,
    #[serde(default)]
    after: Option<String>,
    #[serde(default)]
    limit: Option<u32>,
}

impl Filter {
    fn query(&self) -> HostQuery {
        HostQuery {
            limit: Some(self.limit.unwrap_or(PAGE_ROWS)),
            after: filled(&self.after),
            q: filled(&self.q),
            group: filled(&self.group),
            node: filled(&self.node),
            image: filled(&self.image),
            pending: false,
        }
    }

    fn from_fields(fields: &Fields) -> Filter {
        let get = |k: &str| fields.get(k).map(str::to_string);
        Filter {
            q: get("f_q"),
            group: get("f_group"),
            node: get("f_node"),
            image: get("f_image"),
            after: None,
            limit: None,
        }
    }

    /// The URL of this filter (without the cursor), plus `extra`.
    fn url(&self, extra: &str) -> String {
        let mut parts = Vec::new();
        for (k, v) in [
            ("q", &self.q),
            ("group", &self.group),
            ("node", &self.node),
            ("image", &self.image),
        ] {
            if let Some(v) = filled(v) {
                parts.push(format!("{k}={}", percent_encode(&v)));
            }
        }
        if !extra.is_empty() {
            parts.push(extra.to_string());
        }
        if parts.is_empty() {
            "/hosts".into()
        } else {
            format!("/hosts?{}", parts.join("&"))
        }
    }
}

struct HostRow {
    host: Host,
    macs: String,
    imaged: String,
    seen: String,
}

#[derive(Template)]
#[template(path = "hosts.html")]
struct HostsPage {
    layout: Layout,
    rows: Vec<HostRow>,
    total: u64,
    filter: Filter,
    next: Option<String>,
    groups: Vec<String>,
    nodes: Vec<String>,
    images: Vec<String>,
    first_page: bool,
}

impl HostsPage {
    fn q(&self) -> &str {
        self.filter.q.as_deref().unwrap_or("")
    }

    fn chosen(&self, which: &str, value: &str) -> bool {
        let current = match which {
            "group" => &self.filter.group,
            "node" => &self.filter.node,
            _ => &self.filter.image,
        };
        current.as_deref() == Some(value)
    }
}

async fn names(control: &Control) -> Result<(Vec<String>, Vec<String>, Vec<String>), Error> {
    let groups = control.groups().await?.into_iter().map(|g| g.name).collect();
    let nodes = control.nodes().await?.into_iter().map(|n| n.name).collect();
    let images = control.images().await?.into_iter().map(|i| i.name).collect();
    Ok((groups, nodes, images))
}

/// Table rows for hosts: MACs joined, last imaging and last contact.
async fn rows(control: &Control, hosts: Vec<Host>) -> Result<Vec<HostRow>, Error> {
    let now = control.clock().now();
    let names: Vec<String> = hosts.iter().map(|h| h.name.clone()).collect();
    let activity = control.host_activity(&names).await?;
    Ok(hosts
        .into_iter()
        .map(|host| {
            let seen = activity.get(&host.name).copied().unwrap_or_default();
            HostRow {
                macs: host.macs.join(" "),
                imaged: seen.imaged.map(view::when).unwrap_or_else(|| "never".into()),
                seen: view::ago(now, seen.seen),
                host,
            }
        })
        .collect())
}

async fn list(
    State(web): State<App>,
    Extension(ctx): Extension<Ctx>,
    headers: HeaderMap,
    Query(filter): Query<Filter>,
) -> WebResult {
    let query = filter.query();
    let found = web.control.host_page(&query).await?;
    let total = web.control.host_count(&query).await?;
    let next = found
        .next
        .map(|after| filter.url(&format!("after={}", percent_encode(&after))));
    let (groups, nodes, images) = names(&web.control).await?;
    // A search typed into the page puts its filter in the address bar, without empty fields.
    let address = filter.url(&match &filter.after {
        Some(after) => format!("after={}", percent_encode(after)),
        None => String::new(),
    });
    let mut response = page(HostsPage {
        layout: ctx.layout("hosts"),
        rows: rows(&web.control, found.items).await?,
        total,
        first_page: filter.after.is_none(),
        filter,
        next,
        groups,
        nodes,
        images,
    });
    if headers.contains_key("hx-request")
        && let Ok(value) = axum::http::HeaderValue::from_str(&address)
    {
        response.headers_mut().insert("hx-push-url", value);
    }
    Ok(response)
}

#[derive(Template)]
#[template(path = "host_new.html")]
struct NewHostPage {
    layout: Layout,
    groups: Vec<String>,
    nodes: Vec<String>,
    images: Vec<String>,
}

/// The choices of a host form's layout field, the default first: the layout, and what it does.
const LAYOUT_CHOICES: [(LayoutMode, &str); 2] = [
    (LayoutMode::Fit, "fit: partitions resized to the disk"),
    (LayoutMode::Exact, "exact: the image's partition table as it is"),
];

impl NewHostPage {
    fn layouts(&self) -> &'static [(LayoutMode, &'static str)] {
        &LAYOUT_CHOICES
    }
}

async fn new_form(State(web): State<App>, Extension(ctx): Extension<Ctx>) -> WebResult {
    let (groups, nodes, images) = names(&web.control).await?;
    Ok(page(NewHostPage {
        layout: ctx.layout("hosts"),
        groups,
        nodes,
        images,
    }))
}

/// The host a form describes (name, MACs by space or comma, address, image, group, node, disk,
/// kernel arguments, layout).
fn host_from(fields: &Fields, base: Host) -> Result<Host, WebError> {
    let mut host = base;
    if let Some(macs) = fields.get("macs") {
        host.macs = macs
            .split([',', ' ', '\n', '\r', '\t'])
            .filter(|m| !m.is_empty())
            .map(str::to_string)
            .collect();
    }
    host.address = match fields.get("address") {
        None => None,
        Some(a) => Some(
            a.parse()
                .map_err(|_| Error::invalid("address", a, "not an IPv4 address"))?,
        ),
    };
    host.image = fields.get("image").map(str::to_string);
    host.group = fields.get("group").map(str::to_string);
    host.node = fields.get("node").map(str::to_string);
    host.primary_disk = fields.get("primary_disk").map(str::to_string);
    host.kernel_args = fields.get("kernel_args").unwrap_or_default().to_string();
    if let Some(layout) = fields.get("layout") {
        host.layout = layout.parse()?;
    }
    Ok(host)
}

async fn create(State(web): State<App>, fields: Fields) -> WebResult {
    let blank = Host::new(fields.need("name")?, Vec::new());
    let host = web.control.create_host(host_from(&fields, blank)?).await?;
    let to = format!("/hosts/{}", host.name);
    Ok(done(&web, &to, host.name.clone(), format!("Host {} added.", host.name)))
}

async fn edit(State(web): State<App>, Path(name): Path<String>, fields: Fields) -> WebResult {
    let host = web.control.host(&name).await?;
    let host = web.control.update_host(&name, host_from(&fields, host)?).await?;
    let to = format!("/hosts/{}", host.name);
    Ok(done(&web, &to, name, format!("Host {} saved.", host.name)))
}

async fn remove(State(web): State<App>, Path(name): Path<String>) -> WebResult {
    web.control.delete_host(&name).await?;
    Ok(done(&web, "/hosts", name.clone(), format!("Host {name} deleted.")))
}

/// A task as a table shows it.
pub(super) struct TaskRow {
    pub(super) task: Task,
    pub(super) state: String,
    pub(super) class: &'static str,
    pub(super) created: String,
    pub(super) events: Vec<(String, TaskEvent)>,
}

#[derive(Template)]
#[template(path = "host.html")]
struct HostPage {
    layout: Layout,
    host: Host,
    pending: bool,
    inventory: Vec<(String, String)>,
    tasks: Vec<TaskRow>,
    groups: Vec<String>,
    nodes: Vec<String>,
    images: Vec<String>,
}

impl HostPage {
    fn is(&self, which: &str, value: &str) -> bool {
        let current = match which {
            "group" => &self.host.group,
            "node" => &self.host.node,
            _ => &self.host.image,
        };
        current.as_deref() == Some(value)
    }

    fn address(&self) -> String {
        self.host.address.map(|a| a.to_string()).unwrap_or_default()
    }

    fn layouts(&self) -> &'static [(LayoutMode, &'static str)] {
        &LAYOUT_CHOICES
    }
}

/// The inventory as `section.field: value` lines (DMI, CPU, memory, disks, NICs as reported).
fn flatten(prefix: &str, value: &serde_json::Value, out: &mut Vec<(String, String)>) {
    use serde_json::Value;
    match value {
        Value::Null => {}
        Value::Object(fields) => {
            for (k, v) in fields {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                flatten(&format!("{prefix}[{i}]"), v, out);
            }
        }
        Value::String(s) => out.push((prefix.to_string(), s.clone())),
        other => out.push((prefix.to_string(), other.to_string())),
    }
}

/// A host's tasks, newest first, each with its state changes.
pub(super) async fn task_rows(control: &Control, filter: &TaskFilter, events: bool) -> Result<Vec<TaskRow>, Error> {
    let mut tasks = control.task_page(filter).await?.items;
    tasks.sort_by_key(|t| std::cmp::Reverse(t.id));
    let mut rows = Vec::with_capacity(tasks.len());
    for task in tasks {
        let events = if events {
            control
                .task_history(task.id, &HistoryQuery::default())
                .await?
                .items
                .into_iter()
                .map(|e| (view::when(e.at), e))
                .collect()
        } else {
            Vec::new()
        };
        rows.push(TaskRow {
            state: view::state(&task),
            class: view::state_class(&task.state),
            created: view::when(task.created_at),
            events,
            task,
        });
    }
    Ok(rows)
}

async fn show(State(web): State<App>, Extension(ctx): Extension<Ctx>, Path(name): Path<String>) -> WebResult {
    let host = web.control.host(&name).await?;
    let pending = web.control.is_pending(&name).await?;
    let mut inventory = Vec::new();
    flatten("", &host.inventory, &mut inventory);
    let filter = TaskFilter {
        host: Some(name.clone()),
        limit: Some(20),
        ..TaskFilter::default()
    };
    let tasks = task_rows(&web.control, &filter, true).await?;
    let (groups, nodes, images) = names(&web.control).await?;
    Ok(page(HostPage {
        layout: ctx.layout("hosts"),
        host,
        pending,
        inventory,
        tasks,
        groups,
        nodes,
        images,
    }))
}

// ---- bulk actions

/// What a bulk action does to each host.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Bulk {
    Task(TaskKind),
    Wake,
    SetImage,
    SetGroup,
    Delete,
}

impl Bulk {
    fn parse(text: &str) -> Result<Bulk, Error> {
        Ok(match text {
            "deploy" => Bulk::Task(TaskKind::Deploy),
            "multicast" => Bulk::Task(TaskKind::Multicast),
            "capture" => Bulk::Task(TaskKind::Capture),
            "inventory" => Bulk::Task(TaskKind::Inventory),
            "wipe_fast" => Bulk::Task(TaskKind::WipeFast),
            "wipe_full" => Bulk::Task(TaskKind::WipeFull),
            "wake" => Bulk::Wake,
            "set_image" => Bulk::SetImage,
            "set_group" => Bulk::SetGroup,
            "delete" => Bulk::Delete,
            _ => return Err(Error::invalid("action", text, "not an action on hosts")),
        })
    }

    /// What the confirmation asks: `Deploy image win11 to 37 hosts`.
    fn describe(self, count: usize, image: Option<&str>, group: Option<&str>) -> String {
        let hosts = if count == 1 {
            "1 host".to_string()
        } else {
            format!("{count} hosts")
        };
        match self {
            Bulk::Task(TaskKind::Deploy) => match image {
                Some(image) => format!("Deploy image {image} to {hosts}, erasing their disks"),
                None => format!("Deploy each host's own image to {hosts}, erasing their disks"),
            },
            Bulk::Task(TaskKind::Multicast) => match image {
                Some(image) => format!("Deploy image {image} to {hosts} by multicast, erasing their disks"),
                None => format!("Deploy each host's own image to {hosts} by multicast, erasing their disks"),
            },
            Bulk::Task(TaskKind::Capture) => match image {
                Some(image) => format!("Capture {hosts} into image {image}"),
                None => format!("Capture {hosts} into each host's image"),
            },
            Bulk::Task(TaskKind::WipeFast) => format!("Wipe the partition tables of {hosts}"),
            Bulk::Task(TaskKind::WipeFull) => format!("Overwrite the whole disks of {hosts}"),
            Bulk::Task(kind) => format!("Queue a {} task for {hosts}", kind.as_str()),
            Bulk::Wake => format!("Wake {hosts}"),
            Bulk::SetImage => format!("Set the image of {hosts} to {}", image.unwrap_or("none")),
            Bulk::SetGroup => format!("Move {hosts} to group {}", group.unwrap_or("none")),
            Bulk::Delete => format!("Delete {hosts} from the inventory"),
        }
    }
}

/// A confirmation: the question, what it applies to, the form again with `confirmed=1`.
#[derive(Template)]
#[template(path = "confirm.html")]
pub(super) struct ConfirmPage {
    layout: Layout,
    question: String,
    sample: Vec<String>,
    more: usize,
    action: String,
    fields: Vec<(String, String)>,
    back: String,
}

/// The confirmation of a POST to `action` carrying `fields` again.
pub(super) fn confirm(layout: Layout, question: String, action: String, fields: &Fields, back: String) -> ConfirmPage {
    ConfirmPage {
        layout,
        question,
        sample: Vec::new(),
        more: 0,
        action,
        fields: fields.pairs(),
        back,
    }
}

/// A confirmation page, as the audit log records the POST that asked for it.
pub(super) fn asked(mut response: Response, count: usize) -> Response {
    response.extensions_mut().insert(super::Outcome {
        target: format!("{count} hosts"),
        result: "asked to confirm".into(),
    });
    response
}

/// The hosts a bulk form names: the ticked rows, or every host matching its filter.
async fn chosen_hosts(control: &Control, fields: &Fields) -> Result<Vec<String>, Error> {
    if fields.get("all").is_none() {
        return Ok(fields.all("host"));
    }
    let mut query = Filter::from_fields(fields).query();
    query.limit = Some(1000);
    let mut names = Vec::new();
    loop {
        let found = control.host_page(&query).await?;
        names.extend(found.items.into_iter().map(|h| h.name));
        if names.len() > BULK_MAX {
            return Err(Error::invalid(
                "hosts",
                names.len().to_string(),
                format!("at most {BULK_MAX} at once"),
            ));
        }
        match found.next {
            Some(after) => query.after = Some(after),
            None => return Ok(names),
        }
    }
}

/// A bulk action: the first POST answers a confirmation stating how many hosts and what; the
/// confirmed POST does it, host by host, and says what was done and what was refused.
async fn bulk(State(web): State<App>, Extension(ctx): Extension<Ctx>, fields: Fields) -> WebResult {
    let action = Bulk::parse(fields.need("action")?)?;
    let image = fields.get("image");
    let group = fields.get("group");
    let hosts = chosen_hosts(&web.control, &fields).await?;
    if hosts.is_empty() {
        return Err(Error::invalid("hosts", "", "tick at least one host, or all matching the filter").into());
    }
    if action == Bulk::SetGroup && group.is_none() {
        return Err(Error::invalid("group", "", "choose the group to move them to").into());
    }
    let question = action.describe(hosts.len(), image, group);
    if fields.get("confirmed").is_none() {
        let back = match fields.all("host").as_slice() {
            [one] if fields.get("all").is_none() => format!("/hosts/{one}"),
            _ => Filter::from_fields(&fields).url(""),
        };
        let mut confirmation = confirm(
            ctx.layout("hosts"),
            format!("{question}?"),
            "/hosts/bulk".into(),
            &fields,
            back,
        );
        confirmation.sample = hosts.iter().take(20).cloned().collect();
        confirmation.more = hosts.len().saturating_sub(20);
        // What was confirmed is this many hosts: a filter that matches others by then is refused.
        confirmation.fields.push(("count".into(), hosts.len().to_string()));
        return Ok(asked(page(confirmation), hosts.len()));
    }
    if let Some(count) = fields.get("count")
        && count != hosts.len().to_string()
    {
        return Err(Error::conflict(
            "hosts",
            hosts.len().to_string(),
            format!(
                "the filter now matches {} hosts, not the {count} confirmed: look again",
                hosts.len()
            ),
        )
        .into());
    }
    let mut refused = Vec::new();
    for name in &hosts {
        if let Err(e) = apply(&web.control, action, name, image, group).await {
            refused.push(format!("{name}: {e}"));
        }
    }
    let ok = hosts.len() - refused.len();
    let mut notice = format!("{question}: {ok} done");
    if !refused.is_empty() {
        notice.push_str(&format!(
            ", {} refused ({}{})",
            refused.len(),
            refused.iter().take(5).cloned().collect::<Vec<_>>().join("; "),
            if refused.len() > 5 { "; ..." } else { "" }
        ));
    }
    notice.push('.');
    let to = match action {
        Bulk::Task(_) => "/tasks".to_string(),
        _ => Filter::from_fields(&fields).url(""),
    };
    let target = if hosts.len() == 1 {
        hosts[0].clone()
    } else {
        format!("{} hosts", hosts.len())
    };
    let mut response: Response = done(&web, &to, target, notice);
    if !refused.is_empty()
        && let Some(outcome) = response.extensions_mut().get_mut::<super::Outcome>()
    {
        outcome.result = format!("{ok} done, {} refused", refused.len());
    }
    Ok(response)
}

async fn apply(
    control: &Control,
    action: Bulk,
    name: &str,
    image: Option<&str>,
    group: Option<&str>,
) -> Result<(), Error> {
    match action {
        Bulk::Task(kind) => {
            let new = NewTask {
                kind,
                host: Some(name.to_string()),
                image: image.map(str::to_string),
                after: After::default(),
                wake: false,
                layout: None,
            };
            control.create_task(&new).await.map(|_| ())
        }
        Bulk::Wake => control.wake_host(name).await.map(|_| ()),
        Bulk::SetImage | Bulk::SetGroup => {
            let mut host = control.host(name).await?;
            if action == Bulk::SetImage {
                host.image = image.map(str::to_string);
            } else {
                host.group = group.map(str::to_string);
            }
            control.update_host(name, host).await.map(|_| ())
        }
        Bulk::Delete => control.delete_host(name).await,
    }
}
