//! Logging: easel's own messages and its libraries' (wgpu, cubecl through the `log`
//! bridge) as `tracing` events. They go to stderr, or, under the workbench (where stderr
//! would tear the screen), to `RUN_DIR/easel.log`, held in memory until the run
//! directory exists. `-v` raises the level, `-q` keeps errors only.

use anyhow::Result;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex};
use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;

/// Where log lines go now.
enum Target {
    Stderr,
    /// Until the workbench's run directory exists.
    Held(Vec<u8>),
    File(std::fs::File),
}

/// The switch between stderr, memory and a file.
#[derive(Clone)]
pub struct LogSink(Arc<Mutex<Target>>);

impl LogSink {
    /// Holds the lines in memory from now on (the workbench is about to take the screen).
    pub fn hold(&self) {
        self.with(|t| {
            if matches!(t, Target::Stderr) {
                *t = Target::Held(Vec::new());
            }
        });
    }

    /// Appends the lines to `path` from now on, the held ones first.
    pub fn to_file(&self, path: &Path) -> Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        self.with(|t| {
            if let Target::Held(lines) = t {
                let _ = file.write_all(lines);
            }
            if let Ok(f) = file.try_clone() {
                *t = Target::File(f);
            }
        });
        Ok(())
    }

    fn with(&self, f: impl FnOnce(&mut Target)) {
        let mut t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut t);
    }
}

impl Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut t = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match &mut *t {
            Target::Stderr => std::io::stderr().write_all(buf)?,
            Target::Held(lines) => lines.extend_from_slice(buf),
            Target::File(f) => f.write_all(buf)?,
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The levels: easel's own and its libraries'. By default only easel's warnings show:
/// what a run prints otherwise is its progress.
fn levels(verbose: u8, quiet: bool) -> (Level, Level) {
    match (quiet, verbose) {
        (true, _) => (Level::ERROR, Level::ERROR),
        (false, 0) => (Level::WARN, Level::ERROR),
        (false, 1) => (Level::INFO, Level::WARN),
        (false, 2) => (Level::DEBUG, Level::INFO),
        (false, _) => (Level::TRACE, Level::DEBUG),
    }
}

static SINK: std::sync::OnceLock<LogSink> = std::sync::OnceLock::new();

/// `-q`: progress, notes and hints stay unsaid; errors are still said.
static QUIET: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A line of progress, a note or a hint on stderr, left out under `-q`. A closed
/// stderr (`2>&1 | head`) loses the line: `eprintln!` would stop the run with a panic.
pub fn say(text: impl std::fmt::Display) {
    if !is_quiet() {
        say_error(text);
    }
}

/// Whether `-q` asked for errors only.
pub fn is_quiet() -> bool {
    QUIET.load(std::sync::atomic::Ordering::Relaxed)
}

/// An error on stderr, said under `-q` too; lost where stderr is closed.
pub fn say_error(text: impl std::fmt::Display) {
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

/// The process's log sink, once [`init`] has run (logging is global, as the
/// libraries' `log` records are).
pub fn sink() -> Option<&'static LogSink> {
    SINK.get()
}

/// Installs the subscriber; log lines go to stderr until told otherwise.
pub fn init(verbose: u8, quiet: bool) -> Result<LogSink> {
    QUIET.store(quiet, std::sync::atomic::Ordering::Relaxed);
    let sink = LogSink(Arc::new(Mutex::new(Target::Stderr)));
    let (own, libraries) = levels(verbose, quiet);
    let filter = Targets::new()
        .with_target("easel", own)
        .with_default(libraries);
    let writer = sink.clone();
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_target(true);
    let subscriber = tracing_subscriber::registry().with(layer.with_filter(filter));
    tracing::subscriber::set_global_default(subscriber)
        .map_err(|e| anyhow::anyhow!("cannot start logging: {e}"))?;
    // The libraries' `log` records only with -v: listened to, wgpu turns on its GL
    // debug output, which prints alarming lines on every machine without a GPU.
    if verbose > 0 {
        tracing_log::LogTracer::init().map_err(|e| anyhow::anyhow!("cannot start logging: {e}"))?;
    }
    let _ = SINK.set(sink.clone());
    Ok(sink)
}
