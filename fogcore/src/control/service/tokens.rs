//! Tokens: admin and node tokens (stored as hashes, cached once seen), task tokens derived from a
//! node's, and who holds a token.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Control, lock};
use crate::control::api::{Authenticate, Caller};
use crate::control::db::TokenRole;
use crate::control::model::{AuditEntry, IssuedToken, Millis, NewToken, TaskId, TokenInfo, check_not_negative};
use crate::control::tokens::{TASK_TOKEN_PREFIX, new_token, task_mac, token_hash};
use crate::error::{Error, Result};
use crate::names::check_name;

/// The file in a master's data directory that holds the first admin token.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";

/// The name the first admin token gets.
pub const FIRST_TOKEN_NAME: &str = "admin";

/// Who holds a token of this role at `now`: an expired admin token is refused.
fn caller_of(role: &TokenRole, now: Millis) -> Result<Caller> {
    match role {
        TokenRole::Admin { name, expires_at } => match expires_at {
            Some(at) if *at <= now => Err(Error::Unauthorized(format!("token {name} has expired"))),
            _ => Ok(Caller::Admin(name.clone())),
        },
        TokenRole::Node(node) => Ok(Caller::Node(node.clone())),
    }
}

impl Control {
    // ---- tokens

    /// Issues an admin token; only its hash is stored.
    pub async fn create_admin_token(&self, new: &NewToken) -> Result<IssuedToken> {
        check_name("token name", &new.name)?;
        check_not_negative("expires_at", new.expires_at)?;
        let token = new_token();
        let role = TokenRole::Admin {
            name: new.name.clone(),
            expires_at: new.expires_at,
        };
        self.db.insert_token(&token_hash(&token), &role).await?;
        Ok(IssuedToken {
            info: TokenInfo {
                name: new.name.clone(),
                created_at: self.clock.now(),
                expires_at: new.expires_at,
            },
            token,
        })
    }

    /// Every admin token's record, by name.
    pub async fn admin_tokens(&self) -> Result<Vec<TokenInfo>> {
        self.db.admin_tokens().await
    }

    /// Revokes an admin token: refused from the next request on. The last one that works is
    /// kept (nobody could administer the master without it).
    pub async fn revoke_admin_token(&self, name: &str) -> Result<()> {
        let now = self.clock.now();
        let working = self.db.admin_tokens().await?;
        let working: Vec<_> = working
            .iter()
            .filter(|t| t.expires_at.is_none_or(|at| at > now))
            .collect();
        if working.len() == 1 && working[0].name == name {
            return Err(Error::conflict(
                "token",
                name,
                "it is the last admin token that works: issue another first",
            ));
        }
        self.db.delete_admin_token(name).await?;
        let mut cache = lock(&self.tokens);
        cache.generation += 1;
        cache
            .roles
            .retain(|_, role| !matches!(role, TokenRole::Admin { name: n, .. } if n == name));
        Ok(())
    }

    /// On a first start (no admin token yet), issues one and, given a directory, writes it to
    /// `DIR/admin-token` (mode 0600). Returns the token and the file then; none when admin tokens
    /// exist already.
    pub async fn first_admin_token(&self, dir: Option<&Path>) -> Result<Option<(String, Option<PathBuf>)>> {
        if !self.db.admin_tokens().await?.is_empty() {
            return Ok(None);
        }
        let token = self
            .create_admin_token(&NewToken {
                name: FIRST_TOKEN_NAME.into(),
                expires_at: None,
            })
            .await?
            .token;
        let file = match dir {
            Some(dir) => {
                let path = dir.join(ADMIN_TOKEN_FILE);
                crate::fsutil::write_private(&path, format!("{token}\n").as_bytes())?;
                Some(path)
            }
            None => None,
        };
        Ok(Some((token, file)))
    }

    /// The admin token a first start left in `dir` ([`ADMIN_TOKEN_FILE`]), if it is there.
    pub fn saved_admin_token(dir: &Path) -> Option<String> {
        let text = std::fs::read_to_string(dir.join(ADMIN_TOKEN_FILE)).ok()?;
        Some(text.trim().to_string()).filter(|t| !t.is_empty())
    }

    /// Who holds this bearer token. A task token ([`task_token`](crate::control::tokens::task_token)) stands for its task's node
    /// while the task is open.
    pub async fn authenticate(&self, token: &str) -> Result<Caller> {
        if let Some(rest) = token.strip_prefix(TASK_TOKEN_PREFIX) {
            return self.authenticate_task(rest).await;
        }
        let hash = token_hash(token);
        let now = self.clock.now();
        let generation = {
            let cache = lock(&self.tokens);
            if let Some(role) = cache.roles.get(&hash) {
                return caller_of(role, now);
            }
            cache.generation
        };
        let role = self
            .db
            .token_role(&hash)
            .await?
            .ok_or_else(|| Error::Unauthorized("unknown token".into()))?;
        let caller = caller_of(&role, now);
        let mut cache = lock(&self.tokens);
        if cache.generation == generation {
            cache.roles.insert(hash, role);
        }
        caller
    }

    /// The stored hashes of a node's tokens (cached).
    pub(super) async fn node_token_hashes(&self, node: &str) -> Result<Vec<String>> {
        let generation = {
            let cache = lock(&self.tokens);
            if let Some(hashes) = cache.node_hashes.get(node) {
                return Ok(hashes.clone());
            }
            cache.generation
        };
        let hashes = self.db.node_token_hashes(node).await?;
        let mut cache = lock(&self.tokens);
        if cache.generation == generation {
            cache.node_hashes.insert(node.to_string(), hashes.clone());
        }
        Ok(hashes)
    }

    /// A node's tokens changed: forget what was cached of them.
    pub(super) fn forget_node_tokens(&self, node: &str) {
        let mut cache = lock(&self.tokens);
        cache.generation += 1;
        cache.roles.retain(|_, role| *role != TokenRole::Node(node.to_string()));
        cache.node_hashes.remove(node);
    }

    pub(super) async fn authenticate_task(&self, rest: &str) -> Result<Caller> {
        let refused = || Error::Unauthorized("unknown task token".into());
        let (id, mac) = rest.split_once('_').ok_or_else(refused)?;
        let id: TaskId = id.parse().map_err(|_| refused())?;
        let mac = blake3::Hash::from_hex(mac).map_err(|_| refused())?;
        let task = match self.task(id).await {
            Ok(task) => task,
            Err(Error::NotFound { .. }) => return Err(refused()),
            Err(e) => return Err(e),
        };
        let node = task.node.clone().ok_or_else(refused)?;
        let mut valid = false;
        for hash in self.node_token_hashes(&node).await? {
            if let Ok(key) = blake3::Hash::from_hex(&hash) {
                // blake3::Hash compares in constant time.
                valid |= task_mac(&key, &node, id) == mac;
            }
        }
        if !valid {
            return Err(refused());
        }
        if task.state.is_terminal() {
            return Err(Error::Unauthorized(format!(
                "task {id} is {}: its token is no longer valid",
                task.state.name()
            )));
        }
        Ok(Caller::Task { node, task: id })
    }
}

impl Authenticate for Arc<Control> {
    async fn authenticate(&self, token: &str) -> Result<Caller> {
        Control::authenticate(self, token).await
    }

    async fn record(&self, entry: AuditEntry) {
        self.record_audit(entry).await
    }
}
