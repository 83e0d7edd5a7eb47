//! People in the database: users (argon2 hashes, never the passwords), their sign-in sessions
//! (the cookie's hash), and bearer tokens (their hashes, with a role and an owner, or a node).

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Db, TokenRole, db_err};
use crate::control::model::{Millis, Role, TokenInfo, User};
use crate::error::{Error, Result};

/// A stored session: whose, its CSRF token, until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRow {
    /// The user signed in.
    pub user: String,
    /// The token every form of the session carries.
    pub csrf: String,
    /// When it ends (ms since the epoch).
    pub expires_at: Millis,
}

fn role_of(text: &str) -> Result<Role> {
    text.parse()
        .map_err(|_| Error::Database(format!("unknown role {text:?} stored")))
}

impl Db {
    // ---- users

    /// Adds a user with a password hash; a name taken is a conflict.
    pub async fn insert_user(&self, name: &str, role: Role, password_hash: &str) -> Result<User> {
        let now = self.clock.now();
        let inserted = sqlx::query(
            "INSERT INTO users (name, role, password, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(role.name())
        .bind(password_hash)
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(db_err)?
        .rows_affected();
        if inserted == 0 {
            return Err(Error::conflict("user", name, "a user of that name exists"));
        }
        Ok(User {
            name: name.into(),
            role,
            created_at: now,
            last_login: None,
        })
    }

    fn user_row(row: &AnyRow) -> Result<User> {
        let role: String = row.try_get("role").map_err(db_err)?;
        Ok(User {
            name: row.try_get("name").map_err(db_err)?,
            role: role_of(&role)?,
            created_at: row.try_get("created_at").map_err(db_err)?,
            last_login: row.try_get("last_login").map_err(db_err)?,
        })
    }

    /// Every user, by name.
    pub async fn users(&self) -> Result<Vec<User>> {
        let rows = sqlx::query("SELECT name, role, created_at, last_login FROM users ORDER BY name")
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        rows.iter().map(Db::user_row).collect()
    }

    /// A user and their password hash.
    pub async fn user_with_hash(&self, name: &str) -> Result<(User, String)> {
        let row = sqlx::query("SELECT name, role, created_at, last_login, password FROM users WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?
            .ok_or_else(|| Error::not_found("user", name))?;
        Ok((Db::user_row(&row)?, row.try_get("password").map_err(db_err)?))
    }

    /// Changes a user's role, or password hash, or notes a sign-in.
    pub async fn update_user(&self, name: &str, change: UserChange<'_>) -> Result<()> {
        let query = match change {
            UserChange::Role(role) => sqlx::query("UPDATE users SET role = $2 WHERE name = $1")
                .bind(name)
                .bind(role.name()),
            UserChange::Password(hash) => sqlx::query("UPDATE users SET password = $2 WHERE name = $1")
                .bind(name)
                .bind(hash),
            UserChange::SignedIn => sqlx::query("UPDATE users SET last_login = $2 WHERE name = $1")
                .bind(name)
                .bind(self.clock.now()),
        };
        let n = query.execute(&self.pool).await.map_err(db_err)?.rows_affected();
        if n == 0 {
            return Err(Error::not_found("user", name));
        }
        Ok(())
    }

    /// Removes a user, their sessions and their tokens.
    pub async fn delete_user(&self, name: &str) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        let n = sqlx::query("DELETE FROM users WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?
            .rows_affected();
        if n == 0 {
            return Err(Error::not_found("user", name));
        }
        for sql in [
            "DELETE FROM sessions WHERE user_name = $1",
            "DELETE FROM tokens WHERE owner = $1",
        ] {
            sqlx::query(sql).bind(name).execute(&mut *tx).await.map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)
    }

    // ---- sessions

    /// Stores a session by the hash of its cookie.
    pub async fn insert_session(&self, hash: &str, session: &SessionRow) -> Result<()> {
        sqlx::query("INSERT INTO sessions (hash, user_name, csrf, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(hash)
            .bind(&session.user)
            .bind(&session.csrf)
            .bind(self.clock.now())
            .bind(session.expires_at)
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    /// The session whose cookie has this hash, with its user as stored now (one query: every
    /// page asks it).
    pub async fn session(&self, hash: &str) -> Result<Option<(SessionRow, User)>> {
        let row = sqlx::query(
            "SELECT s.csrf, s.expires_at, u.name, u.role, u.created_at, u.last_login
             FROM sessions s JOIN users u ON u.name = s.user_name WHERE s.hash = $1",
        )
        .bind(hash)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_err)?;
        row.map(|r| {
            let user = Db::user_row(&r)?;
            let session = SessionRow {
                user: user.name.clone(),
                csrf: r.try_get("csrf").map_err(db_err)?,
                expires_at: r.try_get("expires_at").map_err(db_err)?,
            };
            Ok((session, user))
        })
        .transpose()
    }

    /// Ends a session, or (given a user) every session of theirs; and every expired one.
    pub async fn delete_sessions(&self, which: SessionsOf<'_>) -> Result<()> {
        let (sql, key) = match which {
            SessionsOf::Cookie(hash) => ("DELETE FROM sessions WHERE hash = $1", hash),
            SessionsOf::User(name) => ("DELETE FROM sessions WHERE user_name = $1", name),
        };
        sqlx::query(sql).bind(key).execute(&self.pool).await.map_err(db_err)?;
        sqlx::query("DELETE FROM sessions WHERE expires_at <= $1")
            .bind(self.clock.now())
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    // ---- tokens

    /// Stores a token's hash with its rights; a name taken is a conflict.
    pub async fn insert_token(&self, hash: &str, role: &TokenRole) -> Result<()> {
        let (kind, name, node, owner, expires_at) = match role {
            TokenRole::User {
                name,
                role,
                owner,
                expires_at,
            } => (role.name(), Some(name.as_str()), None, owner.as_deref(), *expires_at),
            TokenRole::Node(n) => ("node", None, Some(n.as_str()), None, None),
        };
        if let Some(name) = name
            && self.person_tokens(None).await?.iter().any(|t| t.name == name)
        {
            return Err(Error::conflict("token", name, "a token of that name exists"));
        }
        sqlx::query(
            "INSERT INTO tokens (hash, role, node, created_at, name, expires_at, owner) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(hash)
        .bind(kind)
        .bind(node)
        .bind(self.clock.now())
        .bind(name)
        .bind(expires_at)
        .bind(owner)
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    /// The rights of the token with this hash.
    pub async fn token_role(&self, hash: &str) -> Result<Option<TokenRole>> {
        let row = sqlx::query("SELECT role, node, name, expires_at, owner FROM tokens WHERE hash = $1")
            .bind(hash)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        let Some(row) = row else { return Ok(None) };
        let role: String = row.try_get("role").map_err(db_err)?;
        let node: Option<String> = row.try_get("node").map_err(db_err)?;
        let name: Option<String> = row.try_get("name").map_err(db_err)?;
        Ok(match (role.as_str(), node, name) {
            ("node", Some(node), _) => Some(TokenRole::Node(node)),
            ("node", None, _) | (_, _, None) => None,
            (role, _, Some(name)) => Some(TokenRole::User {
                name,
                role: role_of(role)?,
                owner: row.try_get("owner").map_err(db_err)?,
                expires_at: row.try_get("expires_at").map_err(db_err)?,
            }),
        })
    }

    /// People's tokens (of one owner, or all), by name.
    pub async fn person_tokens(&self, owner: Option<&str>) -> Result<Vec<TokenInfo>> {
        const PEOPLE: &str = "SELECT name, role, owner, created_at, expires_at FROM tokens
             WHERE role <> 'node' AND name IS NOT NULL";
        let rows = match owner {
            None => sqlx::query(sqlx::AssertSqlSafe(format!("{PEOPLE} ORDER BY name"))),
            Some(owner) => {
                sqlx::query(sqlx::AssertSqlSafe(format!("{PEOPLE} AND owner = $1 ORDER BY name"))).bind(owner)
            }
        }
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(|r| {
                let role: String = r.try_get("role").map_err(db_err)?;
                Ok(TokenInfo {
                    name: r.try_get("name").map_err(db_err)?,
                    role: role_of(&role)?,
                    owner: r.try_get("owner").map_err(db_err)?,
                    created_at: r.try_get("created_at").map_err(db_err)?,
                    expires_at: r.try_get("expires_at").map_err(db_err)?,
                })
            })
            .collect()
    }

    /// Revokes the person's token of this name.
    pub async fn delete_person_token(&self, name: &str) -> Result<()> {
        let n = sqlx::query("DELETE FROM tokens WHERE role <> 'node' AND name = $1")
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(db_err)?
            .rows_affected();
        if n == 0 {
            return Err(Error::not_found("token", name));
        }
        Ok(())
    }

    /// Lowers the role of a user's tokens to at most `role`.
    pub async fn cap_token_roles(&self, owner: &str, role: Role) -> Result<()> {
        for token in self.person_tokens(Some(owner)).await? {
            if token.role > role {
                sqlx::query("UPDATE tokens SET role = $2 WHERE name = $1")
                    .bind(&token.name)
                    .bind(role.name())
                    .execute(&self.pool)
                    .await
                    .map_err(db_err)?;
            }
        }
        Ok(())
    }

    /// The stored hashes of a node's tokens.
    pub async fn node_token_hashes(&self, node: &str) -> Result<Vec<String>> {
        sqlx::query_scalar("SELECT hash FROM tokens WHERE role = 'node' AND node = $1")
            .bind(node)
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)
    }

    /// Revokes a node's tokens.
    pub async fn delete_node_tokens(&self, node: &str) -> Result<()> {
        sqlx::query("DELETE FROM tokens WHERE role = 'node' AND node = $1")
            .bind(node)
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(())
    }
}

/// What [`Db::update_user`] changes.
#[derive(Debug, Clone, Copy)]
pub enum UserChange<'a> {
    /// The role.
    Role(Role),
    /// The password's hash.
    Password(&'a str),
    /// Notes a sign-in now.
    SignedIn,
}

/// Which sessions [`Db::delete_sessions`] ends.
#[derive(Debug, Clone, Copy)]
pub enum SessionsOf<'a> {
    /// The one whose cookie has this hash.
    Cookie(&'a str),
    /// Every one of this user.
    User(&'a str),
}
