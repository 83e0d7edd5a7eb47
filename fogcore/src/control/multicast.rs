//! A node's multicast sessions: one per image being deployed by multicast tasks here, opened by
//! the first agent that joins and closed when every receiver is done or gone. The node's
//! gateway answers `POST /api/v1/tasks/{id}/multicast` with it ([`MulticastJoin`]).

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::{Arc, Mutex};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::imaging::replica::ImageStore;
use crate::net::config::MulticastConfig;
use crate::net::multicast::{self, RunningSession, SendOptions};

/// At most this many sessions at once (each its own group).
pub const MAX_SESSIONS: usize = 4;

/// Where an agent joins its task's session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct MulticastJoin {
    /// The session's HTTP side (`http://address:port`): join, manifest, fallback.
    pub sender: String,
    /// Its group address.
    pub group: Ipv4Addr,
    /// Its UDP port.
    pub port: u16,
}

/// The sessions of one node.
pub struct Sessions {
    config: MulticastConfig,
    store: Arc<dyn ImageStore>,
    running: Mutex<HashMap<String, RunningSession>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").field("config", &self.config).finish()
    }
}

impl Sessions {
    /// Sessions sent from `store` as `config` says.
    pub fn new(config: MulticastConfig, store: Arc<dyn ImageStore>) -> Sessions {
        Sessions {
            config,
            store,
            running: Mutex::new(HashMap::new()),
        }
    }

    /// The session of `image`, opened for `receivers` hosts when none runs.
    pub fn join(&self, image: &str, receivers: usize) -> Result<MulticastJoin> {
        let mut running = self.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let ended: Vec<String> = running
            .iter()
            .filter(|(_, s)| s.ended())
            .map(|(name, _)| name.clone())
            .collect();
        for name in ended {
            if let Some(session) = running.remove(&name) {
                match session.wait() {
                    Ok(report) => tracing::info!(
                        image = %name,
                        seconds = report.send_seconds,
                        receivers = report.receivers.len(),
                        "multicast: session over"
                    ),
                    Err(e) => tracing::warn!(image = %name, "multicast: session failed: {e}"),
                }
            }
        }
        if let Some(session) = running.get(image) {
            return Ok(joined(session));
        }
        if running.len() >= MAX_SESSIONS {
            return Err(Error::conflict(
                "multicast session",
                image,
                format!("this node runs {MAX_SESSIONS} sessions already"),
            ));
        }
        // A free group: the first one not in use, counting up from the configured one.
        let taken: Vec<Ipv4Addr> = running.values().map(|s| *s.group().ip()).collect();
        let base = u32::from(self.config.group);
        let group = (0..=MAX_SESSIONS as u32)
            .map(|i| Ipv4Addr::from(base.wrapping_add(i)))
            .find(|g| !taken.contains(g))
            .unwrap_or(self.config.group);
        let options = SendOptions {
            interface: self.config.interface.clone(),
            group: SocketAddrV4::new(group, self.config.port),
            http_port: 0,
            receivers: receivers.max(1),
            max_wait: self.config.max_wait,
            rate: self.config.rate,
            // The agent that opened it may fail before it joins.
            give_up: Some(self.config.max_wait),
        };
        let session = multicast::start(self.store.clone(), image, &options)?;
        let answer = joined(&session);
        running.insert(image.to_string(), session);
        Ok(answer)
    }
}

fn joined(session: &RunningSession) -> MulticastJoin {
    MulticastJoin {
        sender: session.url().to_string(),
        group: *session.group().ip(),
        port: session.group().port(),
    }
}
