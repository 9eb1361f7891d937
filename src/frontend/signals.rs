//! SIGINT, SIGTERM and SIGHUP (the SSH session closed) ask the run to stop cleanly; a
//! second SIGINT or SIGTERM exits at once.

use anyhow::Result;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Installs the handlers and returns the flag they raise.
pub fn install() -> Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM] {
        // Order matters: the conditional shutdown sees the flag set by an earlier signal.
        signal_hook::flag::register_conditional_shutdown(sig, 130, Arc::clone(&flag))?;
        signal_hook::flag::register(sig, Arc::clone(&flag))?;
    }
    signal_hook::flag::register(SIGHUP, Arc::clone(&flag))?;
    Ok(flag)
}

pub fn requested(flag: &AtomicBool) -> bool {
    flag.load(Ordering::Relaxed)
}
