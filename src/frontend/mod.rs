//! Front ends that are not the workbench: `plain` (a progress bar, or periodic lines
//! when the output is not a terminal) and `jsonl` (one record per iteration on stdout).
//! Both stop the run cleanly on SIGINT, SIGTERM and SIGHUP; a second SIGINT exits at once.

pub mod signals;

use crate::engine::{Command, EngineHandle, Event, RunState};
use anyhow::{Result, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Plain,
    Jsonl,
}

/// How a run ended, for the exit code and the last message.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub state: RunState,
    /// The signal that stopped the run, if one did.
    pub signal: Option<i32>,
    /// Stopped because the divergence guard paused it and no keyboard can resume it.
    pub gave_up: bool,
    /// The last record's iteration, J and seconds of work, for the closing line.
    pub last: Option<(u64, f64, f64)>,
    pub run_dir: Option<PathBuf>,
    pub final_image: Option<PathBuf>,
}

/// The signal a write to a closed pipe raises in C tools; its exit code is 141.
const SIGPIPE: i32 = 13;

/// What every front end does with a run besides showing it: turn a signal into one
/// `Stop`, and fold the events into how the run ended.
pub struct Driver {
    signal: signals::Flag,
    stop_sent: bool,
    pub outcome: Outcome,
}

impl Driver {
    /// Installs the signal handlers.
    pub fn new() -> Result<Driver> {
        Ok(Driver {
            signal: signals::install()?,
            stop_sent: false,
            outcome: Outcome {
                state: RunState::Preparing,
                signal: None,
                gave_up: false,
                last: None,
                run_dir: None,
                final_image: None,
            },
        })
    }

    /// Asks the engine to stop, once; true the first time.
    pub fn stop(&mut self, engine: &EngineHandle) -> bool {
        if self.stop_sent {
            return false;
        }
        engine.send(Command::Stop);
        self.stop_sent = true;
        true
    }

    /// Stops the run when a signal has arrived; true when it did so now.
    pub fn stop_on_signal(&mut self, engine: &EngineHandle) -> bool {
        let Some(sig) = signals::requested(&self.signal) else {
            return false;
        };
        self.outcome.signal.get_or_insert(sig);
        self.stop(engine)
    }

    /// Folds an event into the outcome.
    pub fn observe(&mut self, event: &Event) {
        match event {
            Event::Started(s) => self.outcome.run_dir = Some(s.run_dir.clone()),
            Event::Iteration(r) => self.outcome.last = Some((r.iter, r.j, r.elapsed_s)),
            Event::State(state) => self.outcome.state = *state,
            Event::Finished { final_image, state } => {
                self.outcome.state = *state;
                self.outcome.final_image = Some(final_image.clone());
            }
            _ => {}
        }
    }
}

/// Drives a run to its end, printing progress. Returns how it ended.
pub fn drive(mut engine: EngineHandle, mode: Mode) -> Result<Outcome> {
    let mut driver = Driver::new()?;
    let mut out = Printer::new(mode);
    loop {
        if driver.stop_on_signal(&engine) {
            out.note("stopping: writing the checkpoint, the losses and the final image (interrupt again to quit at once)");
        }
        let event = match engine.events.recv_timeout(Duration::from_millis(100)) {
            Ok(e) => e,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => break,
        };
        driver.observe(&event);
        match event {
            // Only the engine pauses a run here (after repeated divergence), and without
            // a keyboard nobody can resume it: stop with a checkpoint.
            Event::State(RunState::Paused) if driver.stop(&engine) => {
                driver.outcome.gave_up = true;
                out.note("stopping the paused run; change its settings and continue with `easel resume RUN_DIR --set KEY=VALUE`");
            }
            Event::Failed(message) => {
                out.bar.finish_and_clear();
                engine.join();
                bail!("{message}");
            }
            other => {
                if let Err(e) = out.show(&other) {
                    // stdout closed (`| head`): stop cleanly, as SIGPIPE would have us.
                    let closed = e
                        .downcast_ref::<std::io::Error>()
                        .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe);
                    if !closed {
                        return Err(e);
                    }
                    out.mode = Mode::Plain;
                    driver.stop(&engine);
                    driver.outcome.signal.get_or_insert(SIGPIPE);
                }
            }
        }
    }
    out.bar.finish_and_clear();
    engine.join();
    if driver.outcome.final_image.is_none() {
        bail!(
            "the engine stopped without a word (no final image); the run directory's checkpoint resumes the run"
        );
    }
    Ok(driver.outcome)
}

/// Progress on stderr (a bar on a terminal, a line every ten seconds elsewhere) and,
/// in jsonl mode, the records on stdout.
struct Printer {
    mode: Mode,
    tty: bool,
    bar: ProgressBar,
    last_line: Instant,
    /// The last J shown, kept beside a tiled iteration's progress.
    last_j: String,
}

impl Printer {
    fn new(mode: Mode) -> Printer {
        // Under -q, no bar: progress is not an error.
        let tty = std::io::stderr().is_terminal() && !crate::logging::is_quiet();
        let target = if tty {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(None, target);
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix} [{bar:30}] {pos}/{len} {msg} {per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        Printer {
            mode,
            tty,
            bar,
            last_line: Instant::now(),
            last_j: String::new(),
        }
    }

    /// A line above the bar; plainly on stderr where the bar is hidden.
    fn note(&self, text: impl Into<String>) {
        let text = text.into();
        if self.tty {
            self.bar.println(text);
        } else {
            crate::logging::say(text);
        }
    }

    fn show(&mut self, event: &Event) -> Result<()> {
        match event {
            Event::Started(s) => {
                self.note(format!(
                    "run {} on {}: {}x{}, {} iterations",
                    s.run_dir.display(),
                    s.backend,
                    s.width,
                    s.height,
                    s.preset.iterations
                ));
                self.bar.set_length(s.preset.iterations);
                self.bar.set_position(s.start_iter);
                self.bar.reset_eta();
                self.bar.set_prefix(s.preset.name.clone());
            }
            Event::Iteration(record) => self.record(record)?,
            Event::Notice(text) => self.note(format!("note: {text}")),
            Event::Changed {
                iter, key, value, ..
            } => self.note(format!("iteration {iter}: {key} = {value}")),
            Event::BackendChanged { iter, backend } => {
                self.note(format!("iteration {iter}: now on {backend}"))
            }
            Event::Tiles(progress) => self.tiles(progress),
            _ => {}
        }
        Ok(())
    }

    /// A tiled iteration's progress: on the bar, or a line every ten seconds.
    fn tiles(&mut self, progress: &crate::network::TileProgress) {
        self.bar
            .set_message(format!("{} · {}", self.last_j, progress.label()));
        if !self.tty && self.last_line.elapsed() >= Duration::from_secs(10) {
            crate::logging::say(progress.label());
            self.last_line = Instant::now();
        }
    }

    fn record(&mut self, record: &crate::run_dir::Record) -> Result<()> {
        if self.mode == Mode::Jsonl {
            let mut out = std::io::stdout().lock();
            writeln!(out, "{}", serde_json::to_string(record)?)?;
            out.flush()?;
        }
        // A record is taken before its iteration's step; the final one after the last.
        self.bar
            .set_position(record.iter + u64::from(!record.is_final));
        self.last_j = format!("J {:.3e}", record.j);
        self.bar.set_message(self.last_j.clone());
        if !self.tty
            && self.mode == Mode::Plain
            && self.last_line.elapsed() >= Duration::from_secs(10)
        {
            crate::logging::say(format!(
                "iter {} J {:.4e} J_content {:.4e} J_style {:.4e} ({:.1} s)",
                record.iter, record.j, record.j_content, record.j_style, record.elapsed_s
            ));
            self.last_line = Instant::now();
        }
        Ok(())
    }
}
