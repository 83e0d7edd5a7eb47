//! The one clock: every place that reads the time takes a [`Clock`], so tests move time by hand
//! instead of sleeping.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

/// Where time comes from.
pub trait Clock: Send + Sync {
    /// Milliseconds since the epoch.
    fn now(&self) -> Millis;

    /// Whole seconds since the epoch (DHCP lease times).
    fn now_secs(&self) -> u64 {
        u64::try_from(self.now() / 1000).unwrap_or(0)
    }
}

/// The wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Millis {
        now_ms()
    }
}

/// A clock tests move by hand.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    /// A clock showing `now` (milliseconds since the epoch).
    pub fn new(now: Millis) -> Self {
        ManualClock(AtomicI64::new(now))
    }

    /// Moves the clock forward by `ms` milliseconds.
    pub fn advance(&self, ms: Millis) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }

    /// Sets the clock to `now`.
    pub fn set(&self, now: Millis) {
        self.0.store(now, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Millis {
        self.0.load(Ordering::SeqCst)
    }
}

/// The wall clock in milliseconds since the epoch. Code that can be tested takes a [`Clock`]
/// instead; this is what [`SystemClock`] reads.
pub fn now_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
