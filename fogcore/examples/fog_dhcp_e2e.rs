//! A stand-in for `fog serve` in the DHCP e2e and benchmark scripts until the CLI lands:
//! `fog_dhcp_e2e CONFIG.toml [HTTP_PORT]` runs `DhcpServer` from a `[dhcp]`-style TOML file
//! (the table's content, not the header), logging to stderr (`FOG_LOG=debug` for more), until
//! SIGINT or SIGTERM.

use std::fmt::Write as _;
use std::sync::Arc;

use fogcore::net::boot::DefaultBootPolicy;
use fogcore::net::dhcp::{DhcpConfig, DhcpServer};
use tokio_util::sync::CancellationToken;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Metadata, span};

/// The smallest subscriber that prints events (fogcore has no tracing-subscriber).
struct Stderr(Level);

struct Line(String);

impl Visit for Line {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, " {value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            let _ = write!(self.0, " {value}");
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }
}

impl tracing::Subscriber for Stderr {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        *m.level() <= self.0
    }
    fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
        span::Id::from_u64(1)
    }
    fn record(&self, _: &span::Id, _: &span::Record<'_>) {}
    fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}
    fn event(&self, e: &Event<'_>) {
        let mut line = Line(format!("{} {}:", e.metadata().level(), e.metadata().target()));
        e.record(&mut line);
        eprintln!("{}", line.0);
    }
    fn enter(&self, _: &span::Id) {}
    fn exit(&self, _: &span::Id) {}
}

#[tokio::main]
async fn main() {
    let level = match std::env::var("FOG_LOG").as_deref() {
        Ok("debug") => Level::DEBUG,
        Ok("trace") => Level::TRACE,
        _ => Level::INFO,
    };
    let _ = tracing::subscriber::set_global_default(Stderr(level));
    let mut args = std::env::args().skip(1);
    let Some(path) = args.next() else {
        eprintln!("usage: fog_dhcp_e2e CONFIG.toml [HTTP_PORT]");
        std::process::exit(2);
    };
    let http_port: u16 = args.next().and_then(|p| p.parse().ok()).unwrap_or(8080);
    let config: DhcpConfig = match std::fs::read_to_string(&path)
        .map_err(|e| e.to_string())
        .and_then(|t| toml::from_str(&t).map_err(|e| e.to_string()))
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {path}: {e}");
            std::process::exit(2);
        }
    };
    let policy = Arc::new(DefaultBootPolicy::new(config.server_ip, http_port));
    let server = match DhcpServer::bind(config, policy).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    };
    eprintln!("ready on {}", server.local_addr());
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    tokio::spawn(async move {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(t) => t,
            Err(_) => return,
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        stop.cancel();
    });
    if let Err(e) = server.run(cancel).await {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
