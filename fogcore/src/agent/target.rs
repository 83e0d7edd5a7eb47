//! Which disk the agent images: an explicit path, the host's primary-disk rule, or else the only
//! fixed disk. More than one candidate and no rule is an error that lists them: imaging the
//! wrong disk is the one mistake that cannot be undone.

use std::path::{Path, PathBuf};

use super::inventory::{DiskInfo, disks};
use crate::{Error, Result};

/// The disks a rule chooses among: not removable, not empty.
pub fn candidates(sys: &Path) -> Vec<DiskInfo> {
    disks(sys)
        .into_iter()
        .filter(|d| !d.removable && d.size_bytes > 0)
        .collect()
}

fn describe(disks: &[DiskInfo]) -> String {
    disks
        .iter()
        .map(|d| {
            format!(
                "{} ({} GB{})",
                d.path.display(),
                d.size_bytes / 1_000_000_000,
                d.model.as_ref().map(|m| format!(", {m}")).unwrap_or_default()
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Chooses the target disk. `rule` is the host's primary-disk rule: a device path
/// (`/dev/nvme0n1`), a kernel name (`sda`), `size:largest` or `size:smallest`. Without a rule,
/// the only candidate under `sys` (`/sys`).
pub fn choose(sys: &Path, rule: Option<&str>) -> Result<PathBuf> {
    let found = candidates(sys);
    let pick_by = |largest: bool| {
        let best = if largest {
            found.iter().map(|d| d.size_bytes).max()
        } else {
            found.iter().map(|d| d.size_bytes).min()
        };
        let best: Vec<DiskInfo> = found.iter().filter(|d| Some(d.size_bytes) == best).cloned().collect();
        match best.as_slice() {
            [one] => Ok(one.path.clone()),
            [] => Err(Error::invalid("target disk", rule.unwrap_or(""), "no fixed disk found")),
            many => Err(Error::invalid(
                "target disk",
                rule.unwrap_or(""),
                format!("several disks of the same size: {}", describe(many)),
            )),
        }
    };
    match rule.map(str::trim).filter(|r| !r.is_empty()) {
        Some("size:largest") => pick_by(true),
        Some("size:smallest") => pick_by(false),
        Some(rule) if rule.starts_with('/') => Ok(PathBuf::from(rule)),
        Some(rule) if !rule.contains(['/', ':']) => {
            let all = disks(sys);
            all.iter()
                .find(|d| d.name == rule)
                .map(|d| d.path.clone())
                .ok_or_else(|| Error::invalid("target disk", rule, format!("no such disk; found: {}", describe(&all))))
        }
        Some(rule) => Err(Error::invalid(
            "primary disk rule",
            rule,
            "use a device path, a disk name, size:largest or size:smallest",
        )),
        None => match found.as_slice() {
            [one] => Ok(one.path.clone()),
            [] => Err(Error::invalid("target disk", "", "no fixed disk found")),
            many => Err(Error::invalid(
                "target disk",
                "",
                format!(
                    "more than one fixed disk, set the host's primary disk: {}",
                    describe(many)
                ),
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn disk(sys: &Path, name: &str, sectors: u64, removable: bool) {
        let dir = sys.join("block").join(name);
        fs::create_dir_all(&dir).expect("mkdir");
        fs::write(dir.join("size"), format!("{sectors}\n")).expect("write");
        fs::write(dir.join("removable"), if removable { "1\n" } else { "0\n" }).expect("write");
    }

    #[test]
    fn picks_the_only_fixed_disk_and_refuses_when_ambiguous() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sys = dir.path();
        disk(sys, "loop0", 2048, false);
        disk(sys, "ram0", 2048, false);
        disk(sys, "sdb", 60_000_000, true);
        disk(sys, "sdc", 0, false);
        disk(sys, "nvme0n1", 1_000_000_000, false);
        assert_eq!(choose(sys, None).ok(), Some(PathBuf::from("/dev/nvme0n1")));

        disk(sys, "sda", 2_000_000_000, false);
        let err = choose(sys, None).expect_err("two disks").to_string();
        assert!(err.contains("/dev/nvme0n1") && err.contains("/dev/sda"), "{err}");
        assert!(!err.contains("sdb") && !err.contains("loop0"), "{err}");
        assert_eq!(choose(sys, Some("size:largest")).ok(), Some(PathBuf::from("/dev/sda")));
        assert_eq!(
            choose(sys, Some("size:smallest")).ok(),
            Some(PathBuf::from("/dev/nvme0n1"))
        );
        assert_eq!(choose(sys, Some("nvme0n1")).ok(), Some(PathBuf::from("/dev/nvme0n1")));
        assert_eq!(choose(sys, Some("/dev/sdx")).ok(), Some(PathBuf::from("/dev/sdx")));
        assert!(choose(sys, Some("sdz")).is_err());
        assert!(choose(sys, Some("size:biggest")).is_err());

        let empty = tempfile::tempdir().expect("tempdir");
        assert!(choose(empty.path(), None).is_err());
    }
}
