//! Persistence of the inventory with sqlx: SQLite (a file in the data directory) by default,
//! PostgreSQL by URL for large sites.
//!
//! One code path for both, through sqlx's `Any` driver: every statement is written in the SQL the
//! two share (`$1` parameters, `BIGINT`, `TEXT`, `DOUBLE PRECISION`, `RETURNING`, `ON CONFLICT`),
//! booleans and times are stored as integers, lists and JSON as text. Only the auto-increment id
//! column differs, and [`MIGRATIONS`] writes it per backend. The migrations are ours (a table of
//! applied versions), run at open, each in a transaction: idempotent, and readable in one place.
//!
//! Here the inventory and tasks; people (users, sessions, tokens) in `users`.

mod users;

pub use self::users::{SessionRow, SessionsOf, UserChange};

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

use crate::clock::{Clock, SystemClock};
use crate::control::model::{
    After, AuditEntry, AuditQuery, CopyReport, CopyState, Group, Host, HostQuery, Image, ImageCopy, ImageQuery,
    LayoutMode, Millis, NewTask, Node, Placement, Role, Schedule, Task, TaskEvent, TaskFilter, TaskId, TaskKind,
    TaskState, Wake,
};
use crate::error::{Error, Result};

/// Which database a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `sqlite://PATH`.
    Sqlite,
    /// `postgres://...` or `postgresql://...`.
    Postgres,
}

/// Schema versions, oldest first. `{id}` becomes each backend's auto-increment primary key.
pub const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        "CREATE TABLE groups (name TEXT PRIMARY KEY, description TEXT NOT NULL, created_at BIGINT NOT NULL);
     CREATE TABLE nodes (name TEXT PRIMARY KEY, url TEXT NOT NULL, subnets TEXT NOT NULL,
        max_clients BIGINT NOT NULL, enabled BIGINT NOT NULL, last_seen BIGINT, free_bytes BIGINT,
        created_at BIGINT NOT NULL);
     CREATE TABLE images (name TEXT PRIMARY KEY, description TEXT NOT NULL, os TEXT NOT NULL,
        size_bytes BIGINT NOT NULL, placement TEXT NOT NULL, created_at BIGINT NOT NULL);
     CREATE TABLE image_copies (image TEXT NOT NULL, node TEXT NOT NULL, state TEXT NOT NULL,
        bytes BIGINT NOT NULL, reason TEXT, updated_at BIGINT NOT NULL, PRIMARY KEY (image, node));
     CREATE TABLE hosts (name TEXT PRIMARY KEY, uuid TEXT, address TEXT, image TEXT, grp TEXT,
        node TEXT, primary_disk TEXT, kernel_args TEXT NOT NULL, inventory TEXT NOT NULL,
        created_at BIGINT NOT NULL);
     CREATE TABLE host_macs (mac TEXT PRIMARY KEY, host TEXT NOT NULL, pos BIGINT NOT NULL);
     CREATE INDEX host_macs_host ON host_macs (host);
     CREATE TABLE tasks (id {id}, kind TEXT NOT NULL, host TEXT NOT NULL, image TEXT, node TEXT,
        grp TEXT, schedule BIGINT, after_task TEXT NOT NULL, wake BIGINT NOT NULL,
        state TEXT NOT NULL, percent DOUBLE PRECISION NOT NULL, bytes BIGINT NOT NULL,
        rate BIGINT NOT NULL, reason TEXT, ticket BIGINT, last_contact BIGINT,
        created_at BIGINT NOT NULL, updated_at BIGINT NOT NULL);
     CREATE INDEX tasks_host ON tasks (host, state);
     CREATE INDEX tasks_node ON tasks (node, state, ticket);
     CREATE TABLE task_events (id {id}, task BIGINT NOT NULL, at BIGINT NOT NULL, from_state TEXT,
        to_state TEXT NOT NULL, detail TEXT);
     CREATE INDEX task_events_task ON task_events (task);
     CREATE TABLE schedules (id {id}, spec TEXT NOT NULL, next_run BIGINT, created_at BIGINT NOT NULL);
     CREATE TABLE tokens (hash TEXT PRIMARY KEY, role TEXT NOT NULL, node TEXT, created_at BIGINT NOT NULL)",
    ),
    (
        2,
        "CREATE TABLE wakes (id {id}, host TEXT NOT NULL, macs TEXT NOT NULL, node TEXT NOT NULL, task BIGINT,
        requested_at BIGINT NOT NULL);
     CREATE INDEX wakes_node ON wakes (node)",
    ),
    // Every first check-in asks for the next ticket (MAX(ticket)): a scan of all tasks without it.
    (3, "CREATE INDEX tasks_ticket ON tasks (ticket)"),
    // Named, expiring admin tokens (those issued before get a name from their hash); the audit log.
    (
        4,
        "ALTER TABLE tokens ADD COLUMN name TEXT;
     ALTER TABLE tokens ADD COLUMN expires_at BIGINT;
     UPDATE tokens SET name = 'admin-' || substr(hash, 1, 8) WHERE role = 'admin';
     CREATE UNIQUE INDEX tokens_name ON tokens (name);
     CREATE TABLE audit (id {id}, at BIGINT NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
        target TEXT NOT NULL, address TEXT, status BIGINT NOT NULL, result TEXT NOT NULL);
     CREATE INDEX audit_at ON audit (at)",
    ),
    // Users and their sessions; tokens of users (with a role and an owner); hosts registered
    // from the boot menu wait for approval; each host's search text (filled from Rust, see
    // `search_text`); the dashboard counts finished tasks by day from the index alone.
    (
        5,
        "CREATE TABLE users (name TEXT PRIMARY KEY, role TEXT NOT NULL, password TEXT NOT NULL,
        created_at BIGINT NOT NULL, last_login BIGINT);
     CREATE TABLE sessions (hash TEXT PRIMARY KEY, user_name TEXT NOT NULL, csrf TEXT NOT NULL,
        created_at BIGINT NOT NULL, expires_at BIGINT NOT NULL);
     CREATE INDEX sessions_user ON sessions (user_name);
     ALTER TABLE tokens ADD COLUMN owner TEXT;
     ALTER TABLE hosts ADD COLUMN pending BIGINT NOT NULL DEFAULT 0;
     CREATE INDEX hosts_pending ON hosts (pending);
     ALTER TABLE hosts ADD COLUMN search TEXT;
     CREATE INDEX tasks_finished ON tasks (updated_at, state)",
    ),
    // Deploy layouts (`fit`, `exact`): each host's, and the one each deploy task settled on at
    // creation (none for other kinds, and for tasks stored before: the agent deploys those fit).
    (
        6,
        "ALTER TABLE hosts ADD COLUMN layout TEXT NOT NULL DEFAULT 'fit';
     ALTER TABLE tasks ADD COLUMN layout TEXT",
    ),
];

/// States of a task that is not over.
const OPEN_STATES: &str = "('queued', 'checked_in', 'waiting_for_slot', 'in_progress')";

/// A stored token's rights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenRole {
    /// A person's: an admin's, or a user's (with at most the user's role), until it expires.
    User {
        /// Its name.
        name: String,
        /// What it may do.
        role: Role,
        /// The user who made it; none for admin tokens made by the CLI or the first start.
        owner: Option<String>,
        /// When it stops working.
        expires_at: Option<Millis>,
    },
    /// What this node does.
    Node(String),
}

/// The database.
#[derive(Clone)]
pub struct Db {
    pool: AnyPool,
    backend: Backend,
    /// What `created_at`, `updated_at` and the like read.
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("backend", &self.backend).finish()
    }
}

/// How often SQLite's write-ahead log is copied into the database.
pub const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(500);

/// Copies SQLite's write-ahead log into the database every [`CHECKPOINT_EVERY`] (a passive
/// checkpoint: writers go on meanwhile), until the pool is closed.
async fn checkpoints(pool: AnyPool) {
    loop {
        tokio::time::sleep(CHECKPOINT_EVERY).await;
        if pool.is_closed() {
            break;
        }
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&pool).await {
            if pool.is_closed() {
                break;
            }
            tracing::warn!("sqlite checkpoint: {e}");
        }
    }
}

fn db_err(e: sqlx::Error) -> Error {
    Error::Database(e.to_string())
}

/// Maps a unique-key violation to [`Error::Conflict`], anything else to [`Error::Database`].
fn unique(kind: &'static str, key: &str) -> impl FnOnce(sqlx::Error) -> Error {
    move |e| match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => Error::conflict(kind, key, "already exists"),
        _ => db_err(e),
    }
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn json_text<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::Database(format!("encoding json: {e}")))
}

/// A layout as stored (`fit`, `exact`).
fn stored_layout(text: &str) -> Result<LayoutMode> {
    text.parse()
        .map_err(|_| Error::Database(format!("stored layout {text:?} is not one of fit, exact")))
}

fn from_json<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(|e| Error::Database(format!("stored {what} is damaged: {e}")))
}

impl Db {
    /// The same database, reading time from `clock`.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Db {
        self.clock = clock;
        self
    }

    /// Opens (creating if needed) `DIR/fog.db` and migrates it.
    pub async fn open_dir(dir: &Path) -> Result<Db> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join("fog.db");
        let url = format!("sqlite://{}?mode=rwc", path.display());
        Db::open(&url).await
    }

    /// Opens a database by URL (`sqlite://PATH?mode=rwc`, `postgres://...`) and migrates it.
    pub async fn open(url: &str) -> Result<Db> {
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(Error::invalid(
                "database url",
                url,
                "use sqlite://PATH or postgres://...",
            ));
        };
        sqlx::any::install_default_drivers();
        let sqlite = backend == Backend::Sqlite;
        let pool = AnyPoolOptions::new()
            .max_connections(if sqlite { 4 } else { 10 })
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if sqlite {
                        // Readers beside one writer. synchronous = NORMAL: in WAL mode a commit
                        // is not fsynced (the WAL is, at checkpoints), so the database never
                        // breaks, and a crash of the process loses nothing; a power cut can lose
                        // the last commits (check-ins and progress, which agents send again).
                        // FULL fsyncs every commit under the slot line: at most a few hundred
                        // check-ins a second on this disk.
                        sqlx::query("PRAGMA journal_mode = WAL").execute(&mut *conn).await?;
                        sqlx::query("PRAGMA synchronous = NORMAL").execute(&mut *conn).await?;
                        // No checkpoint inside a commit (the master commits under its slot
                        // lock, and a checkpoint fsyncs): `checkpoints` runs them beside.
                        sqlx::query("PRAGMA wal_autocheckpoint = 0").execute(&mut *conn).await?;
                    } else {
                        // The same trade as SQLite's NORMAL: a commit returns before its WAL
                        // record is flushed (within 3 x wal_writer_delay, 600 ms by default),
                        // so a crash of the server can lose the last commits but never breaks
                        // the database. Flushing every commit under the slot line held a
                        // default PostgreSQL to a few hundred first check-ins a second.
                        sqlx::query("SET synchronous_commit = off").execute(&mut *conn).await?;
                    }
                    Ok(())
                })
            })
            .connect(url)
            .await
            .map_err(|e| Error::Database(format!("{}: {e}", redact(url))))?;
        let db = Db {
            pool,
            backend,
            clock: Arc::new(SystemClock),
        };
        db.migrate().await?;
        if sqlite {
            tokio::spawn(checkpoints(db.pool.clone()));
        }
        Ok(db)
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Applies the migrations not applied yet; returns how many ran.
    pub async fn migrate(&self) -> Result<usize> {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS fog_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
        )
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        let id = match self.backend {
            Backend::Sqlite => "INTEGER PRIMARY KEY AUTOINCREMENT",
            Backend::Postgres => "BIGSERIAL PRIMARY KEY",
        };
        let mut ran = 0;
        for (version, sql) in MIGRATIONS {
            let mut tx = self.pool.begin().await.map_err(db_err)?;
            let done: Option<i64> = sqlx::query_scalar("SELECT version FROM fog_migrations WHERE version = $1")
                .bind(*version)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?;
            if done.is_some() {
                continue;
            }
            for statement in sql.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                sqlx::query(sqlx::AssertSqlSafe(statement.replace("{id}", id)))
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| Error::Database(format!("migration {version}: {e}")))?;
            }
            sqlx::query("INSERT INTO fog_migrations (version, applied_at) VALUES ($1, $2)")
                .bind(*version)
                .bind(self.clock.now())
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
            tx.commit().await.map_err(db_err)?;
            ran += 1;
        }
        self.fill_host_search().await?;
        Ok(ran)
    }

    /// Applied schema versions.
    pub async fn schema_versions(&self) -> Result<Vec<i64>> {
        sqlx::query_scalar("SELECT version FROM fog_migrations ORDER BY version")
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)
    }

    /// Closes the pool (waits for connections to be returned).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    // ---- groups

    /// Adds a group.
    pub async fn create_group(&self, group: &Group) -> Result<()> {
        sqlx::query("INSERT INTO groups (name, description, created_at) VALUES ($1, $2, $3)")
            .bind(&group.name)
            .bind(&group.description)
            .bind(self.clock.now())
            .execute(&self.pool)
            .await
            .map_err(unique("group", &group.name))?;
        Ok(())
    }

    /// Changes a group's description.
    pub async fn update_group(&self, group: &Group) -> Result<()> {
        let n = sqlx::query("UPDATE groups SET description = $2 WHERE name = $1")
            .bind(&group.name)
            .bind(&group.description)
            .execute(&self.pool)
            .await
            .map_err(db_err)?
            .rows_affected();
        if n == 0 {
            return Err(Error::not_found("group", &group.name));
        }
        Ok(())
    }

    /// Every group, by name.
    pub async fn groups(&self) -> Result<Vec<Group>> {
        let rows = sqlx::query("SELECT name, description FROM groups ORDER BY name")
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        rows.iter()
            .map(|r| {
                Ok(Group {
                    name: r.try_get("name").map_err(db_err)?,
                    description: r.try_get("description").map_err(db_err)?,
                })
            })
            .collect()
    }

    /// One group.
    pub async fn group(&self, name: &str) -> Result<Group> {
        self.groups()
            .await?
            .into_iter()
            .find(|g| g.name == name)
            .ok_or_else(|| Error::not_found("group", name))
    }

    /// Removes a group (its hosts stay, without a group).
    pub async fn delete_group(&self, name: &str) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        let n = sqlx::query("DELETE FROM groups WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?
            .rows_affected();
        if n == 0 {
            return Err(Error::not_found("group", name));
        }
        sqlx::query("UPDATE hosts SET grp = NULL WHERE grp = $1")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)
    }

    // ---- nodes

    /// Adds a node.
    pub async fn create_node(&self, node: &Node) -> Result<()> {
        sqlx::query(
            "INSERT INTO nodes (name, url, subnets, max_clients, enabled, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&node.name)
        .bind(&node.url)
        .bind(json_text(&node.subnets)?)
        .bind(i64::from(node.max_clients))
        .bind(i64::from(node.enabled))
        .bind(self.clock.now())
        .execute(&self.pool)
        .await
        .map_err(unique("node", &node.name))?;
        Ok(())
    }

    /// Replaces a node's settings (not its name or last heartbeat).
    pub async fn update_node(&self, node: &Node) -> Result<()> {
        let n = sqlx::query("UPDATE nodes SET url = $2, subnets = $3, max_clients = $4, enabled = $5 WHERE name = $1")
            .bind(&node.name)
            .bind(&node.url)
            .bind(json_text(&node.subnets)?)
            .bind(i64::from(node.max_clients))
            .bind(i64::from(node.enabled))
            .execute(&self.pool)
            .await
            .map_err(db_err)?
            .rows_affected();
        if n == 0 {
            return Err(Error::not_found("node", &node.name));
        }
        Ok(())
    }

    fn node_row(r: &AnyRow) -> Result<Node> {
        let subnets: String = r.try_get("subnets").map_err(db_err)?;
        let max: i64 = r.try_get("max_clients").map_err(db_err)?;
        Ok(Node {
            name: r.try_get("name").map_err(db_err)?,
            url: r.try_get("url").map_err(db_err)?,
            subnets: from_json("subnets", &subnets)?,
            max_clients: u32::try_from(max).unwrap_or(u32::MAX),
            enabled: r.try_get::<i64, _>("enabled").map_err(db_err)? != 0,
            last_seen: r.try_get("last_seen").map_err(db_err)?,
        })
    }

    /// Every node, by name.
    pub async fn nodes(&self) -> Result<Vec<Node>> {
        let rows = sqlx::query("SELECT name, url, subnets, max_clients, enabled, last_seen FROM nodes ORDER BY name")
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        rows.iter().map(Db::node_row).collect()
    }

    /// One node.
    pub async fn node(&self, name: &str) -> Result<Node> {
        let row = sqlx::query("SELECT name, url, subnets, max_clients, enabled, last_seen FROM nodes WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?
            .ok_or_else(|| Error::not_found("node", name))?;
        Db::node_row(&row)
    }

    /// Removes a node, its tokens and its image copies.
    pub async fn delete_node(&self, name: &str) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        let n = sqlx::query("DELETE FROM nodes WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?
            .rows_affected();
        if n == 0 {
            return Err(Error::not_found("node", name));
        }
        for sql in [
            "DELETE FROM tokens WHERE node = $1",
            "DELETE FROM image_copies WHERE node = $1",
            "UPDATE hosts SET node = NULL WHERE node = $1",
        ] {
            sqlx::query(sql).bind(name).execute(&mut *tx).await.map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)
    }

    /// Records a heartbeat: last seen, free bytes, and the images the node holds whole.
    pub async fn heartbeat(&self, node: &str, free_bytes: Option<u64>, images: &[String]) -> Result<()> {
        let now = self.clock.now();
        let n = sqlx::query("UPDATE nodes SET last_seen = $2, free_bytes = $3 WHERE name = $1")
            .bind(node)
            .bind(now)
            .bind(free_bytes.map(to_i64))
            .execute(&self.pool)
            .await
            .map_err(db_err)?
            .rows_affected();
        if n == 0 {
            return Err(Error::not_found("node", node));
        }
        for image in images {
            sqlx::query(
                "UPDATE image_copies SET state = 'complete', reason = NULL, updated_at = $3
                 WHERE image = $1 AND node = $2 AND state <> 'stale'",
            )
            .bind(image)
            .bind(node)
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        }
        Ok(())
    }

    // ---- images

    /// Adds an image's record.
    pub async fn create_image(&self, image: &Image) -> Result<()> {
        sqlx::query(
            "INSERT INTO images (name, description, os, size_bytes, placement, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&image.name)
        .bind(&image.description)
        .bind(&image.os)
        .bind(to_i64(image.size_bytes))
        .bind(json_text(&image.placement)?)
        .bind(self.clock.now())
        .execute(&self.pool)
        .await
        .map_err(unique("image", &image.name))?;
        self.place_image(image).await
    }

    /// Replaces an image's record.
    pub async fn update_image(&self, image: &Image) -> Result<()> {
        let n =
            sqlx::query("UPDATE images SET description = $2, os = $3, size_bytes = $4, placement = $5 WHERE name = $1")
                .bind(&image.name)
                .bind(&image.description)
                .bind(&image.os)
                .bind(to_i64(image.size_bytes))
                .bind(json_text(&image.placement)?)
                .execute(&self.pool)
                .await
                .map_err(db_err)?
                .rows_affected();
        if n == 0 {
            return Err(Error::not_found("image", &image.name));
        }
        self.place_image(image).await
    }

    /// Makes the copy rows match the placement: new targets pending, dropped ones removed.
    pub async fn place_image(&self, image: &Image) -> Result<()> {
        let targets: Vec<String> = match &image.placement {
            Placement::All => self.nodes().await?.into_iter().map(|n| n.name).collect(),
            Placement::Nodes { nodes } => nodes.clone(),
        };
        let now = self.clock.now();
        for node in &targets {
            sqlx::query(
                "INSERT INTO image_copies (image, node, state, bytes, updated_at) VALUES ($1, $2, 'pending', 0, $3)
                 ON CONFLICT (image, node) DO NOTHING",
            )
            .bind(&image.name)
            .bind(node)
            .bind(now)
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        }
        for copy in self.image_copies(&image.name).await? {
            if !targets.contains(&copy.node) {
                sqlx::query("DELETE FROM image_copies WHERE image = $1 AND node = $2")
                    .bind(&image.name)
                    .bind(&copy.node)
                    .execute(&self.pool)
                    .await
                    .map_err(db_err)?;
            }
        }
        Ok(())
    }

    fn image_row(r: &AnyRow) -> Result<Image> {
        let placement: String = r.try_get("placement").map_err(db_err)?;
        Ok(Image {
            name: r.try_get("name").map_err(db_err)?,
            description: r.try_get("description").map_err(db_err)?,
            os: r.try_get("os").map_err(db_err)?,
            size_bytes: to_u64(r.try_get("size_bytes").map_err(db_err)?),
            placement: from_json("placement", &placement)?,
        })
    }

    /// Every image, by name.
    pub async fn images(&self) -> Result<Vec<Image>> {
        let rows = sqlx::query("SELECT name, description, os, size_bytes, placement FROM images ORDER BY name")
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        rows.iter().map(Db::image_row).collect()
    }

    /// One image.
    pub async fn image(&self, name: &str) -> Result<Image> {
        let row = sqlx::query("SELECT name, description, os, size_bytes, placement FROM images WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?
            .ok_or_else(|| Error::not_found("image", name))?;
        Db::image_row(&row)
    }

    /// Removes an image's record and copies.
    pub async fn delete_image(&self, name: &str) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        let n = sqlx::query("DELETE FROM images WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?
            .rows_affected();
        if n == 0 {
            return Err(Error::not_found("image", name));
        }
        sqlx::query("DELETE FROM image_copies WHERE image = $1")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)
    }

    /// Records where a node's copy of an image stands (the row exists once the image is placed).
    pub async fn set_copy_state(&self, copy: &CopyReport, image: &str, node: &str) -> Result<()> {
        let n = sqlx::query(
            "UPDATE image_copies SET state = $3, bytes = $4, reason = $5, updated_at = $6 WHERE image = $1 AND node = $2",
        )
        .bind(image)
        .bind(node)
        .bind(copy.state.as_str())
        .bind(to_i64(copy.bytes))
        .bind(copy.reason.as_deref())
        .bind(self.clock.now())
        .execute(&self.pool)
        .await
        .map_err(db_err)?
        .rows_affected();
        if n == 0 {
            return Err(Error::not_found("image copy", format!("{image} on {node}")));
        }
        Ok(())
    }

    /// Each node's copy of an image.
    pub async fn image_copies(&self, image: &str) -> Result<Vec<ImageCopy>> {
        self.copies_where("image = $1 ORDER BY node", image).await
    }

    /// The copies placed on a node.
    pub async fn node_copies(&self, node: &str) -> Result<Vec<ImageCopy>> {
        self.copies_where("node = $1 ORDER BY image", node).await
    }

    /// Every node's copy of `image` is now older than the master's (a new capture arrived).
    pub async fn mark_copies_stale(&self, image: &str) -> Result<()> {
        sqlx::query("UPDATE image_copies SET state = 'stale', reason = NULL, updated_at = $2 WHERE image = $1")
            .bind(image)
            .bind(self.clock.now())
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn copies_where(&self, condition: &'static str, value: &str) -> Result<Vec<ImageCopy>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT image, node, state, bytes, reason, updated_at FROM image_copies WHERE {condition}"
        )))
        .bind(value)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(|r| {
                let state: String = r.try_get("state").map_err(db_err)?;
                Ok(ImageCopy {
                    image: r.try_get("image").map_err(db_err)?,
                    node: r.try_get("node").map_err(db_err)?,
                    state: CopyState::parse(&state)?,
                    bytes: to_u64(r.try_get("bytes").map_err(db_err)?),
                    reason: r.try_get("reason").map_err(db_err)?,
                    updated_at: r.try_get("updated_at").map_err(db_err)?,
                })
            })
            .collect()
    }

    /// True when a host or an open task uses the image.
    pub async fn image_in_use(&self, name: &str) -> Result<bool> {
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT (SELECT COUNT(*) FROM hosts WHERE image = $1) + (SELECT COUNT(*) FROM tasks WHERE image = $1 AND state IN {OPEN_STATES})"
        )))
        .bind(name)
        .fetch_one(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(n > 0)
    }

    // ---- hosts

    /// Adds a host (validated by the caller). A MAC of another host is a conflict naming it.
    pub async fn create_host(&self, host: &Host) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        sqlx::query(
            "INSERT INTO hosts (name, uuid, address, image, grp, node, primary_disk, kernel_args, inventory, created_at,
                search, layout) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(&host.name)
        .bind(&host.uuid)
        .bind(host.address.map(|a| a.to_string()))
        .bind(&host.image)
        .bind(&host.group)
        .bind(&host.node)
        .bind(&host.primary_disk)
        .bind(&host.kernel_args)
        .bind(json_text(&host.inventory)?)
        .bind(self.clock.now())
        .bind(search_text(host))
        .bind(host.layout.as_str())
        .execute(&mut *tx)
        .await
        .map_err(unique("host", &host.name))?;
        Db::insert_macs(&mut tx, host).await?;
        tx.commit().await.map_err(db_err)
    }

    async fn insert_macs(tx: &mut sqlx::Transaction<'_, sqlx::Any>, host: &Host) -> Result<()> {
        for (pos, mac) in host.macs.iter().enumerate() {
            sqlx::query("INSERT INTO host_macs (mac, host, pos) VALUES ($1, $2, $3)")
                .bind(mac)
                .bind(&host.name)
                .bind(i64::try_from(pos).unwrap_or(i64::MAX))
                .execute(&mut **tx)
                .await
                .map_err(unique("mac", mac))?;
        }
        Ok(())
    }

    /// Replaces a host's record (validated by the caller).
    pub async fn update_host(&self, host: &Host) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        let n = sqlx::query(
            "UPDATE hosts SET uuid = $2, address = $3, image = $4, grp = $5, node = $6, primary_disk = $7,
             kernel_args = $8, inventory = $9, search = $10, layout = $11 WHERE name = $1",
        )
        .bind(&host.name)
        .bind(&host.uuid)
        .bind(host.address.map(|a| a.to_string()))
        .bind(&host.image)
        .bind(&host.group)
        .bind(&host.node)
        .bind(&host.primary_disk)
        .bind(&host.kernel_args)
        .bind(json_text(&host.inventory)?)
        .bind(search_text(host))
        .bind(host.layout.as_str())
        .execute(&mut *tx)
        .await
        .map_err(db_err)?
        .rows_affected();
        if n == 0 {
            return Err(Error::not_found("host", &host.name));
        }
        sqlx::query("DELETE FROM host_macs WHERE host = $1")
            .bind(&host.name)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        Db::insert_macs(&mut tx, host).await?;
        tx.commit().await.map_err(db_err)
    }

    /// Stores what the agent found on the host.
    pub async fn set_inventory(&self, host: &str, inventory: &serde_json::Value) -> Result<()> {
        let mut record = self.host(host).await?;
        record.inventory = inventory.clone();
        sqlx::query("UPDATE hosts SET inventory = $2, search = $3 WHERE name = $1")
            .bind(host)
            .bind(json_text(inventory)?)
            .bind(search_text(&record))
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    /// Fills the search text of hosts stored before it existed, a batch at a time.
    async fn fill_host_search(&self) -> Result<()> {
        loop {
            let names: Vec<String> = sqlx::query_scalar("SELECT name FROM hosts WHERE search IS NULL LIMIT 500")
                .fetch_all(&self.pool)
                .await
                .map_err(db_err)?;
            if names.is_empty() {
                return Ok(());
            }
            for name in names {
                let host = self.host(&name).await?;
                sqlx::query("UPDATE hosts SET search = $2 WHERE name = $1")
                    .bind(&name)
                    .bind(search_text(&host))
                    .execute(&self.pool)
                    .await
                    .map_err(db_err)?;
            }
        }
    }

    /// The hosts `filter` (SQL over `hosts`, `$1`... bound to `args`) selects, by name, at most
    /// `limit`, each with its MACs.
    async fn hosts_where(&self, filter: &str, args: &[String], limit: Option<u32>) -> Result<Vec<Host>> {
        let limit = limit.map(|n| format!("LIMIT {n}")).unwrap_or_default();
        let sql = format!(
            "SELECT h.name, h.uuid, h.address, h.image, h.grp, h.node, h.primary_disk, h.kernel_args, h.inventory,
                    h.layout, m.mac
             FROM (SELECT * FROM hosts {filter} ORDER BY name {limit}) h LEFT JOIN host_macs m ON m.host = h.name
             ORDER BY h.name, m.pos"
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for arg in args {
            query = query.bind(arg.clone());
        }
        let rows = query.fetch_all(&self.pool).await.map_err(db_err)?;
        let mut hosts: Vec<Host> = Vec::new();
        for r in &rows {
            let name: String = r.try_get("name").map_err(db_err)?;
            let mac: Option<String> = r.try_get("mac").map_err(db_err)?;
            if let Some(last) = hosts.last_mut().filter(|h| h.name == name) {
                last.macs.extend(mac);
                continue;
            }
            let address: Option<String> = r.try_get("address").map_err(db_err)?;
            let inventory: String = r.try_get("inventory").map_err(db_err)?;
            let layout: String = r.try_get("layout").map_err(db_err)?;
            hosts.push(Host {
                name,
                macs: mac.into_iter().collect(),
                uuid: r.try_get("uuid").map_err(db_err)?,
                address: address.and_then(|a| a.parse::<Ipv4Addr>().ok()),
                image: r.try_get("image").map_err(db_err)?,
                group: r.try_get("grp").map_err(db_err)?,
                node: r.try_get("node").map_err(db_err)?,
                primary_disk: r.try_get("primary_disk").map_err(db_err)?,
                kernel_args: r.try_get("kernel_args").map_err(db_err)?,
                inventory: from_json("inventory", &inventory)?,
                layout: stored_layout(&layout)?,
            });
        }
        Ok(hosts)
    }

    /// Every host, by name.
    pub async fn hosts(&self) -> Result<Vec<Host>> {
        self.hosts_where("", &[], None).await
    }

    /// A page of the hosts `query` selects, by name: at most `limit`, and one more when there
    /// are more (the caller's sign of a next page).
    pub async fn hosts_page(&self, query: &HostQuery, limit: u32) -> Result<Vec<Host>> {
        let (filter, args) = host_filter(query, true);
        self.hosts_where(&filter, &args, Some(limit + 1)).await
    }

    /// How many hosts `query` selects (all pages).
    pub async fn hosts_count(&self, query: &HostQuery) -> Result<u64> {
        let (filter, args) = host_filter(query, false);
        let mut count =
            sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM hosts {filter}")));
        for arg in args {
            count = count.bind(arg);
        }
        let n = count.fetch_one(&self.pool).await.map_err(db_err)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Marks a host as registered from the boot menu and waiting for approval, or approved.
    pub async fn set_host_pending(&self, host: &str, pending: bool) -> Result<()> {
        sqlx::query("UPDATE hosts SET pending = $2 WHERE name = $1")
            .bind(host)
            .bind(i64::from(pending))
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    /// Each node's load: tasks holding slots (multicast tasks hold none), agents waiting in line,
    /// its disk's free bytes.
    pub async fn node_loads(&self) -> Result<HashMap<String, NodeLoad>> {
        let rows = sqlx::query(
            "SELECT n.name, n.free_bytes,
                (SELECT COUNT(*) FROM tasks t WHERE t.node = n.name AND t.state = 'in_progress'
                    AND t.kind <> 'multicast') AS busy,
                (SELECT COUNT(*) FROM tasks t WHERE t.node = n.name AND t.state = 'waiting_for_slot') AS waiting
             FROM nodes n",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(|r| {
                let count = |column: &str| -> Result<u32> {
                    let n: i64 = r.try_get(column).map_err(db_err)?;
                    Ok(u32::try_from(n).unwrap_or(u32::MAX))
                };
                let free: Option<i64> = r.try_get("free_bytes").map_err(db_err)?;
                Ok((
                    r.try_get("name").map_err(db_err)?,
                    NodeLoad {
                        busy: count("busy")?,
                        waiting: count("waiting")?,
                        free_bytes: free.and_then(|f| u64::try_from(f).ok()),
                    },
                ))
            })
            .collect()
    }

    /// Tasks finished per day (UTC) since `since`, by day.
    pub async fn tasks_per_day(&self, since: Millis) -> Result<Vec<DayCount>> {
        let rows = sqlx::query(
            "SELECT updated_at / 86400000 AS day,
                    SUM(CASE WHEN state = 'complete' THEN 1 ELSE 0 END) AS ok,
                    SUM(CASE WHEN state = 'failed' THEN 1 ELSE 0 END) AS bad
             FROM tasks WHERE updated_at >= $1 AND state IN ('complete', 'failed')
             GROUP BY updated_at / 86400000 ORDER BY day",
        )
        .bind(since)
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(|r| {
                let n = |c: &str| -> Result<u64> {
                    let v: i64 = r.try_get(c).map_err(db_err)?;
                    Ok(u64::try_from(v).unwrap_or(0))
                };
                Ok(DayCount {
                    day: r.try_get("day").map_err(db_err)?,
                    complete: n("ok")?,
                    failed: n("bad")?,
                })
            })
            .collect()
    }

    /// The latest state changes of all tasks, newest first.
    pub async fn recent_events(&self, limit: u32) -> Result<Vec<(TaskEvent, String)>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT e.id, e.task, e.at, e.from_state, e.to_state, e.detail, t.host
             FROM task_events e JOIN tasks t ON t.id = e.task ORDER BY e.id DESC LIMIT {limit}"
        )))
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(|r| {
                Ok((
                    TaskEvent {
                        id: r.try_get("id").map_err(db_err)?,
                        task: r.try_get("task").map_err(db_err)?,
                        at: r.try_get("at").map_err(db_err)?,
                        from: r.try_get("from_state").map_err(db_err)?,
                        to: r.try_get("to_state").map_err(db_err)?,
                        detail: r.try_get("detail").map_err(db_err)?,
                    },
                    r.try_get("host").map_err(db_err)?,
                ))
            })
            .collect()
    }

    /// Whether a host waits for approval ([`Db::set_host_pending`]).
    pub async fn host_pending(&self, host: &str) -> Result<bool> {
        let pending: Option<i64> = sqlx::query_scalar("SELECT pending FROM hosts WHERE name = $1")
            .bind(host)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        pending.map(|p| p != 0).ok_or_else(|| Error::not_found("host", host))
    }

    /// For each of these hosts: when a deploy or capture of it last completed, and when its
    /// agent was last heard from.
    pub async fn host_activity(&self, hosts: &[String]) -> Result<HashMap<String, HostActivity>> {
        if hosts.is_empty() {
            return Ok(HashMap::new());
        }
        let marks: Vec<String> = (1..=hosts.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "SELECT host, MAX(CASE WHEN state = 'complete' AND kind IN ('deploy', 'capture') THEN updated_at END) AS imaged,
                    MAX(last_contact) AS seen
             FROM tasks WHERE host IN ({}) GROUP BY host",
            marks.join(", ")
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for host in hosts {
            query = query.bind(host);
        }
        let rows = query.fetch_all(&self.pool).await.map_err(db_err)?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("host").map_err(db_err)?,
                    HostActivity {
                        imaged: r.try_get("imaged").map_err(db_err)?,
                        seen: r.try_get("seen").map_err(db_err)?,
                    },
                ))
            })
            .collect()
    }

    /// A page of images by name (see [`Db::hosts_page`] for the extra one).
    pub async fn images_page(&self, query: &ImageQuery, limit: u32) -> Result<Vec<Image>> {
        let mut sql = String::from("SELECT name, description, os, size_bytes, placement FROM images WHERE 1 = 1");
        let mut args = Vec::new();
        if let Some(after) = &query.after {
            args.push(after.clone());
            sql.push_str(&format!(" AND name > ${}", args.len()));
        }
        if let Some(q) = query.q.as_deref().filter(|q| !q.is_empty()) {
            args.push(like_pattern(q));
            let n = args.len();
            sql.push_str(&format!(
                " AND (LOWER(name) LIKE ${n} ESCAPE '\\' OR LOWER(os) LIKE ${n} ESCAPE '\\' OR LOWER(description) LIKE ${n} ESCAPE '\\')"
            ));
        }
        sql.push_str(&format!(" ORDER BY name LIMIT {}", limit + 1));
        let mut rows = sqlx::query(sqlx::AssertSqlSafe(sql));
        for arg in args {
            rows = rows.bind(arg);
        }
        let rows = rows.fetch_all(&self.pool).await.map_err(db_err)?;
        rows.iter().map(Db::image_row).collect()
    }

    /// The hosts of a group.
    pub async fn hosts_in_group(&self, group: &str) -> Result<Vec<Host>> {
        self.hosts_where("WHERE grp = $1", &[group.to_string()], None).await
    }

    /// One host.
    pub async fn host(&self, name: &str) -> Result<Host> {
        self.hosts_where("WHERE name = $1", &[name.to_string()], None)
            .await?
            .into_iter()
            .next()
            .ok_or_else(|| Error::not_found("host", name))
    }

    /// The host with this MAC (canonical form).
    pub async fn host_by_mac(&self, mac: &str) -> Result<Host> {
        let name: Option<String> = sqlx::query_scalar("SELECT host FROM host_macs WHERE mac = $1")
            .bind(mac)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        match name {
            Some(name) => self.host(&name).await,
            None => Err(Error::not_found("host with mac", mac)),
        }
    }

    /// What a check-in needs, in one query: the host with this MAC (canonical form) and its task
    /// that is not over, if any. `None` when no host has the MAC.
    pub async fn check_in_lookup(&self, mac: &str) -> Result<Option<MacLookup>> {
        let columns: Vec<String> = Db::TASK_COLUMNS.split(", ").map(|c| format!("t.{c}")).collect();
        let sql = format!(
            "SELECT h.name AS host_name, h.uuid AS host_uuid, h.address AS host_address, h.node AS host_node, {}
             FROM host_macs m JOIN hosts h ON h.name = m.host
             LEFT JOIN tasks t ON t.host = h.name AND t.state IN {OPEN_STATES}
             WHERE m.mac = $1 ORDER BY t.id DESC LIMIT 1",
            columns.join(", ")
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(mac)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?;
        let Some(r) = row else { return Ok(None) };
        let address: Option<String> = r.try_get("host_address").map_err(db_err)?;
        let task = match r.try_get::<Option<i64>, _>("id").map_err(db_err)? {
            Some(_) => Some(Db::task_row(&r)?),
            None => None,
        };
        Ok(Some(MacLookup {
            host: r.try_get("host_name").map_err(db_err)?,
            uuid: r.try_get("host_uuid").map_err(db_err)?,
            address: address.and_then(|a| a.parse::<Ipv4Addr>().ok()),
            node: r.try_get("host_node").map_err(db_err)?,
            task,
        }))
    }

    /// Stores a host's UUID when it has none yet.
    pub async fn set_host_uuid(&self, host: &str, uuid: &str) -> Result<()> {
        // The UUID (canonical: lower case) is searched too (see `search_text`).
        sqlx::query(
            "UPDATE hosts SET uuid = $2, search = COALESCE(search, '') || ' ' || $2
             WHERE name = $1 AND uuid IS NULL",
        )
        .bind(host)
        .bind(uuid)
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    /// Removes a host and its MACs (its finished tasks stay in the history).
    pub async fn delete_host(&self, name: &str) -> Result<()> {
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        let n = sqlx::query("DELETE FROM hosts WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?
            .rows_affected();
        if n == 0 {
            return Err(Error::not_found("host", name));
        }
        sqlx::query("DELETE FROM host_macs WHERE host = $1")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)
    }

    // ---- tasks

    /// Inserts a task in state queued and its first history event; returns it.
    pub async fn insert_task(
        &self,
        new: &NewTask,
        host: &str,
        node: Option<&str>,
        group: Option<&str>,
        schedule: Option<i64>,
    ) -> Result<Task> {
        let now = self.clock.now();
        let mut tx = self.pool.begin().await.map_err(db_err)?;
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO tasks (kind, host, image, node, grp, schedule, after_task, wake, layout, state, percent, bytes,
                                rate, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'queued', 0, 0, 0, $10, $10) RETURNING id",
        )
        .bind(new.kind.as_str())
        .bind(host)
        .bind(&new.image)
        .bind(node)
        .bind(group)
        .bind(schedule)
        .bind(new.after.as_str())
        .bind(i64::from(new.wake))
        .bind(new.layout.map(LayoutMode::as_str))
        .bind(now)
        .fetch_one(&mut *tx)
        .await
        .map_err(db_err)?;
        Db::insert_event(&mut tx, id, now, None, "queued", None).await?;
        tx.commit().await.map_err(db_err)?;
        self.task(id).await
    }

    async fn insert_event(
        tx: &mut sqlx::Transaction<'_, sqlx::Any>,
        task: TaskId,
        at: Millis,
        from: Option<&str>,
        to: &str,
        detail: Option<&str>,
    ) -> Result<()> {
        sqlx::query("INSERT INTO task_events (task, at, from_state, to_state, detail) VALUES ($1, $2, $3, $4, $5)")
            .bind(task)
            .bind(at)
            .bind(from)
            .bind(to)
            .bind(detail)
            .execute(&mut **tx)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    const TASK_COLUMNS: &str = "id, kind, host, image, node, grp, schedule, after_task, wake, layout, state, percent, bytes, rate, reason, ticket, created_at, updated_at";

    fn task_row(r: &AnyRow) -> Result<Task> {
        let kind: String = r.try_get("kind").map_err(db_err)?;
        let after: String = r.try_get("after_task").map_err(db_err)?;
        let layout: Option<String> = r.try_get("layout").map_err(db_err)?;
        let state: String = r.try_get("state").map_err(db_err)?;
        let state = match state.as_str() {
            "queued" => TaskState::Queued,
            "checked_in" => TaskState::CheckedIn,
            "waiting_for_slot" => TaskState::WaitingForSlot,
            "in_progress" => TaskState::InProgress {
                percent: r.try_get("percent").map_err(db_err)?,
                bytes: to_u64(r.try_get("bytes").map_err(db_err)?),
                rate: to_u64(r.try_get("rate").map_err(db_err)?),
            },
            "complete" => TaskState::Complete,
            "failed" => TaskState::Failed {
                reason: r
                    .try_get::<Option<String>, _>("reason")
                    .map_err(db_err)?
                    .unwrap_or_default(),
            },
            "cancelled" => TaskState::Cancelled,
            other => return Err(Error::Database(format!("unknown task state {other:?}"))),
        };
        Ok(Task {
            id: r.try_get("id").map_err(db_err)?,
            kind: TaskKind::parse(&kind)?,
            host: r.try_get("host").map_err(db_err)?,
            image: r.try_get("image").map_err(db_err)?,
            node: r.try_get("node").map_err(db_err)?,
            group: r.try_get("grp").map_err(db_err)?,
            schedule: r.try_get("schedule").map_err(db_err)?,
            after: After::parse(&after)?,
            wake: r.try_get::<i64, _>("wake").map_err(db_err)? != 0,
            layout: layout.as_deref().map(stored_layout).transpose()?,
            state,
            ticket: r.try_get("ticket").map_err(db_err)?,
            created_at: r.try_get("created_at").map_err(db_err)?,
            updated_at: r.try_get("updated_at").map_err(db_err)?,
        })
    }

    /// One task.
    pub async fn task(&self, id: TaskId) -> Result<Task> {
        let sql = format!("SELECT {} FROM tasks WHERE id = $1", Db::TASK_COLUMNS);
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_err)?
            .ok_or_else(|| Error::not_found("task", id))?;
        Db::task_row(&row)
    }

    /// Tasks, newest first, optionally of one state, host or node.
    pub async fn tasks(&self, filter: &TaskFilter) -> Result<Vec<Task>> {
        let mut sql = format!("SELECT {} FROM tasks WHERE 1 = 1", Db::TASK_COLUMNS);
        let mut args = Vec::new();
        let kind = filter.kind.map(|k| k.as_str().to_string());
        for (column, value) in [
            ("state", &filter.state),
            ("host", &filter.host),
            ("node", &filter.node),
            ("kind", &kind),
            ("image", &filter.image),
            ("grp", &filter.group),
        ] {
            if let Some(value) = value {
                args.push(value.clone());
                sql.push_str(&format!(" AND {column} = ${}", args.len()));
            }
        }
        if filter.open_only {
            sql.push_str(&format!(" AND state IN {OPEN_STATES}"));
        }
        // Numbers, not text: written into the statement as parsed.
        if let Some(since) = filter.since {
            sql.push_str(&format!(" AND updated_at >= {since}"));
        }
        if let Some(after) = filter.after {
            sql.push_str(&format!(" AND id < {after}"));
        }
        sql.push_str(" ORDER BY id DESC");
        if let Some(limit) = filter.limit {
            sql.push_str(&format!(" LIMIT {limit}"));
        }
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for arg in args {
            query = query.bind(arg);
        }
        let rows = query.fetch_all(&self.pool).await.map_err(db_err)?;
        rows.iter().map(Db::task_row).collect()
    }

    /// The host's task that is not over, if any.
    pub async fn open_task_for_host(&self, host: &str) -> Result<Option<Task>> {
        let filter = TaskFilter {
            host: Some(host.to_string()),
            open_only: true,
            ..TaskFilter::default()
        };
        Ok(self.tasks(&filter).await?.into_iter().next())
    }

    /// Stores committed decisions in one transaction: each task's row as given, and its history
    /// rows. A row whose state is no longer the change's `from` (someone changed it since it was
    /// read) makes the whole write a no-op: returns false.
    pub async fn write_changes(&self, changes: &[TaskChange<'_>], durable: bool) -> Result<bool> {
        if changes.is_empty() {
            return Ok(true);
        }
        let sqlite = self.backend == Backend::Sqlite;
        let mut conn = self.pool.acquire().await.map_err(db_err)?;
        if durable && sqlite {
            // Per connection and outside a transaction; NORMAL again below (a connection left
            // at FULL by a dropped call is only slower).
            sqlx::query("PRAGMA synchronous = FULL")
                .execute(&mut *conn)
                .await
                .map_err(db_err)?;
        }
        let written = self.write_changes_on(&mut conn, changes, durable && !sqlite).await;
        if durable && sqlite {
            sqlx::query("PRAGMA synchronous = NORMAL")
                .execute(&mut *conn)
                .await
                .map_err(db_err)?;
        }
        written
    }

    async fn write_changes_on(
        &self,
        conn: &mut sqlx::AnyConnection,
        changes: &[TaskChange<'_>],
        sync_commit: bool,
    ) -> Result<bool> {
        let mut tx = sqlx::Connection::begin(conn).await.map_err(db_err)?;
        if sync_commit {
            sqlx::query("SET LOCAL synchronous_commit = on")
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
        }
        for change in changes {
            let task = change.task;
            let (percent, bytes, rate) = match &task.state {
                TaskState::InProgress { percent, bytes, rate } => (*percent, to_i64(*bytes), to_i64(*rate)),
                _ => (0.0, 0, 0),
            };
            let reason = match &task.state {
                TaskState::Failed { reason } => Some(reason.as_str()),
                _ => None,
            };
            let n = sqlx::query(
                "UPDATE tasks SET state = $2, percent = $3, bytes = $4, rate = $5, reason = $6, ticket = $7,
                 node = $8, last_contact = $9, updated_at = $10 WHERE id = $1 AND state = $11",
            )
            .bind(task.id)
            .bind(task.state.name())
            .bind(percent)
            .bind(bytes)
            .bind(rate)
            .bind(reason)
            .bind(task.ticket)
            .bind(task.node.as_deref())
            .bind(change.contact)
            .bind(task.updated_at)
            .bind(change.from)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?
            .rows_affected();
            if n != 1 {
                tx.rollback().await.map_err(db_err)?;
                return Ok(false);
            }
        }
        let events: Vec<(&TaskChange<'_>, &TaskEventRow)> = changes
            .iter()
            .flat_map(|c| c.events.iter().map(move |e| (c, e)))
            .collect();
        // At most 1,000 rows (5,000 parameters) a statement: SQLite allows 32,766 parameters.
        for events in events.chunks(1000) {
            let mut sql = String::from("INSERT INTO task_events (task, at, from_state, to_state, detail) VALUES ");
            for i in 0..events.len() {
                let b = i * 5;
                if i > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&format!("(${}, ${}, ${}, ${}, ${})", b + 1, b + 2, b + 3, b + 4, b + 5));
            }
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (change, event) in events.iter().copied() {
                query = query
                    .bind(change.task.id)
                    .bind(change.task.updated_at)
                    .bind(event.from)
                    .bind(event.to)
                    .bind(event.detail.clone());
            }
            query.execute(&mut *tx).await.map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)?;
        Ok(true)
    }

    /// Writes what changed in running or waiting tasks without a change of state (progress, the
    /// agent's last contact): one statement per 100 tasks. A task whose state is no longer the
    /// one given is left alone (its state change was written with newer values).
    pub async fn write_touches(&self, touched: &[(&Task, Millis)]) -> Result<()> {
        for part in touched.chunks(100) {
            let mut sql = String::from(
                "UPDATE tasks SET percent = v.column3, bytes = v.column4, rate = v.column5, last_contact = v.column6,
                 updated_at = v.column7 FROM (VALUES ",
            );
            for i in 0..part.len() {
                let b = i * 7;
                if i > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&format!(
                    "(${}, ${}, ${}, ${}, ${}, ${}, ${})",
                    b + 1,
                    b + 2,
                    b + 3,
                    b + 4,
                    b + 5,
                    b + 6,
                    b + 7
                ));
            }
            sql.push_str(") AS v WHERE tasks.id = v.column1 AND tasks.state = v.column2");
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (task, contact) in part {
                let (percent, bytes, rate) = match &task.state {
                    TaskState::InProgress { percent, bytes, rate } => (*percent, to_i64(*bytes), to_i64(*rate)),
                    _ => (0.0, 0, 0),
                };
                query = query
                    .bind(task.id)
                    .bind(task.state.name())
                    .bind(percent)
                    .bind(bytes)
                    .bind(rate)
                    .bind(*contact)
                    .bind(task.updated_at);
            }
            query.execute(&self.pool).await.map_err(db_err)?;
        }
        Ok(())
    }

    /// A task's history, oldest first: events after `after`, at most `limit`.
    pub async fn task_events(&self, task: TaskId, after: i64, limit: u32) -> Result<Vec<TaskEvent>> {
        let rows = sqlx::query(
            "SELECT id, task, at, from_state, to_state, detail FROM task_events WHERE task = $1 AND id > $2
             ORDER BY id LIMIT $3",
        )
        .bind(task)
        .bind(after)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(db_err)?;
        rows.iter()
            .map(|r| {
                Ok(TaskEvent {
                    id: r.try_get("id").map_err(db_err)?,
                    task: r.try_get("task").map_err(db_err)?,
                    at: r.try_get("at").map_err(db_err)?,
                    from: r.try_get("from_state").map_err(db_err)?,
                    to: r.try_get("to_state").map_err(db_err)?,
                    detail: r.try_get("detail").map_err(db_err)?,
                })
            })
            .collect()
    }

    /// The tasks of `node` standing in its line (checked in, waiting, holding a slot), each with
    /// its agent's last contact (0 when none was stored).
    pub async fn line_tasks(&self, node: &str) -> Result<Vec<(Task, Millis)>> {
        let sql = format!(
            "SELECT {}, last_contact FROM tasks WHERE node = $1 AND state IN ('checked_in', 'waiting_for_slot', 'in_progress')",
            Db::TASK_COLUMNS
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(node)
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        rows.iter()
            .map(|r| {
                let contact: Option<i64> = r.try_get("last_contact").map_err(db_err)?;
                Ok((Db::task_row(r)?, contact.unwrap_or(0)))
            })
            .collect()
    }

    /// The next ticket: after every ticket handed out.
    pub async fn next_ticket(&self) -> Result<i64> {
        let max: Option<i64> = sqlx::query_scalar("SELECT MAX(ticket) FROM tasks")
            .fetch_one(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(max.unwrap_or(0) + 1)
    }

    // ---- schedules

    /// Adds a schedule; returns its id.
    pub async fn create_schedule(&self, schedule: &Schedule) -> Result<i64> {
        sqlx::query_scalar("INSERT INTO schedules (spec, next_run, created_at) VALUES ($1, $2, $3) RETURNING id")
            .bind(json_text(schedule)?)
            .bind(schedule.next_run)
            .bind(self.clock.now())
            .fetch_one(&self.pool)
            .await
            .map_err(db_err)
    }

    // ---- wakes

    /// Stores a wake request for `node` to send; returns it.
    pub async fn insert_wake(&self, host: &str, macs: &[String], node: &str, task: Option<TaskId>) -> Result<Wake> {
        let now = self.clock.now();
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO wakes (host, macs, node, task, requested_at) VALUES ($1, $2, $3, $4, $5) RETURNING id",
        )
        .bind(host)
        .bind(json_text(&macs)?)
        .bind(node)
        .bind(task)
        .bind(now)
        .fetch_one(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(Wake {
            id,
            host: host.to_string(),
            macs: macs.to_vec(),
            node: node.to_string(),
            task,
            requested_at: now,
        })
    }

    /// Removes and returns the wake requests of `node`, oldest first (each is returned once,
    /// however many callers ask at the same time).
    pub async fn take_wakes(&self, node: &str) -> Result<Vec<Wake>> {
        let rows = sqlx::query("DELETE FROM wakes WHERE node = $1 RETURNING id, host, macs, node, task, requested_at")
            .bind(node)
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        let mut wakes = rows
            .iter()
            .map(|r| {
                let macs: String = r.try_get("macs").map_err(db_err)?;
                Ok(Wake {
                    id: r.try_get("id").map_err(db_err)?,
                    host: r.try_get("host").map_err(db_err)?,
                    macs: from_json("wake macs", &macs)?,
                    node: r.try_get("node").map_err(db_err)?,
                    task: r.try_get("task").map_err(db_err)?,
                    requested_at: r.try_get("requested_at").map_err(db_err)?,
                })
            })
            .collect::<Result<Vec<Wake>>>()?;
        wakes.sort_by_key(|w| w.id);
        Ok(wakes)
    }

    /// Every schedule.
    pub async fn schedules(&self) -> Result<Vec<Schedule>> {
        let rows = sqlx::query("SELECT id, spec, next_run FROM schedules ORDER BY id")
            .fetch_all(&self.pool)
            .await
            .map_err(db_err)?;
        rows.iter()
            .map(|r| {
                let spec: String = r.try_get("spec").map_err(db_err)?;
                let mut s: Schedule = from_json("schedule", &spec)?;
                s.id = r.try_get("id").map_err(db_err)?;
                s.next_run = r.try_get("next_run").map_err(db_err)?;
                Ok(s)
            })
            .collect()
    }

    /// Sets when a schedule fires next (none: never again).
    pub async fn set_next_run(&self, id: i64, next: Option<Millis>) -> Result<()> {
        sqlx::query("UPDATE schedules SET next_run = $2 WHERE id = $1")
            .bind(id)
            .bind(next)
            .execute(&self.pool)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    /// Removes a schedule.
    pub async fn delete_schedule(&self, id: i64) -> Result<()> {
        let n = sqlx::query("DELETE FROM schedules WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(db_err)?
            .rows_affected();
        if n == 0 {
            return Err(Error::not_found("schedule", id));
        }
        Ok(())
    }

    // ---- audit

    /// Records one call.
    pub async fn insert_audit(&self, entry: &AuditEntry) -> Result<()> {
        sqlx::query(
            "INSERT INTO audit (at, actor, action, target, address, status, result) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(entry.at)
        .bind(&entry.actor)
        .bind(&entry.action)
        .bind(&entry.target)
        .bind(entry.address.as_deref())
        .bind(i64::from(entry.status))
        .bind(&entry.result)
        .execute(&self.pool)
        .await
        .map_err(db_err)?;
        Ok(())
    }

    /// Audit entries `query` selects, newest first, at most `limit`.
    pub async fn audit(&self, query: &AuditQuery, limit: u32) -> Result<Vec<AuditEntry>> {
        let mut sql =
            String::from("SELECT id, at, actor, action, target, address, status, result FROM audit WHERE 1 = 1");
        let mut args = Vec::new();
        if let Some(actor) = &query.actor {
            args.push(actor.clone());
            sql.push_str(&format!(" AND actor = ${}", args.len()));
        }
        if let Some(q) = query.q.as_deref().filter(|q| !q.is_empty()) {
            args.push(like_pattern(q));
            let n = args.len();
            sql.push_str(&format!(
                " AND (LOWER(action) LIKE ${n} ESCAPE '\\' OR LOWER(target) LIKE ${n} ESCAPE '\\')"
            ));
        }
        if query.failed {
            sql.push_str(" AND status >= 400");
        }
        // Numbers, not text: written into the statement as parsed.
        if let Some(since) = query.since {
            sql.push_str(&format!(" AND at >= {since}"));
        }
        if let Some(after) = query.after {
            sql.push_str(&format!(" AND id < {after}"));
        }
        sql.push_str(&format!(" ORDER BY id DESC LIMIT {limit}"));
        let mut rows = sqlx::query(sqlx::AssertSqlSafe(sql));
        for arg in args {
            rows = rows.bind(arg);
        }
        let rows = rows.fetch_all(&self.pool).await.map_err(db_err)?;
        rows.iter()
            .map(|r| {
                let status: i64 = r.try_get("status").map_err(db_err)?;
                Ok(AuditEntry {
                    id: r.try_get("id").map_err(db_err)?,
                    at: r.try_get("at").map_err(db_err)?,
                    actor: r.try_get("actor").map_err(db_err)?,
                    action: r.try_get("action").map_err(db_err)?,
                    target: r.try_get("target").map_err(db_err)?,
                    address: r.try_get("address").map_err(db_err)?,
                    status: u16::try_from(status).unwrap_or(0),
                    result: r.try_get("result").map_err(db_err)?,
                })
            })
            .collect()
    }
}

/// A host found by MAC, with its open task ([`Db::check_in_lookup`]).
#[derive(Debug, Clone, PartialEq)]
pub struct MacLookup {
    /// Host name.
    pub host: String,
    /// Its SMBIOS UUID, when known.
    pub uuid: Option<String>,
    /// Its address, when set.
    pub address: Option<Ipv4Addr>,
    /// The node set on it.
    pub node: Option<String>,
    /// Its task that is not over.
    pub task: Option<Task>,
}

/// A committed decision about one task, for [`Db::write_changes`].
#[derive(Debug, Clone)]
pub struct TaskChange<'a> {
    /// The task as it is now (its `updated_at` is also the time of its history rows).
    pub task: &'a Task,
    /// The state name its row holds until now.
    pub from: &'static str,
    /// The agent's last contact.
    pub contact: Option<Millis>,
    /// History rows, in order.
    pub events: Vec<TaskEventRow>,
}

/// One history row of a [`TaskChange`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskEventRow {
    /// State before.
    pub from: &'static str,
    /// State after.
    pub to: &'static str,
    /// Why, when there is more to say.
    pub detail: Option<String>,
}

/// A LIKE pattern matching text that contains `q` (lower case; `%`, `_` and `\` taken
/// literally).
/// The `WHERE` of the hosts `query` selects (after its cursor too, when `paged`), and its
/// arguments.
fn host_filter(query: &HostQuery, paged: bool) -> (String, Vec<String>) {
    let mut conditions = Vec::new();
    let mut args = Vec::new();
    let after = if paged { &query.after } else { &None };
    for (column, value) in [
        ("name >", after),
        ("grp =", &query.group),
        ("node =", &query.node),
        ("image =", &query.image),
    ] {
        if let Some(value) = value {
            args.push(value.clone());
            conditions.push(format!("{column} ${}", args.len()));
        }
    }
    if query.pending {
        conditions.push("pending = 1".into());
    }
    if let Some(q) = query.q.as_deref().filter(|q| !q.is_empty()) {
        args.push(like_pattern(q));
        let n = args.len();
        // A MAC is searched in its stored form whichever way it was typed.
        args.push(like_pattern(&q.replace('-', ":")));
        conditions.push(format!(
            "(search LIKE ${n} ESCAPE '\\' OR search LIKE ${} ESCAPE '\\')",
            n + 1
        ));
    }
    let filter = if conditions.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", conditions.join(" AND "))
    };
    (filter, args)
}

/// Tasks that finished on one day ([`Db::tasks_per_day`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DayCount {
    /// The day: its number since 1970-01-01 (UTC).
    pub day: i64,
    /// Tasks that completed.
    pub complete: u64,
    /// Tasks that failed.
    pub failed: u64,
}

/// A node's load ([`Db::node_loads`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeLoad {
    /// Tasks holding slots.
    pub busy: u32,
    /// Agents waiting for a slot.
    pub waiting: u32,
    /// Free bytes of its store's disk, from its last heartbeat.
    pub free_bytes: Option<u64>,
}

/// What a host search (`q`) looks in, lower case, one short column: its name, MACs, address,
/// UUID and the machine's DMI strings (vendor, product, serial...). One LIKE over it costs a
/// few ms at 20,000 hosts where the name, the MAC table and the whole inventory JSON cost 40.
fn search_text(host: &Host) -> String {
    let mut parts: Vec<String> = vec![host.name.clone()];
    parts.extend(host.macs.iter().cloned());
    parts.extend(host.address.map(|a| a.to_string()));
    parts.extend(host.uuid.clone());
    if let Some(dmi) = host.inventory.get("dmi").and_then(|d| d.as_object()) {
        parts.extend(dmi.values().filter_map(|v| v.as_str()).map(str::to_string));
    }
    parts.join(" ").to_lowercase()
}

/// When a host was last imaged and last heard from ([`Db::host_activity`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostActivity {
    /// The last deploy or capture that completed.
    pub imaged: Option<Millis>,
    /// The last contact of its agent.
    pub seen: Option<Millis>,
}

fn like_pattern(q: &str) -> String {
    let mut out = String::from("%");
    for c in q.to_lowercase().chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('%');
    out
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = url.get(scheme + 3..at).unwrap_or("");
            match creds.split_once(':') {
                Some((user, _)) => format!(
                    "{}{user}:***{}",
                    url.get(..scheme + 3).unwrap_or(""),
                    url.get(at..).unwrap_or("")
                ),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}
