//! The workbench's state and what keys do to it, with no drawing and no terminal:
//! keys in, settings and engine commands out.

use crate::engine::{Command, Event, RunState, Setting, Started};
use crate::network::TileProgress;
use crate::run_dir::Record;
use crate::settings::{Rgb, Settings, colour_label};
use crate::vgg::{LAYER_NAMES, Layer};
use crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use ratatui::crossterm;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::Instant;

/// What a typed field accepts, and how to say so.
struct Field {
    allowed: fn(char) -> bool,
    takes: &'static str,
}

const NUMBER: Field = Field {
    allowed: |c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '-' | '+'),
    takes: "a value takes digits, '.', 'e', '+' and '-' (Enter sets it, Esc cancels)",
};

const PRESET_NAME: Field = Field {
    allowed: |c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'),
    takes: "a preset name takes letters, digits, '-', '_' and '.' (Esc cancels)",
};

/// Typing into a field: Backspace deletes, allowed characters are added; another
/// character is left out, and the notice returned says so (a key that did nothing would
/// look like a broken terminal).
fn edit(buf: &mut String, code: KeyCode, field: &Field) -> Option<String> {
    match code {
        KeyCode::Backspace => {
            buf.pop();
        }
        KeyCode::Char(c) if (field.allowed)(c) => buf.push(c),
        KeyCode::Char(c) => return Some(format!("'{c}' left out: {}", field.takes)),
        _ => {}
    }
    None
}

/// Most points kept per series; beyond it every other old point is dropped.
pub const MAX_POINTS: usize = 1000;
/// Multiplicative step of Left/Right (Shift: x10).
pub const STEP: f64 = 1.25;

/// One row of the settings panel.
#[derive(Debug, Clone, PartialEq)]
pub enum Row {
    Alpha,
    Beta,
    Lambda(Layer),
    ContentLayer,
    LearningRate,
    TvWeight,
    /// The style weight of a region of the mask, by its colour.
    Region(Rgb),
}

impl Row {
    pub fn label(&self) -> String {
        match self {
            Row::Alpha => "alpha".into(),
            Row::Beta => "beta".into(),
            Row::Lambda(l) => format!("λ {l}"),
            Row::ContentLayer => "content layer".into(),
            Row::LearningRate => "learning rate".into(),
            Row::TvWeight => "TV weight".into(),
            Row::Region(c) => format!("style {}", colour_label(*c)),
        }
    }

    fn setting(&self) -> Option<Setting> {
        match self {
            Row::Alpha => Some(Setting::Alpha),
            Row::Beta => Some(Setting::Beta),
            Row::Lambda(l) => Some(Setting::StyleLayer(*l)),
            Row::LearningRate => Some(Setting::LearningRate),
            Row::TvWeight => Some(Setting::TvWeight),
            Row::Region(c) => Some(Setting::RegionWeight(*c)),
            Row::ContentLayer => None,
        }
    }
}

/// What the workbench is doing with the keyboard.
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    Normal,
    /// Typing an exact value for the selected row.
    Editing(String),
    Help,
    ConfirmQuit,
    /// Typing the name of a preset to save.
    PresetName(String),
    /// The preset file exists: replace it?
    ConfirmOverwrite(String),
}

/// What the front end must do after a key.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Send(Command),
    Quit,
}

/// The history of one run, bounded in size.
#[derive(Debug, Default, Clone)]
pub struct History {
    pub records: VecDeque<Record>,
}

impl History {
    pub fn push(&mut self, record: Record) {
        // A rollback or resume repeats iterations: the newer record replaces the tail.
        while self.records.back().is_some_and(|r| r.iter >= record.iter) {
            self.records.pop_back();
        }
        self.records.push_back(record);
        if self.records.len() > MAX_POINTS {
            // Thin the older half, keep the recent half at full resolution.
            let half = self.records.len() / 2;
            let recent = self.records.split_off(half);
            let thinned: VecDeque<Record> = self.records.iter().step_by(2).cloned().collect();
            self.records = thinned;
            self.records.extend(recent);
        }
    }

    pub fn last(&self) -> Option<&Record> {
        self.records.back()
    }

    /// Iterations per second over the last few records.
    pub fn rate(&self) -> Option<f64> {
        let n = self.records.len();
        if n < 2 {
            return None;
        }
        let a = &self.records[n.saturating_sub(11)];
        let b = &self.records[n - 1];
        let dt = b.elapsed_s - a.elapsed_s;
        (dt > 0.0).then(|| (b.iter - a.iter) as f64 / dt)
    }
}

pub struct App {
    /// The run's settings as they now are, once it has started.
    pub settings: Option<Settings>,
    /// The preset's name and the run's iterations.
    pub name: String,
    pub iterations: u64,
    pub rows: Vec<Row>,
    pub selected: usize,
    pub mode: Mode,
    pub state: RunState,
    pub backend: String,
    pub run_dir: Option<PathBuf>,
    pub width: usize,
    pub height: usize,
    pub history: History,
    /// Settings changes as (iteration, "key = value"), marked on the plots.
    pub changes: Vec<(u64, String)>,
    pub notice: Option<String>,
    pub preview_iter: Option<u64>,
    /// Where `p` writes presets.
    pub presets_dir: PathBuf,
    pub finished: bool,
    pub quit: bool,
    /// Something changed since the last draw.
    pub dirty: bool,
    /// Where a tiled evaluation is, and when the iteration it belongs to began.
    pub tiles: Option<TileProgress>,
    pub iteration_began: Instant,
}

impl App {
    pub fn new(presets_dir: PathBuf) -> Self {
        App {
            settings: None,
            name: String::new(),
            iterations: 0,
            rows: Vec::new(),
            selected: 0,
            mode: Mode::Normal,
            state: RunState::Preparing,
            backend: String::new(),
            run_dir: None,
            width: 0,
            height: 0,
            history: History::default(),
            changes: Vec::new(),
            notice: None,
            preview_iter: None,
            presets_dir,
            finished: false,
            quit: false,
            dirty: true,
            tiles: None,
            iteration_began: Instant::now(),
        }
    }

    /// Iterations per second: over the last records, or before there are two, from how
    /// far a tiled iteration has come (its first iteration can take minutes).
    pub fn rate(&self) -> Option<f64> {
        self.history.rate().or_else(|| {
            let done = self.tiles?.fraction();
            let t = self.iteration_began.elapsed().as_secs_f64();
            (done > 0.0 && t > 0.0).then(|| done / t)
        })
    }

    fn set_settings(&mut self, settings: Settings) {
        let mut rows = vec![Row::Alpha, Row::Beta];
        rows.extend(settings.style_layers.iter().map(|(l, _)| Row::Lambda(*l)));
        rows.extend([Row::ContentLayer, Row::LearningRate, Row::TvWeight]);
        rows.extend(
            settings
                .region_weights
                .iter()
                .filter(|(_, w)| w.is_some())
                .map(|(c, _)| Row::Region(*c)),
        );
        self.rows = rows;
        self.selected = self.selected.min(self.rows.len().saturating_sub(1));
        self.settings = Some(settings);
    }

    /// The value a row shows.
    pub fn value(&self, row: &Row) -> String {
        match (row, &self.settings) {
            (Row::ContentLayer, Some(s)) => s.content_layer.name().to_string(),
            _ => self.numeric(row).map(fmt_num).unwrap_or_default(),
        }
    }

    fn numeric(&self, row: &Row) -> Option<f64> {
        self.settings.as_ref()?.get(row.setting()?)
    }

    pub fn total(&self) -> u64 {
        self.iterations
    }

    /// The iteration the run is at (records are taken before their step, the final
    /// one after the last).
    pub fn iter(&self) -> u64 {
        self.history
            .last()
            .map(|r| r.iter + u64::from(!r.is_final))
            .unwrap_or(0)
    }

    pub fn running(&self) -> bool {
        matches!(
            self.state,
            RunState::Preparing | RunState::Running | RunState::Paused
        )
    }

    pub fn on_event(&mut self, event: Event) {
        self.dirty = true;
        match event {
            Event::Started(started) => {
                let Started {
                    run_dir,
                    backend,
                    width,
                    height,
                    preset,
                    history,
                    changes,
                    ..
                } = *started;
                self.run_dir = Some(run_dir);
                self.backend = backend;
                (self.width, self.height) = (width, height);
                for c in &changes {
                    self.changes
                        .push((c.iter, format!("{} = {}", c.key, c.value_text())));
                }
                self.name = preset.name.clone();
                self.iterations = preset.iterations;
                self.set_settings(preset.settings);
                history.into_iter().for_each(|r| self.history.push(r));
                // Tiles done before this were the targets', not an iteration's.
                self.tiles = None;
                self.iteration_began = Instant::now();
            }
            Event::Iteration(record) => {
                self.history.push(record);
                self.iteration_began = Instant::now();
            }
            Event::Tiles(progress) => self.tiles = Some(progress),
            Event::Preview { iter, .. } => self.preview_iter = Some(iter),
            Event::State(state) => self.state = state,
            Event::Changed {
                iter,
                key,
                value,
                settings,
            } => {
                self.notice = Some(format!("iteration {iter}: {key} = {value}"));
                self.changes.push((iter, format!("{key} = {value}")));
                self.set_settings(*settings);
            }
            Event::BackendChanged { iter, backend } => {
                self.notice = Some(format!("iteration {iter}: now on {backend}"));
                self.backend = backend;
                self.tiles = None;
            }
            Event::Saved(path) => self.notice = Some(format!("saved {}", path.display())),
            Event::Notice(text) => self.notice = Some(text),
            Event::Finished { final_image, state } => {
                self.state = state;
                self.finished = true;
                self.notice = Some(format!("{}: {}", state.label(), final_image.display()));
                if self.mode == Mode::ConfirmQuit || self.quit {
                    self.quit = true;
                }
            }
            Event::Failed(message) => {
                self.state = RunState::Failed;
                self.finished = true;
                self.notice = Some(format!("failed: {message}"));
            }
        }
    }

    /// Handles one key press.
    pub fn on_key(&mut self, key: KeyEvent) -> Vec<Action> {
        self.dirty = true;
        let ctrl_c =
            key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL);
        match std::mem::replace(&mut self.mode, Mode::Normal) {
            Mode::Help => {
                if !matches!(
                    key.code,
                    KeyCode::Esc | KeyCode::Char('?') | KeyCode::Char('q')
                ) {
                    self.mode = Mode::Help;
                }
                Vec::new()
            }
            Mode::ConfirmQuit => match key.code {
                KeyCode::Char('y') | KeyCode::Char('Y') | KeyCode::Enter => self.quit_now(),
                _ if ctrl_c => self.quit_now(),
                _ => Vec::new(),
            },
            Mode::Editing(mut buf) => match key.code {
                KeyCode::Esc => Vec::new(),
                KeyCode::Enter => self.apply_typed(&buf),
                code => {
                    self.notice = edit(&mut buf, code, &NUMBER).or(self.notice.take());
                    self.mode = Mode::Editing(buf);
                    Vec::new()
                }
            },
            Mode::PresetName(mut buf) => match key.code {
                KeyCode::Esc => Vec::new(),
                KeyCode::Enter => self.name_entered(buf.trim().to_string()),
                code => {
                    self.notice = edit(&mut buf, code, &PRESET_NAME).or(self.notice.take());
                    self.mode = Mode::PresetName(buf);
                    Vec::new()
                }
            },
            Mode::ConfirmOverwrite(name) => match key.code {
                KeyCode::Char('y') | KeyCode::Char('Y') => self.save_preset(name),
                _ => {
                    self.notice = Some(format!(
                        "{} kept as it was",
                        self.preset_path(&name).display()
                    ));
                    Vec::new()
                }
            },
            Mode::Normal => self.normal_key(key, ctrl_c),
        }
    }

    fn quit_now(&mut self) -> Vec<Action> {
        self.quit = true;
        if self.running() {
            self.notice =
                Some("stopping: writing the final image, the losses and the checkpoint".into());
            vec![Action::Send(Command::Stop)]
        } else {
            vec![Action::Quit]
        }
    }

    fn normal_key(&mut self, key: KeyEvent, ctrl_c: bool) -> Vec<Action> {
        let shift = key.modifiers.contains(KeyModifiers::SHIFT);
        match key.code {
            _ if ctrl_c => self.ask_quit(),
            KeyCode::Char('q') => self.ask_quit(),
            KeyCode::Char('?') => {
                self.mode = Mode::Help;
                Vec::new()
            }
            KeyCode::Char(' ') => match self.state {
                RunState::Running => vec![Action::Send(Command::Pause)],
                RunState::Paused => vec![Action::Send(Command::Resume)],
                _ => Vec::new(),
            },
            KeyCode::Up | KeyCode::Char('k') => {
                self.selected = self.selected.saturating_sub(1);
                Vec::new()
            }
            KeyCode::Down | KeyCode::Char('j') => {
                if self.selected + 1 < self.rows.len() {
                    self.selected += 1;
                }
                Vec::new()
            }
            KeyCode::Right | KeyCode::Char('+') | KeyCode::Char('=') => self.step(true, shift),
            KeyCode::Left | KeyCode::Char('-') | KeyCode::Char('_') => self.step(false, shift),
            KeyCode::Enter => {
                if let Some(row) = self.rows.get(self.selected)
                    && row.setting().is_some()
                {
                    self.mode = Mode::Editing(String::new());
                }
                Vec::new()
            }
            KeyCode::Char('s') => vec![Action::Send(Command::Snapshot)],
            KeyCode::Char('r') => vec![Action::Send(Command::Preview)],
            KeyCode::Char('p') => {
                self.mode = Mode::PresetName(self.name.clone());
                Vec::new()
            }
            KeyCode::Char('b') => vec![Action::Send(Command::NextBackend)],
            _ => Vec::new(),
        }
    }

    /// Enter on a preset name: save, or ask before replacing a file.
    fn name_entered(&mut self, name: String) -> Vec<Action> {
        if name.is_empty() {
            self.notice = Some("a preset needs a name".into());
            return Vec::new();
        }
        if self.preset_path(&name).exists() {
            self.mode = Mode::ConfirmOverwrite(name);
            return Vec::new();
        }
        self.save_preset(name)
    }

    fn ask_quit(&mut self) -> Vec<Action> {
        if self.running() {
            self.mode = Mode::ConfirmQuit;
            Vec::new()
        } else {
            vec![Action::Quit]
        }
    }

    /// Left/Right: weights change multiplicatively, the content layer moves by one.
    fn step(&mut self, up: bool, big: bool) -> Vec<Action> {
        let Some(row) = self.rows.get(self.selected).cloned() else {
            return Vec::new();
        };
        if row == Row::ContentLayer {
            let Some(current) = self.settings.as_ref().map(|s| s.content_layer) else {
                return Vec::new();
            };
            let next = if up {
                (current.0 + 1).min(LAYER_NAMES.len() - 1)
            } else {
                current.0.saturating_sub(1)
            };
            return vec![Action::Send(Command::SetContentLayer(Layer(next)))];
        }
        let (Some(setting), Some(value)) = (row.setting(), self.numeric(&row)) else {
            return Vec::new();
        };
        let factor = if big { 10.0 } else { STEP };
        let next = match (value == 0.0, up) {
            // A weight at 0 cannot grow by a factor: start it small.
            (true, true) => 0.01,
            (true, false) => 0.0,
            (false, true) => value * factor,
            (false, false) => value / factor,
        };
        vec![Action::Send(Command::Set(setting, next))]
    }

    fn apply_typed(&mut self, text: &str) -> Vec<Action> {
        let Some(setting) = self.rows.get(self.selected).and_then(Row::setting) else {
            return Vec::new();
        };
        match text.trim().parse::<f64>() {
            Ok(v) if v.is_finite() && v >= 0.0 => vec![Action::Send(Command::Set(setting, v))],
            _ => {
                self.notice = Some(format!("`{text}` is not a number >= 0; nothing changed"));
                Vec::new()
            }
        }
    }

    pub fn preset_path(&self, name: &str) -> PathBuf {
        self.presets_dir.join(format!("{name}.yaml"))
    }

    fn save_preset(&mut self, name: String) -> Vec<Action> {
        vec![Action::Send(Command::SavePreset {
            path: self.preset_path(&name),
            name,
        })]
    }
}

/// Numbers as people type them: 10, 0.2, 1.5e-3.
pub fn fmt_num(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if (1e-3..1e6).contains(&v.abs()) {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        format!("{v:.3e}")
    }
}
