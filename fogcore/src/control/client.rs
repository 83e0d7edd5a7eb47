//! The master's API from the other side: typed calls that the CLI (and later the agent, the nodes
//! and Python) make. A `{code, message}` answer becomes [`Error::Remote`]; a master that cannot
//! be reached, [`Error::Http`].

use std::time::Duration;

use reqwest::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::control::model::{
    AuditEntry, AuditQuery, BootTask, CheckIn, CheckInReply, CheckOut, CopyReport, Group, GroupTasks, Heartbeat,
    HistoryQuery, Host, HostQuery, Image, ImageCopy, ImageQuery, ImageStatus, IssuedToken, NewTask, NewToken, NewUser,
    Node, NodeToken, PAGE_MAX, Page, ProgressReport, Registered, Registration, Schedule, Task, TaskEvent, TaskFilter,
    TaskId, TokenInfo, User, UserUpdate, Wake,
};
use crate::error::{Error, Result};
use crate::net::tls::{Trust, request_error};

/// The size of the next page when `wanted` items are asked for and `got` are in hand.
fn page_size(wanted: Option<usize>, got: usize) -> u32 {
    let left = wanted.map_or(PAGE_MAX as usize, |n| n.saturating_sub(got));
    left.clamp(1, PAGE_MAX as usize) as u32
}

/// A numeric cursor (`next` of the tasks, history and audit lists).
fn id_cursor(next: &str) -> Result<i64> {
    next.parse()
        .map_err(|_| Error::internal(format!("the master gave a cursor that is not a number: {next:?}")))
}

/// `?a=1&b=2` from a query type's fields (none left out when unset).
fn query_string(query: &impl Serialize) -> Result<String> {
    let text = serde_urlencoded::to_string(query).map_err(|e| Error::internal(format!("query string: {e}")))?;
    Ok(if text.is_empty() { text } else { format!("?{text}") })
}

/// A connection to a master.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    /// A client of the master at `url` (`http://host:port`), with a bearer token, trusting the
    /// system's roots for HTTPS.
    pub fn new(url: &str, token: Option<&str>) -> Result<Client> {
        Client::with_trust(url, token, &Trust::System)
    }

    /// A client of the master at `url` that trusts its certificate as `trust` says.
    pub fn with_trust(url: &str, token: Option<&str>, trust: &Trust) -> Result<Client> {
        let base = url.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(Error::invalid("master url", url, "must start with http:// or https://"));
        }
        let http = trust
            .client_builder()?
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| Error::Http {
                url: base.clone(),
                reason: e.to_string(),
            })?;
        Ok(Client {
            base,
            token: token.map(str::to_string),
            http,
        })
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&(dyn erased::Json + Sync)>,
    ) -> Result<T> {
        let url = format!("{}/api/v1{path}", self.base);
        let http_err = |reason: String| Error::Http {
            url: url.clone(),
            reason,
        };
        let mut req = self.http.request(method, &url);
        if let Some(token) = &self.token {
            req = req.header(reqwest::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        if let Some(body) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_json()?);
        }
        let resp = req.send().await.map_err(|e| request_error(&url, &e))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| http_err(e.to_string()))?;
        if !status.is_success() {
            return Err(remote_error(status, &bytes, &url));
        }
        serde_json::from_slice(&bytes).map_err(|e| http_err(format!("unexpected answer: {e}")))
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.call(Method::GET, path, None).await
    }

    async fn send<T: DeserializeOwned>(&self, method: Method, path: &str, body: &(impl Serialize + Sync)) -> Result<T> {
        self.call(method, path, Some(body)).await
    }

    async fn delete(&self, path: &str) -> Result<()> {
        self.call::<serde_json::Value>(Method::DELETE, path, None)
            .await
            .map(|_| ())
    }

    /// `GET /health`.
    pub async fn health(&self) -> Result<serde_json::Value> {
        self.get("/health").await
    }

    /// Every host.
    pub async fn hosts(&self) -> Result<Vec<Host>> {
        self.hosts_matching(&HostQuery::default()).await
    }
    /// Every host `query` selects (its `limit`: at most that many), page after page.
    pub async fn hosts_matching(&self, query: &HostQuery) -> Result<Vec<Host>> {
        let wanted = query.limit.map(|n| n as usize);
        self.pages(wanted, |limit, after| {
            let page = HostQuery {
                limit: Some(limit),
                after: after.map(str::to_string),
                ..query.clone()
            };
            Ok(format!("/hosts{}", query_string(&page)?))
        })
        .await
    }
    /// One page of hosts.
    pub async fn host_page(&self, query: &HostQuery) -> Result<Page<Host>> {
        self.get(&format!("/hosts{}", query_string(query)?)).await
    }
    /// One host.
    pub async fn host(&self, name: &str) -> Result<Host> {
        self.get(&format!("/hosts/{}", seg(name))).await
    }
    /// Adds a host.
    pub async fn create_host(&self, host: &Host) -> Result<Host> {
        self.send(Method::POST, "/hosts", host).await
    }
    /// Replaces a host.
    pub async fn update_host(&self, host: &Host) -> Result<Host> {
        self.send(Method::PUT, &format!("/hosts/{}", seg(&host.name)), host)
            .await
    }
    /// Removes a host.
    pub async fn delete_host(&self, name: &str) -> Result<()> {
        self.delete(&format!("/hosts/{}", seg(name))).await
    }

    /// Asks the host's node to wake it (Wake-on-LAN).
    pub async fn wake_host(&self, name: &str) -> Result<Wake> {
        self.send(Method::POST, &format!("/hosts/{}/wake", seg(name)), &())
            .await
    }
    /// A node claims its wake requests (each is returned once).
    pub async fn take_wakes(&self, node: &str) -> Result<Vec<Wake>> {
        self.send(Method::POST, &format!("/nodes/{}/wakes", seg(node)), &())
            .await
    }

    /// Every group.
    pub async fn groups(&self) -> Result<Vec<Group>> {
        self.get("/groups").await
    }
    /// Adds a group.
    pub async fn create_group(&self, group: &Group) -> Result<Group> {
        self.send(Method::POST, "/groups", group).await
    }
    /// Removes a group.
    pub async fn delete_group(&self, name: &str) -> Result<()> {
        self.delete(&format!("/groups/{}", seg(name))).await
    }
    /// One task per host of a group.
    pub async fn group_task(&self, group: &str, task: &NewTask) -> Result<GroupTasks> {
        self.send(Method::POST, &format!("/groups/{}/tasks", seg(group)), task)
            .await
    }

    /// Every image record.
    pub async fn images(&self) -> Result<Vec<Image>> {
        self.pages(None, |limit, after| {
            let page = ImageQuery {
                limit: Some(limit),
                after: after.map(str::to_string),
                ..ImageQuery::default()
            };
            Ok(format!("/images{}", query_string(&page)?))
        })
        .await
    }
    /// Adds an image record.
    pub async fn create_image(&self, image: &Image) -> Result<Image> {
        self.send(Method::POST, "/images", image).await
    }
    /// Replaces an image record.
    pub async fn update_image(&self, image: &Image) -> Result<Image> {
        self.send(Method::PUT, &format!("/images/{}", seg(&image.name)), image)
            .await
    }
    /// Removes an image record.
    pub async fn delete_image(&self, name: &str) -> Result<()> {
        self.delete(&format!("/images/{}", seg(name))).await
    }
    /// Each node's copy of an image.
    pub async fn image_copies(&self, name: &str) -> Result<Vec<ImageCopy>> {
        self.get(&format!("/images/{}/copies", seg(name))).await
    }

    /// One image record.
    pub async fn image(&self, name: &str) -> Result<Image> {
        self.get(&format!("/images/{}", seg(name))).await
    }
    /// One image record with each node's copy.
    pub async fn image_status(&self, name: &str) -> Result<ImageStatus> {
        let image = self.image(name).await?;
        let copies = self.image_copies(name).await?;
        Ok(ImageStatus { image, copies })
    }
    /// Every image record with each node's copy, by name.
    pub async fn images_status(&self) -> Result<Vec<ImageStatus>> {
        let mut out = Vec::new();
        for image in self.images().await? {
            match self.image_copies(&image.name).await {
                Ok(copies) => out.push(ImageStatus { image, copies }),
                // Removed between the two calls.
                Err(Error::Remote { status: 404, .. }) => {}
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.image.name.cmp(&b.image.name));
        Ok(out)
    }

    /// Reports where `node`'s copy of `image` stands.
    pub async fn set_copy_state(&self, image: &str, node: &str, report: &CopyReport) -> Result<()> {
        let path = format!("/images/{}/copies/{}", seg(image), seg(node));
        self.send::<serde_json::Value>(Method::PUT, &path, report)
            .await
            .map(|_| ())
    }

    /// Every node.
    pub async fn nodes(&self) -> Result<Vec<Node>> {
        self.get("/nodes").await
    }
    /// Adds a node; its token comes back once.
    pub async fn create_node(&self, node: &Node) -> Result<NodeToken> {
        self.send(Method::POST, "/nodes", node).await
    }
    /// Replaces a node's settings.
    pub async fn update_node(&self, node: &Node) -> Result<Node> {
        self.send(Method::PUT, &format!("/nodes/{}", seg(&node.name)), node)
            .await
    }
    /// Removes a node.
    pub async fn delete_node(&self, name: &str) -> Result<()> {
        self.delete(&format!("/nodes/{}", seg(name))).await
    }
    /// Revokes a node's tokens and issues a new one.
    pub async fn node_token(&self, name: &str) -> Result<NodeToken> {
        self.send(Method::POST, &format!("/nodes/{}/token", seg(name)), &())
            .await
    }
    /// A node's heartbeat.
    pub async fn heartbeat(&self, node: &str, beat: &Heartbeat) -> Result<Node> {
        self.send(Method::POST, &format!("/nodes/{}/heartbeat", seg(node)), beat)
            .await
    }
    /// The tasks not over of a node's hosts.
    pub async fn node_tasks(&self, node: &str) -> Result<Vec<Task>> {
        self.get(&format!("/nodes/{}/tasks", seg(node))).await
    }

    /// The tasks not over of a node's hosts, with the hosts' MACs and kernel arguments.
    pub async fn node_boot_tasks(&self, node: &str) -> Result<Vec<BootTask>> {
        self.get(&format!("/nodes/{}/boot-tasks", seg(node))).await
    }

    /// The images placed on a node, with where its copy of each stands.
    pub async fn node_copies(&self, node: &str) -> Result<Vec<ImageCopy>> {
        self.get(&format!("/nodes/{}/copies", seg(node))).await
    }

    /// Tasks matching a filter, newest first.
    pub async fn tasks(&self, filter: &TaskFilter) -> Result<Vec<Task>> {
        let wanted = filter.limit.map(|n| n as usize);
        self.pages(wanted, |limit, after| {
            let page = TaskFilter {
                limit: Some(limit),
                after: after.map(id_cursor).transpose()?,
                ..filter.clone()
            };
            Ok(format!("/tasks{}", query_string(&page)?))
        })
        .await
    }
    /// One task.
    pub async fn task(&self, id: TaskId) -> Result<Task> {
        self.get(&format!("/tasks/{id}")).await
    }
    /// Task `id` as soon as it differs from `last` (its state, progress or any other field),
    /// asking every `poll`; at once when `last` is none. Never returns while it stays equal, so
    /// callers stop after a terminal state (or bound the wait).
    pub async fn next_change(&self, id: TaskId, last: Option<&Task>, poll: Duration) -> Result<Task> {
        loop {
            let task = self.task(id).await?;
            if last != Some(&task) {
                return Ok(task);
            }
            tokio::time::sleep(poll).await;
        }
    }
    /// A task's state changes.
    pub async fn task_history(&self, id: TaskId) -> Result<Vec<TaskEvent>> {
        self.pages(None, |limit, after| {
            let page = HistoryQuery {
                limit: Some(limit),
                after: after.map(id_cursor).transpose()?,
            };
            Ok(format!("/tasks/{id}/history{}", query_string(&page)?))
        })
        .await
    }
    /// Creates a task for a host.
    pub async fn create_task(&self, task: &NewTask) -> Result<Task> {
        self.send(Method::POST, "/tasks", task).await
    }
    /// Cancels a task.
    pub async fn cancel_task(&self, id: TaskId) -> Result<Task> {
        self.send(Method::POST, &format!("/tasks/{id}/cancel"), &()).await
    }
    /// Quick registration: creates this machine's host or updates its inventory.
    pub async fn register(&self, reg: &Registration) -> Result<Registered> {
        self.send(Method::POST, "/register", reg).await
    }
    /// An agent's check-in.
    pub async fn check_in(&self, check_in: &CheckIn) -> Result<CheckInReply> {
        self.send(Method::POST, "/checkin", check_in).await
    }
    /// An agent's progress.
    pub async fn progress(&self, id: TaskId, report: &ProgressReport) -> Result<Task> {
        self.send(Method::POST, &format!("/tasks/{id}/progress"), report).await
    }
    /// An agent's check-out.
    pub async fn check_out(&self, id: TaskId, out: &CheckOut) -> Result<Task> {
        self.send(Method::POST, &format!("/tasks/{id}/checkout"), out).await
    }

    /// Where the agent of multicast task `id` joins its session (asked of its node).
    pub async fn multicast_join(&self, id: TaskId) -> Result<crate::control::multicast::MulticastJoin> {
        self.send(Method::POST, &format!("/tasks/{id}/multicast"), &serde_json::json!({}))
            .await
    }

    /// Every schedule.
    pub async fn schedules(&self) -> Result<Vec<Schedule>> {
        self.get("/schedules").await
    }
    /// Adds a schedule.
    pub async fn create_schedule(&self, schedule: &Schedule) -> Result<Schedule> {
        self.send(Method::POST, "/schedules", schedule).await
    }
    /// Removes a schedule.
    pub async fn delete_schedule(&self, id: i64) -> Result<()> {
        self.delete(&format!("/schedules/{id}")).await
    }

    /// The admin tokens' records.
    pub async fn tokens(&self) -> Result<Vec<TokenInfo>> {
        self.get("/tokens").await
    }
    /// Issues a named token, admin unless it asks for a role (its secret is in the answer, once).
    pub async fn create_token(&self, token: &NewToken) -> Result<IssuedToken> {
        self.send(Method::POST, "/tokens", token).await
    }
    /// Revokes an admin token.
    pub async fn revoke_token(&self, name: &str) -> Result<()> {
        self.delete(&format!("/tokens/{}", seg(name))).await
    }
    /// Every user, by name.
    pub async fn users(&self) -> Result<Vec<User>> {
        self.get("/users").await
    }
    /// Adds a user.
    pub async fn create_user(&self, user: &NewUser) -> Result<User> {
        self.send(Method::POST, "/users", user).await
    }
    /// Changes a user's role or password.
    pub async fn update_user(&self, name: &str, change: &UserUpdate) -> Result<User> {
        self.send(Method::PUT, &format!("/users/{}", seg(name)), change).await
    }
    /// Removes a user, their sessions and their tokens.
    pub async fn remove_user(&self, name: &str) -> Result<()> {
        self.delete(&format!("/users/{}", seg(name))).await
    }
    /// One page of the audit log, newest first.
    pub async fn audit_page(&self, query: &AuditQuery) -> Result<Page<AuditEntry>> {
        self.get(&format!("/audit{}", query_string(query)?)).await
    }
    /// The newest `count` entries `query` selects, page after page.
    pub async fn audit(&self, query: &AuditQuery, count: usize) -> Result<Vec<AuditEntry>> {
        self.pages(Some(count), |limit, after| {
            let page = AuditQuery {
                limit: Some(limit),
                after: after.map(id_cursor).transpose()?,
                ..query.clone()
            };
            Ok(format!("/audit{}", query_string(&page)?))
        })
        .await
    }

    /// The items of a paged list, page after page, at most `wanted` (all when none): `path`
    /// makes each page's path from its size and the cursor the page before gave.
    async fn pages<T: DeserializeOwned>(
        &self,
        wanted: Option<usize>,
        path: impl Fn(u32, Option<&str>) -> Result<String>,
    ) -> Result<Vec<T>> {
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page: Page<T> = self.get(&path(page_size(wanted, out.len()), after.as_deref())?).await?;
            out.extend(page.items);
            match page.next {
                Some(next) if wanted.is_none_or(|n| out.len() < n) => after = Some(next),
                _ => return Ok(out),
            }
        }
    }
}

/// Percent-encodes a path segment or query value.
fn seg(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

mod erased {
    use crate::error::{Error, Result};

    /// A body that serializes to JSON (object-safe `Serialize`).
    pub trait Json {
        fn to_json(&self) -> Result<Vec<u8>>;
    }

    impl<T: serde::Serialize> Json for T {
        fn to_json(&self) -> Result<Vec<u8>> {
            serde_json::to_vec(self).map_err(|e| Error::Internal(format!("encoding a request: {e}")))
        }
    }
}

/// The error of a failed API call: the server's `{code, message}` as [`Error::Remote`], or the
/// status and the start of the body when it sent something else (a proxy's page).
pub(crate) fn remote_error(status: reqwest::StatusCode, body: &[u8], url: &str) -> Error {
    #[derive(serde::Deserialize)]
    struct Wire {
        code: String,
        message: String,
    }
    match serde_json::from_slice::<Wire>(body) {
        Ok(w) => Error::Remote {
            status: status.as_u16(),
            code: w.code,
            message: w.message,
        },
        Err(_) => Error::Http {
            url: url.to_string(),
            reason: format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(body.get(..200).unwrap_or(body))
            ),
        },
    }
}
