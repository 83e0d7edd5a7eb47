//! The control plane: the inventory (hosts, groups, images, nodes), tasks and their slot queue,
//! persistence, and the master's REST API with its client.
//!
//! - [`model`]: serde types and their checks;
//! - [`db`]: sqlx persistence, SQLite by default, PostgreSQL by URL, one SQL for both;
//! - [`tasks`]: the task state machine and the slot decision, without I/O;
//! - [`line`](mod@line): each node's slot line, kept in the master's memory, without I/O;
//! - [`cron`]: cron lines for scheduled tasks;
//! - [`service`]: the master's logic (validation, node choice, check-in, schedules, tokens);
//! - [`master`]: the REST API over [`service`] (axum), with its OpenAPI document;
//! - [`chunks`]: the chunk and manifest service over a store, [`remote`] its client;
//! - [`replicate`]: copying an image between stores, only the chunks the other side lacks;
//! - [`client`]: the API's client, for the CLI and later the agent, the nodes and Python;
//! - [`bootmenu`]: per-host iPXE scripts on a node (the agent for hosts with a task);
//! - [`node`]: the node role of `fog serve` (heartbeats, the tasks of its hosts, cached);
//! - [`wake`]: Wake-on-LAN requests, stored by the master and sent by the host's node.

pub mod bootmenu;
pub mod chunks;
pub mod client;
pub mod cron;
pub mod db;
pub mod gateway;
pub mod line;
pub mod master;
pub mod model;
pub mod node;
pub mod remote;
pub mod replicate;
pub mod service;
pub mod tasks;
pub mod wake;
