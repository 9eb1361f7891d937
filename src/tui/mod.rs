//! The workbench: a ratatui dashboard to watch and steer a run.
//!
//! Three sources feed one loop: the engine's events, the keyboard (a reader thread)
//! and signals (SIGHUP when the SSH session drops, SIGTERM). The screen is redrawn only
//! when something changed, at most ten times a second, inside a synchronized update, and
//! the preview image is re-encoded only when a new one arrives. The terminal is restored
//! on every exit path, panics included (ratatui's panic hook).

pub mod app;
pub mod browser;
pub mod keys;
pub mod view;

use crate::engine::{EngineHandle, Event, RunState};
use crate::frontend::{Driver, Outcome};
use anyhow::{Result, bail};
use app::{Action, App};
use ratatui::crossterm::event::{self, Event as TermEvent, KeyEventKind};
use ratatui::crossterm::execute;
use ratatui::crossterm::terminal::{BeginSynchronizedUpdate, EndSynchronizedUpdate};
use ratatui_image::picker::{Picker, ProtocolType};
use ratatui_image::protocol::StatefulProtocol;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError, channel};
use std::time::{Duration, Instant};

/// Parses `--image-protocol`.
pub fn parse_protocol(name: &str) -> Result<ProtocolType> {
    Ok(match name.to_ascii_lowercase().as_str() {
        "kitty" => ProtocolType::Kitty,
        "sixel" => ProtocolType::Sixel,
        "iterm2" => ProtocolType::Iterm2,
        "halfblocks" | "blocks" => ProtocolType::Halfblocks,
        other => bail!("--image-protocol {other}: use kitty, sixel, iterm2 or halfblocks"),
    })
}

const FRAME: Duration = Duration::from_millis(100);

fn spawn_input(stop: Arc<AtomicBool>) -> Receiver<TermEvent> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            if event::poll(Duration::from_millis(50)).unwrap_or(false) {
                match event::read() {
                    Ok(e) => {
                        if tx.send(e).is_err() {
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
        }
    });
    rx
}

/// How images are drawn. It probes the terminal (kitty, sixel, iTerm2), so it must run
/// before the key reader starts, which could swallow the answers; a forced protocol
/// skips the probe.
fn picker(protocol: Option<ProtocolType>) -> Picker {
    match protocol {
        Some(p) => {
            let mut picker = Picker::halfblocks();
            picker.set_protocol_type(p);
            picker
        }
        None => {
            let picker = Picker::from_query_stdio().unwrap_or_else(|_| Picker::halfblocks());
            release_the_probes_reader();
            picker
        }
    }
}

/// Where the terminal does not answer the probe (inside tmux, which drops the probe's
/// passthrough unless `allow-passthrough` is on), ratatui-image gives up after its
/// timeout but leaves its reader thread blocked on stdin, and that thread took the
/// first key the user pressed (it stops after one read once the probe is over). A
/// Device Status Report that the terminal itself answers hands it that read instead.
/// Where no reader is left, the answer (`ESC [ 0 n`) reaches crossterm, which drops
/// it as no key. The wait gives the answer time to come back before crossterm reads
/// too, even on a loaded machine; it is paid once, at start.
fn release_the_probes_reader() {
    let mut out = std::io::stdout();
    let _ = out.write_all(b"\x1b[5n").and_then(|()| out.flush());
    std::thread::sleep(Duration::from_millis(250));
}

/// Runs the workbench until the run ends and the user quits.
pub fn run(
    mut engine: EngineHandle,
    protocol: Option<ProtocolType>,
    presets_dir: PathBuf,
) -> Result<Outcome> {
    let mut driver = Driver::new()?;
    let mut terminal = ratatui::init();
    crate::engine::keep_panics_off_screen();
    let picker = picker(protocol);
    let stop_input = Arc::new(AtomicBool::new(false));
    let keys = spawn_input(Arc::clone(&stop_input));
    let mut app = App::new(presets_dir);
    let mut preview: Option<StatefulProtocol> = None;
    let mut last_draw = Instant::now() - FRAME;
    let result: Result<()> = (|| {
        loop {
            if driver.stop_on_signal(&engine) {
                app.quit = true;
            }
            loop {
                let ev = match engine.events.try_recv() {
                    Ok(ev) => ev,
                    Err(TryRecvError::Empty) => break,
                    // The engine is gone without saying how it ended.
                    Err(TryRecvError::Disconnected) if !app.finished => {
                        Event::Failed("the engine stopped without a word".into())
                    }
                    Err(TryRecvError::Disconnected) => break,
                };
                driver.observe(&ev);
                if let (Event::Started(s), Some(log)) = (&ev, crate::logging::sink()) {
                    let _ = log.to_file(&s.run_dir.join("easel.log"));
                }
                if let Event::Preview { image, .. } = &ev {
                    let image = image::DynamicImage::ImageRgb8(image.clone());
                    preview = Some(picker.new_resize_protocol(image));
                }
                app.on_event(ev);
            }
            while let Ok(ev) = keys.try_recv() {
                match ev {
                    TermEvent::Key(k) if k.kind == KeyEventKind::Press => {
                        for action in app.on_key(k) {
                            match action {
                                Action::Send(c) => engine.send(c),
                                Action::Quit => app.quit = true,
                            }
                        }
                    }
                    TermEvent::Resize(..) => app.dirty = true,
                    _ => {}
                }
            }
            if app.quit && app.finished {
                return Ok(());
            }
            if app.dirty && last_draw.elapsed() >= FRAME {
                let _ = execute!(std::io::stdout(), BeginSynchronizedUpdate);
                terminal.draw(|f| view::draw(f, &app, preview.as_mut()))?;
                let _ = execute!(std::io::stdout(), EndSynchronizedUpdate);
                app.dirty = false;
                last_draw = Instant::now();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })();
    stop_input.store(true, Ordering::Relaxed);
    ratatui::restore();
    engine.join();
    result?;
    if driver.outcome.state == RunState::Failed {
        bail!("{}", app.notice.unwrap_or_else(|| "the run failed".into()));
    }
    Ok(driver.outcome)
}
