//! Wake-on-LAN through the control plane. The master stores a wake request for a host's node
//! (a task created with `wake: true`, or `POST /api/v1/hosts/{name}/wake`); the node claims its
//! requests at each beat (`POST /api/v1/nodes/{name}/wakes`, which returns and removes them) and
//! sends one magic packet per MAC of the host to its `[node] wake_broadcast`, each once. A node
//! without `wake_broadcast` claims nothing and sends nothing.
//!
//! The master's side is in the service (`service::nodes`); this is the node's.
//!
//! Magic packets are link-local broadcasts, so only the host's node, on the host's subnet, can
//! send them; the master never does.

use crate::control::client::Client;
use crate::error::Result;
use crate::net::config::MasterLink;
use crate::net::http::parse_mac;
use crate::net::wol;

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
