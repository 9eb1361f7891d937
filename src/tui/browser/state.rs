//! The runs browser's state and what keys do to it, with no drawing and no terminal.

use crate::run_dir::{self, Record};
use crate::runs::{self, RunStatus, RunSummary};
use anyhow::Result;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One run in the list, its records and settings read when first shown.
#[derive(Debug, Clone)]
pub struct Entry {
    pub summary: RunSummary,
    pub records: Vec<Record>,
    /// Every setting of its `preset.yaml`, by dotted key, as YAML text.
    pub settings: BTreeMap<String, String>,
    /// The iterations where settings changed.
    pub changes: Vec<u64>,
}

impl Entry {
    pub fn read(summary: RunSummary) -> Entry {
        let dir = &summary.path;
        let preset = dir.join(run_dir::PRESET);
        let settings = std::fs::read_to_string(&preset)
            .ok()
            .and_then(|t| yaml_serde::from_str::<yaml_serde::Value>(&t).ok())
            .map(|v| flatten(&v))
            .unwrap_or_default();
        Entry {
            records: runs::records(dir).unwrap_or_default(),
            changes: run_dir::read_changes(&preset)
                .unwrap_or_default()
                .iter()
                .map(|c| c.iter)
                .collect(),
            settings,
            summary,
        }
    }

    pub fn name(&self) -> String {
        self.summary.label.clone()
    }

    pub fn final_image(&self) -> PathBuf {
        self.summary.path.join(run_dir::FINAL)
    }
}

/// `{a: {b: 1}, c: [x]}` -> `a.b: 1`, `c: [x]` (the change log left out).
fn flatten(v: &yaml_serde::Value) -> BTreeMap<String, String> {
    fn walk(prefix: &str, v: &yaml_serde::Value, out: &mut BTreeMap<String, String>) {
        match v.as_mapping() {
            Some(m) => {
                for (k, v) in m {
                    let k = k.as_str().unwrap_or_default();
                    if prefix.is_empty() && k == "changes" {
                        continue;
                    }
                    let key = if prefix.is_empty() {
                        k.to_string()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            // Images by their file name: the folders are the same or beside the point.
            None => {
                let text = match v.as_str() {
                    Some(s) if s.contains('/') => Path::new(s)
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_else(|| s.to_string()),
                    _ => yaml_serde::to_string(v).unwrap_or_default(),
                };
                out.insert(prefix.to_string(), text.trim().replace('\n', " "));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk("", v, &mut out);
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Screen {
    List,
    /// One run: its plots, final image and numbers.
    Run(usize),
    /// Two runs side by side.
    Compare(usize, usize),
}

/// What the front end must do after a key.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Continue this run in the workbench with these `--set`s.
    Resume {
        dir: PathBuf,
        set: Vec<String>,
    },
    Quit,
}

pub struct Browser {
    pub dir: PathBuf,
    pub entries: Vec<Entry>,
    pub selected: usize,
    /// The run marked by `c`, waiting for a second.
    pub marked: Option<usize>,
    pub screen: Screen,
    pub help: bool,
    pub notice: Option<String>,
    pub dirty: bool,
}

impl Browser {
    /// The runs under `dir`.
    pub fn load(dir: &Path) -> Result<Browser> {
        let entries = runs::list(dir)?.into_iter().map(Entry::read).collect();
        Ok(Browser::new(dir, entries))
    }

    pub fn new(dir: &Path, entries: Vec<Entry>) -> Browser {
        Browser {
            dir: dir.to_path_buf(),
            entries,
            selected: 0,
            marked: None,
            screen: Screen::List,
            help: false,
            notice: None,
            dirty: true,
        }
    }

    pub fn on_key(&mut self, key: KeyEvent) -> Option<Action> {
        self.dirty = true;
        if key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL) {
            return Some(Action::Quit);
        }
        if self.help {
            self.help = !matches!(
                key.code,
                KeyCode::Esc | KeyCode::Char('?') | KeyCode::Char('q')
            );
            return None;
        }
        self.notice = None;
        match key.code {
            KeyCode::Char('q') => return Some(Action::Quit),
            KeyCode::Char('?') => self.help = true,
            KeyCode::Esc => {
                self.screen = Screen::List;
                self.marked = None;
            }
            KeyCode::Up | KeyCode::Char('k') => self.move_by(-1),
            KeyCode::Down | KeyCode::Char('j') => self.move_by(1),
            KeyCode::Enter if !self.entries.is_empty() => self.screen = Screen::Run(self.selected),
            KeyCode::Char('c') => self.mark(),
            KeyCode::Char('r') => return self.resume(),
            _ => {}
        }
        None
    }

    fn move_by(&mut self, step: isize) {
        let n = self.entries.len();
        if n == 0 {
            return;
        }
        self.selected = (self.selected as isize + step).clamp(0, n as isize - 1) as usize;
        if let Screen::Run(_) = self.screen {
            self.screen = Screen::Run(self.selected);
        }
    }

    fn mark(&mut self) {
        if self.entries.is_empty() {
            return;
        }
        match self.marked {
            Some(m) if m != self.selected => {
                self.screen = Screen::Compare(m, self.selected);
                self.marked = None;
            }
            Some(_) => self.marked = None,
            None => {
                self.marked = Some(self.selected);
                self.notice = Some("marked: select another run and press c to compare".into());
            }
        }
    }

    fn resume(&mut self) -> Option<Action> {
        let e = self.entries.get(self.selected)?;
        let s = &e.summary;
        match s.state {
            RunStatus::Running => {
                self.notice = Some(format!("{} is running in another easel", e.name()));
                None
            }
            RunStatus::Stopped => Some(Action::Resume {
                dir: s.path.clone(),
                set: Vec::new(),
            }),
            RunStatus::Finished => Some(Action::Resume {
                dir: s.path.clone(),
                set: vec![format!("iterations={}", s.total.max(1) * 2)],
            }),
        }
    }

    /// The settings whose values differ between two runs, and those that agree.
    pub fn differences(&self, a: usize, b: usize) -> Vec<(String, String, String, bool)> {
        let (sa, sb) = (&self.entries[a].settings, &self.entries[b].settings);
        let mut keys: Vec<&String> = sa.keys().chain(sb.keys()).collect();
        keys.sort();
        keys.dedup();
        keys.into_iter()
            .filter(|k| k.as_str() != "name")
            .map(|k| {
                let va = sa.get(k).cloned().unwrap_or_else(|| "-".into());
                let vb = sb.get(k).cloned().unwrap_or_else(|| "-".into());
                let differs = va != vb;
                (k.clone(), va, vb, differs)
            })
            .collect()
    }
}
