//! Front ends that are not the workbench: `plain` (a progress bar, or periodic lines
//! when the output is not a terminal) and `jsonl` (one record per iteration on stdout).
//! Both stop the run cleanly on SIGINT, SIGTERM and SIGHUP; a second SIGINT exits at once.

pub mod signals;

use crate::engine::{EngineHandle, Event, RunState};
use anyhow::{Result, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
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
    pub run_dir: Option<PathBuf>,
    pub final_image: Option<PathBuf>,
}

/// Drives a run to its end, printing progress. Returns how it ended.
pub fn drive(mut engine: EngineHandle, mode: Mode) -> Result<Outcome> {
    let stop = signals::install()?;
    let tty = std::io::stderr().is_terminal();
    let bar = ProgressBar::with_draw_target(
        None,
        if tty {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let mut outcome = Outcome {
        state: RunState::Preparing,
        run_dir: None,
        final_image: None,
    };
    let mut stop_sent = false;
    let mut last_line = Instant::now();
    let stdout = std::io::stdout();
    loop {
        if !stop_sent && signals::requested(&stop) {
            bar.println("stopping: writing the checkpoint, the losses and the final image (interrupt again to quit at once)");
            engine.send(crate::engine::Command::Stop);
            stop_sent = true;
        }
        let event = match engine.events.recv_timeout(Duration::from_millis(100)) {
            Ok(e) => e,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        };
        match event {
            Event::Started {
                run_dir,
                backend,
                width,
                height,
                start_iter,
                preset,
                ..
            } => {
                bar.println(format!(
                    "run {} on {backend}: {width}x{height}, {} iterations",
                    run_dir.display(),
                    preset.iterations
                ));
                bar.set_length(preset.iterations);
                bar.set_position(start_iter);
                bar.reset_eta();
                bar.set_prefix(preset.name.clone());
                outcome.run_dir = Some(run_dir);
            }
            Event::Iteration(record) => {
                if mode == Mode::Jsonl {
                    let mut out = stdout.lock();
                    writeln!(out, "{}", serde_json::to_string(&record)?)?;
                    out.flush()?;
                }
                bar.set_position(record.iter + 1);
                bar.set_message(format!("J {:.3e}", record.j));
                if !tty && mode == Mode::Plain && last_line.elapsed() >= Duration::from_secs(10) {
                    eprintln!(
                        "iter {} J {:.4e} J_content {:.4e} J_style {:.4e} ({:.1} s)",
                        record.iter, record.j, record.j_content, record.j_style, record.elapsed_s
                    );
                    last_line = Instant::now();
                }
            }
            Event::Notice(text) => bar.println(format!("note: {text}")),
            Event::Changed {
                iter, key, value, ..
            } => bar.println(format!("iteration {iter}: {key} = {value}")),
            Event::BackendChanged { iter, backend } => {
                bar.println(format!("iteration {iter}: now on {backend}"))
            }
            Event::State(state) => {
                outcome.state = state;
                // Only the engine pauses a run here (after repeated divergence), and
                // without a keyboard nobody can resume it: stop with a checkpoint.
                if state == RunState::Paused && !stop_sent {
                    bar.println("stopping the paused run; change its settings and continue with `easel resume RUN_DIR --set KEY=VALUE`");
                    engine.send(crate::engine::Command::Stop);
                    stop_sent = true;
                }
            }
            Event::Finished { final_image, state } => {
                outcome.state = state;
                outcome.final_image = Some(final_image);
            }
            Event::Failed(message) => {
                bar.finish_and_clear();
                engine.join();
                bail!("{message}");
            }
            Event::Preview { .. } | Event::Saved(_) => {}
        }
    }
    bar.finish_and_clear();
    engine.join();
    Ok(outcome)
}
