//! fogcore as a library: build a sample disk, capture it into a store, deploy it to a larger
//! disk file and read it back.
//!
//! `cargo run -p examples --example capture_deploy [WORK_DIR]`

use std::path::PathBuf;

use fogcore::demo::sample::{SampleSpec, build_sample_disk};
use fogcore::imaging::capture::{CaptureOptions, capture};
use fogcore::imaging::deploy::{DeployOptions, deploy};
use fogcore::imaging::store::Store;
use fogcore::progress::Progress;

/// Prints each phase and its size; a real program would draw a bar.
struct Print;

impl Progress for Print {
    fn start(&self, phase: &str, total: u64) {
        println!("{phase}: {:.1} MiB", total as f64 / 1048576.0);
    }
    fn advance(&self, _bytes: u64) {}
}

fn main() -> fogcore::Result<()> {
    let keep = std::env::args().nth(1).map(PathBuf::from);
    let temp = tempfile::tempdir().map_err(|e| fogcore::Error::io("temporary directory", e))?;
    let dir = keep.unwrap_or_else(|| temp.path().to_path_buf());
    std::fs::create_dir_all(&dir).map_err(|e| fogcore::Error::io(&dir, e))?;

    let source = dir.join("source.img");
    let info = build_sample_disk(
        &source,
        &SampleSpec {
            disk_size: 128 << 20,
            files_bytes: 24 << 20,
            ..SampleSpec::default()
        },
    )?;
    println!("sample disk: {} files", info.files.len());

    let store = Store::open(dir.join("store"))?;
    let captured = capture(&store, &source, "golden", &CaptureOptions::default(), &Print)?;
    println!(
        "captured {} bytes of data into {} new stored bytes",
        captured.data_bytes, captured.new_stored_bytes
    );

    // A larger target: the GPT's backup moves to its end.
    let target = dir.join("target.img");
    std::fs::File::create(&target)
        .and_then(|f| f.set_len(192 << 20))
        .map_err(|e| fogcore::Error::io(&target, e))?;
    let deployed = deploy(
        &store,
        "golden",
        &target,
        &DeployOptions {
            verify: true,
            ..DeployOptions::default()
        },
        &Print,
    )?;
    println!(
        "deployed {} bytes, verified: {}",
        deployed.bytes_written, deployed.verified
    );
    Ok(())
}
