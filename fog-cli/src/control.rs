//! `fog master` and the commands that talk to a master (`fog host|group|node|task`): flags to
//! fogcore's control client, results printed as text or JSON.

use std::net::Ipv4Addr;
use std::path::PathBuf;
#[cfg(feature = "master")]
use std::sync::Arc;

use clap::{Args, Subcommand};
use fogcore::Error;
use fogcore::clock::utc_text;
use fogcore::control::client::Client;
#[cfg(feature = "master")]
use fogcore::control::master::{MasterConfig, MasterTls};
use fogcore::control::model::{
    After, AuditQuery, Group, Host, HostQuery, ImageStatus, LayoutMode, NewTask, NewToken, NewUser, Node, Placement,
    Role, Task, TaskFilter, TaskKind, TaskState, TokenInfo, User, UserUpdate, parse_subnet,
};
#[cfg(feature = "master")]
use fogcore::imaging::replica::ImageStore;
use fogcore::names::{GroupName, HostName, ImageName, NodeName};
use fogcore::net::tls::Trust;
use serde::Serialize;

/// `println!` that ignores a closed stdout.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// Where the master is and the token to show it.
#[derive(Args, Clone)]
pub struct MasterArgs {
    /// The master's URL
    #[arg(long, global = true, env = "FOG_MASTER", default_value = "http://127.0.0.1:8090")]
    master: String,
    /// Bearer token (admin, or a node's)
    #[arg(long, global = true, env = "FOG_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Trust an https:// master whose certificate comes from the CA in this PEM file
    #[arg(long, global = true, env = "FOG_MASTER_CA")]
    master_ca: Option<PathBuf>,
    /// Trust an https:// master whose certificate has this SHA-256 fingerprint (what
    /// `fog master --tls-self-signed` prints)
    #[arg(long, global = true, env = "FOG_MASTER_FINGERPRINT", conflicts_with = "master_ca")]
    master_fingerprint: Option<String>,
}

#[cfg(feature = "master")]
#[derive(Args)]
pub struct MasterServe {
    /// Directory of the database (fog.db), the first admin token and the image store (DATA_DIR/store,
    /// served when it exists; the global --store names another)
    #[arg(long)]
    data_dir: PathBuf,
    /// Address the API listens on
    #[arg(long, default_value = "0.0.0.0:8090")]
    listen: std::net::SocketAddr,
    /// A database URL instead of DATA_DIR/fog.db (postgres://user@host/db)
    #[arg(long, env = "FOG_DATABASE_URL", hide_env_values = true)]
    database: Option<String>,
    /// Serve HTTPS with this certificate chain (PEM; with --tls-key)
    #[arg(long, requires = "tls_key", conflicts_with = "tls_self_signed")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM)
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve HTTPS with a self-signed certificate made on the first start and kept in
    /// DATA_DIR (tls-cert.pem, tls-key.pem); prints its SHA-256 fingerprint for nodes to pin
    #[arg(long)]
    tls_self_signed: bool,
    /// A DNS name or IP address the self-signed certificate names besides localhost and this
    /// host's name (repeat for more)
    #[arg(long = "tls-name", requires = "tls_self_signed")]
    tls_names: Vec<String>,
}

#[derive(Subcommand)]
pub enum HostCommand {
    /// List hosts (every page, by name)
    Ls {
        /// Only hosts whose name, a MAC, address or inventory (serial) contains this
        #[arg(long)]
        search: Option<String>,
        /// Only of this group
        #[arg(long)]
        group: Option<String>,
        /// Only of this node
        #[arg(long)]
        node: Option<String>,
        /// Only with this image
        #[arg(long)]
        image: Option<String>,
    },
    /// Show a host
    Show { name: String },
    /// Add a host
    Add {
        name: HostName,
        /// Network card (repeat for several)
        #[arg(long = "mac", required = true)]
        macs: Vec<String>,
        #[arg(long)]
        uuid: Option<String>,
        /// IPv4 address (picks the node whose subnet holds it)
        #[arg(long)]
        address: Option<Ipv4Addr>,
        #[arg(long)]
        image: Option<ImageName>,
        #[arg(long)]
        group: Option<GroupName>,
        /// The node that images it
        #[arg(long)]
        node: Option<NodeName>,
        /// Which disk the agent images
        #[arg(long)]
        primary_disk: Option<String>,
        /// Extra kernel arguments for the agent
        #[arg(long, default_value = "")]
        kernel_args: String,
        /// How its deploys lay partitions out on a disk of another size, unless a task says
        /// otherwise: fit (resized to the disk) or exact (the image's table as it is)
        #[arg(long, default_value_t = LayoutMode::Fit, value_name = "fit|exact")]
        layout: LayoutMode,
    },
    /// Change a host's settings (those given; the rest stay)
    #[command(group(clap::ArgGroup::new("change").required(true).multiple(true).args(["layout"])))]
    Set {
        name: String,
        /// How its deploys lay partitions out: fit (resized to the disk) or exact (the image's
        /// table as it is)
        #[arg(long, value_name = "fit|exact")]
        layout: Option<LayoutMode>,
    },
    /// Remove a host
    Rm { name: String },
    /// Wake a host now: its node sends a Wake-on-LAN packet ([node] wake_broadcast)
    Wake { name: String },
}

#[derive(Subcommand)]
pub enum GroupCommand {
    /// List groups
    Ls,
    /// Add a group
    Add {
        name: GroupName,
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Remove a group (its hosts stay)
    Rm { name: String },
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// List people's tokens (names, roles, owners, expiry)
    Ls,
    /// Issue a named token; prints it once
    Add {
        name: String,
        /// It stops working after this many days (default: never)
        #[arg(long)]
        days: Option<u32>,
        /// What it may do: admin (default), operator, viewer
        #[arg(long)]
        role: Option<Role>,
    },
    /// Revoke a token (refused from the next request on)
    Revoke { name: String },
}

#[derive(Subcommand)]
pub enum UserCommand {
    /// List the users who sign in to the web pages
    Ls,
    /// Add a user; the password is read from standard input
    Add {
        name: String,
        /// admin, operator (hosts, groups, images, tasks) or viewer (read only)
        #[arg(long, default_value = "operator")]
        role: Role,
        /// Read the password from standard input (its first line)
        #[arg(long, required = true)]
        password_stdin: bool,
    },
    /// Change a user's password (read from standard input) or role
    Passwd {
        name: String,
        /// Also give them this role
        #[arg(long)]
        role: Option<Role>,
        /// Read the new password from standard input (its first line)
        #[arg(long)]
        password_stdin: bool,
    },
    /// Remove a user, their sessions and their tokens
    Rm { name: String },
}

#[derive(Subcommand)]
pub enum AuditCommand {
    /// The audit log, newest first: every mutating call and every refused one
    Ls {
        /// At most this many (default 100)
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Only by this actor (token:NAME, node:NAME, task:ID@NODE, anonymous)
        #[arg(long)]
        actor: Option<String>,
        /// Only calls whose action or target contains this
        #[arg(long)]
        search: Option<String>,
        /// Only refused or failed calls
        #[arg(long)]
        failed: bool,
    },
}

#[derive(Subcommand)]
pub enum NodeCommand {
    /// List nodes
    Ls,
    /// Add a node; prints its token once
    Add {
        name: NodeName,
        /// URL the agents reach it at
        #[arg(long)]
        url: String,
        /// Subnet it serves, 10.99.0.0/24 (repeat for several)
        #[arg(long = "subnet")]
        subnets: Vec<String>,
        /// Hosts imaged at once
        #[arg(long, default_value_t = 10)]
        max_clients: u32,
    },
    /// Remove a node and its tokens
    Rm { name: String },
    /// Revoke a node's tokens and print a new one
    Token { name: String },
}

/// Target of a task: one host, or every host of a group.
#[derive(Args)]
pub struct Target {
    /// Host name
    #[arg(required_unless_present = "group")]
    host: Option<String>,
    /// One task per host of this group instead
    #[arg(long, conflicts_with = "host")]
    group: Option<String>,
    /// Power off afterwards instead of rebooting
    #[arg(long)]
    poweroff: bool,
    /// Wake the host with a magic packet from its node
    #[arg(long)]
    wake: bool,
}

#[derive(Subcommand)]
pub enum TaskCommand {
    /// List tasks, newest first
    Ls {
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        host: Option<String>,
        #[arg(long)]
        node: Option<String>,
        /// Only tasks not over
        #[arg(long)]
        open: bool,
        /// At most this many, newest first (default: all, fetched a page at a time)
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Show a task and its history
    Show { id: i64 },
    /// Cancel a task
    Cancel { id: i64 },
    /// Deploy an image (default: the host's)
    Deploy {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        image: Option<String>,
        /// How partitions are laid out on a disk of another size: fit (resized to the disk) or
        /// exact (the image's table as it is); default: each host's layout
        #[arg(long, value_name = "fit|exact")]
        layout: Option<LayoutMode>,
    },
    /// Deploy an image to a group (or a host) in one multicast session per node: one stream
    /// for every host there, none waiting for another
    Multicast {
        #[command(flatten)]
        target: Target,
        /// Image [default: each host's; one session per image and node]
        #[arg(long)]
        image: Option<String>,
        /// How partitions are laid out on a disk of another size (see `task deploy`)
        #[arg(long, value_name = "fit|exact")]
        layout: Option<LayoutMode>,
    },
    /// Capture a host's disk into an image
    Capture {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        image: String,
    },
    /// Report a host's hardware
    Inventory {
        #[command(flatten)]
        target: Target,
    },
    /// Wipe a host's disk (signatures; --full overwrites everything)
    Wipe {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        full: bool,
    },
    /// Boot a host into the agent's shell
    Debug {
        #[command(flatten)]
        target: Target,
    },
}

fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::io("tokio runtime", e))
}

fn client(args: &MasterArgs) -> Result<Client, Error> {
    let trust = Trust::from_options(args.master_ca.as_deref(), args.master_fingerprint.as_deref())?;
    Client::with_trust(&args.master, args.token.as_deref(), &trust)
}

fn emit<T: Serialize>(json: bool, value: &T, text: impl FnOnce(&T)) {
    if json {
        say!("{}", serde_json::to_string_pretty(value).unwrap_or_default());
    } else {
        text(value);
    }
}

/// `fog master`: serves the API until SIGINT or SIGTERM. The chunk routes (`/api/v1/store/...`,
/// what agents deploy from and capture into) serve `store` (the global `--store`) when given,
/// else `DATA_DIR/store` when that directory exists; without either they answer 404.
#[cfg(feature = "master")]
pub fn master(args: &MasterServe, store: Option<&std::path::Path>, memory_mib: u64) -> Result<(), Error> {
    crate::serve::init_logs();
    let rt = runtime()?;
    rt.block_on(async {
        // The master's own store: what nodes push captures to and pull placed images from.
        let store = match store {
            Some(dir) => {
                let store = fogcore::imaging::store::Store::open(dir)?.with_memory_mib(memory_mib);
                say!("image store: {}", dir.display());
                Some(Arc::new(fogcore::imaging::replica::LocalStore::new(store)) as Arc<dyn ImageStore>)
            }
            None => None,
        };
        let config = MasterConfig {
            listen: Some(args.listen),
            data_dir: Some(args.data_dir.clone()),
            database: args.database.clone(),
            store,
            store_memory_mib: Some(memory_mib),
            tls: match (&args.tls_cert, &args.tls_key) {
                (Some(cert), Some(key)) => MasterTls::Files {
                    cert: cert.clone(),
                    key: key.clone(),
                },
                _ if args.tls_self_signed => MasterTls::SelfSigned {
                    names: args.tls_names.clone(),
                },
                _ => MasterTls::Off,
            },
        };
        let started = fogcore::control::master::serve(&config).await?;
        if let Some(dir) = &started.store_dir {
            say!("image store: {}", dir.display());
        }
        if let Some(first) = &started.first_token {
            let file = first.file.as_ref().map(|f| f.display().to_string()).unwrap_or_default();
            say!("admin token (also in {file}, mode 0600): {}", first.token);
        }
        if let Some(first) = &started.first_password {
            let file = first.file.as_ref().map(|f| f.display().to_string()).unwrap_or_default();
            say!(
                "web sign-in: user admin, password (also in {file}, mode 0600): {}",
                first.token
            );
        }
        if let Some(tls) = &started.tls {
            say!("TLS certificate: {}", tls.cert_file().display());
            say!(
                "TLS SHA-256 fingerprint (pin it: --master-fingerprint, [node] master_fingerprint): {}",
                tls.fingerprint()
            );
        }
        let master = started.master;
        tracing::info!(listen = %master.addr(), "fog master: running; SIGINT or SIGTERM stops it");
        say!("fog master: listening on {}", master.url());
        let stopped = master.cancellation();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| Error::io("SIGTERM handler", e))?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
            _ = term.recv() => tracing::info!("SIGTERM: stopping"),
            () = stopped.cancelled() => {}
        }
        master.stop().await?;
        tracing::info!("fog master: stopped");
        Ok(())
    })
}

fn host_line(h: &Host) {
    say!(
        "{:<20} {:<40} image={} group={} node={} layout={}",
        h.name,
        h.macs.join(","),
        h.image.as_deref().unwrap_or("-"),
        h.group.as_deref().unwrap_or("-"),
        h.node.as_deref().unwrap_or("-"),
        h.layout
    );
}

fn node_line(n: &Node) {
    let subnets: Vec<String> = n.subnets.iter().map(ToString::to_string).collect();
    say!(
        "{:<16} {:<32} max={:<3} {} subnets={}",
        n.name,
        n.url,
        n.max_clients,
        if n.enabled { "enabled " } else { "disabled" },
        subnets.join(",")
    );
}

fn task_line(t: &Task) {
    let state = match &t.state {
        TaskState::InProgress { percent, rate, .. } => {
            format!("in_progress {percent:.1}% {:.1} MB/s", *rate as f64 / 1e6)
        }
        TaskState::Failed { reason } => format!("failed: {reason}"),
        s => s.name().to_string(),
    };
    let layout = t.layout.map(|l| format!(" layout={l}")).unwrap_or_default();
    say!(
        "{:<6} {:<10} {:<20} {:<16} node={}{layout} {state}",
        t.id,
        t.kind.as_str(),
        t.host,
        t.image.as_deref().unwrap_or("-"),
        t.node.as_deref().unwrap_or("-")
    );
}

/// `fog host ...`.
pub fn host(args: &MasterArgs, cmd: &HostCommand, json: bool) -> Result<(), Error> {
    let c = client(args)?;
    runtime()?.block_on(async {
        match cmd {
            HostCommand::Ls {
                search,
                group,
                node,
                image,
            } => {
                let query = HostQuery {
                    q: search.clone(),
                    group: group.clone(),
                    node: node.clone(),
                    image: image.clone(),
                    ..HostQuery::default()
                };
                emit(json, &c.hosts_matching(&query).await?, |hs| {
                    hs.iter().for_each(host_line)
                })
            }
            HostCommand::Show { name } => emit(json, &c.host(name).await?, |h| {
                say!("{}", serde_json::to_string_pretty(h).unwrap_or_default())
            }),
            HostCommand::Add {
                name,
                macs,
                uuid,
                address,
                image,
                group,
                node,
                primary_disk,
                kernel_args,
                layout,
            } => {
                let host = Host {
                    uuid: uuid.clone(),
                    address: *address,
                    image: image.clone().map(String::from),
                    group: group.clone().map(String::from),
                    node: node.clone().map(String::from),
                    primary_disk: primary_disk.clone(),
                    kernel_args: kernel_args.clone(),
                    layout: *layout,
                    ..Host::new(name.to_string(), macs.clone())
                };
                emit(json, &c.create_host(&host).await?, host_line);
            }
            HostCommand::Set { name, layout } => {
                let mut host = c.host(name).await?;
                if let Some(layout) = layout {
                    host.layout = *layout;
                }
                emit(json, &c.update_host(&host).await?, host_line);
            }
            HostCommand::Rm { name } => {
                c.delete_host(name).await?;
                emit(json, &serde_json::json!({ "removed": name }), |_| {
                    say!("removed host {name}")
                });
            }
            HostCommand::Wake { name } => emit(json, &c.wake_host(name).await?, |w| {
                say!(
                    "wake of {} ({}) handed to node {}: it sends at its next heartbeat",
                    w.host,
                    w.macs.join(","),
                    w.node
                )
            }),
        }
        Ok(())
    })
}

/// `fog image ls|info|rm` against a master.
pub enum RemoteImage<'a> {
    Ls,
    Info(&'a str),
    Rm(&'a str),
}

fn placement_text(p: &Placement) -> String {
    match p {
        Placement::All => "all nodes".into(),
        Placement::Nodes { nodes } => format!("nodes {}", nodes.join(",")),
    }
}

fn copy_text(c: &fogcore::control::model::ImageCopy) -> String {
    use fogcore::control::model::CopyState;
    match c.state {
        CopyState::Replicating => format!("{}=replicating({})", c.node, crate::print::mib(c.bytes)),
        CopyState::Failed => format!("{}=failed({})", c.node, c.reason.as_deref().unwrap_or("?")),
        state => format!("{}={}", c.node, state.as_str()),
    }
}

fn image_line(s: &ImageStatus) {
    let copies: Vec<String> = s.copies.iter().map(copy_text).collect();
    say!(
        "{:<24} {:>12} {:<14} {:<18} {}",
        s.image.name,
        crate::print::mib(s.image.size_bytes),
        if s.image.os.is_empty() { "-" } else { &s.image.os },
        placement_text(&s.image.placement),
        if copies.is_empty() {
            "-".to_string()
        } else {
            copies.join(" ")
        }
    );
}

/// `fog image ls|info|rm --master URL`: the master's image records, placement and copies.
pub fn image(args: &MasterArgs, what: RemoteImage<'_>, json: bool) -> Result<(), Error> {
    let c = client(args)?;
    runtime()?.block_on(async {
        match what {
            RemoteImage::Ls => emit(json, &c.images_status().await?, |list| {
                say!(
                    "{:<24} {:>12} {:<14} {:<18} COPIES (node=state)",
                    "NAME",
                    "SIZE",
                    "OS",
                    "PLACEMENT"
                );
                list.iter().for_each(image_line);
            }),
            RemoteImage::Info(name) => emit(json, &c.image_status(name).await?, |s| {
                say!("image       {}", s.image.name);
                say!("size        {}", crate::print::mib(s.image.size_bytes));
                say!("os          {}", s.image.os);
                say!("description {}", s.image.description);
                say!("placement   {}", placement_text(&s.image.placement));
                if s.copies.is_empty() {
                    say!("copies      none");
                }
                for copy in &s.copies {
                    say!("copy        {}", copy_text(copy));
                }
            }),
            RemoteImage::Rm(name) => {
                c.delete_image(name).await?;
                emit(json, &serde_json::json!({ "removed": name }), |_| {
                    say!(
                        "removed image {name} from the master {} (nodes' stores keep their chunks)",
                        args.master
                    )
                });
            }
        }
        Ok(())
    })
}

/// `fog group ...`.
pub fn group(args: &MasterArgs, cmd: &GroupCommand, json: bool) -> Result<(), Error> {
    let c = client(args)?;
    runtime()?.block_on(async {
        match cmd {
            GroupCommand::Ls => emit(json, &c.groups().await?, |gs| {
                gs.iter().for_each(|g| say!("{:<20} {}", g.name, g.description))
            }),
            GroupCommand::Add { name, description } => {
                let g = Group {
                    name: name.to_string(),
                    description: description.clone(),
                };
                emit(json, &c.create_group(&g).await?, |g| say!("added group {}", g.name));
            }
            GroupCommand::Rm { name } => {
                c.delete_group(name).await?;
                emit(json, &serde_json::json!({ "removed": name }), |_| {
                    say!("removed group {name}")
                });
            }
        }
        Ok(())
    })
}

fn token_line(t: &TokenInfo) {
    let expires = t.expires_at.map_or("never".to_string(), utc_text);
    let owner = t.owner.as_deref().map(|o| format!("  of {o}")).unwrap_or_default();
    say!(
        "{:<24} {:<8} issued {}  expires {expires}{owner}",
        t.name,
        t.role.name(),
        utc_text(t.created_at)
    );
}

/// The first line of standard input: a password given to `--password-stdin`.
fn password_from_stdin() -> Result<String, Error> {
    let mut line = String::new();
    std::io::stdin()
        .read_line(&mut line)
        .map_err(|e| Error::io("standard input", e))?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

/// `fog user ...`.
pub fn user(args: &MasterArgs, cmd: &UserCommand, json: bool) -> Result<(), Error> {
    let c = client(args)?;
    let line = |u: &User| {
        let last = u.last_login.map_or("never".to_string(), utc_text);
        say!("{:<24} {:<8} last sign-in {last}", u.name, u.role.name());
    };
    runtime()?.block_on(async {
        match cmd {
            UserCommand::Ls => emit(json, &c.users().await?, |us| us.iter().for_each(line)),
            UserCommand::Add { name, role, .. } => {
                let new = NewUser {
                    name: name.clone(),
                    role: *role,
                    password: password_from_stdin()?,
                };
                emit(json, &c.create_user(&new).await?, line);
            }
            UserCommand::Passwd {
                name,
                role,
                password_stdin,
            } => {
                if !password_stdin && role.is_none() {
                    return Err(Error::invalid(
                        "user change",
                        name.as_str(),
                        "give --password-stdin, --role, or both",
                    ));
                }
                let change = UserUpdate {
                    role: *role,
                    password: if *password_stdin {
                        Some(password_from_stdin()?)
                    } else {
                        None
                    },
                };
                emit(json, &c.update_user(name, &change).await?, line);
            }
            UserCommand::Rm { name } => {
                c.remove_user(name).await?;
                emit(json, &serde_json::json!({ "removed": name }), |_| {
                    say!("removed user {name}")
                });
            }
        }
        Ok(())
    })
}

/// `fog token ...`.
pub fn token(args: &MasterArgs, cmd: &TokenCommand, json: bool) -> Result<(), Error> {
    let c = client(args)?;
    runtime()?.block_on(async {
        match cmd {
            TokenCommand::Ls => emit(json, &c.tokens().await?, |ts| ts.iter().for_each(token_line)),
            TokenCommand::Add { name, days, role } => {
                let new = NewToken {
                    name: name.clone(),
                    role: *role,
                    expires_at: days.map(|d| fogcore::clock::now_ms() + i64::from(d) * 86_400_000),
                };
                emit(json, &c.create_token(&new).await?, |t| {
                    token_line(&t.info);
                    say!("token (shown once): {}", t.token);
                });
            }
            TokenCommand::Revoke { name } => {
                c.revoke_token(name).await?;
                emit(json, &serde_json::json!({ "revoked": name }), |_| {
                    say!("revoked token {name}")
                });
            }
        }
        Ok(())
    })
}

/// `fog audit ...`.
pub fn audit(args: &MasterArgs, cmd: &AuditCommand, json: bool) -> Result<(), Error> {
    let c = client(args)?;
    let AuditCommand::Ls {
        limit,
        actor,
        search,
        failed,
    } = cmd;
    runtime()?.block_on(async {
        let query = AuditQuery {
            actor: actor.clone(),
            q: search.clone(),
            failed: *failed,
            ..AuditQuery::default()
        };
        let entries = c.audit(&query, *limit as usize).await?;
        emit(json, &entries, |es| {
            for e in es {
                say!(
                    "{}  {:<20} {:<44} {:<16} {} {} {}",
                    utc_text(e.at),
                    e.actor,
                    e.action,
                    e.target,
                    e.address.as_deref().unwrap_or("-"),
                    e.status,
                    e.result
                )
            }
        });
        Ok(())
    })
}

/// `fog node ...`.
pub fn node(args: &MasterArgs, cmd: &NodeCommand, json: bool) -> Result<(), Error> {
    let c = client(args)?;
    runtime()?.block_on(async {
        match cmd {
            NodeCommand::Ls => emit(json, &c.nodes().await?, |ns| ns.iter().for_each(node_line)),
            NodeCommand::Add {
                name,
                url,
                subnets,
                max_clients,
            } => {
                let node = Node {
                    name: name.to_string(),
                    url: url.clone(),
                    subnets: subnets.iter().map(|s| parse_subnet(s)).collect::<Result<_, _>>()?,
                    max_clients: *max_clients,
                    enabled: true,
                    last_seen: None,
                };
                emit(json, &c.create_node(&node).await?, |t| {
                    node_line(&t.node);
                    say!("node token (shown once): {}", t.token);
                });
            }
            NodeCommand::Rm { name } => {
                c.delete_node(name).await?;
                emit(json, &serde_json::json!({ "removed": name }), |_| {
                    say!("removed node {name}")
                });
            }
            NodeCommand::Token { name } => emit(json, &c.node_token(name).await?, |t| {
                say!("node token (shown once): {}", t.token)
            }),
        }
        Ok(())
    })
}

/// `fog task ...`.
pub fn task(args: &MasterArgs, cmd: &TaskCommand, json: bool) -> Result<(), Error> {
    let c = client(args)?;
    runtime()?.block_on(async {
        let (kind, target, image, layout) = match cmd {
            TaskCommand::Ls {
                state,
                host,
                node,
                open,
                limit,
            } => {
                let filter = TaskFilter {
                    state: state.clone(),
                    host: host.clone(),
                    node: node.clone(),
                    open_only: *open,
                    limit: *limit,
                    ..TaskFilter::default()
                };
                emit(json, &c.tasks(&filter).await?, |ts| ts.iter().for_each(task_line));
                return Ok(());
            }
            TaskCommand::Show { id } => {
                let task = c.task(*id).await?;
                let history = c.task_history(*id).await?;
                emit(json, &serde_json::json!({ "task": task, "history": history }), |_| {
                    task_line(&task);
                    for e in &history {
                        say!(
                            "  {} {} -> {}{}",
                            e.at,
                            e.from.as_deref().unwrap_or("-"),
                            e.to,
                            e.detail.as_deref().map(|d| format!(" ({d})")).unwrap_or_default()
                        );
                    }
                });
                return Ok(());
            }
            TaskCommand::Cancel { id } => {
                emit(json, &c.cancel_task(*id).await?, task_line);
                return Ok(());
            }
            TaskCommand::Deploy { target, image, layout } => (TaskKind::Deploy, target, image.clone(), *layout),
            TaskCommand::Multicast { target, image, layout } => (TaskKind::Multicast, target, image.clone(), *layout),
            TaskCommand::Capture { target, image } => (TaskKind::Capture, target, Some(image.clone()), None),
            TaskCommand::Inventory { target } => (TaskKind::Inventory, target, None, None),
            TaskCommand::Wipe { target, full } => (
                if *full { TaskKind::WipeFull } else { TaskKind::WipeFast },
                target,
                None,
                None,
            ),
            TaskCommand::Debug { target } => (TaskKind::Debug, target, None, None),
        };
        let new = NewTask {
            kind,
            host: target.host.clone(),
            image,
            after: if target.poweroff {
                After::Poweroff
            } else {
                After::Reboot
            },
            wake: target.wake,
            layout,
        };
        match &target.group {
            Some(group) => {
                let report = c.group_task(group, &new).await?;
                emit(json, &report, |r| {
                    r.created.iter().for_each(task_line);
                    for s in &r.skipped {
                        say!("skipped {}: {}", s.host, s.reason);
                    }
                });
            }
            None => emit(json, &c.create_task(&new).await?, task_line),
        }
        Ok(())
    })
}

#[derive(Subcommand)]
pub enum AgentCommand {
    /// Check in with the master (--master URL --token T), wait for a slot, run the task, check out
    Run(AgentRun),
    /// Quick registration: create this machine's host on the master (node token), or update its inventory
    Register {
        /// The host name wanted (default: from the DMI serial, else host-MAC)
        #[arg(long)]
        name: Option<String>,
        /// Register with this MAC (repeatable) instead of the network cards' addresses
        #[arg(long)]
        mac: Vec<String>,
    },
    /// Print this machine's inventory (DMI, CPU, memory, disks, network cards)
    Inventory,
}

#[derive(Args)]
pub struct AgentRun {
    /// Image this disk (or disk image file) instead of choosing one
    #[arg(long)]
    disk: Option<PathBuf>,
    /// The host's primary-disk rule: /dev/sdX, a disk name, size:largest or size:smallest
    #[arg(long, conflicts_with = "disk")]
    disk_rule: Option<String>,
    /// Check in with this MAC (repeatable) instead of the network cards' addresses
    #[arg(long)]
    mac: Vec<String>,
    /// SMBIOS UUID instead of /sys/class/dmi/id/product_uuid
    #[arg(long)]
    uuid: Option<String>,
    /// Exit when no task waits instead of asking again until one does
    #[arg(long)]
    once: bool,
    /// Do not reboot or power off afterwards, whatever the task says
    #[arg(long)]
    no_power: bool,
    /// Read the deployed data back and compare it (every chunk is checked by hash anyway)
    #[arg(long)]
    verify: bool,
    /// Longest wait between check-ins while waiting for a task or a slot, in seconds
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    poll_max: u64,
    /// Hold image data on the wire to this many bytes per second
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    bandwidth: Option<u64>,
    /// First create a task of this kind for this host (deploy, capture, ...; needs an admin token)
    #[arg(long)]
    request: Option<String>,
    /// The image of the requested task (a deploy defaults to the host's image)
    #[arg(long, requires = "request")]
    image: Option<String>,
    /// The layout of the requested deploy: fit or exact (default: the host's)
    #[arg(long, requires = "request", value_name = "fit|exact")]
    layout: Option<LayoutMode>,
}

/// `fog agent run`.
pub fn agent(
    args: &MasterArgs,
    cmd: &AgentCommand,
    json: bool,
    progress: &dyn fogcore::progress::Progress,
) -> Result<(), Error> {
    crate::serve::init_logs();
    let run = match cmd {
        AgentCommand::Run(run) => run,
        AgentCommand::Register { name, mac } => return agent_register(args, name.as_deref(), mac, json),
        AgentCommand::Inventory => {
            let found = fogcore::agent::inventory::collect("/sys".as_ref(), "/proc".as_ref());
            emit(json, &found, crate::print::inventory);
            return Ok(());
        }
    };
    let mut config = fogcore::agent::AgentConfig::new(&args.master, args.token.as_deref());
    if let Some(kind) = &run.request {
        config.request = Some(NewTask {
            kind: TaskKind::parse(kind)?,
            host: None,
            image: run.image.clone(),
            after: After::default(),
            wake: false,
            layout: run.layout,
        });
    }
    config.disk = run.disk.clone();
    config.disk_rule = run.disk_rule.clone();
    config.macs = run.mac.clone();
    config.uuid = run.uuid.clone();
    config.once = run.once;
    config.verify = run.verify;
    config.bandwidth = run.bandwidth;
    config.poll_max = std::time::Duration::from_secs(run.poll_max);
    config.poll = config.poll.min(config.poll_max);
    let report = fogcore::agent::run(&config, progress)?;
    emit(json, &report, |r| match &r.task {
        None => say!("no task waits for this host"),
        Some(t) if r.ok => say!(
            "task {} ({}) complete: {} bytes in {:.1} s",
            t.id,
            t.kind.as_str(),
            r.bytes,
            r.seconds
        ),
        Some(t) => say!(
            "task {} ({}) failed: {}",
            t.id,
            t.kind.as_str(),
            r.reason.as_deref().unwrap_or("?")
        ),
    });
    if !report.ok {
        return Err(Error::InvalidInput(format!(
            "the task failed: {}",
            report.reason.as_deref().unwrap_or("no reason given")
        )));
    }
    match report.after {
        Some(after) if !run.no_power => fogcore::agent::power_action(after),
        _ => Ok(()),
    }
}

/// `fog agent register`.
fn agent_register(args: &MasterArgs, name: Option<&str>, macs: &[String], json: bool) -> Result<(), Error> {
    let mut config = fogcore::agent::AgentConfig::new(&args.master, args.token.as_deref());
    config.macs = macs.to_vec();
    let r = fogcore::agent::register(&config, name)?;
    emit(json, &r, |r| {
        say!(
            "{} host {} ({}){}",
            if r.created { "registered" } else { "updated" },
            r.host.name,
            r.host.macs.join(", "),
            r.host
                .node
                .as_deref()
                .map(|n| format!(", node {n}"))
                .unwrap_or_default()
        )
    });
    Ok(())
}
