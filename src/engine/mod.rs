//! The run as a state machine in a worker thread.
//!
//! The engine takes [`Command`]s between two iterations (never mid-step) and emits
//! [`Event`]s; front ends (TUI, plain, jsonl) only send commands and read events. It
//! knows nothing of terminals. It holds its burn `Device` as a value, so switching the
//! backend moves the network, the image and the optimiser state between iterations.

pub mod checkpoint;
mod divergence;
mod inputs;
pub mod memory;
pub mod schedule;
mod worker;

use crate::backend::{Backend, BackendChoice};
use crate::preset::{Change, Preset};
use crate::run_dir::{Record, RunDir};
use crate::settings::Settings;
use crate::vgg::Layer;
use image::RgbImage;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;

pub use checkpoint::{Checkpoint, Ema, Point};

pub use crate::settings::Setting;

#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Pause,
    Resume,
    /// Changes a setting from the next iteration on.
    Set(Setting, f64),
    SetContentLayer(Layer),
    /// Saves a snapshot (and a checkpoint) now.
    Snapshot,
    /// Sends a preview of the current image now.
    Preview,
    /// Moves the run to another backend between two iterations.
    SwitchBackend(BackendChoice),
    /// Moves the run to the next backend this machine can use (cpu, cuda, wgpu, cpu...).
    NextBackend,
    /// Writes the current settings as a preset file named `name` (replacing the file
    /// if it exists: the front end asks first).
    SavePreset {
        path: PathBuf,
        name: String,
    },
    /// Stops cleanly: final image, losses and checkpoint written.
    Stop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    Preparing,
    Running,
    Paused,
    Finished,
    Stopped,
    Failed,
}

impl RunState {
    pub fn label(&self) -> &'static str {
        match self {
            RunState::Preparing => "preparing",
            RunState::Running => "running",
            RunState::Paused => "paused",
            RunState::Finished => "finished",
            RunState::Stopped => "stopped",
            RunState::Failed => "failed",
        }
    }
}

/// What a run is, once it has started.
#[derive(Debug, Clone)]
pub struct Started {
    pub run_dir: PathBuf,
    /// The backend's description (and for `auto`, why it was chosen).
    pub backend: String,
    pub width: usize,
    pub height: usize,
    /// The iteration the run starts at (non-zero when resumed).
    pub start_iter: u64,
    pub preset: Preset,
    /// Records already in `losses.jsonl` (when resumed).
    pub history: Vec<Record>,
    /// Settings changed earlier in the run (when resumed).
    pub changes: Vec<Change>,
}

#[derive(Debug, Clone)]
pub enum Event {
    Started(Box<Started>),
    Iteration(Record),
    Preview {
        iter: u64,
        image: RgbImage,
    },
    State(RunState),
    /// A setting took effect at `iter`.
    Changed {
        iter: u64,
        key: String,
        /// The new value as YAML text.
        value: String,
        /// All settings as they now are.
        settings: Box<Settings>,
    },
    BackendChanged {
        iter: u64,
        backend: String,
    },
    Saved(PathBuf),
    /// A tile of a tiled evaluation is done (an iteration of a large image takes minutes).
    Tiles(crate::network::TileProgress),
    /// Something the user should read: a rollback, a refused command.
    Notice(String),
    Finished {
        final_image: PathBuf,
        state: RunState,
    },
    Failed(String),
}

/// Where a run writes.
#[derive(Debug)]
pub enum Destination {
    /// A new run directory under this folder, created only once the run has
    /// everything it needs (so a bad input leaves nothing behind).
    New(PathBuf),
    /// A new run directory at exactly this path (`easel run --run-dir`, a sweep's
    /// points), created in the same way.
    At(PathBuf),
    /// An existing run directory, to continue from its checkpoint.
    Resume(RunDir),
}

/// Everything a run needs to start.
pub struct RunSpec {
    pub preset: Preset,
    pub destination: Destination,
    pub weights: PathBuf,
    pub backend: Backend,
    /// Seconds between automatic previews (0: only on request and at snapshots).
    pub preview_every_s: f64,
}

/// The front end's side of a running engine.
pub struct EngineHandle {
    pub commands: Sender<Command>,
    pub events: Receiver<Event>,
    thread: Option<JoinHandle<()>>,
}

impl EngineHandle {
    pub fn send(&self, command: Command) {
        // The worker may have ended already; then there is nothing left to steer.
        let _ = self.commands.send(command);
    }

    /// Waits for the worker thread to end.
    pub fn join(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The worker thread's name.
const THREAD: &str = "easel-engine";

/// Keeps the engine's panics off the screen: the worker catches them and reports them as
/// a failure, but the panic hook runs first, and the hook it inherits would print a
/// backtrace over the workbench (and ratatui's would restore the terminal under it, so
/// that no key reached the workbench any more). Such panics are logged instead; others
/// go to the hook installed before. Call it after any hook that must be wrapped
/// (`ratatui::init`'s).
pub fn keep_panics_off_screen() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().name() == Some(THREAD) {
            tracing::error!("the engine panicked (the run ends as failed): {info}");
        } else {
            previous(info);
        }
    }));
}

/// Starts a run in a worker thread.
pub fn spawn(spec: RunSpec) -> EngineHandle {
    let (cmd_tx, cmd_rx) = channel();
    let (ev_tx, ev_rx) = channel();
    let thread = std::thread::Builder::new()
        .name(THREAD.into())
        .spawn(move || worker::run(spec, cmd_rx, ev_tx))
        .ok();
    EngineHandle {
        commands: cmd_tx,
        events: ev_rx,
        thread,
    }
}
