//! A bare TFTP server for `scripts/e2e.d/30-tftp.sh` and `benches/tftp.sh`, until `fog serve`
//! runs it. Serves DIR until SIGINT or SIGTERM.
//!
//! ```text
//! cargo run --release -p fogcore --example fog_tftp_e2e -- --root DIR --listen 127.0.0.1:6969 \
//!     [--max-blksize N] [--max-windowsize N] [--max-transfers N] [--threads N]
//! ```
//!
//! `--threads 0` runs everything on one thread (tokio's current-thread runtime); the default is
//! tokio's multi-threaded runtime with one worker per core.
//!
//! Prints `listening on ADDR` once bound; a bad argument or a bind error is one line on stderr
//! and exit code 2.

use std::process::ExitCode;

use fogcore::net::tftp::{TftpConfig, TftpServer};
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;

fn parse_args() -> Result<(TftpConfig, Option<usize>), String> {
    let mut config = TftpConfig::new("");
    let mut threads = None;
    let mut root = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = |v: &str| v.parse::<u64>().map_err(|_| format!("{flag}: {v:?} is not a number"));
        match flag.as_str() {
            "--root" => root = Some(value),
            "--listen" => config.listen = value.parse().map_err(|_| format!("--listen: bad address {value:?}"))?,
            "--max-blksize" => config.max_blksize = number(&value)?.try_into().map_err(|_| "--max-blksize too big")?,
            "--max-windowsize" => {
                config.max_windowsize = number(&value)?.try_into().map_err(|_| "--max-windowsize too big")?;
            }
            "--max-transfers" => config.max_transfers = number(&value)?.try_into().map_err(|_| "too big")?,
            "--threads" => threads = Some(number(&value)?.try_into().map_err(|_| "too big")?),
            other => return Err(format!("unknown flag {other}")),
        }
    }
    config.root = root.ok_or("--root DIR is required")?.into();
    Ok((config, threads))
}

fn main() -> ExitCode {
    let (config, threads) = match parse_args() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fog_tftp_e2e: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match threads {
        Some(0) => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        Some(n) => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
        None => tokio::runtime::Builder::new_multi_thread().enable_all().build(),
    };
    match runtime {
        Ok(rt) => rt.block_on(serve(config)),
        Err(e) => {
            eprintln!("fog_tftp_e2e: runtime: {e}");
            ExitCode::from(1)
        }
    }
}

async fn serve(config: TftpConfig) -> ExitCode {
    let server = match TftpServer::bind(config, None).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("fog_tftp_e2e: {e}");
            return ExitCode::from(2);
        }
    };
    println!("listening on {}", server.local_addr());
    let cancel = CancellationToken::new();
    let stopper = cancel.clone();
    tokio::spawn(async move {
        let (Ok(mut int), Ok(mut term)) = (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) else {
            return;
        };
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
        stopper.cancel();
    });
    match server.run(cancel).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fog_tftp_e2e: {e}");
            ExitCode::from(1)
        }
    }
}
