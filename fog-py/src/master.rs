//! `fog.Master` (the master's REST API from Python), `fog.start_master` (a master in this
//! process) and `fog.run_agent` (the imaging agent). Everything is fogcore's control client,
//! master and agent; this converts arguments (Python values -> fogcore's serde types, checked by
//! serde, so an unknown key raises naming it), results (serde -> plain dicts) and errors (a
//! `{code, message}` answer of the master -> `fog.ApiError` carrying both).

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fogcore::control::client::Client;
use fogcore::control::master::{Master, MasterConfig};
use fogcore::control::model::{
    After, Group, Host, Image, NewTask, Node, Placement, Task, TaskFilter, TaskId, TaskKind, parse_subnet,
};
use fogcore::control::service::Control;
use fogcore::imaging::replica::{ImageStore, LocalStore};
use fogcore::imaging::store::Store;
use pyo3::create_exception;
use pyo3::exceptions::PyTimeoutError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};
use serde::de::DeserializeOwned;

use crate::{BadInputError, FogError, PyProgress, PyStore, fog_err, layout_mode, run_job, to_py};

create_exception!(
    fog,
    ApiError,
    FogError,
    "The master refused a call: `code` is its error code (`unauthorized`, `not_found`, `invalid`, \
     `conflict`, `forbidden`, ...), `status` the HTTP status, `message` its message."
);

/// How long a blocking wait runs before Python gets a chance to see Ctrl-C.
const SLICE: Duration = Duration::from_millis(200);

/// A fogcore error as a Python exception: the master's `{code, message}` as `ApiError`.
fn api_err(py: Python<'_>, e: fogcore::Error) -> PyErr {
    match e {
        fogcore::Error::Remote { status, code, message } => {
            let err = ApiError::new_err(format!("{code}: {message}"));
            let value = err.value(py);
            for (key, item) in [
                ("code", code.into_pyobject(py).map(Bound::into_any)),
                ("message", message.into_pyobject(py).map(Bound::into_any)),
                ("status", status.into_pyobject(py).map(Bound::into_any)),
            ] {
                if let Ok(item) = item
                    && let Err(e) = value.setattr(key, item)
                {
                    return e;
                }
            }
            err
        }
        other => fog_err(other),
    }
}

fn runtime() -> PyResult<Arc<tokio::runtime::Runtime>> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("fog-py")
        .enable_all()
        .build()
        .map(Arc::new)
        .map_err(|e| FogError::new_err(format!("cannot start a tokio runtime: {e}")))
}

/// A Python value (dict, list, ...) as a fogcore type, through JSON; `what` and the key at fault
/// (`host: layout: unknown variant ...`) name it in errors.
fn from_py<T: DeserializeOwned>(py: Python<'_>, value: &Bound<'_, PyAny>, what: &str) -> PyResult<T> {
    let json: String = py.import("json")?.call_method1("dumps", (value,))?.extract()?;
    serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_str(&json))
        .map_err(|e| BadInputError::new_err(format!("{what}: {e}")))
}

/// `{"name": name, ..., **fields}` as a fogcore record.
fn record<T: DeserializeOwned>(
    py: Python<'_>,
    what: &str,
    required: &[(&str, Bound<'_, PyAny>)],
    fields: Option<&Bound<'_, PyDict>>,
) -> PyResult<T> {
    let dict = match fields {
        Some(f) => f.copy()?,
        None => PyDict::new(py),
    };
    for (key, value) in required {
        dict.set_item(key, value)?;
    }
    from_py(py, dict.as_any(), what)
}

/// `"all"`, `None` or a list of node names as a placement.
fn placement(value: Option<&Bound<'_, PyAny>>) -> PyResult<Placement> {
    let Some(value) = value.filter(|v| !v.is_none()) else {
        return Ok(Placement::All);
    };
    if let Ok(text) = value.cast::<PyString>() {
        let text: String = text.extract()?;
        return match text.as_str() {
            "all" => Ok(Placement::All),
            other => Err(BadInputError::new_err(format!(
                "placement {other:?}: use \"all\" or a list of node names"
            ))),
        };
    }
    let nodes: Vec<String> = value
        .extract()
        .map_err(|_| BadInputError::new_err("placement: use \"all\" or a list of node names"))?;
    Ok(Placement::Nodes { nodes })
}

fn after(text: &str) -> PyResult<After> {
    After::parse(text).map_err(fog_err)
}

/// A connection to a master's REST API (`/api/v1`) with a bearer token. Every call releases the
/// GIL and returns plain dicts and lists.
#[pyclass(frozen, module = "fog", name = "Master")]
pub struct PyMaster {
    client: Client,
    url: String,
    rt: Arc<tokio::runtime::Runtime>,
}

impl PyMaster {
    fn call<'py, T, Fut>(&self, py: Python<'py>, f: impl FnOnce(Client) -> Fut) -> PyResult<Bound<'py, PyAny>>
    where
        T: serde::Serialize + Send,
        Fut: Future<Output = fogcore::Result<T>> + Send,
    {
        let value = self.wait(py, f)?;
        to_py(py, &value)
    }

    /// Runs `f` on the runtime with the GIL released, in slices so Ctrl-C is seen.
    fn wait<T, Fut>(&self, py: Python<'_>, f: impl FnOnce(Client) -> Fut) -> PyResult<T>
    where
        T: Send,
        Fut: Future<Output = fogcore::Result<T>> + Send,
    {
        let mut fut = std::pin::pin!(f(self.client.clone()));
        let rt = &self.rt;
        loop {
            let step = py.detach(|| rt.block_on(async { tokio::time::timeout(SLICE, fut.as_mut()).await }));
            match step {
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(e)) => return Err(api_err(py, e)),
                Err(_) => py.check_signals()?,
            }
        }
    }

    fn new_task<'py>(&self, py: Python<'py>, new: NewTask, group: Option<&str>) -> PyResult<Bound<'py, PyAny>> {
        match group {
            Some(group) => self.call(py, move |c| async move { c.group_task(group, &new).await }),
            None => self.call(py, move |c| async move { c.create_task(&new).await }),
        }
    }
}

#[pymethods]
impl PyMaster {
    #[new]
    #[pyo3(signature = (url, token=None, ca=None, fingerprint=None))]
    fn new(url: &str, token: Option<&str>, ca: Option<PathBuf>, fingerprint: Option<&str>) -> PyResult<Self> {
        let trust = fogcore::net::tls::Trust::from_options(ca.as_deref(), fingerprint).map_err(fog_err)?;
        Ok(PyMaster {
            client: Client::with_trust(url, token, &trust).map_err(fog_err)?,
            url: url.trim_end_matches('/').to_string(),
            rt: runtime()?,
        })
    }

    /// The master's URL.
    #[getter]
    fn url(&self) -> &str {
        &self.url
    }

    fn __repr__(&self) -> String {
        format!("fog.Master({:?})", self.url)
    }

    /// `GET /health`.
    fn health<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.call(py, move |c| async move { c.health().await })
    }

    // ---- hosts

    /// Every host.
    fn hosts<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.call(py, move |c| async move { c.hosts().await })
    }

    /// One host.
    fn host<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
        self.call(py, move |c| async move { c.host(name).await })
    }

    /// Adds a host: `create_host("pc-01", ["52:54:00:12:34:56"], image="golden", node="site-a",
    /// layout="exact")`.
    #[pyo3(signature = (name, macs, **fields))]
    fn create_host<'py>(
        &self,
        py: Python<'py>,
        name: &str,
        macs: Vec<String>,
        fields: Option<&Bound<'py, PyDict>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let required = [
            ("name", name.into_pyobject(py)?.into_any()),
            ("macs", macs.into_pyobject(py)?.into_any()),
        ];
        let host: Host = record(py, "host", &required, fields)?;
        self.call(py, move |c| async move { c.create_host(&host).await })
    }

    /// Replaces a host with `host` (a dict as `host()` returns it, changed).
    fn update_host<'py>(&self, py: Python<'py>, host: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let host: Host = from_py(py, host, "host")?;
        self.call(py, move |c| async move { c.update_host(&host).await })
    }

    /// Removes a host.
    fn delete_host(&self, py: Python<'_>, name: &str) -> PyResult<()> {
        self.wait(py, move |c| async move { c.delete_host(name).await })
    }

    /// Asks the host's node to wake it (Wake-on-LAN); returns the request.
    fn wake<'py>(&self, py: Python<'py>, host: &str) -> PyResult<Bound<'py, PyAny>> {
        self.call(py, move |c| async move { c.wake_host(host).await })
    }

    // ---- groups

    /// Every group.
    fn groups<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.call(py, move |c| async move { c.groups().await })
    }

    /// Adds a group.
    #[pyo3(signature = (name, description=String::new()))]
    fn create_group<'py>(&self, py: Python<'py>, name: String, description: String) -> PyResult<Bound<'py, PyAny>> {
        let group = Group { name, description };
        self.call(py, move |c| async move { c.create_group(&group).await })
    }

    /// Removes a group (its hosts stay).
    fn delete_group(&self, py: Python<'_>, name: &str) -> PyResult<()> {
        self.wait(py, move |c| async move { c.delete_group(name).await })
    }

    // ---- images

    /// Every image record, with `copies` (each node's copy), by name.
    fn images<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.call(py, move |c| async move { c.images_status().await })
    }

    /// One image record with `copies`.
    fn image<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
        self.call(py, move |c| async move { c.image_status(name).await })
    }

    /// Adds an image record; `placement` is `"all"` (default) or a list of node names.
    #[pyo3(signature = (name, *, placement=None, description=String::new(), os=String::new(), size_bytes=0))]
    fn create_image<'py>(
        &self,
        py: Python<'py>,
        name: String,
        placement: Option<&Bound<'py, PyAny>>,
        description: String,
        os: String,
        size_bytes: u64,
    ) -> PyResult<Bound<'py, PyAny>> {
        let image = Image {
            name,
            description,
            os,
            size_bytes,
            placement: self::placement(placement)?,
        };
        self.call(py, move |c| async move { c.create_image(&image).await })
    }

    /// Changes where an image is kept: `"all"` or a list of node names.
    fn set_placement<'py>(
        &self,
        py: Python<'py>,
        name: &str,
        placement: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let placement = self::placement(Some(placement))?;
        self.call(py, move |c| async move {
            let mut image = c.image(name).await?;
            image.placement = placement;
            c.update_image(&image).await
        })
    }

    /// Each node's copy of an image: `[{"node", "state", "bytes", "reason", ...}]`.
    fn copies<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
        self.call(py, move |c| async move { c.image_copies(name).await })
    }

    /// Removes an image record (the nodes' stores keep their chunks).
    fn delete_image(&self, py: Python<'_>, name: &str) -> PyResult<()> {
        self.wait(py, move |c| async move { c.delete_image(name).await })
    }

    // ---- nodes

    /// Every node.
    fn nodes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.call(py, move |c| async move { c.nodes().await })
    }

    /// Adds a node; returns `{"node": {...}, "token": "fog_..."}` (the token is shown once).
    #[pyo3(signature = (name, url, subnets=Vec::new(), max_clients=10, enabled=true))]
    fn create_node<'py>(
        &self,
        py: Python<'py>,
        name: String,
        url: String,
        subnets: Vec<String>,
        max_clients: u32,
        enabled: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let node = Node {
            name,
            url,
            subnets: subnets
                .iter()
                .map(|s| parse_subnet(s))
                .collect::<fogcore::Result<_>>()
                .map_err(fog_err)?,
            max_clients,
            enabled,
            last_seen: None,
        };
        self.call(py, move |c| async move { c.create_node(&node).await })
    }

    /// Revokes a node's tokens and returns `{"node", "token"}` with a new one.
    fn node_token<'py>(&self, py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
        self.call(py, move |c| async move { c.node_token(name).await })
    }

    /// Removes a node and its tokens.
    fn delete_node(&self, py: Python<'_>, name: &str) -> PyResult<()> {
        self.wait(py, move |c| async move { c.delete_node(name).await })
    }

    // ---- tasks

    /// Creates a task: `kind` is deploy, multicast, capture, inventory, wipe_fast, wipe_full or debug. For
    /// one `host`, returns the task; for a `group`, `{"created": [...], "skipped": [...]}`. A
    /// deploy's `layout` (`"fit"`, `"exact"`) defaults to each host's.
    #[pyo3(signature = (kind, host=None, image=None, *, group=None, after="reboot", wake=false, layout=None))]
    #[allow(clippy::too_many_arguments)]
    fn create_task<'py>(
        &self,
        py: Python<'py>,
        kind: &str,
        host: Option<String>,
        image: Option<String>,
        group: Option<&str>,
        after: &str,
        wake: bool,
        layout: Option<&str>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let new = NewTask {
            kind: TaskKind::parse(kind).map_err(fog_err)?,
            host,
            image,
            after: self::after(after)?,
            wake,
            layout: layout.map(layout_mode).transpose()?,
        };
        self.new_task(py, new, group)
    }

    /// Deploys `image` (default: the host's) to `host` (or each host of `group`), laid out by
    /// `layout` (default: each host's).
    #[pyo3(signature = (host=None, image=None, *, group=None, after="reboot", wake=false, layout=None))]
    #[allow(clippy::too_many_arguments)]
    fn deploy<'py>(
        &self,
        py: Python<'py>,
        host: Option<String>,
        image: Option<String>,
        group: Option<&str>,
        after: &str,
        wake: bool,
        layout: Option<&str>,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.create_task(py, "deploy", host, image, group, after, wake, layout)
    }

    /// Captures `host`'s disk into `image`.
    #[pyo3(signature = (host, image, *, after="reboot", wake=false))]
    fn capture<'py>(
        &self,
        py: Python<'py>,
        host: String,
        image: String,
        after: &str,
        wake: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.create_task(py, "capture", Some(host), Some(image), None, after, wake, None)
    }

    /// Reports `host`'s hardware (or each host of `group`'s).
    #[pyo3(signature = (host=None, *, group=None, after="reboot", wake=false))]
    fn inventory<'py>(
        &self,
        py: Python<'py>,
        host: Option<String>,
        group: Option<&str>,
        after: &str,
        wake: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        self.create_task(py, "inventory", host, None, group, after, wake, None)
    }

    /// Wipes `host`'s disk: signatures, or everything with `full`.
    #[pyo3(signature = (host=None, *, full=false, group=None, after="reboot", wake=false))]
    fn wipe<'py>(
        &self,
        py: Python<'py>,
        host: Option<String>,
        full: bool,
        group: Option<&str>,
        after: &str,
        wake: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let kind = if full { "wipe_full" } else { "wipe_fast" };
        self.create_task(py, kind, host, None, group, after, wake, None)
    }

    /// Tasks, newest first, filtered by state name, host, node, open ones only, at most `limit`.
    #[pyo3(signature = (*, state=None, host=None, node=None, open_only=false, limit=None))]
    fn tasks<'py>(
        &self,
        py: Python<'py>,
        state: Option<String>,
        host: Option<String>,
        node: Option<String>,
        open_only: bool,
        limit: Option<u32>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let filter = TaskFilter {
            state,
            host,
            node,
            open_only,
            limit,
            ..TaskFilter::default()
        };
        self.call(py, move |c| async move { c.tasks(&filter).await })
    }

    /// One task.
    fn task<'py>(&self, py: Python<'py>, id: TaskId) -> PyResult<Bound<'py, PyAny>> {
        self.call(py, move |c| async move { c.task(id).await })
    }

    /// Cancels a task not over; returns it.
    fn cancel<'py>(&self, py: Python<'py>, id: TaskId) -> PyResult<Bound<'py, PyAny>> {
        self.call(py, move |c| async move { c.cancel_task(id).await })
    }

    /// A task's state changes, oldest first.
    fn history<'py>(&self, py: Python<'py>, id: TaskId) -> PyResult<Bound<'py, PyAny>> {
        self.call(py, move |c| async move { c.task_history(id).await })
    }

    /// People's tokens: name, role, owner, created_at, expires_at (never the secrets).
    fn tokens<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.call(py, move |c| async move { c.tokens().await })
    }

    /// Issues a named token, admin unless `role` says `operator` or `viewer` (its secret,
    /// `token`, is in the answer once).
    #[pyo3(signature = (name, expires_at=None, role=None))]
    fn create_token<'py>(
        &self,
        py: Python<'py>,
        name: String,
        expires_at: Option<i64>,
        role: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let new = fogcore::control::model::NewToken {
            name,
            role: role.as_deref().map(str::parse).transpose().map_err(crate::fog_err)?,
            expires_at,
        };
        self.call(py, move |c| async move { c.create_token(&new).await })
    }

    /// The users who sign in to the web pages: name, role, created_at, last_login.
    fn users<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.call(py, move |c| async move { c.users().await })
    }

    /// Adds a user (`role`: admin, operator or viewer).
    fn create_user<'py>(
        &self,
        py: Python<'py>,
        name: String,
        role: String,
        password: String,
    ) -> PyResult<Bound<'py, PyAny>> {
        let new = fogcore::control::model::NewUser {
            name,
            role: role.parse().map_err(crate::fog_err)?,
            password,
        };
        self.call(py, move |c| async move { c.create_user(&new).await })
    }

    /// Changes a user's role and/or password (a new password ends their sessions).
    #[pyo3(signature = (name, *, role=None, password=None))]
    fn update_user<'py>(
        &self,
        py: Python<'py>,
        name: String,
        role: Option<String>,
        password: Option<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let change = fogcore::control::model::UserUpdate {
            role: role.as_deref().map(str::parse).transpose().map_err(crate::fog_err)?,
            password,
        };
        self.call(py, move |c| async move { c.update_user(&name, &change).await })
    }

    /// Removes a user, their sessions and their tokens.
    fn remove_user<'py>(&self, py: Python<'py>, name: String) -> PyResult<Bound<'py, PyAny>> {
        self.call(py, move |c| async move { c.remove_user(&name).await })
    }

    /// Revokes an admin token: refused from the next request on.
    fn revoke_token<'py>(&self, py: Python<'py>, name: String) -> PyResult<Bound<'py, PyAny>> {
        self.call(py, move |c| async move { c.revoke_token(&name).await })
    }

    /// The audit log, newest first: at most `limit` entries, by `actor`, matching `q`, only
    /// refused or failed calls with `failed`.
    #[pyo3(signature = (*, limit=100, actor=None, q=None, failed=false))]
    fn audit<'py>(
        &self,
        py: Python<'py>,
        limit: usize,
        actor: Option<String>,
        q: Option<String>,
        failed: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let query = fogcore::control::model::AuditQuery {
            actor,
            q,
            failed,
            ..Default::default()
        };
        self.call(py, move |c| async move { c.audit(&query, limit).await })
    }

    /// Yields task `id` now and at each change (state, progress) until it is complete, failed or
    /// cancelled (the last item). Raises `TimeoutError` when `timeout` seconds pass first.
    #[pyo3(signature = (id, timeout=None, *, interval=0.5))]
    fn watch(&self, id: TaskId, timeout: Option<f64>, interval: f64) -> PyResult<TaskWatch> {
        let secs = |v: f64, what: &str| {
            Duration::try_from_secs_f64(v)
                .map_err(|_| BadInputError::new_err(format!("{what} {v}: must be a number of seconds >= 0")))
        };
        let timeout = timeout.map(|t| secs(t, "timeout")).transpose()?;
        Ok(TaskWatch {
            client: self.client.clone(),
            rt: self.rt.clone(),
            id,
            poll: secs(interval, "interval")?.max(Duration::from_millis(10)),
            timeout,
            deadline: timeout.map(|t| Instant::now() + t),
            state: Mutex::new(WatchState {
                last: None,
                done: false,
            }),
        })
    }
}

struct WatchState {
    last: Option<Task>,
    done: bool,
}

/// The iterator of `Master.watch`.
#[pyclass(frozen, module = "fog", name = "TaskWatch")]
pub struct TaskWatch {
    client: Client,
    rt: Arc<tokio::runtime::Runtime>,
    id: TaskId,
    poll: Duration,
    timeout: Option<Duration>,
    deadline: Option<Instant>,
    state: Mutex<WatchState>,
}

#[pymethods]
impl TaskWatch {
    fn __iter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __next__<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let mut state = self
            .state
            .lock()
            .map_err(|_| FogError::new_err("internal error: a watch call panicked"))?;
        if state.done {
            return Ok(None);
        }
        loop {
            let slice = match self.deadline {
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        let at = state.last.as_ref().map_or("unknown", |t| t.state.name());
                        return Err(PyTimeoutError::new_err(format!(
                            "task {} is still {at} after {:.1} s",
                            self.id,
                            self.timeout.unwrap_or_default().as_secs_f64()
                        )));
                    }
                    left.min(SLICE)
                }
                None => SLICE,
            };
            let last = state.last.clone();
            let (client, id, poll) = (&self.client, self.id, self.poll);
            let result = py.detach(|| {
                self.rt
                    .block_on(async { tokio::time::timeout(slice, client.next_change(id, last.as_ref(), poll)).await })
            });
            match result {
                Ok(Ok(task)) => {
                    state.done = task.state.is_terminal();
                    let out = to_py(py, &task)?;
                    state.last = Some(task);
                    return Ok(Some(out));
                }
                Ok(Err(e)) => return Err(api_err(py, e)),
                Err(_) => py.check_signals()?,
            }
        }
    }
}

/// A master running in this process (`fog.start_master`).
#[pyclass(frozen, module = "fog", name = "RunningMaster")]
pub struct PyRunningMaster {
    rt: Arc<tokio::runtime::Runtime>,
    master: Mutex<Option<Master>>,
    url: String,
    admin_token: Option<String>,
    /// Its certificate's SHA-256 fingerprint, when it speaks HTTPS.
    fingerprint: Option<String>,
}

#[pymethods]
impl PyRunningMaster {
    /// `http://127.0.0.1:PORT` (`https://` with TLS).
    #[getter]
    fn url(&self) -> &str {
        &self.url
    }

    /// The SHA-256 fingerprint of its certificate (`AB:CD:...`) when it speaks HTTPS.
    #[getter]
    fn fingerprint(&self) -> Option<&str> {
        self.fingerprint.as_deref()
    }

    /// The admin token of the master's first start (from `data_dir/admin-token` on later
    /// starts); `None` when the database had admin tokens already and there is no such file.
    #[getter]
    fn admin_token(&self) -> Option<&str> {
        self.admin_token.as_deref()
    }

    /// True until `stop()`.
    #[getter]
    fn running(&self) -> PyResult<bool> {
        Ok(self
            .master
            .lock()
            .map_err(|_| FogError::new_err("internal error"))?
            .is_some())
    }

    /// A `fog.Master` client of it with the admin token.
    fn client(&self) -> PyResult<PyMaster> {
        PyMaster::new(
            &self.url,
            self.admin_token.as_deref(),
            None,
            self.fingerprint.as_deref(),
        )
    }

    /// Stops serving (open requests get 5 s) and closes the database.
    fn stop(&self, py: Python<'_>) -> PyResult<()> {
        let master = self
            .master
            .lock()
            .map_err(|_| FogError::new_err("internal error"))?
            .take();
        match master {
            Some(master) => py.detach(|| self.rt.block_on(master.stop())).map_err(fog_err),
            None => Ok(()),
        }
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, py: Python<'_>, _args: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
        self.stop(py)?;
        Ok(false)
    }

    fn __repr__(&self) -> PyResult<String> {
        let state = if self.running()? { "running" } else { "stopped" };
        Ok(format!("<fog.RunningMaster {} {state}>", self.url))
    }
}

/// Starts a master in this process: the API on `listen`, the database at `db_url` (else
/// `data_dir/fog.db`), serving the images of `store` (a `fog.Store` or a path) when given.
#[pyfunction]
#[pyo3(signature = (db_url=None, listen="127.0.0.1:0", data_dir=None, store=None, tls_self_signed=false))]
pub fn start_master(
    py: Python<'_>,
    db_url: Option<String>,
    listen: &str,
    data_dir: Option<PathBuf>,
    store: Option<&Bound<'_, PyAny>>,
    tls_self_signed: bool,
) -> PyResult<PyRunningMaster> {
    let listen: SocketAddr = listen.parse().map_err(|_| {
        BadInputError::new_err(format!(
            "listen {listen:?}: not an ip:port address (e.g. \"127.0.0.1:0\")"
        ))
    })?;
    let store = match store {
        None => None,
        Some(s) => Some(match s.cast::<PyStore>() {
            Ok(s) => s.get().store.clone(),
            Err(_) => {
                let path: PathBuf = s
                    .extract()
                    .map_err(|_| BadInputError::new_err("store: give a fog.Store or a path"))?;
                py.detach(|| Store::open(&path)).map_err(fog_err)?
            }
        }),
    };
    if db_url.is_none() && data_dir.is_none() {
        // Named by this function's own keywords (serve's error names the config's fields).
        return Err(BadInputError::new_err(
            "start_master: give db_url or data_dir (where fog.db goes)",
        ));
    }
    let rt = runtime()?;
    let config = MasterConfig {
        listen: Some(listen),
        data_dir: data_dir.clone(),
        database: db_url,
        store: store.map(|s| Arc::new(LocalStore::new(s)) as Arc<dyn ImageStore>),
        store_memory_mib: None,
        tls: if tls_self_signed {
            fogcore::control::master::MasterTls::SelfSigned { names: Vec::new() }
        } else {
            fogcore::control::master::MasterTls::Off
        },
    };
    let started = py
        .detach(|| rt.block_on(fogcore::control::master::serve(&config)))
        .map_err(fog_err)?;
    // The token of the first start, else the one it left in DATA_DIR/admin-token.
    let admin_token = match (started.first_token, &data_dir) {
        (Some(first), _) => Some(first.token),
        (None, Some(dir)) => Control::saved_admin_token(dir),
        (None, None) => None,
    };
    let master = started.master;
    Ok(PyRunningMaster {
        url: master.url(),
        rt,
        master: Mutex::new(Some(master)),
        admin_token,
        fingerprint: started.tls.map(|t| t.fingerprint().to_string()),
    })
}

/// Runs the imaging agent once: checks in with `master` as `macs`, waits for a slot, runs the
/// task against `disk` (a disk image file or device), checks out; returns its report. Never
/// reboots or powers off (the report's `after` says what the task asked for).
#[pyfunction]
#[pyo3(signature = (master, token=None, *, disk=None, macs=Vec::new(), uuid=None, once=true, verify=false,
                    sys_root=None, progress=None, threads=None))]
#[allow(clippy::too_many_arguments)]
pub fn run_agent<'py>(
    py: Python<'py>,
    master: &str,
    token: Option<&str>,
    disk: Option<PathBuf>,
    macs: Vec<String>,
    uuid: Option<String>,
    once: bool,
    verify: bool,
    sys_root: Option<PathBuf>,
    progress: Option<Py<PyAny>>,
    threads: Option<usize>,
) -> PyResult<Bound<'py, PyAny>> {
    let mut config = fogcore::agent::AgentConfig::new(master, token);
    config.disk = disk;
    config.macs = macs;
    config.uuid = uuid;
    config.once = once;
    config.verify = verify;
    config.threads = threads;
    config.poll = Duration::from_millis(200);
    config.report_every = Duration::from_millis(500);
    if let Some(root) = sys_root {
        config.sys_root = root;
    }
    let sink = PyProgress::new(progress);
    let (result, error) = run_job(py, &sink, || fogcore::agent::run(&config, &sink))?;
    if let Some(e) = error {
        return Err(e);
    }
    let report = result.map_err(|e| api_err(py, e))?;
    to_py(py, &report)
}

/// Registers the classes and functions of this file.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<PyMaster>()?;
    m.add_class::<TaskWatch>()?;
    m.add_class::<PyRunningMaster>()?;
    m.add_function(wrap_pyfunction!(start_master, m)?)?;
    m.add_function(wrap_pyfunction!(run_agent, m)?)?;
    m.add("ApiError", py.get_type::<ApiError>())?;
    Ok(())
}
