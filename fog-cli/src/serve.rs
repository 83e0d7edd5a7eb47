//! `fog serve`, `fog config check`, `fog bootfiles install`: flags to fogcore calls, logs, signals.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use fogcore::Error;
use fogcore::net::boot::SecureBoot;
use fogcore::net::bootfiles::{self, FileOutcome};
use fogcore::net::config::{DhcpMode, QuickServe, ServeConfig};

/// `println!` that ignores a closed stdout.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

#[derive(Clone, Copy, ValueEnum)]
pub enum DhcpArg {
    /// Addresses and boot files
    Full,
    /// Boot files only, beside the DHCP server that owns the addresses
    Proxy,
    /// No DHCP
    Off,
}

#[derive(Args)]
pub struct ServeArgs {
    /// Config file (fog.toml); without it, the flags below describe the node
    #[arg(long, conflicts_with_all = ["interface", "address", "dhcp", "range", "subnet", "boot_dir", "data_dir", "http_port", "tftp_port", "no_tftp", "no_ra", "node_master", "node_name", "node_token_file", "node_master_ca", "node_master_fingerprint", "secure_boot"])]
    config: Option<PathBuf>,
    /// Interface of the clients' subnet (DHCP binds to it)
    #[arg(long)]
    interface: Option<String>,
    /// This node's IPv4 address on the clients' subnet (HTTP and TFTP listen on it)
    #[arg(long, required_unless_present = "config")]
    address: Option<String>,
    /// DHCP service
    #[arg(long, value_enum, default_value = "off")]
    dhcp: DhcpArg,
    /// Addresses handed out with --dhcp full, FIRST-LAST
    #[arg(long)]
    range: Option<String>,
    /// Subnet of the range [default: the /24 holding --address]
    #[arg(long)]
    subnet: Option<String>,
    /// Boot directory: iPXE binaries, kernels, initramfs [default: DATA_DIR/boot]
    #[arg(long)]
    boot_dir: Option<PathBuf>,
    /// State directory (DHCP leases) [default: /var/lib/fog]
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// HTTP port
    #[arg(long, default_value_t = 8080)]
    http_port: u16,
    /// TFTP port
    #[arg(long, default_value_t = 69)]
    tftp_port: u16,
    /// Do not serve TFTP
    #[arg(long)]
    no_tftp: bool,
    /// Do not answer IPv6 router solicitations (on by default with --dhcp full and --interface,
    /// so iPXE does not wait ~13 s for an IPv6 router at every boot)
    #[arg(long)]
    no_ra: bool,
    /// Node role: the master this node reports to and takes its hosts' tasks from. (Not
    /// `--master`: that global flag, with its default and FOG_MASTER, is where the CLI's own
    /// commands send requests, and would make every `fog serve` a node.)
    #[arg(long, requires_all = ["node_name", "node_token_file"])]
    node_master: Option<String>,
    /// This node's name on the master
    #[arg(long, requires = "node_master")]
    node_name: Option<String>,
    /// File holding this node's token (from `fog node add`)
    #[arg(long, requires = "node_master")]
    node_token_file: Option<PathBuf>,
    /// An https:// master is trusted when its certificate comes from the CA in this PEM file
    #[arg(long, requires = "node_master")]
    node_master_ca: Option<PathBuf>,
    /// An https:// master is trusted when its certificate has this SHA-256 fingerprint
    #[arg(long, requires = "node_master", conflicts_with = "node_master_ca")]
    node_master_fingerprint: Option<String>,
    /// How x64 UEFI PXE clients boot: auto (the signed chain shim -> GRUB -> signed kernel,
    /// which boots with Secure Boot on or off) or off (iPXE)
    #[arg(long, value_enum, default_value = "auto")]
    secure_boot: SecureBootArg,
}

#[derive(Clone, Copy, ValueEnum)]
enum SecureBootArg {
    /// The signed chain for x64 UEFI
    Auto,
    /// iPXE for every firmware
    Off,
}

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Check a config file and print what it means
    Check {
        /// The config file (fog.toml)
        file: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum BootfilesCommand {
    /// Copy the iPXE binaries and the signed chain (shim, GRUB) of the system's packages into the boot directory
    Install {
        /// Boot directory [default: the config's, or /var/lib/fog/boot]
        #[arg(long)]
        boot_dir: Option<PathBuf>,
        /// Take the boot directory from this config file
        #[arg(long, conflicts_with = "boot_dir")]
        config: Option<PathBuf>,
        /// Look for the package files under this root instead of /
        #[arg(long, default_value = "/", hide = true)]
        system_root: PathBuf,
    },
}

pub(crate) fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

fn serve_config(args: &ServeArgs) -> Result<ServeConfig, Error> {
    if let Some(path) = &args.config {
        return ServeConfig::load(path);
    }
    let quick = QuickServe {
        interface: args.interface.clone(),
        address: args.address.clone().unwrap_or_default(),
        dhcp: match args.dhcp {
            DhcpArg::Full => DhcpMode::Full,
            DhcpArg::Proxy => DhcpMode::Proxy,
            DhcpArg::Off => DhcpMode::Off,
        },
        range: args.range.clone(),
        subnet: args.subnet.clone(),
        boot_dir: args.boot_dir.clone(),
        data_dir: args.data_dir.clone(),
        http_port: args.http_port,
        tftp_port: (!args.no_tftp).then_some(args.tftp_port),
        router_advertisements: !args.no_ra,
        master: args.node_master.clone(),
        node_name: args.node_name.clone(),
        node_token_file: args.node_token_file.clone(),
        master_ca: args.node_master_ca.clone(),
        master_fingerprint: args.node_master_fingerprint.clone(),
        secure_boot: match args.secure_boot {
            SecureBootArg::Auto => SecureBoot::Auto,
            SecureBootArg::Off => SecureBoot::Off,
        },
    };
    ServeConfig::try_from(quick.to_file()?)
}

/// Runs the services until SIGINT or SIGTERM, or until one fails.
pub fn serve(args: &ServeArgs) -> Result<(), Error> {
    init_logs();
    let config = serve_config(args)?;
    for missing in config.missing_boot_files() {
        tracing::warn!(
            "boot file {} is missing: PXE clients asking for it will fail (fog bootfiles install)",
            missing.display()
        );
    }
    let server = fogcore::control::node::serve(config)?;
    let addrs = server.addrs();
    let on = |a: Option<std::net::SocketAddr>| a.map_or_else(|| "off".to_string(), |a| a.to_string());
    tracing::info!(
        http = on(addrs.http),
        tftp = on(addrs.tftp),
        dhcp = on(addrs.dhcp),
        "fog serve: running; SIGINT or SIGTERM stops it"
    );
    let stopped = server.cancellation();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("signal handler runtime", e))?;
    let signal = runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        Ok::<_, std::io::Error>(tokio::select! {
            r = tokio::signal::ctrl_c() => r.map(|()| Some("SIGINT"))?,
            _ = term.recv() => Some("SIGTERM"),
            () = stopped.cancelled() => None,
        })
    });
    match signal {
        Ok(Some(name)) => tracing::info!("{name}: stopping"),
        Ok(None) => {}
        Err(e) => tracing::warn!("cannot wait for signals ({e}): stopping"),
    }
    let result = server.stop();
    if result.is_ok() {
        tracing::info!("fog serve: stopped");
    }
    result
}

/// `fog config check FILE`.
pub fn config(cmd: &ConfigCommand, json: bool) -> Result<(), Error> {
    match cmd {
        ConfigCommand::Check { file } => {
            let config = ServeConfig::load(file)?;
            let missing = config.missing_boot_files();
            if json {
                let missing: Vec<String> = missing.iter().map(|p| p.display().to_string()).collect();
                say!(
                    "{}",
                    serde_json::json!({ "ok": true, "description": config.describe(), "missing_boot_files": missing })
                );
            } else {
                say!("{}: ok", file.display());
                say!("{}", config.describe().trim_end());
                for path in missing {
                    say!(
                        "warning: boot file {} is missing (fog bootfiles install --boot-dir {})",
                        path.display(),
                        config.boot_dir.display()
                    );
                }
            }
            Ok(())
        }
    }
}

/// `fog bootfiles install`.
pub fn bootfiles(cmd: &BootfilesCommand, json: bool) -> Result<(), Error> {
    match cmd {
        BootfilesCommand::Install {
            boot_dir,
            config,
            system_root,
        } => {
            let serve = match config {
                Some(path) => ServeConfig::load(path)?,
                None => ServeConfig::try_from(fogcore::net::config::ServeFile::default())?,
            };
            let boot_dir = boot_dir.clone().unwrap_or(serve.boot_dir);
            let sources = bootfiles::boot_file_sources(system_root, serve.boot.secure_boot);
            let report = bootfiles::install(&boot_dir, &sources)?;
            if json {
                match serde_json::to_string_pretty(&report) {
                    Ok(text) => say!("{text}"),
                    Err(e) => eprintln!("fog: cannot format output: {e}"),
                }
            } else {
                for (name, outcome) in &report.files {
                    match outcome {
                        FileOutcome::Installed { from, bytes } => {
                            say!("installed {name:<16} {bytes:>9} bytes from {}", from.display());
                        }
                        FileOutcome::Unchanged { from } => {
                            say!("unchanged {name:<16} (same as {})", from.display());
                        }
                        FileOutcome::Missing {
                            looked_in,
                            package_hint,
                            required,
                        } => {
                            let looked: Vec<String> = looked_in.iter().map(|p| p.display().to_string()).collect();
                            let what = if *required { "missing" } else { "optional, not found" };
                            say!("{what}: {name} (looked in {}); {package_hint}", looked.join(", "));
                        }
                    }
                }
                say!("boot directory: {}", report.boot_dir.display());
            }
            report.check()
        }
    }
}

#[derive(Subcommand)]
pub enum BootenvCommand {
    /// Build the agent's kernel and initramfs (vmlinuz, initrd.img) from this system's kernel,
    /// busybox and this fog binary
    Build(BootenvBuild),
}

#[derive(Args)]
pub struct BootenvBuild {
    /// Output directory [default: the directory of the config's `[boot] agent_kernel` under the
    /// boot directory, BOOT_DIR/bootenv]
    #[arg(long)]
    out: Option<PathBuf>,
    /// Boot directory [default: the config's, or /var/lib/fog/boot]
    #[arg(long, conflicts_with = "out")]
    boot_dir: Option<PathBuf>,
    /// Take the boot directory from this config file
    #[arg(long, conflicts_with_all = ["out", "boot_dir"])]
    config: Option<PathBuf>,
    /// The kernel [default: the newest /boot/vmlinuz-*]
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// The kernel's module tree [default: /lib/modules/VERSION]
    #[arg(long)]
    modules: Option<PathBuf>,
    /// busybox (static preferred) [default: busybox on PATH, else /bin/busybox]
    #[arg(long)]
    busybox: Option<PathBuf>,
    /// The fog binary to carry [default: this one]
    #[arg(long)]
    fog: Option<PathBuf>,
    /// Kernel modules to carry, with their dependencies (repeatable) [default: common NICs and disks]
    #[arg(long = "module")]
    module: Vec<String>,
    /// Keep fog's debug sections (stripped by default when `strip` is installed)
    #[arg(long)]
    no_strip: bool,
}

/// `fog bootenv build`.
pub fn bootenv(cmd: &BootenvCommand, json: bool) -> Result<(), Error> {
    let BootenvCommand::Build(args) = cmd;
    let out = match (&args.out, &args.boot_dir, &args.config) {
        (Some(out), _, _) => out.clone(),
        (None, dir, config) => {
            let mut serve = match config {
                Some(path) => ServeConfig::load(path)?,
                None => ServeConfig::try_from(fogcore::net::config::ServeFile::default())?,
            };
            if let Some(dir) = dir {
                serve.boot_dir = dir.clone();
            }
            let kernel = serve.boot_dir.join(&serve.boot.agent_kernel);
            kernel.parent().map_or(serve.boot_dir.clone(), |p| p.to_path_buf())
        }
    };
    let options = fogcore::bootenv::BuildOptions {
        out,
        kernel: args.kernel.clone(),
        modules: args.modules.clone(),
        busybox: args.busybox.clone(),
        fog: args.fog.clone(),
        module_names: (!args.module.is_empty()).then(|| args.module.clone()),
        no_strip: args.no_strip,
        ..Default::default()
    };
    let r = fogcore::bootenv::build(&options)?;
    if json {
        match serde_json::to_string_pretty(&r) {
            Ok(text) => say!("{text}"),
            Err(e) => eprintln!("fog: cannot format output: {e}"),
        }
        return Ok(());
    }
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0));
    say!(
        "kernel:    {} ({}, from {})",
        r.kernel.display(),
        mib(r.kernel_bytes),
        r.kernel_source.display()
    );
    say!(
        "secure:    {}",
        match (r.kernel_signed, r.unsigned_modules.is_empty()) {
            (true, true) =>
                "the kernel and every module are signed: the signed chain boots it with Secure Boot on".into(),
            (true, false) => format!(
                "the kernel is signed, but a locked-down kernel will refuse these unsigned modules: {}",
                r.unsigned_modules.join(" ")
            ),
            (false, _) =>
                "the kernel is not signed: with Secure Boot on, GRUB refuses it (use the distribution's signed kernel)"
                    .into(),
        }
    );
    say!(
        "initramfs: {} ({} zstd, {} unpacked, {} entries)",
        r.initrd.display(),
        mib(r.initrd_bytes),
        mib(r.uncompressed_bytes),
        r.entries
    );
    say!(
        "fog:       {}{}",
        r.fog.display(),
        if r.fog_stripped {
            " (debug sections stripped)"
        } else {
            ""
        }
    );
    say!(
        "busybox:   {}{}",
        r.busybox.display(),
        if r.busybox_static {
            " (static)"
        } else {
            " (dynamic: its libraries are carried)"
        }
    );
    say!("libraries: {}", r.libraries.len());
    say!(
        "tools:     {}{}",
        r.tools
            .iter()
            .map(|t| t.display().to_string())
            .collect::<Vec<_>>()
            .join(" "),
        if r.tools_missing.is_empty() {
            String::new()
        } else {
            format!(
                " (not installed here: {}; install e2fsprogs and ntfs-3g for resizing deploys)",
                r.tools_missing.join(" ")
            )
        }
    );
    say!(
        "modules:   {} from {}: {}",
        r.modules.len(),
        r.module_dir.display(),
        r.modules.join(" ")
    );
    if !r.builtin.is_empty() {
        say!("built in:  {}", r.builtin.join(" "));
    }
    if !r.missing.is_empty() {
        say!("missing:   {} (this kernel has no such module)", r.missing.join(" "));
    }
    say!("built in {:.1} s", r.seconds);
    Ok(())
}
