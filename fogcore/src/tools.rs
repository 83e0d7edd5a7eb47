//! External programs fog runs (mkfs.ext4 for the sample disk) and the helpers tests use to drive
//! the real tools users have (mkfs, fsck, debugfs, mtools, ntfs-3g).

use std::path::PathBuf;

/// An executable named `name` in `PATH` or the sbin directories (which a normal user's `PATH`
/// often lacks).
pub(crate) fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Test helpers: a missing tool fails the test with the command that installs it, never skips.
#[cfg(test)]
pub(crate) mod test {
    use std::process::{Command, Output};

    /// A command for tool `name`; panics with `install` when it is not installed.
    pub fn command(name: &str, install: &str) -> Command {
        let path =
            super::find_tool(name).unwrap_or_else(|| panic!("{name} is not installed; these tests need it: {install}"));
        let mut command = Command::new(path);
        command.env("MTOOLS_SKIP_CHECK", "1");
        command
    }

    /// Runs `command`, panicking with its output when it cannot start.
    pub fn output(name: &str, command: &mut Command) -> Output {
        command.output().unwrap_or_else(|e| panic!("cannot run {name}: {e}"))
    }

    /// Runs `command`, panicking with its output unless it succeeds.
    pub fn output_ok(name: &str, command: &mut Command) -> Output {
        let out = output(name, command);
        assert!(
            out.status.success(),
            "{name} {:?} failed ({}):\n{}\n{}",
            command.get_args().collect::<Vec<_>>(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}
