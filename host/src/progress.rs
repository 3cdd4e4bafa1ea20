//! Progress for long steps: a bar on a terminal, a line every 10% in a log file.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

pub struct Progress {
    bar: Option<ProgressBar>,
    what: String,
    total: u64,
    done: AtomicU64,
    started: Instant,
}

impl Progress {
    pub fn new(total: u64, what: &str) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template("{msg:>14} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
                    .expect("valid template")
                    .progress_chars("=> "),
            );
            bar.set_message(what.to_string());
            bar
        });
        Self { bar, what: what.to_string(), total, done: AtomicU64::new(0), started: Instant::now() }
    }

    /// Starts part-way (a resumed epoch).
    pub fn set_position(&self, position: u64) {
        self.done.store(position, Ordering::Relaxed);
        if let Some(bar) = &self.bar {
            bar.set_position(position);
        }
    }

    pub fn inc(&self, n: u64) {
        let before = self.done.fetch_add(n, Ordering::Relaxed);
        match &self.bar {
            Some(bar) => bar.inc(n),
            None => {
                let tenth = |v: u64| v * 10 / self.total.max(1);
                if tenth(before + n) > tenth(before) {
                    let rate = (before + n) as f64 / self.started.elapsed().as_secs_f64().max(1e-9);
                    eprintln!("{}: {}/{} ({rate:.0}/s)", self.what, before + n, self.total);
                }
            }
        }
    }

    /// Extra text beside the bar (terminal only).
    pub fn set_message(&self, message: String) {
        if let Some(bar) = &self.bar {
            bar.set_message(message);
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
