//! `cargo bench -p benches --bench imaging`: runs `benches/imaging.sh`, the imaging benchmark of
//! fog side by side with partclone+zstd and casync (see benches/README.md). The script does the
//! work (data generation, the release build of `fog`, the timed runs, the table and the JSON);
//! this target only starts it and passes its exit status on. Run as root; `BENCH_SIZE_MB`,
//! `BENCH_DIR`, `BENCH_STEP_TIMEOUT` and `BENCH_KEEP` reach the script unchanged.

use std::path::Path;
use std::process::{Command, ExitCode};

fn main() -> ExitCode {
    // Cargo passes libtest-style flags (`--bench`, filters); the script takes none, so a filter
    // that does not name this benchmark (as `cargo bench -- other`) skips it.
    let filters: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    if !filters.is_empty() && !filters.iter().any(|f| "imaging".contains(f.as_str())) {
        return ExitCode::SUCCESS;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("imaging.sh");
    match Command::new("bash").arg(&script).status() {
        Ok(status) if status.success() => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("imaging bench: {} exited with {status}", script.display());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("imaging bench: cannot run {}: {e}", script.display());
            ExitCode::FAILURE
        }
    }
}
