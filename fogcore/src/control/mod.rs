//! The control plane: the inventory (hosts, groups, images, nodes), tasks and their slot queue,
//! persistence, and the master's REST API with its client.
//!
//! - [`api`]: what every HTTP server here shares: callers, access rules, the token check, errors on the wire;
//! - [`model`]: serde types and their checks;
//! - [`db`]: sqlx persistence, SQLite by default, PostgreSQL by URL, one SQL for both;
//! - [`tasks`]: the task state machine and the slot decision, without I/O;
//! - [`line`](mod@line): each node's slot line, kept in the master's memory, without I/O;
//! - [`cron`]: cron lines for scheduled tasks;
//! - [`service`]: the master's logic, one file per domain (hosts, images, nodes, tasks, check-in,
//!   schedules, tokens); every handler goes through it;
//! - [`master`]: the REST API over [`service`] (axum), with its OpenAPI document, and
//!   [`master::serve`], the one way to start a master;
//! - [`chunks`]: the chunk and manifest service over a store, [`remote`] its client, [`pipe`]
//!   the bounded byte pipes that stream manifests between their blocking code and HTTP bodies;
//! - [`replicate`]: copying an image between stores, only the chunks the other side lacks;
//! - [`client`]: the API's client, for the CLI and later the agent, the nodes and Python;
//! - [`tokens`]: token texts: new tokens, their stored hashes, task tokens derived from a node's;
//! - [`bootmenu`]: per-host iPXE scripts on a node (the agent for hosts with a task);
//! - [`node`]: the node role of `fog serve` (heartbeats, the tasks of its hosts, cached);
//! - [`web`]: the web front end on the master's listener (pages, sign-in, live progress);
//! - [`wake`]: the node's side of Wake-on-LAN (the master's is in [`service`]).

pub mod api;
pub mod bootmenu;
pub mod chunks;
pub mod client;
pub mod cron;
#[cfg(feature = "master")]
pub mod db;
pub mod gateway;
pub mod line;
#[cfg(feature = "master")]
pub mod master;
pub mod model;
pub mod multicast;
pub mod node;
pub mod openapi;
pub mod pipe;
pub mod remote;
pub mod replicate;
#[cfg(feature = "master")]
pub mod service;
pub mod tasks;
pub mod tokens;
pub mod wake;
#[cfg(feature = "master")]
pub mod web;
