//! fogcore: everything fog can do, as a library.
//!
//! The imaging layer turns a disk into a content-addressed image and back:
//!
//! ```no_run
//! use fogcore::imaging::{capture, deploy, store::Store};
//! use fogcore::progress::NoProgress;
//!
//! # fn main() -> fogcore::Result<()> {
//! let store = Store::open("/var/lib/fog/store")?;
//! let report = capture::capture(&store, "disk.img".as_ref(), "golden", &capture::CaptureOptions::default(), &NoProgress)?;
//! println!("stored {} new bytes", report.new_stored_bytes);
//! deploy::deploy(&store, "golden", "target.img".as_ref(), &deploy::DeployOptions::default(), &NoProgress)?;
//! # Ok(()) }
//! ```
#![warn(missing_docs)]

pub mod agent;
pub mod bootenv;
pub mod clock;
pub mod control;
pub mod demo;
pub mod error;
mod fsutil;
pub mod imaging;
pub mod memory;
pub mod names;
pub mod net;
pub mod progress;
mod tools;

pub use error::{Error, ErrorKind, Result};
