//! Resizable deploy: a layout for a target of another size (partitions that must keep their size
//! keep it, the others share the rest in proportion), and the filesystem tools that grow or
//! shrink each filesystem to its new partition.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::Error;

/// How deploy lays the image's partitions out on the target.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LayoutMode {
    /// Partitions that must keep their size keep it (EFI system, Microsoft reserved, recovery,
    /// BIOS boot, swap, filesystems fog cannot resize); the others share the target's space in
    /// proportion to their source sizes, and their filesystems are grown or shrunk to fit.
    #[default]
    Fit,
    /// The source's partition table as it was (only the backup GPT moves to the target's end).
    Exact,
}

impl LayoutMode {
    /// The name used by the CLI, REST and Python.
    pub fn as_str(self) -> &'static str {
        match self {
            LayoutMode::Fit => "fit",
            LayoutMode::Exact => "exact",
        }
    }
}

impl fmt::Display for LayoutMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LayoutMode {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "fit" => Ok(LayoutMode::Fit),
            "exact" => Ok(LayoutMode::Exact),
            other => Err(Error::InvalidInput(format!(
                "layout {other:?} is not one of fit, exact"
            ))),
        }
    }
}
