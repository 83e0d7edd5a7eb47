//! The node role of `fog serve`: with `[node] master` set, the node heartbeats to its master
//! (disk free in its data directory, the images of its local store) and pulls the open tasks of
//! its hosts into a [`NodeTasks`] cache that its `/boot/{mac}` answers from. When the master
//! cannot be reached the node says so once and keeps answering from the last tasks it knew; when
//! the master returns, the next beat replaces them with the master's.
//!
//! [`serve`] starts the boot services with that loop among them (or plainly, without a master).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::control::bootmenu::{NodeBootScripts, NodeTasks, Recheck};
use crate::control::client::Client;
use crate::control::gateway::Gateway;
use crate::control::model::{CopyState, Heartbeat};
use crate::control::replicate::{ReplicateOptions, pull_for_node};
use crate::error::{Error, Result};
use crate::net::config::{MasterLink, ServeConfig};
use crate::net::http::{BootScripts, HostFilesOrMenu};
use crate::net::server::{Server, ServerHandle, Starter};

/// How long a node waits for the master when it rechecks a host's task before booting the agent.
pub const RECHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The node's side of the master link.
pub struct NodeLoop {
    link: MasterLink,
    client: Client,
    tasks: Arc<NodeTasks>,
    gateway: Arc<Gateway>,
    data_dir: PathBuf,
    /// Set while a pull of placed images runs (one at a time).
    pulling: Arc<AtomicBool>,
}

impl NodeLoop {
    /// A loop for `link`, reporting on `data_dir`, its agents served by `gateway`; reads the
    /// token (an error names the key).
    pub fn new(link: &MasterLink, data_dir: &Path, tasks: Arc<NodeTasks>, gateway: Arc<Gateway>) -> Result<NodeLoop> {
        let token = link.token.read()?;
        let client = Client::with_trust(&link.url, Some(&token), &link.trust)?;
        Ok(NodeLoop {
            link: link.clone(),
            client,
            tasks,
            gateway,
            data_dir: data_dir.to_path_buf(),
            pulling: Arc::new(AtomicBool::new(false)),
        })
    }

    /// One beat: the heartbeat, the tasks, the check-outs that waited for the master, then a
    /// pull of the images placed here that the node lacks (in the background). Returns how
    /// many tasks the node has.
    pub async fn beat(&self) -> Result<usize> {
        let data_dir = self.data_dir.clone();
        let mut beat = tokio::task::spawn_blocking(move || heartbeat_of(&data_dir))
            .await
            .map_err(|e| Error::Internal(format!("node: heartbeat task failed: {e}")))?;
        let active = self.gateway.active();
        beat.active = Some(active);
        beat.free_slots = self.gateway.max_clients().map(|max| max.saturating_sub(active));
        let node = self.client.heartbeat(&self.link.name, &beat).await?;
        self.gateway.set_max_clients(node.max_clients);
        if !node.enabled {
            tracing::debug!(node = %node.name, "node: disabled on the master");
        }
        let tasks = self.client.node_boot_tasks(&self.link.name).await?;
        let n = tasks.len();
        self.tasks.replace(tasks);
        let delivered = self.gateway.flush().await?;
        if delivered > 0 {
            tracing::info!(delivered, "node: queued check-outs delivered to the master");
        }
        self.pull_placed().await?;
        crate::control::wake::deliver(&self.client, &self.link).await?;
        Ok(n)
    }

    /// Starts pulling, one after another, the images placed on this node whose copy here is
    /// not complete (pending, stale, failed, or cut short by a crash); nothing when a pull runs.
    async fn pull_placed(&self) -> Result<()> {
        if self.pulling.load(Ordering::Acquire) {
            return Ok(());
        }
        let wanted: Vec<String> = self
            .client
            .node_copies(&self.link.name)
            .await?
            .into_iter()
            .filter(|c| c.state != CopyState::Complete)
            .map(|c| c.image)
            .collect();
        if wanted.is_empty() || self.pulling.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let (client, node, pulling) = (self.client.clone(), self.link.name.clone(), self.pulling.clone());
        let (upstream, local) = (self.gateway.upstream_store(), self.gateway.local_store());
        let options = ReplicateOptions {
            bandwidth: self.link.bandwidth,
            ..self.gateway.replicate_options()
        };
        tokio::spawn(async move {
            for image in wanted {
                match pull_for_node(&client, &node, upstream.clone(), local.clone(), &image, options.clone()).await {
                    Ok(r) => tracing::info!(
                        image,
                        chunks = r.chunks_sent,
                        bytes = r.bytes_sent,
                        "node: image pulled"
                    ),
                    Err(e) => tracing::warn!(image, "node: pull failed: {e}"),
                }
            }
            pulling.store(false, Ordering::Release);
        });
        Ok(())
    }

    /// Beats every `heartbeat_secs` until `cancel`. Failures are logged when the link changes
    /// state (not at every beat); the cache keeps its last contents meanwhile.
    pub async fn run(self, cancel: CancellationToken) -> Result<()> {
        let mut tick = tokio::time::interval(Duration::from_secs(self.link.heartbeat_secs));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut up: Option<bool> = None;
        loop {
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                _ = tick.tick() => {}
            }
            let result = tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                r = self.beat() => r,
            };
            match result {
                Ok(n) => {
                    if up != Some(true) {
                        tracing::info!(master = %self.link.url, node = %self.link.name, tasks = n, "node: master reachable");
                    }
                    up = Some(true);
                }
                Err(e) => {
                    if up != Some(false) {
                        tracing::warn!(
                            master = %self.link.url,
                            hosts_with_tasks = self.tasks.len(),
                            "node: master unreachable ({e}); serving from the last known tasks"
                        );
                    }
                    up = Some(false);
                }
            }
        }
    }
}

/// Free bytes of the file system holding `dir`.
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: a valid NUL-terminated path and a buffer of the right type; read only on success.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return None;
    }
    // SAFETY: statvfs succeeded, so it filled the struct.
    let stat = unsafe { stat.assume_init() };
    #[allow(clippy::unnecessary_cast)]
    Some((stat.f_bavail as u64).saturating_mul(stat.f_frsize as u64))
}

/// The heartbeat of a node whose state lives in `data_dir` (its store, if any, in `store/`).
pub fn heartbeat_of(data_dir: &Path) -> Heartbeat {
    let store_dir = data_dir.join("store");
    let images = if store_dir.is_dir() {
        match crate::imaging::store::Store::open(&store_dir).and_then(|s| s.images()) {
            Ok(images) => images.into_iter().map(|i| i.name).collect(),
            Err(e) => {
                tracing::warn!(store = %store_dir.display(), "node: cannot list the store's images: {e}");
                Vec::new()
            }
        }
    } else {
        Vec::new()
    };
    Heartbeat {
        free_bytes: free_bytes(data_dir),
        images,
        ..Heartbeat::default()
    }
}

/// What the node role adds to `fog serve`: its boot scripts, its loop and its agent API.
pub struct NodeRole {
    /// Per-host scripts (the agent for hosts with a task).
    pub scripts: Arc<NodeBootScripts>,
    /// The master link.
    pub node_loop: NodeLoop,
    /// The agents' API and store.
    pub gateway: Arc<Gateway>,
}

/// The node role of `config`; `None` without a master.
pub fn node_role(config: &ServeConfig) -> Result<Option<NodeRole>> {
    let Some(link) = &config.master else {
        return Ok(None);
    };
    let node_token = link.token.read()?;
    let tasks = Arc::new(NodeTasks::persistent(&config.data_dir.join("node").join("tasks.json")));
    let gateway = Arc::new(Gateway::open(
        &config.data_dir,
        config.store_memory_mib,
        &link.url,
        &link.name,
        &node_token,
        &link.trust,
        tasks.clone(),
    )?);
    if let Some(multicast) = &config.multicast {
        gateway.enable_multicast(multicast.clone());
    }
    let node_loop = NodeLoop::new(link, &config.data_dir, tasks.clone(), gateway.clone())?;
    let others: Arc<dyn BootScripts> = Arc::new(HostFilesOrMenu {
        boot_dir: config.boot_dir.clone(),
        menu: config.menu(),
    });
    let default_base = config.http_base().unwrap_or_else(|| match config.http {
        Some(listen) => format!("http://{}:{}", listen.ip(), listen.port()),
        None => "http://localhost".to_string(),
    });
    let scripts = Arc::new(NodeBootScripts {
        tasks,
        others,
        node: link.name.clone(),
        node_token,
        kernel: config.boot.agent_kernel.clone(),
        initrd: config.boot.agent_initrd.clone(),
        default_base,
        recheck: Some(Recheck {
            client: node_loop.client.clone(),
            node: link.name.clone(),
            timeout: RECHECK_TIMEOUT,
        }),
    });
    Ok(Some(NodeRole {
        scripts,
        node_loop,
        gateway,
    }))
}

/// Starts `fog serve`: the boot services, and with `[node] master` the node loop among them, the
/// node's boot scripts and its agent API. Must not be called from inside a tokio runtime.
pub fn serve(config: ServeConfig) -> Result<ServerHandle> {
    match node_role(&config)? {
        None => Server::start(config),
        Some(role) => {
            let node_loop = role.node_loop;
            let starter: Starter = Box::new(move |cancel| Box::pin(node_loop.run(cancel)));
            let routes = role.gateway.router();
            Server::start_with_services(config, role.scripts, Some(routes), vec![("node", starter)])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_reports_free_space_and_no_images_without_a_store() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let beat = heartbeat_of(dir.path());
        assert!(beat.free_bytes.is_some_and(|b| b > 0));
        assert!(beat.images.is_empty());
        assert_eq!(heartbeat_of(&dir.path().join("absent")).free_bytes, None);
        Ok(())
    }
}
