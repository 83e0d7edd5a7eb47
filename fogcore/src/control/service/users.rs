//! Users: who signs in to the web pages, with which role; passwords (argon2), sign-in sessions
//! (a random cookie, stored hashed, with its CSRF token), and failed sign-ins slowed per user and
//! per address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};

use super::{Control, lock};
use crate::control::db::{SessionRow, SessionsOf, UserChange};
use crate::control::model::{Millis, NewUser, Role, User, UserUpdate, check_password};
use crate::control::tokens::token_hash;
use crate::error::{Error, Result};
use crate::names::check_name;

/// The file in a master's data directory that holds the first admin's password.
pub const ADMIN_PASSWORD_FILE: &str = "admin-password";

/// The name of the user a first start creates.
pub const FIRST_USER: &str = "admin";

/// How long a sign-in lasts.
pub const SESSION_TTL_MS: Millis = 12 * 3600 * 1000;

/// Failed sign-ins (per user, per address) let through before each next one must wait.
const FREE_FAILURES: u32 = 3;

/// The longest wait after failed sign-ins.
const MAX_WAIT_MS: Millis = 5 * 60 * 1000;

/// Failed sign-ins per user name and per address: how many, and when the next may be tried.
#[derive(Debug, Default)]
pub(super) struct SignInFailures {
    by_key: HashMap<String, Failures>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Failures {
    count: u32,
    next_try: Millis,
}

impl SignInFailures {
    /// The wait left for any of `keys`, in ms.
    fn wait(&self, keys: &[String], now: Millis) -> Millis {
        keys.iter()
            .filter_map(|k| self.by_key.get(k))
            .map(|f| f.next_try - now)
            .max()
            .unwrap_or(0)
            .max(0)
    }

    /// One more failure: past the free ones each doubles the wait (1 s, 2 s, 4 s ... 5 min).
    fn failed(&mut self, keys: &[String], now: Millis) {
        if self.by_key.len() > 100_000 {
            self.by_key.retain(|_, f| f.next_try > now);
        }
        for key in keys {
            let f = self.by_key.entry(key.clone()).or_default();
            f.count += 1;
            if f.count > FREE_FAILURES {
                let doublings = (f.count - FREE_FAILURES - 1).min(20);
                f.next_try = now + (1000 << doublings).min(MAX_WAIT_MS);
            }
        }
    }
}

/// A signed-in user, as a page sees them.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    /// Who.
    pub user: User,
    /// The token every form they send must carry.
    pub csrf: String,
    /// When it ends (ms since the epoch).
    pub expires_at: Millis,
}

/// A sign-in: the cookie to set, and the session.
#[derive(Debug, Clone)]
pub struct SignedIn {
    /// The cookie's value (shown to the browser only; stored hashed).
    pub cookie: String,
    /// The session.
    pub session: Session,
}

fn hash_password(password: &str) -> Result<String> {
    let salt: [u8; 16] = rand::random();
    let salt = SaltString::encode_b64(&salt).map_err(|e| Error::invalid("password salt", "", e.to_string()))?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| Error::invalid("password", "(hidden)", e.to_string()))
}

fn password_matches(password: &str, stored: &str) -> bool {
    PasswordHash::new(stored).is_ok_and(|hash| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok()
    })
}

/// Argon2 work at once at most: each takes 19 MiB and tens of ms of a core, so a burst of
/// sign-ins queues here instead of filling the memory.
pub(super) fn password_work_slots() -> tokio::sync::Semaphore {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    tokio::sync::Semaphore::new(cores)
}

/// A random secret: 32 bytes, hex.
fn secret() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

impl Control {
    /// Runs argon2 work off the async threads, a few at a time.
    async fn password_work<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let _slot = self
            .password_slots
            .acquire()
            .await
            .map_err(|e| Error::invalid("password check", "", e.to_string()))?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| Error::invalid("password check", "", e.to_string()))
    }

    /// Adds a user.
    pub async fn create_user(&self, new: &NewUser) -> Result<User> {
        check_name("user name", &new.name)?;
        check_password(&new.password)?;
        let password = new.password.clone();
        let hash = self.password_work(move || hash_password(&password)).await??;
        self.db.insert_user(&new.name, new.role, &hash).await
    }

    /// Every user, by name.
    pub async fn users(&self) -> Result<Vec<User>> {
        self.db.users().await
    }

    /// One user.
    pub async fn user(&self, name: &str) -> Result<User> {
        Ok(self.db.user_with_hash(name).await?.0)
    }

    /// Refused when `name` is the last admin and would stop being one.
    async fn keep_an_admin(&self, name: &str) -> Result<()> {
        let users = self.db.users().await?;
        let admins: Vec<_> = users.iter().filter(|u| u.role == Role::Admin).collect();
        if admins.len() == 1 && admins[0].name == name {
            return Err(Error::conflict(
                "user",
                name,
                "the last admin: make another user admin first",
            ));
        }
        Ok(())
    }

    /// Removes a user, their sessions and their tokens. The last admin stays.
    pub async fn remove_user(&self, name: &str) -> Result<()> {
        self.user(name).await?;
        self.keep_an_admin(name).await?;
        self.db.delete_user(name).await?;
        self.forget_person_tokens();
        Ok(())
    }

    /// Gives a user another role; their tokens get at most that role. The last admin stays one.
    pub async fn set_role(&self, name: &str, role: Role) -> Result<User> {
        let user = self.user(name).await?;
        if user.role == Role::Admin && role != Role::Admin {
            self.keep_an_admin(name).await?;
        }
        self.db.update_user(name, UserChange::Role(role)).await?;
        self.db.cap_token_roles(name, role).await?;
        self.forget_person_tokens();
        self.user(name).await
    }

    /// Sets a user's password and ends their sessions.
    pub async fn set_password(&self, name: &str, password: &str) -> Result<()> {
        check_password(password)?;
        self.user(name).await?;
        let password = password.to_string();
        let hash = self.password_work(move || hash_password(&password)).await??;
        self.db.update_user(name, UserChange::Password(&hash)).await?;
        self.db.delete_sessions(SessionsOf::User(name)).await
    }

    /// The user `name` when `password` is theirs. Failures are slowed: after a few, per user
    /// name and per address, each next try must wait longer (up to 5 minutes), and the answer
    /// does not tell an unknown user from a wrong password.
    pub async fn check_password(&self, name: &str, password: &str, address: Option<IpAddr>) -> Result<User> {
        let now = self.clock.now();
        let mut keys = vec![format!("user:{name}")];
        if let Some(address) = address {
            keys.push(format!("address:{address}"));
        }
        {
            // Counted as failed before the check, so parallel guesses cannot all pass the wait;
            // a right password clears it.
            let mut failures = lock(&self.sign_ins);
            let wait = failures.wait(&keys, now);
            if wait > 0 {
                return Err(Error::Unauthorized(format!(
                    "too many failed sign-ins: try again in {} s",
                    (wait + 999) / 1000
                )));
            }
            failures.failed(&keys, now);
        }
        let stored = match self.db.user_with_hash(name).await {
            Ok(found) => Some(found),
            Err(Error::NotFound { .. }) => None,
            Err(e) => return Err(e),
        };
        // An unknown user costs the same hashing as a known one.
        let hash = stored
            .as_ref()
            .map(|(_, hash)| hash.clone())
            .unwrap_or_else(|| UNKNOWN_USER_HASH.to_string());
        let password = password.to_string();
        let matches = self.password_work(move || password_matches(&password, &hash)).await?;
        let user = match stored {
            Some((user, _)) if matches => user,
            _ => return Err(Error::Unauthorized("wrong user name or password".into())),
        };
        lock(&self.sign_ins).by_key.retain(|k, _| !keys.contains(k));
        Ok(user)
    }

    /// Changes a user's role and/or password (see [`Control::set_role`], [`Control::set_password`]).
    pub async fn update_user(&self, name: &str, change: &UserUpdate) -> Result<User> {
        if let Some(password) = &change.password {
            check_password(password)?;
        }
        if let Some(role) = change.role {
            self.set_role(name, role).await?;
        }
        if let Some(password) = &change.password {
            self.set_password(name, password).await?;
        }
        self.user(name).await
    }

    /// Signs `name` in from `address` when the password is theirs ([`Control::check_password`]).
    pub async fn sign_in(&self, name: &str, password: &str, address: Option<IpAddr>) -> Result<SignedIn> {
        let user = self.check_password(name, password, address).await?;
        let now = self.clock.now();
        self.db.update_user(&user.name, UserChange::SignedIn).await?;
        let cookie = secret();
        let row = SessionRow {
            user: user.name.clone(),
            csrf: secret(),
            expires_at: now + SESSION_TTL_MS,
        };
        self.db.insert_session(&token_hash(&cookie), &row).await?;
        Ok(SignedIn {
            cookie,
            session: Session {
                user,
                csrf: row.csrf,
                expires_at: row.expires_at,
            },
        })
    }

    /// The session a cookie names, while it lasts.
    pub async fn session(&self, cookie: &str) -> Result<Session> {
        // A removed user's sessions go with them, so a session names a user that exists.
        let (row, user) = self
            .db
            .session(&token_hash(cookie))
            .await?
            .ok_or_else(|| Error::Unauthorized("not signed in".into()))?;
        if row.expires_at <= self.clock.now() {
            return Err(Error::Unauthorized("the session has expired: sign in again".into()));
        }
        Ok(Session {
            user,
            csrf: row.csrf,
            expires_at: row.expires_at,
        })
    }

    /// Signs out: the cookie no longer names a session.
    pub async fn sign_out(&self, cookie: &str) -> Result<()> {
        self.db.delete_sessions(SessionsOf::Cookie(&token_hash(cookie))).await
    }

    /// On a first start (no user yet), creates [`FIRST_USER`], an admin, with a random password
    /// and, given a directory, writes it to `DIR/admin-password` (mode 0600). Returns the password
    /// and the file then.
    pub async fn first_admin_user(&self, dir: Option<&Path>) -> Result<Option<(String, Option<PathBuf>)>> {
        if !self.db.users().await?.is_empty() {
            return Ok(None);
        }
        // 20 letters and digits: typed by people, 119 bits.
        const ALPHABET: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
        let password: String = (0..20)
            .map(|_| ALPHABET[rand::random_range(0..ALPHABET.len())] as char)
            .collect();
        self.create_user(&NewUser {
            name: FIRST_USER.into(),
            role: Role::Admin,
            password: password.clone(),
        })
        .await?;
        let file = super::keep_secret(dir, ADMIN_PASSWORD_FILE, &password)?;
        Ok(Some((password, file)))
    }
}

/// An argon2 hash of no one's password, checked for unknown users so they cost the same time.
const UNKNOWN_USER_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$0G5Gv8n3q2p0i5QmT6uU2K3Q1b0Vt3m2bq7+M0aN1bE";
