//! The process's own memory, as a user's `/usr/bin/time -v` sees it: the peak resident set
//! (`VmHWM`), which reports give so a run shows what it took (in a long-lived process, a master or
//! a Python script, it is the process's peak so far, not one job's).

/// Bytes of the largest resident set this process has had, or 0 where the kernel does not say
/// (not Linux).
pub fn peak_rss() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(kib * 1024)
        })
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn peak_covers_what_was_touched() {
        let before = super::peak_rss();
        let block = vec![1u8; 64 << 20];
        assert!(block.iter().step_by(4096).all(|&b| b == 1));
        assert!(super::peak_rss() >= before.max(64 << 20));
    }
}
