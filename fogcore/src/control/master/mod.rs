//! The master's REST API (JSON over HTTP) on [`Control`]. Every route is one row of [`routes`]:
//! the router, the token check and the OpenAPI document (`GET /api/v1/openapi.json`) are all
//! built from that table, so what is documented is what is served.
//!
//! Tokens travel as `Authorization: Bearer TOKEN`. Admin routes need an admin token; node routes
//! (check-in, progress, check-out, heartbeat, a node's tasks) take an admin token or the token of
//! the node concerned; only `/api/v1/health` and the OpenAPI document are public. Errors are
//! `{"code": "...", "message": "..."}` with a status saying whose fault it was.
//!
//! Here: how a master starts ([`serve`], [`Master`]); the table in `routes`; the document is
//! made by [`crate::control::openapi`] from the table.

mod routes;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use self::routes::{Health, router, routes};
use crate::control::db::Db;
use crate::control::service::Control;
use crate::error::{Error, Result};
use crate::imaging::replica::{ImageStore, LocalStore};
use crate::imaging::store::Store;
use crate::net::tls::ServerTls;

/// The OpenAPI 3.1 document of [`routes`] (`GET /api/v1/openapi.json`).
pub fn openapi() -> serde_json::Value {
    crate::control::openapi::document("fog master", &routes())
}

/// How to start a master: what `fog master` and Python's `fog.start_master` both fill in.
#[derive(Clone, Default)]
pub struct MasterConfig {
    /// Where it listens.
    pub listen: Option<SocketAddr>,
    /// Its directory: `fog.db` (unless `database` is given), `admin-token`, `store/`.
    pub data_dir: Option<PathBuf>,
    /// A database URL (`sqlite://...`, `postgres://...`) instead of `DATA_DIR/fog.db`.
    pub database: Option<String>,
    /// The image store its chunk routes serve. `None`: `DATA_DIR/store` (created).
    pub store: Option<Arc<dyn ImageStore>>,
    /// The memory budget of each job of `DATA_DIR/store` in MiB (`None`: the store's default).
    pub store_memory_mib: Option<u64>,
    /// HTTPS, and with which certificate.
    pub tls: MasterTls,
}

/// Whether a master speaks HTTPS, and with which certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum MasterTls {
    /// Plain HTTP.
    #[default]
    Off,
    /// This certificate chain and key (PEM files).
    Files {
        /// The certificate chain, the server's first.
        cert: PathBuf,
        /// Its private key.
        key: PathBuf,
    },
    /// A self-signed certificate made on the first start and kept in the data directory
    /// (`tls-cert.pem`, `tls-key.pem`), for these extra names besides localhost and the host's.
    SelfSigned {
        /// Extra DNS names or IP addresses the certificate names.
        names: Vec<String>,
    },
}

impl std::fmt::Debug for MasterConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterConfig")
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field("database", &self.database.as_deref().map(crate::control::db::redact))
            .field("store", &self.store.is_some())
            .field("tls", &self.tls)
            .finish()
    }
}

/// A secret a first start made: the admin token, or the first user's password.
#[derive(Debug, Clone)]
pub struct FirstToken {
    /// The secret (shown once).
    pub token: String,
    /// The file it was written to (mode 0600), when the master has a data directory.
    pub file: Option<PathBuf>,
}

/// A master started by [`serve`]: the server, and the admin token when this start issued one.
pub struct Started {
    /// The running master.
    pub master: Master,
    /// The first admin token, on a first start (no admin token in the database yet).
    pub first_token: Option<FirstToken>,
    /// The first user's (`admin`) password, on a first start (no user yet): shown once, as the
    /// token is, and kept in `DATA_DIR/admin-password` (0600).
    pub first_password: Option<FirstToken>,
    /// The store directory it serves, when it opened one itself.
    pub store_dir: Option<PathBuf>,
    /// Its certificate, when it speaks HTTPS.
    pub tls: Option<ServerTls>,
}

/// Opens the database and the store `config` names, issues the first admin token on a first
/// start, and serves the API and the scheduler.
pub async fn serve(config: &MasterConfig) -> Result<Started> {
    let listen = config
        .listen
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)));
    if let Some(dir) = &config.data_dir {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let db = match (&config.database, &config.data_dir) {
        (Some(url), _) => Db::open(url).await?,
        (None, Some(dir)) => Db::open_dir(dir).await?,
        (None, None) => {
            return Err(Error::invalid(
                "master",
                "",
                "give a data directory or a database URL (where the inventory is kept)",
            ));
        }
    };
    let control = Arc::new(Control::new(db));
    let mut store_dir = None;
    match (&config.store, &config.data_dir) {
        (Some(store), _) => control.set_image_store(store.clone()),
        (None, Some(dir)) => {
            let dir = dir.join("store");
            let mut store = Store::open(&dir)?;
            if let Some(mib) = config.store_memory_mib {
                store = store.with_memory_mib(mib);
            }
            control.set_image_store(Arc::new(LocalStore::new(store)));
            store_dir = Some(dir);
        }
        (None, None) => {}
    }
    let tls = match (&config.tls, &config.data_dir) {
        (MasterTls::Off, _) => None,
        (MasterTls::Files { cert, key }, _) => Some(ServerTls::load(cert, key)?),
        (MasterTls::SelfSigned { names }, Some(dir)) => Some(ServerTls::self_signed(dir, names)?),
        (MasterTls::SelfSigned { .. }, None) => {
            return Err(Error::invalid(
                "tls",
                "self-signed",
                "a self-signed certificate is kept in the data directory: give one",
            ));
        }
    };
    let first_token = control
        .first_admin_token(config.data_dir.as_deref())
        .await?
        .map(|(token, file)| FirstToken { token, file });
    let first_password = control
        .first_admin_user(config.data_dir.as_deref())
        .await?
        .map(|(token, file)| FirstToken { token, file });
    let master = Master::start_with_tls(control, listen, tls.as_ref()).await?;
    Ok(Started {
        master,
        first_token,
        first_password,
        store_dir,
        tls,
    })
}

/// The port a master listens on unless told.
pub const DEFAULT_PORT: u16 = 8090;

/// A running master: the API on a socket and the scheduler.
pub struct Master {
    addr: SocketAddr,
    https: bool,
    control: Arc<Control>,
    cancel: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// How often due schedules are looked for.
pub const SCHEDULE_TICK: Duration = Duration::from_secs(15);

impl Master {
    /// Binds `listen` and serves the API (plain HTTP) and the scheduler until [`Master::stop`].
    pub async fn start(control: Arc<Control>, listen: SocketAddr) -> Result<Master> {
        Master::start_with_tls(control, listen, None).await
    }

    /// Binds `listen` and serves the API, over HTTPS when given a certificate, and the scheduler
    /// until [`Master::stop`].
    pub async fn start_with_tls(control: Arc<Control>, listen: SocketAddr, tls: Option<&ServerTls>) -> Result<Master> {
        let listener = TcpListener::bind(listen).await.map_err(|e| {
            let reason = if e.kind() == std::io::ErrorKind::AddrInUse {
                format!("port {} is already in use", listen.port())
            } else {
                e.to_string()
            };
            Error::invalid("listen address", listen.to_string(), reason)
        })?;
        let addr = listener.local_addr().map_err(|e| Error::io("master socket", e))?;
        let cancel = CancellationToken::new();
        let app = router(control.clone())
            .merge(crate::control::web::router(
                control.clone(),
                tls.is_some(),
                cancel.clone(),
            ))
            .into_make_service_with_connect_info::<SocketAddr>();
        let stop = cancel.clone();
        let server = match tls {
            None => tokio::spawn(async move {
                let result = axum::serve(listener, app)
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await;
                if let Err(e) = result {
                    tracing::warn!("master: {e}");
                }
            }),
            Some(tls) => {
                // `tap_io` makes the TLS listener's peer address reach handlers as ConnectInfo.
                let listener = tls.listener(listener, cancel.child_token())?.tap_io(|_| {});
                tokio::spawn(async move {
                    let result = axum::serve(listener, app)
                        .with_graceful_shutdown(stop.cancelled_owned())
                        .await;
                    if let Err(e) = result {
                        tracing::warn!("master: {e}");
                    }
                })
            }
        };
        let stop = cancel.clone();
        let ticker = control.clone();
        let scheduler = tokio::spawn(async move {
            let mut tick = tokio::time::interval(SCHEDULE_TICK);
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    _ = tick.tick() => {
                        match ticker.run_schedules(ticker.clock().now()).await {
                            Ok(r) if !r.created.is_empty() || !r.skipped.is_empty() => tracing::info!(
                                created = r.created.len(), skipped = r.skipped.len(), "schedules fired"
                            ),
                            Ok(_) => {}
                            Err(e) => tracing::warn!("schedules: {e}"),
                        }
                    }
                }
            }
        });
        Ok(Master {
            addr,
            https: tls.is_some(),
            control,
            cancel,
            tasks: vec![server, scheduler],
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its base URL: `http://` or `https://` and the address it listens on.
    pub fn url(&self) -> String {
        let scheme = if self.https { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Its logic and database.
    pub fn control(&self) -> &Arc<Control> {
        &self.control
    }

    /// A token that stops it when cancelled.
    pub fn cancellation(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Stops serving (open requests get 5 seconds) and closes the database.
    pub async fn stop(self) -> Result<()> {
        self.cancel.cancel();
        for task in self.tasks {
            if tokio::time::timeout(Duration::from_secs(5), task).await.is_err() {
                tracing::warn!("master: a task did not stop within 5 s");
            }
        }
        self.control.close().await;
        Ok(())
    }
}
