//! Nodes: their records and tokens, heartbeats, the tasks and images they pull, and the wake
//! requests they claim.

use super::{Control, same_name};
use crate::control::api::Caller;
use crate::control::db::{DayCount, NodeLoad, TokenRole};
use crate::control::model::{
    BootTask, Heartbeat, Host, ImageCopy, Millis, Node, NodeToken, Placement, Task, TaskEvent, TaskFilter, TaskId, Wake,
};
use crate::control::tokens::{new_token, token_hash};
use crate::error::{Error, Result};
use crate::names::check_name;

/// A wake request older than this when its node claims it is dropped, not sent: a host should
/// not start up long after someone asked (the node was down or had no `wake_broadcast`).
pub const WAKE_TTL_MS: Millis = 15 * 60 * 1000;

/// The node that wakes `host`, or an error saying why none can.
pub(super) fn waking_node<'a>(host: &Host, node: Option<&'a str>) -> Result<&'a str> {
    node.ok_or_else(|| {
        Error::unprocessable(
            "wake",
            &host.name,
            "no node can wake this host: set its node, or an address inside a node's subnet",
        )
    })
}

impl Control {
    /// Each node's load (slots in use, agents waiting, free disk), by node name.
    pub async fn node_loads(&self) -> Result<std::collections::HashMap<String, NodeLoad>> {
        self.db.node_loads().await
    }

    /// Tasks finished per UTC day since `since`, by day.
    pub async fn tasks_per_day(&self, since: Millis) -> Result<Vec<DayCount>> {
        self.db.tasks_per_day(since).await
    }

    /// The latest task state changes, newest first, each with its task's host.
    pub async fn recent_events(&self, limit: u32) -> Result<Vec<(TaskEvent, String)>> {
        self.db.recent_events(limit.min(1000)).await
    }

    /// Every node, by name.
    pub async fn nodes(&self) -> Result<Vec<Node>> {
        self.db.nodes().await
    }

    /// One node.
    pub async fn node(&self, name: &str) -> Result<Node> {
        self.db.node(name).await
    }

    /// The images placed on a node and where its copy of each stands.
    pub async fn node_copies(&self, caller: &Caller, node: &str) -> Result<Vec<ImageCopy>> {
        caller.check_node(node)?;
        self.db.node(node).await?;
        self.db.node_copies(node).await
    }

    /// Adds a node and issues its token (returned once).
    pub async fn create_node(&self, node: &Node) -> Result<NodeToken> {
        node.validate()?;
        self.db.create_node(node).await?;
        // Images placed on all nodes now include this one.
        for image in self.db.images().await? {
            if image.placement == Placement::All {
                self.db.place_image(&image).await?;
            }
        }
        self.node_token(&node.name).await
    }

    /// Revokes a node's tokens and issues a new one.
    pub async fn node_token(&self, name: &str) -> Result<NodeToken> {
        let node = self.db.node(name).await?;
        self.db.delete_node_tokens(name).await?;
        self.forget_node_tokens(name);
        let token = new_token();
        self.db
            .insert_token(&token_hash(&token), &TokenRole::Node(name.to_string()))
            .await?;
        Ok(NodeToken { node, token })
    }

    /// Replaces a node's settings; the name in the path wins over none, a different one is refused.
    pub async fn update_node(&self, name: &str, node: &Node) -> Result<Node> {
        same_name("node name", name, &node.name)?;
        node.validate()?;
        let mut lines = self.line.lock().await;
        self.db.update_node(node).await?;
        lines.set_limits(name, node.max_clients, node.enabled);
        drop(lines);
        self.db.node(name).await
    }

    /// Removes a node; refused while it has tasks not over.
    pub async fn delete_node(&self, name: &str) -> Result<()> {
        // Under the line's lock from the check to the delete: a check-in cannot put a task on
        // the node in between.
        let mut lines = self.line.lock().await;
        let open = self
            .db
            .tasks(&TaskFilter {
                node: Some(name.to_string()),
                open_only: true,
                limit: Some(1),
                ..TaskFilter::default()
            })
            .await?;
        if let Some(task) = open.first() {
            return Err(Error::conflict(
                "node",
                name,
                format!("task {} on it is not over", task.id),
            ));
        }
        // Its tokens leave the cache before and after: a call dropped mid-delete must not leave
        // them working.
        self.forget_node_tokens(name);
        self.db.delete_node(name).await?;
        lines.forget(name);
        drop(lines);
        self.forget_node_tokens(name);
        Ok(())
    }

    /// A node's heartbeat.
    pub async fn heartbeat(&self, caller: &Caller, node: &str, beat: &Heartbeat) -> Result<Node> {
        caller.check_node(node)?;
        for image in &beat.images {
            check_name("image name", image)?;
        }
        self.db.heartbeat(node, beat.free_bytes, &beat.images).await?;
        self.db.node(node).await
    }

    /// The tasks not over of a node's hosts (what a node pulls).
    pub async fn node_tasks(&self, caller: &Caller, node: &str) -> Result<Vec<Task>> {
        caller.check_node(node)?;
        self.db.node(node).await?;
        self.tasks(&TaskFilter {
            node: Some(node.to_string()),
            open_only: true,
            ..TaskFilter::default()
        })
        .await
    }

    /// [`Control::node_tasks`] with each host's MACs and kernel arguments: what a node needs
    /// to answer `/boot/{mac}` (a node token cannot read hosts).
    pub async fn node_boot_tasks(&self, caller: &Caller, node: &str) -> Result<Vec<BootTask>> {
        let mut out = Vec::new();
        for task in self.node_tasks(caller, node).await? {
            match self.db.host(&task.host).await {
                Ok(host) => out.push(BootTask {
                    task,
                    macs: host.macs,
                    kernel_args: host.kernel_args,
                }),
                // Removed since; its task is history.
                Err(Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Asks `name`'s node to wake it now.
    pub async fn wake_host(&self, name: &str) -> Result<Wake> {
        let host = self.db.host(name).await?;
        let node = self.node_for(&host, None).await?;
        let node = waking_node(&host, node.as_deref())?;
        self.request_wake(&host, node, None).await
    }

    /// Stores a wake request of `host` for `node` (for `task`, when a task asked).
    pub(super) async fn request_wake(&self, host: &Host, node: &str, task: Option<TaskId>) -> Result<Wake> {
        let wake = self.db.insert_wake(&host.name, &host.macs, node, task).await?;
        tracing::info!(host = %host.name, node, task, "wake requested");
        Ok(wake)
    }

    /// The wake requests of `node`, removed as they are returned. Requests older than
    /// [`WAKE_TTL_MS`] and those of tasks already over are dropped instead.
    pub async fn take_wakes(&self, caller: &Caller, node: &str) -> Result<Vec<Wake>> {
        caller.check_node(node)?;
        self.db.node(node).await?;
        let now = self.clock.now();
        let mut out = Vec::new();
        for wake in self.db.take_wakes(node).await? {
            if now - wake.requested_at > WAKE_TTL_MS {
                tracing::info!(host = %wake.host, node, "wake request expired unsent");
                continue;
            }
            if let Some(task) = wake.task {
                match self.db.task(task).await {
                    Ok(t) if t.state.is_terminal() => continue,
                    Ok(_) => {}
                    Err(Error::NotFound { .. }) => continue,
                    Err(e) => return Err(e),
                }
            }
            out.push(wake);
        }
        Ok(out)
    }
}
