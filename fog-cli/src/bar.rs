//! Progress bars: fogcore's `Progress` drawn with indicatif (hidden for `--json` or no terminal).

use std::sync::Mutex;

use fogcore::progress::Progress;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub struct Bar {
    bar: Mutex<Option<ProgressBar>>,
    hidden: bool,
}

impl Bar {
    pub fn new(hidden: bool) -> Self {
        Bar {
            bar: Mutex::new(None),
            hidden,
        }
    }
}

impl Progress for Bar {
    fn start(&self, phase: &str, total: u64) {
        let bar = if self.hidden {
            ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::hidden())
        } else {
            ProgressBar::new(total)
        };
        let style =
            ProgressStyle::with_template("{msg:>8} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
        bar.set_style(style);
        bar.set_message(phase.to_string());
        if let Ok(mut slot) = self.bar.lock() {
            *slot = Some(bar);
        }
    }

    fn advance(&self, bytes: u64) {
        if let Ok(slot) = self.bar.lock()
            && let Some(bar) = slot.as_ref()
        {
            bar.inc(bytes);
        }
    }

    fn finish(&self) {
        if let Ok(mut slot) = self.bar.lock()
            && let Some(bar) = slot.take()
        {
            bar.finish_and_clear();
        }
    }
}
