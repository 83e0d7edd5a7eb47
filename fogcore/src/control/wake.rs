//! Wake-on-LAN through the control plane. The master stores a wake request for a host's node
//! (a task created with `wake: true`, or `POST /api/v1/hosts/{name}/wake`); the node claims its
//! requests at each beat (`POST /api/v1/nodes/{name}/wakes`, which returns and removes them) and
//! sends one magic packet per MAC of the host to its `[node] wake_broadcast`, each once. A node
//! without `wake_broadcast` claims nothing and sends nothing.
//!
//! Magic packets are link-local broadcasts, so only the host's node, on the host's subnet, can
//! send them; the master never does.

use crate::control::client::Client;
use crate::control::db::now_ms;
use crate::control::model::{Host, Millis, TaskId, Wake};
use crate::control::service::Control;
use crate::error::{Error, Result};
use crate::net::config::MasterLink;
use crate::net::http::parse_mac;
use crate::net::wol;

/// A wake request older than this when its node claims it is dropped, not sent: a host should
/// not start up long after someone asked (the node was down or had no `wake_broadcast`).
pub const WAKE_TTL_MS: Millis = 15 * 60 * 1000;

/// The node that wakes `host`, or an error saying why none can.
pub fn waking_node<'a>(host: &Host, node: Option<&'a str>) -> Result<&'a str> {
    node.ok_or_else(|| {
        Error::invalid(
            "wake",
            &host.name,
            "no node can wake this host: set its node, or an address inside a node's subnet",
        )
    })
}

impl Control {
    /// Asks `name`'s node to wake it now.
    pub async fn wake_host(&self, name: &str) -> Result<Wake> {
        let host = self.db().host(name).await?;
        let node = self.node_for(&host, None).await?;
        let node = waking_node(&host, node.as_deref())?;
        self.request_wake(&host, node, None).await
    }

    /// Stores a wake request of `host` for `node` (for `task`, when a task asked).
    pub async fn request_wake(&self, host: &Host, node: &str, task: Option<TaskId>) -> Result<Wake> {
        let wake = self.db().insert_wake(&host.name, &host.macs, node, task).await?;
        tracing::info!(host = %host.name, node, task, "wake requested");
        Ok(wake)
    }

    /// The wake requests of `node`, removed as they are returned. Requests older than
    /// [`WAKE_TTL_MS`] and those of tasks already over are dropped instead.
    pub async fn take_wakes(&self, node: &str) -> Result<Vec<Wake>> {
        self.db().node(node).await?;
        let now = now_ms();
        let mut out = Vec::new();
        for wake in self.db().take_wakes(node).await? {
            if now - wake.requested_at > WAKE_TTL_MS {
                tracing::info!(host = %wake.host, node, "wake request expired unsent");
                continue;
            }
            if let Some(task) = wake.task {
                match self.db().task(task).await {
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

/// The node's side, one call per beat: claims this node's wake requests and sends a magic packet
/// per MAC to `link.wake`. Does nothing (claims nothing) when the node has no wake target.
/// Returns the packets sent; a packet that cannot be sent is logged, the others still go.
pub async fn deliver(client: &Client, link: &MasterLink) -> Result<usize> {
    let Some(target) = &link.wake else {
        return Ok(0);
    };
    let wakes = client.take_wakes(&link.name).await?;
    let mut sent = 0;
    for wake in &wakes {
        for text in &wake.macs {
            let Some(mac) = parse_mac(text) else {
                tracing::warn!(host = %wake.host, "wake: ignoring MAC {text:?}");
                continue;
            };
            match wol::send(target, mac, None).await {
                Ok(_) => {
                    sent += 1;
                    tracing::info!(host = %wake.host, mac = %text, to = %target.broadcast, "wake: magic packet sent");
                }
                Err(e) => tracing::warn!(host = %wake.host, mac = %text, "wake: {e}"),
            }
        }
    }
    Ok(sent)
}
