//! The demo behind `fog demo`: build a sample disk, capture it, deploy it, verify it, and
//! capture the copy again to show dedupe. Demo and test support, above the imaging layer: it
//! only uses what imaging offers.

use std::path::Path;

use serde::Serialize;

pub mod sample;

use crate::Result;
use crate::error::IoContext;
use crate::imaging::capture::{CaptureOptions, CaptureReport, capture};
use crate::imaging::deploy::{DeployOptions, DeployReport, deploy};
use crate::imaging::store::{Store, StoreStats};
use crate::progress::Progress;
use sample::{SampleSpec, build_sample_disk};

/// What the demo did.
#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    /// The sample disk built.
    pub source: String,
    /// Capture of the sample disk.
    pub capture: CaptureReport,
    /// Deploy of it to a new disk file, verified by reading back.
    pub deploy: DeployReport,
    /// Capture of the deployed disk: every chunk is already known.
    pub recapture: CaptureReport,
    /// The store afterwards.
    pub store: StoreStats,
}

/// Runs the demo in `dir` (created if needed; earlier demo files there are replaced).
pub fn run(dir: &Path, progress: &dyn Progress) -> Result<DemoReport> {
    std::fs::create_dir_all(dir).at(dir)?;
    let source = dir.join("sample-disk.img");
    let target = dir.join("deployed-disk.img");
    for old in [&source, &target] {
        if old.exists() {
            std::fs::remove_file(old).at(old)?;
        }
    }
    build_sample_disk(&source, &SampleSpec::default())?;
    let store = Store::open(dir.join("store"))?;
    let capture_report = capture(&store, &source, "demo", &CaptureOptions::default(), progress)?;
    let deploy_report = deploy(
        &store,
        "demo",
        &target,
        &DeployOptions {
            verify: true,
            ..DeployOptions::default()
        },
        progress,
    )?;
    let recapture = capture(&store, &target, "demo-copy", &CaptureOptions::default(), progress)?;
    Ok(DemoReport {
        source: source.display().to_string(),
        capture: capture_report,
        deploy: deploy_report,
        recapture,
        store: store.stats()?,
    })
}
