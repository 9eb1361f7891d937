//! A run's pictures for people: `losses.svg` (the costs) and `report.html` (settings,
//! changes, the plot, snapshots, the final image), written beside the run's files at
//! every snapshot and at the end; `easel plot RUN_DIR` redraws them.

mod html;
mod plot;

pub use plot::losses_svg;

use crate::atomic;
use crate::run_dir;
use crate::runs::{self, RunStatus};
use anyhow::{Result, bail};
use std::path::{Path, PathBuf};

pub const LOSSES_SVG: &str = "losses.svg";
pub const REPORT_HTML: &str = "report.html";

/// Writes `losses.svg` and `report.html` in the run directory `dir`; `state` is the
/// run's where the caller is the run itself (else the files say). Returns how many
/// iterations' costs the plot shows.
pub fn write(dir: &Path, state: Option<RunStatus>) -> Result<usize> {
    let records = runs::records(dir)?;
    let Some(mut summary) = runs::summarize_with(dir, records.last())? else {
        bail!(
            "{} is not a run directory (it has no {}): give a folder under runs/",
            dir.display(),
            run_dir::PRESET
        );
    };
    if let Some(state) = state {
        summary = summary.with_state(state);
    }
    let changes = run_dir::read_changes(&dir.join(run_dir::PRESET))?;
    let svg = plot::losses_svg(&records, &changes)?;
    atomic::write(&dir.join(LOSSES_SVG), svg.as_bytes())?;
    let preset = std::fs::read_to_string(dir.join(run_dir::PRESET))?;
    let page = html::page(&html::Report {
        summary: &summary,
        preset: &preset,
        changes: &changes,
        snapshots: &snapshots(dir),
        has_final: dir.join(run_dir::FINAL).is_file(),
    });
    atomic::write(&dir.join(REPORT_HTML), page.as_bytes())?;
    Ok(records.len())
}

/// The snapshots' file names relative to the run directory, in order.
fn snapshots(dir: &Path) -> Vec<PathBuf> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir.join("snapshots"))
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name())
                .filter(|n| {
                    n.to_string_lossy().ends_with(".png") && !n.to_string_lossy().starts_with('.')
                })
                .map(|n| Path::new("snapshots").join(n))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}
