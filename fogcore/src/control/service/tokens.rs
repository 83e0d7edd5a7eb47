//! Tokens: people's (admins' and users') and node tokens (stored as hashes, cached once seen), task tokens derived from a
//! node's, and who holds a token.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Control, lock};
use crate::control::api::{Authenticate, Caller};
use crate::control::db::TokenRole;
use crate::control::model::{
    AuditEntry, IssuedToken, Millis, NewToken, Role, TaskId, TokenInfo, User, check_not_negative,
};
use crate::control::tokens::{TASK_TOKEN_PREFIX, new_token, task_mac, token_hash};
use crate::error::{Error, Result};
use crate::names::check_name;

/// The file in a master's data directory that holds the first admin token.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";

/// The name the first admin token gets.
pub const FIRST_TOKEN_NAME: &str = "admin";

/// Who holds a token of this role at `now`: an expired token is refused.
fn caller_of(role: &TokenRole, now: Millis) -> Result<Caller> {
    match role {
        TokenRole::User {
            name,
            expires_at: Some(at),
            ..
        } if *at <= now => Err(Error::Unauthorized(format!("token {name} has expired"))),
        TokenRole::User { name, role, owner, .. } => Ok(Caller::User {
            actor: match owner {
                Some(owner) => format!("user:{owner}/token:{name}"),
                None => format!("token:{name}"),
            },
            role: *role,
        }),
        TokenRole::Node(node) => Ok(Caller::Node(node.clone())),
    }
}

impl Control {
    // ---- tokens

    /// Issues a token for a person (role: admin unless asked); only its hash is stored. Made
    /// by a signed-in user (`owner`), it is theirs and gets at most their role.
    pub async fn create_token(&self, new: &NewToken, owner: Option<&User>) -> Result<IssuedToken> {
        check_name("token name", &new.name)?;
        check_not_negative("expires_at", new.expires_at)?;
        let wanted = new.role.unwrap_or(Role::Admin);
        let role = match owner {
            Some(user) if wanted > user.role => {
                return Err(Error::Forbidden(format!(
                    "{} is {}: their tokens cannot be {wanted}",
                    user.name, user.role
                )));
            }
            _ => wanted,
        };
        let token = new_token();
        let stored = TokenRole::User {
            name: new.name.clone(),
            role,
            owner: owner.map(|u| u.name.clone()),
            expires_at: new.expires_at,
        };
        self.db.insert_token(&token_hash(&token), &stored).await?;
        Ok(IssuedToken {
            info: TokenInfo {
                name: new.name.clone(),
                role,
                owner: owner.map(|u| u.name.clone()),
                created_at: self.clock.now(),
                expires_at: new.expires_at,
            },
            token,
        })
    }

    /// People's tokens, by name: every one, or one user's.
    pub async fn tokens(&self, owner: Option<&str>) -> Result<Vec<TokenInfo>> {
        self.db.person_tokens(owner).await
    }

    /// Revokes a person's token: refused from the next request on. A user who is not an admin
    /// (`by`) revokes only their own. The last admin token that works is kept (scripts could not
    /// administer the master without it).
    pub async fn revoke_token(&self, name: &str, by: Option<&User>) -> Result<()> {
        let now = self.clock.now();
        let tokens = self.db.person_tokens(None).await?;
        let token = tokens
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| Error::not_found("token", name))?;
        if let Some(user) = by
            && user.role < Role::Admin
            && token.owner.as_deref() != Some(user.name.as_str())
        {
            return Err(Error::Forbidden(format!("token {name} is not {}'s", user.name)));
        }
        let working = |t: &&TokenInfo| t.role == Role::Admin && t.expires_at.is_none_or(|at| at > now);
        if working(&token) && tokens.iter().filter(working).count() == 1 {
            return Err(Error::conflict(
                "token",
                name,
                "it is the last admin token that works: issue another first",
            ));
        }
        self.db.delete_person_token(name).await?;
        self.forget_person_tokens();
        Ok(())
    }

    /// People's tokens or roles changed: forget what was cached of their tokens.
    pub(super) fn forget_person_tokens(&self) {
        let mut cache = lock(&self.tokens);
        cache.generation += 1;
        cache.roles.retain(|_, role| matches!(role, TokenRole::Node(_)));
    }

    /// On a first start (no admin token yet), issues one and, given a directory, writes it to
    /// `DIR/admin-token` (mode 0600). Returns the token and the file then; none when admin tokens
    /// exist already.
    pub async fn first_admin_token(&self, dir: Option<&Path>) -> Result<Option<(String, Option<PathBuf>)>> {
        if !self.db.person_tokens(None).await?.is_empty() {
            return Ok(None);
        }
        let token = self
            .create_token(
                &NewToken {
                    name: FIRST_TOKEN_NAME.into(),
                    role: None,
                    expires_at: None,
                },
                None,
            )
            .await?
            .token;
        let file = super::keep_secret(dir, ADMIN_TOKEN_FILE, &token)?;
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
