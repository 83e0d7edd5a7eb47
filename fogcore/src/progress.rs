//! Progress reporting for long jobs. The library never prints: it tells a [`Progress`] sink, which
//! the CLI draws as a bar, fog-py forwards to a Python callable and the agent posts to its node.

/// Receives progress of a long job. Implementations must be cheap: `advance` is called per chunk.
pub trait Progress: Send + Sync {
    /// A new phase starts (`"capture"`, `"deploy"`, `"verify"`...), `total` bytes expected.
    fn start(&self, phase: &str, total: u64);
    /// `bytes` more bytes of the current phase are done.
    fn advance(&self, bytes: u64);
    /// The current phase is over.
    fn finish(&self) {}
    /// True when whoever watches wants the job stopped (Ctrl-C, a Python exception, a cancelled
    /// task). Long jobs check it between chunks and end with [`crate::Error::Cancelled`].
    fn cancelled(&self) -> bool {
        false
    }
}

/// A sink that ignores everything.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _phase: &str, _total: u64) {}
    fn advance(&self, _bytes: u64) {}
}
