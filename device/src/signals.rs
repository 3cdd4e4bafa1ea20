//! A clean stop on SIGINT or SIGTERM, for the long-running commands of both binaries
//! (`faceage run` writes its partial interval, `faceage-host train` its checkpoint).

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result};

/// A flag the first SIGINT or SIGTERM sets, for the caller to stop cleanly at its next
/// check; a second one ends the process at once (a user pressing Ctrl-C twice means it).
pub fn stop_flag() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // Registered first, so it sees the flag before this signal sets it.
        signal_hook::flag::register_conditional_shutdown(signal, 1, Arc::clone(&stop))
            .context("cannot handle SIGINT/SIGTERM")?;
        signal_hook::flag::register(signal, Arc::clone(&stop)).context("cannot handle SIGINT/SIGTERM")?;
    }
    Ok(stop)
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;

    #[test]
    fn the_first_sigterm_sets_the_flag_and_does_not_end_the_process() {
        let stop = super::stop_flag().unwrap();
        assert!(!stop.load(Ordering::SeqCst));
        signal_hook::low_level::raise(signal_hook::consts::SIGTERM).unwrap();
        assert!(stop.load(Ordering::SeqCst), "still running, asked to stop");
    }
}
