//! The node's boot services as one unit: DHCP, TFTP and HTTP started from a [`ServeConfig`].
//!
//! [`Server::start`] binds every socket first, on a tokio runtime of its own (its own threads), so
//! a taken port, a missing privilege, an unknown interface or a bad value is one error naming it
//! before anything answers a client. Then the services run until [`ServerHandle::stop`] (bounded:
//! running transfers get a grace period, then are cut) or until one fails. The CLI and the Python
//! module only start, wait and stop it.
//!
//! ```no_run
//! # fn main() -> fogcore::Result<()> {
//! let config = fogcore::net::config::ServeConfig::load("fog.toml".as_ref())?;
//! let server = fogcore::net::server::Server::start(config)?;
//! println!("http on {:?}", server.addrs().http);
//! server.stop()?;
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::config::ServeConfig;
use crate::error::{Error, Result};
use crate::net::boot::DefaultBootPolicy;
use crate::net::dhcp::DhcpServer;
use crate::net::grub::GrubConfigs;
use crate::net::http::{BootScripts, HostFilesOrMenu, HttpService, chain_script};
use crate::net::ra::RaResponder;
use crate::net::tftp::{ChainedFiles, TftpServer, VirtualFiles};

/// How long running requests and transfers may go on after a stop.
const GRACE: Duration = Duration::from_secs(3);
/// How long the runtime waits for tasks that ignore the stop.
const SHUTDOWN: Duration = Duration::from_secs(1);

/// Where each service listens (the real ports when 0 was asked).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerAddrs {
    /// HTTP (tcp).
    pub http: Option<SocketAddr>,
    /// TFTP (udp).
    pub tftp: Option<SocketAddr>,
    /// DHCP (udp, main socket).
    pub dhcp: Option<SocketAddr>,
}

/// Starts the services of a config.
pub struct Server;

impl Server {
    /// Binds everything `config` names, then serves on a runtime thread of its own, with the
    /// default boot menu. Must not be called from inside a tokio runtime.
    pub fn start(config: ServeConfig) -> Result<ServerHandle> {
        let scripts = Arc::new(HostFilesOrMenu {
            boot_dir: config.boot_dir.clone(),
            menu: config.menu(),
        });
        Server::start_with(config, scripts)
    }

    /// [`Server::start`] with the per-host scripts of `scripts` (the control plane's).
    pub fn start_with(config: ServeConfig, scripts: Arc<dyn BootScripts>) -> Result<ServerHandle> {
        Server::start_with_services(config, scripts, None, Vec::new())
    }

    /// [`Server::start_with`] plus routes of higher layers served by the HTTP service (the node's
    /// agent API), and their services (the node role's loop), run beside the others on the
    /// server's runtime and stopped with them. An extra service should run until its token is
    /// cancelled: one that ends by itself ends the server.
    pub fn start_with_services(
        config: ServeConfig,
        scripts: Arc<dyn BootScripts>,
        routes: Option<axum::Router>,
        extra: Vec<(&'static str, Starter)>,
    ) -> Result<ServerHandle> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("fog-serve")
            .build()
            .map_err(|e| Error::Internal(format!("cannot start the server's runtime: {e}")))?;
        let cancel = CancellationToken::new();
        let (addrs, mut services) = runtime.block_on(bind_all(&config, scripts, routes))?;
        services.extend(extra);
        let token = cancel.clone();
        let thread = std::thread::Builder::new()
            .name("fog-serve".into())
            .spawn(move || {
                let result = runtime.block_on(run_all(services, token));
                runtime.shutdown_timeout(SHUTDOWN);
                result
            })
            .map_err(|e| Error::Internal(format!("cannot start the server thread: {e}")))?;
        Ok(ServerHandle {
            cancel,
            thread: Some(thread),
            addrs,
        })
    }
}

/// A bound service, ready to run until the token is cancelled.
pub type Service = std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send>>;
/// Starts a bound service with its cancellation token (called on the server's runtime).
pub type Starter = Box<dyn FnOnce(CancellationToken) -> Service + Send>;

async fn bind_all(
    config: &ServeConfig,
    scripts: Arc<dyn BootScripts>,
    routes: Option<axum::Router>,
) -> Result<(ServerAddrs, Vec<(&'static str, Starter)>)> {
    let mut addrs = ServerAddrs::default();
    let mut services: Vec<(&'static str, Starter)> = Vec::new();

    let mut http_base = None;
    if let Some(listen) = config.http {
        let fallback_base = config
            .http_base()
            .unwrap_or_else(|| format!("http://{}:{}", listen.ip(), listen.port()));
        let service = HttpService {
            boot_dir: config.boot_dir.clone(),
            scripts: scripts.clone(),
            fallback_base,
            extra_routes: routes,
        };
        let http = service.bind(listen).await.map_err(|e| startup("http", e))?;
        let bound = http.local_addr();
        addrs.http = Some(bound);
        // The URL clients are sent to, with the real port when 0 was asked.
        http_base = config.address.map(|a| {
            if bound.port() == 80 {
                format!("http://{a}")
            } else {
                format!("http://{a}:{}", bound.port())
            }
        });
        services.push(("http", Box::new(move |cancel| Box::pin(http.run(cancel, GRACE)))));
    }
    if let Some(tftp) = &config.tftp {
        // Generated per client: iPXE's chain script, and GRUB's configs for the signed chain
        // (their agent talks to the node's HTTP, so both need it).
        let generated: Option<Arc<dyn VirtualFiles>> = http_base.clone().map(|base| {
            Arc::new(ChainedFiles(vec![
                Arc::new(ChainScript { base: base.clone() }),
                Arc::new(GrubConfigs { scripts, base }),
            ])) as Arc<dyn VirtualFiles>
        });
        let server = TftpServer::bind(tftp.clone(), generated)
            .await
            .map_err(|e| startup("tftp", e))?;
        addrs.tftp = Some(server.local_addr());
        services.push(("tftp", Box::new(move |cancel| Box::pin(server.run(cancel)))));
    }
    if let Some(dhcp) = &config.dhcp {
        let server_ip = config.address.unwrap_or(dhcp.server_ip);
        let http_port = addrs.http.map_or(80, |a| a.port());
        let mut policy = DefaultBootPolicy::new(server_ip, http_port);
        policy.bios_file = config.boot.bios_file.clone();
        policy.uefi_x64_file = config.boot.uefi_x64_file.clone();
        policy.uefi_arm64_file = config.boot.uefi_arm64_file.clone();
        policy.secure_boot = config.boot.secure_boot;
        let server = DhcpServer::bind(dhcp.clone(), Arc::new(policy))
            .await
            .map_err(|e| startup("dhcp", e))?;
        addrs.dhcp = Some(server.local_addr());
        services.push(("dhcp", Box::new(move |cancel| Box::pin(server.run(cancel)))));
    }
    if let Some(interface) = &config.ra {
        let responder = RaResponder::bind(interface).map_err(|e| startup("ra", e))?;
        services.push(("ra", Box::new(move |cancel| Box::pin(responder.run(cancel)))));
    }
    Ok((addrs, services))
}

/// An error while binding: always the user's to fix (a port, a privilege, an interface, a value),
/// so it is bad input (exit code 2), prefixed with the service unless it names it already.
fn startup(service: &str, e: Error) -> Error {
    match e {
        Error::InvalidInput(m) if m.starts_with(service) || m.starts_with(&format!("[{service}]")) => {
            Error::InvalidInput(m)
        }
        other => Error::InvalidInput(format!("{service}: {other}")),
    }
}

/// TFTP's `boot.ipxe` (asked before the disk): the same chain script as HTTP's, so an iPXE that
/// asks TFTP for its script (a ROM built that way, or a DHCP option 67 override) lands on HTTP.
struct ChainScript {
    base: String,
}

impl VirtualFiles for ChainScript {
    fn open(&self, path: &str, _client: SocketAddr) -> Option<bytes::Bytes> {
        (path == "boot.ipxe").then(|| bytes::Bytes::from(chain_script(&self.base)))
    }
}

async fn run_all(services: Vec<(&'static str, Starter)>, cancel: CancellationToken) -> Result<()> {
    let mut set = JoinSet::new();
    for (name, service) in services {
        let future = service(cancel.child_token());
        set.spawn(async move { (name, future.await) });
    }
    let mut first_error = None;
    while let Some(joined) = set.join_next().await {
        let failure = match joined {
            Ok((_, Ok(()))) => None,
            Ok((name, Err(e))) => Some(Error::InvalidInput(format!("{name}: {e}"))),
            Err(e) => Some(Error::Internal(format!("a service task failed: {e}"))),
        };
        if let Some(e) = failure {
            tracing::error!("{e}; stopping every service");
            cancel.cancel();
            first_error.get_or_insert(e);
        } else if !cancel.is_cancelled() {
            // A service that ends by itself ends the server.
            cancel.cancel();
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// A running server. Dropping it stops it.
pub struct ServerHandle {
    cancel: CancellationToken,
    thread: Option<JoinHandle<Result<()>>>,
    addrs: ServerAddrs,
}

impl ServerHandle {
    /// Where each service listens.
    pub fn addrs(&self) -> ServerAddrs {
        self.addrs
    }

    /// A token cancelled when the server stops (by [`ServerHandle::stop`], or because a service
    /// failed); cancelling it stops the server. Frontends select on it beside their signals.
    pub fn cancellation(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// True once the server has stopped or is stopping.
    pub fn is_stopped(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Stops every service and waits for them: a few seconds at most (running transfers get
    /// a grace period, then are cut). Returns the error of a service that had failed.
    pub fn stop(mut self) -> Result<()> {
        self.cancel.cancel();
        self.join()
    }

    /// Waits until the server stops by itself (a service failed) or is stopped from another
    /// handle of its [`ServerHandle::cancellation`] token.
    pub fn wait(mut self) -> Result<()> {
        self.join()
    }

    fn join(&mut self) -> Result<()> {
        match self.thread.take() {
            None => Ok(()),
            Some(thread) => thread
                .join()
                .unwrap_or_else(|_| Err(Error::Internal("the server thread panicked".into()))),
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.cancel.cancel();
        let _ = self.join();
    }
}
