//! HTTP boot: the iPXE scripts a client chains to, and the boot directory's files (kernels and
//! initramfs images of hundreds of MB, with Content-Length and Range).
//!
//! Routes:
//! - `GET /boot.ipxe`: a script that chains to `/boot/${netX/mac}` on the same host;
//! - `GET /boot/{mac}`: that host's script, from a [`BootScripts`] provider (default: [`DefaultMenu`],
//!   a menu whose default after a timeout is booting from the local disk); a malformed MAC is 400;
//! - anything else: a file under the boot directory. `..`, absolute paths and symlinks that lead
//!   out of the directory are refused (404), whatever their encoding.

use std::net::SocketAddr;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path as UrlPath, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::services::ServeDir;

use crate::error::{Error, Result};

/// Gives the iPXE script of a host, by its MAC address. The control plane implements it per
/// host (tasks, menus); [`DefaultMenu`] is what a node without a master answers.
pub trait BootScripts: Send + Sync {
    /// The iPXE script (starting with `#!ipxe`) for the host with this MAC.
    fn script(&self, mac: [u8; 6]) -> String;

    /// The script as served from `base` (`http://10.99.0.1:8080`, from the request's `Host`),
    /// for scripts that name files on this server. Default: [`BootScripts::script`].
    fn script_at(&self, mac: [u8; 6], base: &str) -> String {
        let _ = base;
        self.script(mac)
    }

    /// The GRUB configuration of the host with this MAC, for the signed chain (see
    /// [`crate::net::grub`]); `base` is the node's HTTP base, where the agent talks to.
    fn grub_config(&self, mac: [u8; 6], base: &str) -> String;

    /// The GRUB menu for a machine that did not say its MAC.
    fn grub_menu(&self, base: &str) -> String;
}

/// The agent's boot environment as a node serves it: kernel and initramfs, paths under the boot
/// directory (`fog bootenv build` writes them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentFiles {
    /// The kernel (`bootenv/vmlinuz`).
    pub kernel: String,
    /// The initramfs (`bootenv/initrd.img`).
    pub initrd: String,
}

impl Default for AgentFiles {
    fn default() -> Self {
        AgentFiles {
            kernel: "bootenv/vmlinuz".into(),
            initrd: "bootenv/initrd.img".into(),
        }
    }
}

/// The `fog.*` arguments the boot environment's `/init` reads (see `fogcore::bootenv`).
#[derive(Debug, Clone, Default)]
pub struct AgentArgs {
    /// Where the agent talks to (`fog.master=`).
    pub master: String,
    /// The node (`fog.node=`).
    pub node: Option<String>,
    /// The task (`fog.task=`); none for the menu's items.
    pub task: Option<i64>,
    /// What to do (`fog.action=`: a task kind, or register, sysinfo, shell).
    pub action: String,
    /// The MAC it booted from (`fog.mac=`).
    pub mac: Option<String>,
    /// The bearer token (`fog.token=`).
    pub token: Option<String>,
    /// The image (`fog.image=`).
    pub image: Option<String>,
    /// More kernel arguments (the host's).
    pub extra: String,
}

/// Kernel-argument text made safe for one iPXE line: control characters become spaces.
pub fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

impl AgentFiles {
    /// The kernel's arguments as iPXE gives them: `initrd=<name>` (UEFI's stub finds the
    /// initramfs by it), then [`AgentFiles::fog_args`].
    pub fn kernel_args(&self, args: &AgentArgs) -> String {
        let initrd_name = self.initrd.rsplit('/').next().unwrap_or(&self.initrd);
        format!("initrd={initrd_name} {}", self.fog_args(args))
    }

    /// The serial and screen consoles, then `fog.*`, then `extra`.
    pub fn fog_args(&self, args: &AgentArgs) -> String {
        let mut line = format!(
            "console=tty0 console=ttyS0,115200n8 fog.master={}",
            one_line(&args.master)
        );
        let mut push = |key: &str, value: Option<String>| {
            if let Some(value) = value.map(|v| one_line(&v)).filter(|v| !v.is_empty()) {
                line.push_str(&format!(" fog.{key}={value}"));
            }
        };
        push("node", args.node.clone());
        push("task", args.task.map(|t| t.to_string()));
        push("action", Some(args.action.clone()));
        push("mac", args.mac.clone());
        push("token", args.token.clone());
        push("image", args.image.clone());
        let extra = one_line(&args.extra);
        if !extra.is_empty() {
            line.push(' ');
            line.push_str(&extra);
        }
        line
    }

    /// iPXE lines that boot the environment from `base` with `args`, going to `failed` when a
    /// step fails.
    pub fn boot_lines(&self, base: &str, args: &AgentArgs, failed: &str) -> String {
        let base = base.trim_end_matches('/');
        format!(
            "kernel {base}/{kernel} {line} || goto {failed}\n\
             initrd {base}/{initrd} || goto {failed}\n\
             boot || goto {failed}\n",
            kernel = self.kernel,
            initrd = self.initrd,
            line = self.kernel_args(args),
        )
    }
}

/// A menu whose default, after `timeout_ms`, is to boot from the local disk: `sanboot` of the
/// first BIOS disk, or `exit` back to the UEFI boot manager (next boot entry). With `agent` set
/// (and the server's base URL known) it also offers the boot environment: quick registration,
/// system information, deploy and capture (the operator types an admin token at the console)
/// and a debug shell, each booting the environment with `fog.action=` and `fog.master=` this node.
#[derive(Debug, Clone)]
pub struct DefaultMenu {
    /// Milliseconds before the default item is taken.
    pub timeout_ms: u32,
    /// The boot environment the items boot; none: only the local disk and iPXE items.
    pub agent: Option<AgentFiles>,
    /// The item taken after the timeout: `local` (the usual), or one of the boot
    /// environment's (`register` makes a room of new machines register themselves unattended).
    pub default_item: String,
}

impl Default for DefaultMenu {
    fn default() -> Self {
        DefaultMenu {
            timeout_ms: 5000,
            agent: Some(AgentFiles::default()),
            default_item: "local".into(),
        }
    }
}

impl DefaultMenu {
    /// The boot environment the menu offers when served from `base` (none without a base URL),
    /// and the item taken after the timeout: `default_item` when it is offered, else `local`.
    /// iPXE's menu and GRUB's ([`crate::net::grub::menu_config`]) share it.
    pub fn agent_and_default(&self, base: &str) -> (Option<&AgentFiles>, &str) {
        let agent = self.agent.as_ref().filter(|_| !base.is_empty());
        let offered = agent.is_some() && AGENT_ITEMS.iter().any(|(label, ..)| *label == self.default_item);
        (agent, if offered { self.default_item.as_str() } else { "local" })
    }
}

/// The menu's boot-environment items: (label, text, `fog.action`).
pub const AGENT_ITEMS: &[(&str, &str, &str)] = &[
    ("register", "Quick registration", "register"),
    ("sysinfo", "System information", "sysinfo"),
    ("deploy", "Deploy an image (admin token)", "deploy"),
    ("capture", "Capture an image (admin token)", "capture"),
    ("multicast", "Join a multicast session", "join"),
    ("debug", "Debug shell", "shell"),
];

impl BootScripts for DefaultMenu {
    fn script(&self, mac: [u8; 6]) -> String {
        self.script_at(mac, "")
    }

    fn script_at(&self, mac: [u8; 6], base: &str) -> String {
        let mac = format_mac(mac);
        let (agent, default_item) = self.agent_and_default(base);
        let base = base.trim_end_matches('/');
        let mut items = String::new();
        let mut targets = String::new();
        if let Some(files) = agent {
            for (label, text, action) in AGENT_ITEMS {
                items.push_str(&format!("item {label} {text}\n"));
                let args = AgentArgs {
                    master: base.to_string(),
                    action: action.to_string(),
                    mac: Some(mac.clone()),
                    ..AgentArgs::default()
                };
                targets.push_str(&format!(
                    "\n:{label}\necho fog: {text}\n{}",
                    files.boot_lines(base, &args, "agent_failed")
                ));
            }
            targets.push_str(&format!(
                "\n:agent_failed\n\
                 echo fog: cannot boot the boot environment from {base}/{kernel} (run fog bootenv build on the node)\n\
                 prompt Press a key for the menu\n\
                 chain --autofree {base}/boot/{mac}\n",
                kernel = files.kernel
            ));
        }
        format!(
            "#!ipxe\n\
             # fog boot menu for {mac}\n\
             menu fog: {mac}\n\
             item local Boot from the local disk\n\
             {items}\
             item --gap -- Imaging tasks appear here when the node has one for this host\n\
             item shell iPXE shell\n\
             item reboot Reboot\n\
             choose --timeout {timeout} --default {default_item} target && goto ${{target}} || goto {default_item}\n\
             \n\
             :local\n\
             echo Booting from the local disk\n\
             iseq ${{platform}} efi && goto local_efi ||\n\
             sanboot --no-describe --drive 0x80 || goto local_failed\n\
             :local_efi\n\
             exit\n\
             :local_failed\n\
             echo No bootable local disk; press a key to reboot\n\
             prompt\n\
             reboot\n\
             {targets}\
             \n\
             :shell\n\
             shell\n\
             goto local\n\
             \n\
             :reboot\n\
             reboot\n",
            timeout = self.timeout_ms,
        )
    }

    fn grub_config(&self, mac: [u8; 6], base: &str) -> String {
        crate::net::grub::menu_config(self, Some(mac), base)
    }

    fn grub_menu(&self, base: &str) -> String {
        crate::net::grub::menu_config(self, None, base)
    }
}

/// Hand-written per-host scripts beside the menu: `hosts/52-54-00-12-34-56.ipxe` under the boot
/// directory is that host's script (as pxelinux's `pxelinux.cfg/01-<mac>`), and
/// `hosts/52-54-00-12-34-56.grub.cfg` its GRUB config for the signed chain; a host without one
/// gets `menu`. A file that resolves outside the boot directory (a symlink) is ignored.
#[derive(Debug, Clone)]
pub struct HostFilesOrMenu {
    /// The boot directory.
    pub boot_dir: PathBuf,
    /// What hosts without a file get.
    pub menu: DefaultMenu,
}

impl HostFilesOrMenu {
    /// The path of `mac`'s script file.
    pub fn host_file(&self, mac: [u8; 6]) -> PathBuf {
        self.host_file_named(mac, "ipxe")
    }

    /// The path of `mac`'s GRUB config file.
    pub fn host_grub_file(&self, mac: [u8; 6]) -> PathBuf {
        self.host_file_named(mac, "grub.cfg")
    }

    fn host_file_named(&self, mac: [u8; 6], extension: &str) -> PathBuf {
        let name = format_mac(mac).replace(':', "-");
        self.boot_dir.join("hosts").join(format!("{name}.{extension}"))
    }

    fn read_inside(&self, path: &Path) -> Option<String> {
        let root = std::fs::canonicalize(&self.boot_dir).ok()?;
        let real = std::fs::canonicalize(path).ok()?;
        if !real.starts_with(&root) {
            tracing::warn!(path = %path.display(), "http: host script resolves outside the boot directory; ignored");
            return None;
        }
        std::fs::read_to_string(real).ok()
    }
}

impl BootScripts for HostFilesOrMenu {
    fn script(&self, mac: [u8; 6]) -> String {
        self.read_inside(&self.host_file(mac))
            .unwrap_or_else(|| self.menu.script(mac))
    }

    fn script_at(&self, mac: [u8; 6], base: &str) -> String {
        self.read_inside(&self.host_file(mac))
            .unwrap_or_else(|| self.menu.script_at(mac, base))
    }

    fn grub_config(&self, mac: [u8; 6], base: &str) -> String {
        self.read_inside(&self.host_grub_file(mac))
            .unwrap_or_else(|| self.menu.grub_config(mac, base))
    }

    fn grub_menu(&self, base: &str) -> String {
        self.menu.grub_menu(base)
    }
}

/// The script at `/boot.ipxe` (and in TFTP's virtual `boot.ipxe`): chain to this host's script at
/// `base` (e.g. `http://10.99.0.1:8080`). `${netX/mac}` is the MAC of the NIC iPXE booted from.
pub fn chain_script(base: &str) -> String {
    format!(
        "#!ipxe\n\
         # fog: fetch this host's script from its node\n\
         chain --autofree {base}/boot/${{netX/mac}} || goto failed\n\
         exit\n\
         :failed\n\
         echo fog: cannot fetch {base}/boot/${{netX/mac}}; retrying in 10 s\n\
         sleep 10\n\
         chain --autofree {base}/boot.ipxe\n"
    )
}

/// `52:54:00:12:34:56`.
pub fn format_mac(mac: [u8; 6]) -> String {
    crate::names::Mac(mac).to_string()
}

/// Parses a MAC written `52:54:00:12:34:56`, `52-54-00-12-34-56` or `525400123456` (any case).
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    crate::names::Mac::parse(text).map(|mac| mac.0)
}

/// What the HTTP service serves.
#[derive(Clone)]
pub struct HttpService {
    /// The boot directory (files served as they are).
    pub boot_dir: PathBuf,
    /// Per-host scripts.
    pub scripts: Arc<dyn BootScripts>,
    /// Base URL put in `/boot.ipxe` when the request has no usable `Host` header
    /// (e.g. `http://10.99.0.1:8080`).
    pub fallback_base: String,
    /// Routes of higher layers served beside the boot files (a node's agent API under
    /// `/api/v1`); they take precedence over files of the same path.
    pub extra_routes: Option<Router>,
}

#[derive(Clone)]
struct AppState {
    root: PathBuf,
    scripts: Arc<dyn BootScripts>,
    fallback_base: String,
    files: ServeDir,
}

impl HttpService {
    /// The axum router of the service (for embedding or tests). The boot directory must exist.
    pub fn router(&self) -> Result<Router> {
        let root = std::fs::canonicalize(&self.boot_dir).map_err(|e| Error::io(&self.boot_dir, e))?;
        if !root.is_dir() {
            return Err(Error::InvalidInput(format!(
                "boot directory {} is not a directory",
                self.boot_dir.display()
            )));
        }
        let state = AppState {
            files: ServeDir::new(&root).append_index_html_on_directories(false),
            root,
            scripts: self.scripts.clone(),
            fallback_base: self.fallback_base.clone(),
        };
        let boot = Router::new()
            .route("/boot.ipxe", get(boot_ipxe))
            .route("/boot/{mac}", get(host_script))
            .fallback(static_file)
            .with_state(state);
        Ok(match &self.extra_routes {
            Some(extra) => extra.clone().merge(boot),
            None => boot,
        })
    }

    /// Binds `listen` and checks the boot directory; nothing is served until [`HttpServer::run`].
    pub async fn bind(&self, listen: SocketAddr) -> Result<HttpServer> {
        let router = self.router()?;
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|e| bind_error("http", "tcp", listen, e))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| bind_error("http", "tcp", listen, e))?;
        Ok(HttpServer {
            listener,
            router,
            local_addr,
        })
    }
}

/// The error of a socket that cannot be bound, naming the service, the address and the likely
/// cause. Always bad input (exit code 2): the user picks ports and privileges.
pub(crate) fn bind_error(service: &str, proto: &str, addr: SocketAddr, e: std::io::Error) -> Error {
    let port = addr.port();
    let why = match e.kind() {
        std::io::ErrorKind::AddrInUse => format!("port {port} is already in use by another program"),
        std::io::ErrorKind::PermissionDenied => {
            format!("permission denied for port {port} (ports below 1024 need root or CAP_NET_BIND_SERVICE)")
        }
        std::io::ErrorKind::AddrNotAvailable => format!("no interface of this machine has address {}", addr.ip()),
        _ => format!("port {port}: {e}"),
    };
    Error::InvalidInput(format!("{service}: cannot listen on {proto} {addr}: {why}"))
}

/// A bound HTTP service.
pub struct HttpServer {
    listener: TcpListener,
    router: Router,
    local_addr: SocketAddr,
}

impl HttpServer {
    /// The address actually bound (the port when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `cancel`, then stops accepting and lets running requests finish for at most
    /// `grace` (a 500 MB download is cut, not waited for).
    pub async fn run(self, cancel: CancellationToken, grace: Duration) -> Result<()> {
        let addr = self.local_addr;
        tracing::info!(%addr, "http: serving");
        let stop = cancel.clone();
        let serve =
            axum::serve(self.listener, self.router).with_graceful_shutdown(async move { stop.cancelled().await });
        let serve = std::pin::pin!(serve.into_future());
        let result = tokio::select! {
            r = serve => r,
            () = async {
                cancel.cancelled().await;
                tokio::time::sleep(grace).await;
            } => {
                tracing::warn!(%addr, "http: requests still running after {grace:?}; cut");
                Ok(())
            }
        };
        tracing::info!(%addr, "http: stopped");
        result.map_err(|e| Error::InvalidInput(format!("http {addr}: {e}")))
    }
}

/// The host of the request as a base URL, if the `Host` header is a plain host[:port].
fn base_from_host(headers: &HeaderMap) -> Option<String> {
    let host = headers.get(header::HOST)?.to_str().ok()?;
    let plain = !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'));
    plain.then(|| format!("http://{host}"))
}

fn ipxe(script: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], script).into_response()
}

async fn boot_ipxe(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let base = base_from_host(&headers).unwrap_or_else(|| state.fallback_base.clone());
    ipxe(chain_script(&base))
}

async fn host_script(State(state): State<AppState>, headers: HeaderMap, UrlPath(mac): UrlPath<String>) -> Response {
    let base = base_from_host(&headers).unwrap_or_else(|| state.fallback_base.clone());
    match parse_mac(&mac) {
        Some(mac) => ipxe(state.scripts.script_at(mac, &base)),
        None => (
            StatusCode::BAD_REQUEST,
            format!("malformed MAC address {mac:?}: expected six hex bytes like 52:54:00:12:34:56\n"),
        )
            .into_response(),
    }
}

/// Decodes `%XX` escapes; `None` for a malformed escape or a result that is not UTF-8.
fn percent_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'%' {
            let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The file under `root` that `url_path` names, if it stays inside `root` once every symlink is
/// resolved. `Err(())` when the path must be refused, `Ok(None)` when it does not exist.
async fn resolve_inside(root: &Path, url_path: &str) -> Result<Option<PathBuf>, ()> {
    let decoded = percent_decode(url_path.trim_start_matches('/')).ok_or(())?;
    if decoded.contains('\0') || decoded.contains('\\') {
        return Err(());
    }
    let mut path = root.to_path_buf();
    for component in Path::new(&decoded).components() {
        match component {
            Component::Normal(part) => path.push(part),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return Err(()),
        }
    }
    match tokio::fs::canonicalize(&path).await {
        Ok(real) if real.starts_with(root) => Ok(Some(real)),
        Ok(_) => Err(()),
        Err(_) => Ok(None),
    }
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

async fn static_file(State(mut state): State<AppState>, request: Request) -> Response {
    let path = request.uri().path().to_string();
    match resolve_inside(&state.root, &path).await {
        Ok(Some(_)) => {}
        Ok(None) => return not_found(),
        Err(()) => {
            tracing::warn!(path, "http: refused a path outside the boot directory");
            return not_found();
        }
    }
    match state.files.try_call(request).await {
        Ok(response) => response.map(Body::new),
        Err(e) => {
            tracing::warn!(path, error = %e, "http: cannot serve file");
            (StatusCode::INTERNAL_SERVER_ERROR, "cannot read file\n").into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_macs_in_the_usual_spellings() {
        let mac = Some([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
        assert_eq!(parse_mac("52:54:00:12:34:56"), mac);
        assert_eq!(parse_mac("52-54-00-12-34-56"), mac);
        assert_eq!(parse_mac("525400123456"), mac);
        assert_eq!(parse_mac("52:54:00:12:34:5G"), None);
        assert_eq!(parse_mac("52:54:00:12:34"), None);
        assert_eq!(parse_mac("52:54:00:12:34:56:78"), None);
        assert_eq!(parse_mac("5:54:00:12:34:567"), None);
        assert_eq!(parse_mac("+2:54:00:12:34:56"), None);
        assert_eq!(parse_mac("ééé"), None);
        assert_eq!(format_mac([0x52, 0x54, 0, 0x12, 0x34, 0xab]), "52:54:00:12:34:ab");
    }

    #[test]
    fn decodes_percent_escapes() {
        assert_eq!(percent_decode("%2e%2E/a%20b").as_deref(), Some("../a b"));
        assert_eq!(percent_decode("%2"), None);
        assert_eq!(percent_decode("%zz"), None);
    }

    #[test]
    fn a_host_file_replaces_the_menu_for_that_host_only() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let outside = tempfile::tempdir()?;
        std::fs::create_dir(dir.path().join("hosts"))?;
        std::fs::write(dir.path().join("hosts/52-54-00-12-34-56.ipxe"), "#!ipxe\necho mine\n")?;
        std::fs::write(outside.path().join("secret.ipxe"), "#!ipxe\necho secret\n")?;
        std::os::unix::fs::symlink(
            outside.path().join("secret.ipxe"),
            dir.path().join("hosts/52-54-00-00-00-02.ipxe"),
        )?;
        let scripts = HostFilesOrMenu {
            boot_dir: dir.path().to_path_buf(),
            menu: DefaultMenu::default(),
        };
        assert_eq!(scripts.script([0x52, 0x54, 0, 0x12, 0x34, 0x56]), "#!ipxe\necho mine\n");
        assert!(
            scripts
                .script([0x52, 0x54, 0, 0x12, 0x34, 0x57])
                .contains("choose --timeout")
        );
        let escaped = scripts.script([0x52, 0x54, 0, 0, 0, 2]);
        assert!(!escaped.contains("secret") && escaped.contains("choose --timeout"));
        Ok(())
    }

    #[test]
    fn menu_defaults_to_the_local_disk() {
        let script = DefaultMenu::default().script([0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        assert!(script.starts_with("#!ipxe\n"));
        assert!(script.contains("choose --timeout 5000 --default local"));
        assert!(script.contains("sanboot --no-describe --drive 0x80"));
        assert!(script.contains("iseq ${platform} efi"));
    }

    #[test]
    fn menu_boots_the_environment_with_each_action() {
        let mac = [0x52, 0x54, 0, 0x12, 0x34, 0x56];
        let script = DefaultMenu::default().script_at(mac, "http://10.99.0.1:8080/");
        assert!(script.contains("choose --timeout 5000 --default local"));
        for (label, action) in [
            ("register", "register"),
            ("sysinfo", "sysinfo"),
            ("deploy", "deploy"),
            ("capture", "capture"),
            ("debug", "shell"),
        ] {
            assert!(script.contains(&format!("\nitem {label} ")), "item {label}");
            let block = script.split(&format!("\n:{label}\n")).nth(1).unwrap_or_default();
            let kernel = block.lines().find(|l| l.starts_with("kernel ")).unwrap_or_default();
            assert_eq!(
                kernel,
                format!(
                    "kernel http://10.99.0.1:8080/bootenv/vmlinuz initrd=initrd.img console=tty0 \
                     console=ttyS0,115200n8 fog.master=http://10.99.0.1:8080 fog.action={action} \
                     fog.mac=52:54:00:12:34:56 || goto agent_failed"
                )
            );
            assert!(block.contains("\ninitrd http://10.99.0.1:8080/bootenv/initrd.img || goto agent_failed\n"));
            assert!(!block.contains("fog.token"), "the menu gives no token");
        }
        // Without a base URL or without a boot environment: only the local disk and iPXE.
        let plain = DefaultMenu::default().script(mac);
        assert!(!plain.contains("fog.action") && plain.contains(":local\n"));
        let none = DefaultMenu {
            agent: None,
            ..DefaultMenu::default()
        };
        assert!(!none.script_at(mac, "http://x").contains("fog.action"));
        // An unattended room: registration after the timeout; an unknown item falls back to local.
        let register = DefaultMenu {
            default_item: "register".into(),
            ..DefaultMenu::default()
        };
        assert!(
            register
                .script_at(mac, "http://x")
                .contains("--default register target && goto ${target} || goto register\n")
        );
        let bogus = DefaultMenu {
            default_item: "nope".into(),
            ..DefaultMenu::default()
        };
        assert!(bogus.script_at(mac, "http://x").contains("--default local "));
    }

    #[test]
    fn agent_kernel_line_keeps_each_argument_on_one_line() {
        let files = AgentFiles::default();
        let args = AgentArgs {
            master: "http://m:8090".into(),
            node: Some("site a".into()),
            task: Some(7),
            action: "capture".into(),
            mac: None,
            token: Some("fogt_7_x".into()),
            image: Some("img\nchain http://evil".into()),
            extra: " quiet\n".into(),
        };
        assert_eq!(
            files.kernel_args(&args),
            "initrd=initrd.img console=tty0 console=ttyS0,115200n8 fog.master=http://m:8090 fog.node=site a \
             fog.task=7 fog.action=capture fog.token=fogt_7_x fog.image=img chain http://evil quiet"
        );
    }
}
