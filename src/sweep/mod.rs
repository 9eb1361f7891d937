//! Sweeps (`easel sweep`): a grid of settings over a base preset, each point a normal
//! run directory under the sweep's folder, run here one or a few at a time, or as a
//! Slurm job array; then collected into `sweep.jsonl` and contact sheets.
//!
//! The sweep's folder: `plan.json` (the expanded points), `presets/pNNN.yaml` (each
//! point's effective preset), `pNNN/` (its run directory), `logs/`, and once collected
//! `sweep.jsonl` and `contact.png` (with `contact.json`, what each cell shows).

pub mod local;
pub mod plan;
mod sheet;
pub mod slurm;

use crate::atomic;
use crate::run_dir;
use crate::runs::{self, RunStatus};
use anyhow::{Context, Result, bail};
use plan::{Plan, Point};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub const PLAN: &str = "plan.json";
pub const RESULTS: &str = "sweep.jsonl";

/// An open sweep folder and its plan.
pub struct SweepDir {
    pub path: PathBuf,
    pub plan: Plan,
    /// Held by the `easel sweep` that runs or submits the points, so that a second one
    /// on the same folder is refused instead of taking the first one's points for
    /// failed; `status` and `collect` take none (they read the points' run directories
    /// and write only what they report).
    _lock: Option<std::fs::File>,
}

/// A point's line in `sweep.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PointResult {
    pub point: String,
    pub index: usize,
    /// Each axis' label at this point, by the axis' name.
    pub labels: BTreeMap<String, String>,
    /// The values the point sets, by key.
    pub settings: BTreeMap<String, yaml_serde::Value>,
    /// `pending` (not started), `running`, `stopped` or `finished`.
    pub state: String,
    pub iterations: u64,
    pub total: u64,
    #[serde(rename = "J")]
    pub j: Option<f64>,
    #[serde(rename = "J_content")]
    pub j_content: Option<f64>,
    #[serde(rename = "J_style")]
    pub j_style: Option<f64>,
    pub style: BTreeMap<String, f64>,
    pub time_s: f64,
    pub run_dir: PathBuf,
    pub final_image: Option<PathBuf>,
}

impl SweepDir {
    /// Creates the sweep's folder, or reopens it for the same sweep (finished points are
    /// kept); refuses a folder that holds another sweep.
    pub fn prepare(path: &Path, plan: Plan) -> Result<SweepDir> {
        let path = &std::path::absolute(path)?;
        let plan_path = path.join(PLAN);
        std::fs::create_dir_all(path)
            .with_context(|| format!("cannot create the sweep folder {}", path.display()))?;
        let lock = run_dir::take_lock(path, "sweep folder", "run the sweep again")?;
        if plan_path.is_file() {
            let before = Self::open(path)?;
            if before.plan != plan {
                bail!(
                    "{} holds another sweep (its {PLAN} differs: other axes or values, another base preset, or the base preset was edited since); give another folder with --dir, or remove it",
                    path.display()
                );
            }
        }
        std::fs::create_dir_all(path.join("presets"))
            .and_then(|()| std::fs::create_dir_all(path.join("logs")))
            .with_context(|| format!("cannot create the sweep folder {}", path.display()))?;
        let dir = SweepDir {
            path: path.to_path_buf(),
            plan,
            _lock: Some(lock),
        };
        for p in &dir.plan.points {
            dir.plan.preset(p)?.save(&dir.preset_path(p))?;
        }
        atomic::write(
            &plan_path,
            serde_json::to_string_pretty(&dir.plan)?.as_bytes(),
        )?;
        Ok(dir)
    }

    /// Opens a sweep folder made by `easel sweep`.
    pub fn open(path: &Path) -> Result<SweepDir> {
        let path = &std::path::absolute(path)?;
        let plan_path = path.join(PLAN);
        let text = std::fs::read_to_string(&plan_path).with_context(|| {
            format!(
                "{} is not a sweep folder (no {PLAN}); give the folder `easel sweep` made (sweeps/NAME by default)",
                path.display()
            )
        })?;
        let plan = serde_json::from_str(&text).with_context(|| {
            format!(
                "{} is damaged; run `easel sweep` on the sweep file again",
                plan_path.display()
            )
        })?;
        Ok(SweepDir {
            path: path.to_path_buf(),
            plan,
            _lock: None,
        })
    }

    pub fn run_dir(&self, p: &Point) -> PathBuf {
        self.path.join(&p.dir)
    }

    pub fn preset_path(&self, p: &Point) -> PathBuf {
        self.path.join("presets").join(format!("{}.yaml", p.dir))
    }

    pub fn log_path(&self, p: &Point) -> PathBuf {
        self.path.join("logs").join(format!("{}.log", p.dir))
    }

    /// Marks a point that failed before its run directory existed (a missing image, the
    /// memory check): without it the point would read as `pending`. A point whose run
    /// started is told by its run directory instead.
    pub fn mark_failed(&self, p: &Point) -> Result<()> {
        if self.run_dir(p).exists() {
            return Ok(());
        }
        atomic::write(&self.failure_path(p), b"")
    }

    /// Clears [`SweepDir::mark_failed`]'s mark as the point starts again.
    pub fn clear_failed(&self, p: &Point) {
        let _ = std::fs::remove_file(self.failure_path(p));
    }

    fn failure_path(&self, p: &Point) -> PathBuf {
        self.path.join("logs").join(format!("{}.failed", p.dir))
    }

    /// The point's run as its directory tells it; `None` before it has started.
    pub fn summary(&self, p: &Point) -> Option<runs::RunSummary> {
        runs::summarize(&self.run_dir(p)).ok().flatten()
    }

    pub fn finished(&self, p: &Point) -> bool {
        self.summary(p)
            .is_some_and(|s| s.state == RunStatus::Finished)
    }

    /// The points still to run: not finished, and not running in another process.
    pub fn unfinished(&self) -> Vec<&Point> {
        self.plan
            .points
            .iter()
            .filter(|p| {
                self.summary(p)
                    .is_none_or(|s| s.state == RunStatus::Stopped)
            })
            .collect()
    }

    /// Every point's line of `sweep.jsonl`.
    pub fn results(&self) -> Vec<PointResult> {
        self.plan.points.iter().map(|p| self.result(p)).collect()
    }

    fn result(&self, p: &Point) -> PointResult {
        let records = runs::records(&self.run_dir(p)).unwrap_or_default();
        let last = records.last();
        let summary = runs::summarize_with(&self.run_dir(p), last).ok().flatten();
        let final_image = self.run_dir(p).join(run_dir::FINAL);
        PointResult {
            point: p.dir.clone(),
            index: p.index,
            labels: self
                .plan
                .axes
                .iter()
                .zip(&p.steps)
                .map(|(a, &s)| (a.name(), a.labels[s].clone()))
                .collect(),
            settings: p.settings(&self.plan.axes).into_iter().collect(),
            state: match &summary {
                Some(s) => s.state.label(),
                None if self.failure_path(p).is_file() => "failed",
                None => "pending",
            }
            .to_string(),
            iterations: summary.as_ref().map(|s| s.done).unwrap_or(0),
            total: summary
                .as_ref()
                .map(|s| s.total)
                .unwrap_or_else(|| self.planned_iterations(p)),
            j: last.map(|r| r.j),
            j_content: last.map(|r| r.j_content),
            j_style: last.map(|r| r.j_style),
            style: last.map(|r| r.style.clone()).unwrap_or_default(),
            time_s: last.map(|r| r.elapsed_s).unwrap_or(0.0),
            run_dir: self.run_dir(p),
            final_image: final_image.is_file().then_some(final_image),
        }
    }

    /// The iterations the point's preset asks for (0 where it cannot be read).
    fn planned_iterations(&self, p: &Point) -> u64 {
        std::fs::read_to_string(self.preset_path(p))
            .ok()
            .and_then(|t| yaml_serde::from_str::<yaml_serde::Value>(&t).ok())
            .and_then(|v| v.get("iterations").and_then(|i| i.as_u64()))
            .unwrap_or(0)
    }

    /// Writes `sweep.jsonl` and the contact sheets; returns the points' results and the
    /// sheets' paths.
    pub fn collect(&self) -> Result<(Vec<PointResult>, Vec<PathBuf>)> {
        let results = self.results();
        let mut text = String::new();
        for r in &results {
            text += &serde_json::to_string(r)?;
            text.push('\n');
        }
        atomic::write(&self.path.join(RESULTS), text.as_bytes())?;
        let sheets = sheet::write(&self.path, &self.plan, &results)?;
        Ok((results, sheets))
    }

    /// A table of the points' `results`: state, iterations and J.
    pub fn table(&self, results: &[PointResult]) -> String {
        let mut out = format!(
            "{:<5} {:<9} {:>11} {:>10}  settings\n",
            "point", "state", "iterations", "J"
        );
        for (p, r) in self.plan.points.iter().zip(results) {
            let j =
                r.j.map(|j| format!("{j:.3e}"))
                    .unwrap_or_else(|| "-".into());
            out += &format!(
                "{:<5} {:<9} {:>11} {:>10}  {}\n",
                p.dir,
                r.state,
                format!("{}/{}", r.iterations, r.total),
                j,
                p.label(&self.plan.axes)
            );
        }
        out
    }
}
