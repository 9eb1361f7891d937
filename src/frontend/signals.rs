//! SIGINT, SIGTERM and SIGHUP (the SSH session closed) ask the run to stop cleanly; a
//! second SIGINT or SIGTERM exits at once. The signal that stopped a run sets the exit
//! code the shell convention gives it: 128 + its number (130, 143, 129).

use anyhow::Result;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM, SIGXFSZ};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The first signal that arrived (0: none yet).
pub type Flag = Arc<AtomicUsize>;

/// Installs the handlers and returns the flag they set.
pub fn install() -> Result<Flag> {
    let flag = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM] {
        // Order matters: the conditional shutdown sees the flag set by an earlier signal.
        signal_hook::flag::register_conditional_shutdown(sig, 128 + sig, Arc::clone(&seen))?;
        signal_hook::flag::register(sig, Arc::clone(&seen))?;
    }
    for sig in [SIGINT, SIGTERM, SIGHUP] {
        signal_hook::flag::register_usize(sig, Arc::clone(&flag), sig as usize)?;
    }
    Ok(flag)
}

/// Past a file-size limit (ulimit -f) the kernel kills the writer with SIGXFSZ, which
/// would leave a temporary file behind; handled, the write fails with EFBIG instead, and
/// the atomic write cleans up and says what it could not write. Called first thing.
pub fn survive_file_size_limits() -> Result<()> {
    signal_hook::flag::register(SIGXFSZ, Arc::new(std::sync::atomic::AtomicBool::new(false)))?;
    Ok(())
}

/// The signal that asked the run to stop, if one has.
pub fn requested(flag: &AtomicUsize) -> Option<i32> {
    match flag.load(Ordering::Relaxed) {
        0 => None,
        sig => Some(sig as i32),
    }
}
