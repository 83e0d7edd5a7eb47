//! `fog`: the command line of fog. Flags, progress bars and exit codes; the work is in fogcore.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use fogcore::Error;
use fogcore::demo;
use fogcore::imaging::resize::LayoutMode;
use fogcore::imaging::{capture, deploy, store::Store};
use fogcore::names::ImageName;
use serde_json::json;

mod bar;
mod control;
mod print;
mod serve;

/// Exit code for bad input: a wrong path, name or argument.
const EXIT_BAD_INPUT: u8 = 2;
/// Exit code for a failure underneath: I/O, a damaged store, a failed verify.
const EXIT_FAILURE: u8 = 1;
/// Exit code of a failure that may pass if tried again (a master unreachable, a busy store):
/// sysexits' EX_TEMPFAIL, what schedulers and `systemd` retry on.
const EXIT_TRY_AGAIN: u8 = 75;

/// The exit code of an error, from its kind.
fn exit_code(e: &Error) -> u8 {
    if e.is_bad_input() {
        EXIT_BAD_INPUT
    } else if e.is_transient() {
        EXIT_TRY_AGAIN
    } else {
        EXIT_FAILURE
    }
}

#[derive(Parser)]
#[command(
    name = "fog",
    version,
    about = "Network imaging: capture, store and deploy disk images"
)]
struct Cli {
    /// Image store directory [default: $XDG_DATA_HOME/fog/store]
    #[arg(long, global = true, env = "FOG_STORE")]
    store: Option<PathBuf>,
    /// Memory a capture, deploy, copy, verify or gc keeps of what grows with the image, in MiB
    /// (at least 8); the rest goes to sorted runs in the store's `tmp/`
    #[arg(long, global = true, env = "FOG_MEMORY_MIB", default_value_t = fogcore::imaging::store::DEFAULT_MEMORY_MIB,
          value_parser = clap::value_parser!(u64).range(fogcore::imaging::store::MIN_MEMORY_MIB..))]
    memory_mib: u64,
    /// Print machine-readable JSON instead of text and bars
    #[arg(long, global = true)]
    json: bool,
    #[command(flatten)]
    master: control::MasterArgs,
    #[command(subcommand)]
    command: Command,
    /// True when `--master` was given on the command line (set after parsing).
    #[arg(skip)]
    master_given: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Build a sample disk, capture it, deploy it, verify it, and show what happened
    Demo {
        /// Directory for the demo's disks and store [default: $XDG_DATA_HOME/fog/demo]
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Images in the store
    #[command(subcommand)]
    Image(ImageCommand),
    /// The store itself
    #[command(subcommand)]
    Store(StoreCommand),
    /// Serve network boot on this node: DHCP (full, proxy or off), TFTP, HTTP
    Serve(serve::ServeArgs),
    /// Node config files (fog.toml)
    #[command(subcommand)]
    Config(serve::ConfigCommand),
    /// iPXE binaries in the boot directory
    #[command(subcommand)]
    Bootfiles(serve::BootfilesCommand),
    /// The agent's boot environment (kernel + initramfs) in the boot directory
    #[command(subcommand)]
    Bootenv(serve::BootenvCommand),
    /// Run the master: the inventory, tasks and the REST API (/api/v1)
    #[cfg(feature = "master")]
    Master(control::MasterServe),
    /// Hosts on a master (--master URL --token T)
    #[command(subcommand)]
    Host(control::HostCommand),
    /// Host groups on a master
    #[command(subcommand)]
    Group(control::GroupCommand),
    /// Site nodes on a master
    #[command(subcommand)]
    Node(control::NodeCommand),
    /// Tokens on a master for scripts: add (named, with a role, optionally expiring), ls, revoke
    #[command(subcommand)]
    Token(control::TokenCommand),
    /// Users who sign in to the master's web pages: add, ls, passwd, rm
    #[command(subcommand)]
    User(control::UserCommand),
    /// The master's audit log: who did what, to what, from where, how it ended
    #[command(subcommand)]
    Audit(control::AuditCommand),
    /// Tasks on a master: deploy, capture, inventory, wipe, debug, ls, show, cancel
    #[command(subcommand)]
    Task(control::TaskCommand),
    /// The imaging agent, on the machine being imaged
    #[command(subcommand)]
    Agent(control::AgentCommand),
    /// Multicast deploy without a master: one sender, any number of receivers
    #[command(subcommand)]
    Multicast(MulticastCommand),
}

#[derive(Subcommand)]
enum MulticastCommand {
    /// Send an image of the local store to the receivers that join, until each is done or gone
    Send {
        /// Image name
        image: ImageName,
        /// Interface to send on (its IPv4 address serves joins and HTTP fallback)
        #[arg(long)]
        interface: String,
        /// Start when this many receivers joined...
        #[arg(long, default_value_t = 1)]
        receivers: usize,
        /// ...or this many seconds after the first join, whichever comes first
        #[arg(long, default_value_t = 300)]
        max_wait: u64,
        /// Rate cap in Mbit/s (the rate follows the bulk of the receivers up to it)
        #[arg(long, default_value_t = 1000)]
        rate: u64,
        /// Multicast group
        #[arg(long, default_value_t = fogcore::net::multicast::DEFAULT_GROUP)]
        group: std::net::Ipv4Addr,
        /// UDP port of the group
        #[arg(long, default_value_t = fogcore::net::multicast::DEFAULT_PORT)]
        port: u16,
        /// TCP port for joins and HTTP fallback (0: any free port; announcements carry it)
        #[arg(long, default_value_t = 0)]
        http_port: u16,
    },
    /// Join a session and deploy its image to a disk image file (created if absent) or block
    /// device
    Receive {
        /// Target disk image file or block device [default: this machine's disk, as the agent
        /// chooses it]
        target: Option<PathBuf>,
        /// Interface to hear the group on (a name, or its IPv4 address)
        #[arg(long)]
        interface: String,
        /// The sender's URL (http://host:port) [default: from its announcements on the group]
        #[arg(long)]
        sender: Option<String>,
        /// Join the session of this image [default: the first announced]
        #[arg(long, conflicts_with = "sender")]
        session: Option<String>,
        /// Without a target: which disk (as `fog agent run --disk-rule`)
        #[arg(long, conflicts_with = "target")]
        disk_rule: Option<String>,
        /// Only sessions announced from this host (anyone on the segment can announce)
        #[arg(long, conflicts_with = "sender")]
        only_from: Option<String>,
        /// Multicast group
        #[arg(long, default_value_t = fogcore::net::multicast::DEFAULT_GROUP)]
        group: std::net::Ipv4Addr,
        /// UDP port of the group
        #[arg(long, default_value_t = fogcore::net::multicast::DEFAULT_PORT)]
        port: u16,
        /// Seconds to wait for a session's announcement
        #[arg(long, default_value_t = 600)]
        wait: u64,
        /// How partitions are laid out on a target of another size (see `fog image deploy`)
        #[arg(long, default_value_t = LayoutMode::Fit, value_name = "fit|exact")]
        layout: LayoutMode,
    },
}

#[derive(Subcommand)]
enum ImageCommand {
    /// Capture a disk image file or block device
    Capture {
        /// Disk image file or block device
        source: PathBuf,
        /// Image name
        #[arg(long)]
        name: ImageName,
        /// Logical sector size of an image file (detected from its GPT when not given)
        #[arg(long)]
        sector_size: Option<u32>,
        /// Skip working out the partitions' minimum sizes (shrunk copies): the image then
        /// deploys only to disks at least as large as the source
        #[arg(long)]
        skip_minimum_sizes: bool,
    },
    /// Deploy an image to a disk image file (created if absent) or block device
    Deploy {
        /// Image name
        name: ImageName,
        /// Target disk image file or block device
        target: PathBuf,
        /// Read the written data back and compare it with the image
        #[arg(long)]
        verify: bool,
        /// How partitions are laid out on a target of another size: fit (partitions that must
        /// keep their size keep it, the others share the rest in proportion, their filesystems
        /// grown or shrunk) or exact (the image's partition table as it is)
        #[arg(long, default_value_t = LayoutMode::Fit, value_name = "fit|exact")]
        layout: LayoutMode,
    },
    /// List images (of the local store; with --master URL or --remote, the master's records,
    /// placement and each node's copy)
    Ls {
        /// Ask the master (--master, FOG_MASTER or its default) instead of the local store
        #[arg(long)]
        remote: bool,
    },
    /// Show an image's layout and regions (with --master URL or --remote: its record and copies)
    Info {
        /// Image name
        name: ImageName,
        /// Ask the master instead of the local store
        #[arg(long)]
        remote: bool,
    },
    /// Remove an image (its chunks stay until `fog store gc`; with --master URL or --remote: the
    /// master's record)
    Rm {
        /// Image name
        name: ImageName,
        /// Remove the master's record instead of the local image
        #[arg(long)]
        remote: bool,
    },
    /// Check an image's manifest and that every chunk it needs is in the store
    Verify {
        /// Image name
        name: ImageName,
    },
    /// Copy an image between stores, sending only the chunks the destination lacks (manifest last)
    Replicate {
        /// Image name
        name: ImageName,
        /// Source: a store directory or a fog server URL [default: the local store]
        #[arg(long)]
        from: Option<String>,
        /// Destination: a store directory or a fog server URL [default: the local store]
        #[arg(long)]
        to: Option<String>,
        /// Bearer token for the URLs
        #[arg(long, env = "FOG_TOKEN")]
        token: Option<String>,
        /// Bandwidth limit in bytes per second
        #[arg(long)]
        bandwidth: Option<u64>,
    },
}

/// A store directory or a fog server URL.
fn image_store(
    spec: Option<&str>,
    local: &Store,
    token: Option<&str>,
) -> Result<Box<dyn fogcore::imaging::replica::ImageStore>, Error> {
    use fogcore::imaging::replica::LocalStore;
    Ok(match spec {
        None => Box::new(LocalStore::new(local.clone())),
        Some(url) if url.starts_with("http://") || url.starts_with("https://") => {
            Box::new(fogcore::control::remote::RemoteStore::new(url, token)?)
        }
        Some(dir) => Box::new(LocalStore::new(Store::open(dir)?.with_memory_mib(local.memory_mib()))),
    })
}

#[derive(Subcommand)]
enum StoreCommand {
    /// Remove chunks no image uses and leftovers of interrupted captures
    Gc,
    /// Check every chunk against its hash and every image's references
    Verify,
    /// Count images, chunks and bytes
    Stats,
}

fn multicast(
    cmd: &MulticastCommand,
    store_dir: PathBuf,
    memory_mib: u64,
    out: &print::Out,
    progress: &bar::Bar,
) -> Result<(), Error> {
    use fogcore::net::multicast;
    use std::net::SocketAddrV4;
    use std::time::Duration;
    serve::init_logs();
    match cmd {
        MulticastCommand::Send {
            image,
            interface,
            receivers,
            max_wait,
            rate,
            group,
            port,
            http_port,
        } => {
            let store = Store::open(store_dir)?.with_memory_mib(memory_mib);
            // A gc meanwhile must not take the image's chunks.
            let _lock = store.lock_shared()?;
            let options = multicast::SendOptions {
                interface: interface.clone(),
                group: SocketAddrV4::new(*group, *port),
                http_port: *http_port,
                receivers: *receivers,
                max_wait: Duration::from_secs(*max_wait),
                rate: rate.saturating_mul(1_000_000 / 8),
                give_up: None,
            };
            let store = std::sync::Arc::new(fogcore::imaging::replica::LocalStore::new(store));
            let report = multicast::send(store, image, &options)?;
            out.multicast_send(&report);
        }
        MulticastCommand::Receive {
            target,
            interface,
            sender,
            session,
            disk_rule,
            only_from,
            group,
            port,
            wait,
            layout,
        } => {
            let target = match target {
                Some(target) => target.clone(),
                None => fogcore::agent::target::choose(std::path::Path::new("/sys"), disk_rule.as_deref())?,
            };
            let options = multicast::ReceiveOptions {
                interface: interface.clone(),
                group: SocketAddrV4::new(*group, *port),
                sender: sender.clone(),
                session: session.clone(),
                only_from: only_from.clone(),
                wait: Duration::from_secs(*wait),
                work_dir: None,
                deploy: deploy::DeployOptions {
                    layout: *layout,
                    ..Default::default()
                },
            };
            let report = multicast::receive(&target, &options, progress)?;
            out.multicast_receive(&report);
        }
    }
    Ok(())
}

fn data_dir() -> PathBuf {
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("fog")
}

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let mut cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // `fog image ls|info|rm` read the local store unless a master is named on the command line
    // (FOG_MASTER and the default serve the host/task commands; they do not redirect images).
    cli.master_given = matches.value_source("master") == Some(ValueSource::CommandLine);
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if cli.json {
                let report = json!({
                    "error": e.to_string(),
                    "code": e.code(),
                    "bad_input": e.is_bad_input(),
                    "retry": e.is_transient(),
                });
                println!("{report}");
            } else {
                eprintln!("fog: {e}");
            }
            ExitCode::from(exit_code(&e))
        }
    }
}

fn run(cli: &Cli) -> Result<(), Error> {
    let store_dir = || cli.store.clone().unwrap_or_else(|| data_dir().join("store"));
    let progress = bar::Bar::new(cli.json);
    let out = print::Out { json: cli.json };
    match &cli.command {
        Command::Serve(args) => serve::serve(args)?,
        Command::Config(cmd) => serve::config(cmd, cli.json)?,
        Command::Bootfiles(cmd) => serve::bootfiles(cmd, cli.json)?,
        Command::Bootenv(cmd) => serve::bootenv(cmd, cli.json)?,
        #[cfg(feature = "master")]
        Command::Master(args) => control::master(args, cli.store.as_deref(), cli.memory_mib)?,
        Command::Host(cmd) => control::host(&cli.master, cmd, cli.json)?,
        Command::Group(cmd) => control::group(&cli.master, cmd, cli.json)?,
        Command::Node(cmd) => control::node(&cli.master, cmd, cli.json)?,
        Command::Task(cmd) => control::task(&cli.master, cmd, cli.json)?,
        Command::Token(cmd) => control::token(&cli.master, cmd, cli.json)?,
        Command::User(cmd) => control::user(&cli.master, cmd, cli.json)?,
        Command::Audit(cmd) => control::audit(&cli.master, cmd, cli.json)?,
        Command::Agent(cmd) => control::agent(&cli.master, cmd, cli.json, &progress)?,
        Command::Multicast(cmd) => multicast(cmd, store_dir(), cli.memory_mib, &out, &progress)?,
        Command::Demo { dir } => {
            let dir = dir.clone().unwrap_or_else(|| data_dir().join("demo"));
            let report = demo::run(&dir, &progress)?;
            out.demo(&report);
        }
        Command::Image(cmd) => {
            let remote = match cmd {
                ImageCommand::Ls { remote } => (*remote || cli.master_given).then_some(control::RemoteImage::Ls),
                ImageCommand::Info { name, remote } => {
                    (*remote || cli.master_given).then_some(control::RemoteImage::Info(name))
                }
                ImageCommand::Rm { name, remote } => {
                    (*remote || cli.master_given).then_some(control::RemoteImage::Rm(name))
                }
                _ => None,
            };
            if let Some(what) = remote {
                return control::image(&cli.master, what, cli.json);
            }
            let store = Store::open(store_dir())?.with_memory_mib(cli.memory_mib);
            match cmd {
                ImageCommand::Capture {
                    source,
                    name,
                    sector_size,
                    skip_minimum_sizes,
                } => {
                    let options = capture::CaptureOptions {
                        sector_size: *sector_size,
                        skip_minimum_sizes: *skip_minimum_sizes,
                        ..Default::default()
                    };
                    let report = capture::capture(&store, source, name, &options, &progress)?;
                    out.capture(&report);
                }
                ImageCommand::Deploy {
                    name,
                    target,
                    verify,
                    layout,
                } => {
                    let options = deploy::DeployOptions {
                        verify: *verify,
                        layout: *layout,
                        ..Default::default()
                    };
                    let report = deploy::deploy(&store, name, target, &options, &progress)?;
                    out.deploy(&report);
                }
                ImageCommand::Ls { .. } => out.images(&store.images()?),
                ImageCommand::Info { name, .. } => out.info(&store.manifest(name)?.header),
                ImageCommand::Rm { name, .. } => {
                    store.remove_image(name)?;
                    out.done(&format!("removed image {name}"));
                }
                ImageCommand::Verify { name } => {
                    store.verify_image_refs(name)?;
                    out.done(&format!("image {name}: manifest intact, every chunk present"));
                }
                ImageCommand::Replicate {
                    name,
                    from,
                    to,
                    token,
                    bandwidth,
                } => {
                    let source = image_store(from.as_deref(), &store, token.as_deref())?;
                    let dest = image_store(to.as_deref(), &store, token.as_deref())?;
                    let options = fogcore::control::replicate::ReplicateOptions {
                        bandwidth: *bandwidth,
                        ..Default::default()
                    };
                    let r = fogcore::control::replicate::replicate(&*source, &*dest, name, &options, &progress)?;
                    out.done(&format!(
                        "image {name}: {} of {} chunks sent ({} bytes), {} already there; manifest {} bytes{}",
                        r.chunks_sent,
                        r.chunks_considered,
                        r.bytes_sent,
                        r.chunks_skipped,
                        r.manifest_bytes,
                        if r.manifest_delta { " (delta)" } else { "" }
                    ));
                }
            }
        }
        Command::Store(cmd) => {
            let store = Store::open(store_dir())?.with_memory_mib(cli.memory_mib);
            match cmd {
                StoreCommand::Gc => out.gc(&store.gc()?),
                StoreCommand::Verify => {
                    let report = store.verify()?;
                    out.store_verify(&report);
                    if !report.is_ok() {
                        return Err(Error::ChunkCorrupt {
                            image: "store".into(),
                            chunk: report.corrupt.first().cloned().unwrap_or_else(|| "-".into()),
                            reason: format!(
                                "{} corrupt chunks, {} damaged images",
                                report.corrupt.len(),
                                report.image_errors.len()
                            ),
                        });
                    }
                }
                StoreCommand::Stats => out.stats(&store.stats()?),
            }
        }
    }
    Ok(())
}
