//! What a run directory says about its run, read without disturbing it: the list of
//! `easel runs` and the header of `report.html`.

use crate::run_dir::{self, Record};
use anyhow::{Context, Result};
use serde::Serialize;
use std::fs;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// All its iterations done, final.png written.
    Finished,
    /// Ended early (stopped, failed or killed): `easel resume` continues it.
    Stopped,
    /// Another easel holds its lock now.
    Running,
}

impl RunStatus {
    pub fn label(&self) -> &'static str {
        match self {
            RunStatus::Finished => "finished",
            RunStatus::Stopped => "stopped",
            RunStatus::Running => "running",
        }
    }
}

/// One run directory, as `easel runs` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub path: PathBuf,
    /// How lists name it: the directory's name (`sweep/p000` for a sweep's point).
    pub label: String,
    /// The preset's name.
    pub name: String,
    /// When the run started (UTC, from the directory's name), e.g. `2026-11-29 01:02`.
    pub started: String,
    /// Iterations done: the last record's.
    pub done: u64,
    pub total: u64,
    /// The last J recorded (the final image's once the run has ended).
    #[serde(rename = "J")]
    pub j: Option<f64>,
    pub state: RunStatus,
    pub backend: String,
    pub elapsed_s: f64,
    /// The command that continues the run (`None` while it runs).
    pub resume: Option<String>,
}

/// The records of `losses.jsonl` in `dir`, skipping a torn last line.
pub fn records(dir: &Path) -> Result<Vec<Record>> {
    let path = dir.join(run_dir::LOSSES);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect())
}

/// Whether another process holds the run directory's lock (tested with a shared lock,
/// let go at once).
fn locked(dir: &Path) -> bool {
    match fs::File::open(dir.join(run_dir::LOCK)) {
        Ok(f) => matches!(f.try_lock_shared(), Err(fs::TryLockError::WouldBlock)),
        Err(_) => false,
    }
}

/// `20261129T010203Z-name` -> `2026-11-29 01:02`.
fn started(dir_name: &str) -> Option<String> {
    let stamp = dir_name.get(..16)?;
    let t = chrono::NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%SZ").ok()?;
    Some(t.format("%Y-%m-%d %H:%M").to_string())
}

/// When a file was written (UTC), for run directories not named by their start (a
/// sweep's points, `--run-dir`): their `inputs.sha256` is written once, at the start.
fn written(file: &Path) -> Option<String> {
    let t: chrono::DateTime<chrono::Utc> = fs::metadata(file).ok()?.modified().ok()?.into();
    Some(t.format("%Y-%m-%d %H:%M").to_string())
}

/// Reads what a run directory holds; `None` where `dir` is not one.
pub fn summarize(dir: &Path) -> Result<Option<RunSummary>> {
    summarize_with(dir, records(dir)?.last())
}

/// [`summarize`] for a caller that has read the run's records already: `last` is the
/// last of them.
pub fn summarize_with(dir: &Path, last: Option<&Record>) -> Result<Option<RunSummary>> {
    let preset_path = dir.join(run_dir::PRESET);
    let Ok(text) = fs::read_to_string(&preset_path) else {
        return Ok(None);
    };
    let preset: yaml_serde::Value = yaml_serde::from_str(&text)
        .with_context(|| format!("{} is not YAML", preset_path.display()))?;
    let total = preset
        .get("iterations")
        .and_then(|v| v.as_u64())
        .unwrap_or(0);
    let name = preset
        .get("name")
        .and_then(|v| v.as_str())
        .unwrap_or("?")
        .to_string();
    let done = last.map(|r| r.iter + u64::from(!r.is_final)).unwrap_or(0);
    let state = if locked(dir) {
        RunStatus::Running
    } else if last.is_some_and(|r| r.is_final)
        && done >= total
        && dir.join(run_dir::FINAL).is_file()
    {
        RunStatus::Finished
    } else {
        RunStatus::Stopped
    };
    let dir_name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(Some(
        RunSummary {
            path: dir.to_path_buf(),
            name,
            started: started(&dir_name)
                .or_else(|| written(&dir.join(run_dir::INPUTS)))
                .unwrap_or_default(),
            label: dir_name,
            done,
            total,
            j: last.map(|r| r.j),
            state,
            backend: last.map(|r| r.backend.clone()).unwrap_or_default(),
            elapsed_s: last.map(|r| r.elapsed_s).unwrap_or(0.0),
            resume: None,
        }
        .with_state(state),
    ))
}

impl RunSummary {
    /// The summary with `state` (the engine knows its own run's better than the lock,
    /// which it holds itself), and the command that goes on from it.
    pub fn with_state(mut self, state: RunStatus) -> RunSummary {
        let shown = self.path.display();
        self.resume = match state {
            RunStatus::Running => None,
            RunStatus::Stopped => Some(format!("easel resume {shown}")),
            RunStatus::Finished => Some(format!(
                "easel resume {shown} --set iterations={}",
                self.total.max(1) * 2
            )),
        };
        self.state = state;
        self
    }
}

/// The run directories directly under `base`, oldest first (their names start with
/// the time they started), and the points of the sweeps there (`sweep/p000`).
pub fn list(base: &Path) -> Result<Vec<RunSummary>> {
    let entries = fs::read_dir(base).with_context(|| {
        format!(
            "cannot list runs in {}: give the folder that holds the run directories (runs/ by default)",
            base.display()
        )
    })?;
    let mut dirs: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        // Not the staging folders of runs being created (or killed while they were).
        .filter(|p| {
            p.is_dir()
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    dirs.sort();
    let mut runs = Vec::new();
    for dir in dirs {
        if dir.join(crate::sweep::PLAN).is_file() {
            let sweep = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            for mut point in list(&dir)? {
                point.label = format!("{sweep}/{}", point.label);
                runs.push(point);
            }
            continue;
        }
        match summarize(&dir) {
            Ok(Some(s)) => runs.push(s),
            Ok(None) => {}
            Err(e) => tracing::warn!("skipping {}: {e:#}", dir.display()),
        }
    }
    Ok(runs)
}

/// The table `easel runs` prints.
pub fn table(runs: &[RunSummary]) -> String {
    let mut out = format!(
        "{:<40} {:<16} {:>11} {:>10} {:<8} {:<7} {}\n",
        "run", "started", "iterations", "J", "state", "backend", "to go on"
    );
    for r in runs {
        let name = &r.label;
        let j =
            r.j.map(|j| format!("{j:.3e}"))
                .unwrap_or_else(|| "-".into());
        out += &format!(
            "{:<40} {:<16} {:>11} {:>10} {:<8} {:<7} {}\n",
            name,
            r.started,
            format!("{}/{}", r.done, r.total),
            j,
            r.state.label(),
            r.backend,
            r.resume.as_deref().unwrap_or("")
        );
    }
    out
}
