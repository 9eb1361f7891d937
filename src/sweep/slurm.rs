//! A sweep as a Slurm job array: easel writes `sweep.sbatch` (one array task per point,
//! each `easel run --run-dir` on its point, which resumes from the point's checkpoint
//! when it has one), submits the unfinished points with `sbatch --array`, and records
//! the job in `slurm.jsonl`. Slurm does the distribution; easel schedules nothing.

use super::SweepDir;
use super::plan::Point;
use crate::atomic;
use crate::backend::BackendChoice;
use anyhow::{Context, Result, bail};
use clap::ValueEnum;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const SCRIPT: &str = "sweep.sbatch";
pub const JOBS: &str = "slurm.jsonl";

#[derive(Debug, Clone, Default)]
pub struct Options {
    pub partition: Option<String>,
    pub gres: Option<String>,
    pub time: Option<String>,
    /// Further `#SBATCH` lines, e.g. `--mem=16G`.
    pub sbatch_args: Vec<String>,
    /// Send the points that failed or were cancelled while others are still queued.
    pub resubmit_failed: bool,
    pub weights: PathBuf,
    pub backend: Option<BackendChoice>,
}

/// A job submitted for the sweep.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Job {
    job: String,
    points: Vec<String>,
}

fn quote(text: &str) -> Result<String> {
    Ok(shlex::try_quote(text)
        .with_context(|| format!("{text:?} cannot be quoted for a shell script"))?
        .into_owned())
}

fn quote_path(p: &Path) -> Result<String> {
    quote(&p.display().to_string())
}

/// The batch script: the array task's index is the point's number.
fn script(sweep: &SweepDir, opts: &Options) -> Result<String> {
    let dir = std::path::absolute(&sweep.path)?;
    let exe = std::env::current_exe()?;
    let mut s = String::from("#!/bin/bash\n");
    s += &format!(
        "#SBATCH --job-name={}\n",
        quote(&format!("easel-{}", sweep.plan.name))?
    );
    s += &format!(
        "#SBATCH --output={}\n",
        quote_path(&dir.join("logs").join("slurm-%A_%a.log"))?
    );
    for (flag, value) in [
        ("partition", &opts.partition),
        ("gres", &opts.gres),
        ("time", &opts.time),
    ] {
        if let Some(v) = value {
            s += &format!("#SBATCH --{flag}={}\n", quote(v)?);
        }
    }
    for a in &opts.sbatch_args {
        s += &format!("#SBATCH {a}\n");
    }
    s += "# One task per point (written by `easel sweep --slurm`); a point that has a\n";
    s += "# checkpoint is resumed from it.\nset -euo pipefail\n";
    s += "point=$(printf 'p%03d' \"$SLURM_ARRAY_TASK_ID\")\n";
    s += &format!("dir={}\n", quote_path(&dir)?);
    s += &format!(
        "exec {} run \"$dir/presets/$point.yaml\" --run-dir \"$dir/$point\" --ui jsonl --weights {}",
        quote_path(&exe)?,
        quote_path(&std::path::absolute(&opts.weights)?)?
    );
    if let Some(b) = opts.backend
        && let Some(v) = b.to_possible_value()
    {
        s += &format!(" --backend {}", v.get_name());
    }
    s += "\n";
    Ok(s)
}

fn jobs(sweep: &SweepDir) -> Vec<Job> {
    std::fs::read_to_string(sweep.path.join(JOBS))
        .map(|t| {
            t.lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The sweep's array tasks Slurm still holds, by point (`p002` -> `PENDING`).
pub fn queued(sweep: &SweepDir) -> Result<BTreeMap<String, String>> {
    let ids: Vec<String> = jobs(sweep).into_iter().map(|j| j.job).collect();
    if ids.is_empty() {
        return Ok(BTreeMap::new());
    }
    let out = Command::new("squeue")
        .args(["-h", "-r", "-o", "%i %T", "-j", &ids.join(",")])
        .output()
        .context(
            "cannot run squeue: is Slurm's client installed here (the machine you submit from)?",
        )?;
    // squeue fails for job ids it has forgotten: then none of them is queued. Any other
    // failure is not "nothing queued": submitting on it could run a point twice.
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if !err.contains("Invalid job id") {
            bail!(
                "squeue failed, so which points Slurm holds is unknown: {}",
                err.trim()
            );
        }
        return Ok(BTreeMap::new());
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|l| {
            let (id, state) = l.split_once(' ')?;
            let task: usize = id.rsplit_once('_')?.1.parse().ok()?;
            Some((format!("p{task:03}"), state.to_string()))
        })
        .collect())
}

/// Submits the sweep's unfinished points as one job array; returns the job id, or
/// `None` where nothing was left to run.
pub fn submit(sweep: &SweepDir, opts: &Options) -> Result<Option<String>> {
    let queued = queued(sweep)?;
    if !queued.is_empty() && !opts.resubmit_failed {
        bail!(
            "Slurm still holds {} of this sweep's points ({}); wait for them (`easel sweep status {}`), or add --resubmit-failed to send only the points that failed or were cancelled",
            queued.len(),
            queued.keys().cloned().collect::<Vec<_>>().join(", "),
            sweep.path.display()
        );
    }
    let todo: Vec<&Point> = sweep
        .unfinished()
        .into_iter()
        .filter(|p| !queued.contains_key(&p.dir))
        .collect();
    if todo.is_empty() {
        return Ok(None);
    }
    let script_path = sweep.path.join(SCRIPT);
    atomic::write(&script_path, script(sweep, opts)?.as_bytes())?;
    let array: Vec<String> = todo.iter().map(|p| p.index.to_string()).collect();
    let out = Command::new("sbatch")
        .args(["--parsable", &format!("--array={}", array.join(","))])
        .arg(&script_path)
        .output()
        .context(
            "cannot run sbatch: is Slurm's client installed here (the machine you submit from)?",
        )?;
    if !out.status.success() {
        bail!(
            "sbatch refused the sweep's job: {}(the script is {}; check --partition, --gres and --time)",
            String::from_utf8_lossy(&out.stderr),
            script_path.display()
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let id = stdout
        .trim()
        .split(';')
        .next()
        .unwrap_or_default()
        .to_string();
    if id.is_empty() {
        bail!("sbatch printed no job id: {stdout}");
    }
    // A failure a local sweep marked is old news once Slurm holds the point.
    todo.iter().for_each(|p| sweep.clear_failed(p));
    let job = Job {
        job: id.clone(),
        points: todo.iter().map(|p| p.dir.clone()).collect(),
    };
    let mut line = serde_json::to_string(&job)?;
    line.push('\n');
    use std::io::Write;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(sweep.path.join(JOBS))?
        .write_all(line.as_bytes())?;
    Ok(Some(id))
}
