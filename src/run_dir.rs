//! The run directory (docs/design.md §2): `preset.yaml`, `losses.jsonl`, `snapshots/`,
//! `final.png`, and `checkpoint.safetensors` for `easel resume`.
//!
//! Every file but the append-only `losses.jsonl` is written atomically; a torn last line
//! of `losses.jsonl` (a kill mid-write) is dropped when the run is resumed. A lock file
//! keeps two processes out of one directory.

use crate::atomic;
use crate::preset::{Change, Preset};
use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// One line of `losses.jsonl`: the costs of the image *before* that iteration's step,
/// and, last, those of the image in `final.png` (`"final": true`; the averaged image
/// where `ema` is on), so the file says where the run ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub iter: u64,
    #[serde(rename = "J")]
    pub j: f64,
    #[serde(rename = "J_content")]
    pub j_content: f64,
    #[serde(rename = "J_style")]
    pub j_style: f64,
    /// Unweighted `J_style[l]` per style layer.
    pub style: BTreeMap<String, f64>,
    pub elapsed_s: f64,
    pub backend: String,
    /// The record of the final image, after the last step.
    #[serde(rename = "final", default, skip_serializing_if = "std::ops::Not::not")]
    pub is_final: bool,
}

pub const PRESET: &str = "preset.yaml";
pub const LOSSES: &str = "losses.jsonl";
pub const FINAL: &str = "final.png";
pub const CHECKPOINT: &str = "checkpoint.safetensors";
/// The sha256 of each input image when the run started, as `sha256sum` prints them.
pub const INPUTS: &str = "inputs.sha256";
pub const LOCK: &str = ".lock";

/// An open run directory, locked for this process, with the run's change log.
#[derive(Debug)]
pub struct RunDir {
    pub path: PathBuf,
    /// The settings changed during the run, oldest first (`changes:` in `preset.yaml`).
    changes: Vec<Change>,
    /// Held while the directory is open; the kernel lets go of it if the process dies.
    _lock: fs::File,
}

/// Takes a folder's lock: an advisory lock on `.lock` (which records our process id for
/// the user), released by the kernel when the process ends, so a lock left by a crash
/// never blocks a resume. `what` names the folder in the refusal (a run directory, a
/// sweep folder) and `then` what to do once it is free.
pub(crate) fn take_lock(dir: &Path, what: &str, then: &str) -> Result<fs::File> {
    let path = dir.join(LOCK);
    // `easel runs` and `sweep status` test the lock for a moment (a shared lock): a
    // refusal is only believed after a second of asking.
    let patience = std::time::Instant::now();
    loop {
        let file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot lock {what} {}", dir.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock)
                if patience.elapsed() < std::time::Duration::from_secs(1) =>
            {
                std::thread::sleep(std::time::Duration::from_millis(50));
                continue;
            }
            Err(fs::TryLockError::WouldBlock) => {
                let holder = fs::read_to_string(&path).unwrap_or_default();
                bail!(
                    "{what} {} is in use by another easel (process {}); wait for it to end or stop it, then {then}",
                    dir.display(),
                    holder.trim()
                );
            }
            Err(fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {what} {}", dir.display()));
            }
        }
        // The holder before us may have removed the file between our open and our lock:
        // then we hold a lock on a file nobody else will see, and try again.
        if same_file(&file, &path) {
            file.set_len(0)?;
            (&file).write_all(std::process::id().to_string().as_bytes())?;
            return Ok(file);
        }
    }
}

/// A new run directory filled under a staging name in `base`, to be renamed into place,
/// so that a run directory, once it exists, always holds what `resume` needs.
fn stage(base: &Path, name: &str, fill: impl FnOnce(&Path) -> Result<()>) -> Result<PathBuf> {
    if base.exists() && !base.is_dir() {
        bail!(
            "the runs folder {} is a file, not a folder: give --out a folder (it is made where missing), or move the file",
            base.display()
        );
    }
    fs::create_dir_all(base)
        .with_context(|| format!("cannot create the runs folder {}", base.display()))?;
    let staging = base.join(format!(".staging-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&staging);
    fs::create_dir_all(staging.join("snapshots"))
        .with_context(|| format!("cannot create {}", staging.display()))?;
    if let Err(e) = fill(&staging) {
        let _ = fs::remove_dir_all(&staging);
        return Err(e);
    }
    Ok(staging)
}

/// Removes the temporary files of atomic writes that a killed process left (we hold the
/// lock, so no live writer owns one).
fn remove_stale_temporaries(dir: &Path) {
    for sub in [dir.to_path_buf(), dir.join("snapshots")] {
        let Ok(entries) = fs::read_dir(&sub) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.contains(".tmp-") {
                let _ = fs::remove_file(e.path());
            }
        }
    }
}

fn same_file(file: &fs::File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
        _ => false,
    }
}

/// Records the sha256 of the run's input images in `dir`.
pub fn write_inputs(dir: &Path, paths: &[PathBuf]) -> Result<()> {
    let mut text = String::new();
    for p in paths {
        text += &format!("{}  {}\n", crate::weights::sha256_file(p)?, p.display());
    }
    atomic::write(&dir.join(INPUTS), text.as_bytes())
}

/// The change log in a run directory's `preset.yaml` (empty where there is none).
pub fn read_changes(preset_yaml: &Path) -> Result<Vec<Change>> {
    #[derive(Deserialize)]
    struct Log {
        #[serde(default)]
        changes: Vec<Change>,
    }
    let text = match fs::read_to_string(preset_yaml) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", preset_yaml.display())),
    };
    let log: Log = yaml_serde::from_str(&text)
        .with_context(|| format!("the change log in {} is unreadable", preset_yaml.display()))?;
    Ok(log.changes)
}

impl RunDir {
    /// Creates `base/<UTC time>-<name>/`, never reusing an existing directory.
    pub fn create(
        base: &Path,
        name: &str,
        fill: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<RunDir> {
        let staging = stage(base, name, fill)?;
        let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
        for n in 0..1000 {
            let dir = if n == 0 {
                base.join(format!("{stamp}-{name}"))
            } else {
                base.join(format!("{stamp}-{name}-{n}"))
            };
            if dir.exists() {
                continue;
            }
            match fs::rename(&staging, &dir) {
                Ok(()) => return Self::open(&dir),
                // Another run took the name in the meantime.
                Err(_) if dir.exists() => continue,
                Err(e) => {
                    let _ = fs::remove_dir_all(&staging);
                    return Err(e)
                        .with_context(|| format!("cannot create run directory {}", dir.display()));
                }
            }
        }
        let _ = fs::remove_dir_all(&staging);
        bail!(
            "cannot find a free run directory name under {}",
            base.display()
        )
    }

    /// Creates the run directory `dir` itself (`easel run --run-dir`, a sweep's points);
    /// fails if something took the name first.
    pub fn create_at(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<RunDir> {
        let base = dir
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let staging = stage(base, &name, fill)?;
        // rename(2) replaces an empty directory: refuse any existing one ourselves.
        if dir.join(CHECKPOINT).is_file() {
            let _ = fs::remove_dir_all(&staging);
            bail!(
                "another easel created {} meanwhile; resume it (`easel resume {}`) rather than start it again",
                dir.display(),
                dir.display()
            );
        }
        if dir.exists() {
            let _ = fs::remove_dir_all(&staging);
            bail!(
                "{} already exists and holds no {CHECKPOINT} to resume from; give a new path, or remove it",
                dir.display()
            );
        }
        if let Err(e) = fs::rename(&staging, dir) {
            let _ = fs::remove_dir_all(&staging);
            return Err(e)
                .with_context(|| format!("cannot create run directory {}", dir.display()));
        }
        Self::open(dir)
    }

    /// Opens an existing run directory and takes its lock.
    pub fn open(path: &Path) -> Result<RunDir> {
        let lock = take_lock(path, "run directory", "resume")?;
        remove_stale_temporaries(path);
        fs::create_dir_all(path.join("snapshots"))?;
        Ok(RunDir {
            path: path.to_path_buf(),
            changes: read_changes(&path.join(PRESET))?,
            _lock: lock,
        })
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    pub fn snapshot_path(&self, iter: u64) -> PathBuf {
        self.path
            .join("snapshots")
            .join(format!("iter_{iter:05}.png"))
    }

    /// Writes the run's settings with its change log.
    pub fn write_preset(&self, preset: &Preset) -> Result<()> {
        let yaml = preset.to_yaml_with(&self.changes)?;
        atomic::write(&self.file(PRESET), yaml.as_bytes())
    }

    /// Records a change in the log and writes `preset.yaml` with it.
    pub fn record_change(&mut self, preset: &Preset, change: Change) -> Result<()> {
        self.record_changes(preset, [change])
    }

    /// Records changes in the log and writes `preset.yaml` once with them all.
    pub fn record_changes(
        &mut self,
        preset: &Preset,
        changes: impl IntoIterator<Item = Change>,
    ) -> Result<()> {
        self.changes.extend(changes);
        self.write_preset(preset)
    }

    pub fn changes(&self) -> &[Change] {
        &self.changes
    }

    /// The input images whose content differs from when the run started (none where the
    /// run recorded no sums, as runs before this record did not).
    pub fn changed_inputs(&self, paths: &[PathBuf]) -> Vec<PathBuf> {
        let Ok(text) = fs::read_to_string(self.file(INPUTS)) else {
            return Vec::new();
        };
        let recorded: BTreeMap<&str, &str> = text
            .lines()
            .filter_map(|l| l.split_once("  ").map(|(sum, path)| (path, sum)))
            .collect();
        paths
            .iter()
            .filter(|p| {
                let now = crate::weights::sha256_file(p).ok();
                recorded
                    .get(p.display().to_string().as_str())
                    .is_some_and(|sum| now.as_deref() != Some(*sum))
            })
            .cloned()
            .collect()
    }

    /// Appends one record to `losses.jsonl`.
    pub fn append_record(&self, record: &Record) -> Result<()> {
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.file(LOSSES))?;
        let mut line = serde_json::to_string(record)?;
        line.push('\n');
        f.write_all(line.as_bytes())?;
        Ok(())
    }

    /// Reads `losses.jsonl`, skipping a torn last line.
    pub fn read_records(&self) -> Result<Vec<Record>> {
        crate::runs::records(&self.path)
    }

    /// Keeps only the records of iterations before `iter` (resume, rollback).
    pub fn truncate_records(&self, iter: u64) -> Result<Vec<Record>> {
        let text = match fs::read_to_string(self.file(LOSSES)) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e.into()),
        };
        // The kept lines are written back as they were: parsing and printing a float
        // again can move its last digit, and history should not change on a resume.
        let (mut kept, mut lines) = (Vec::new(), String::new());
        for line in text.lines() {
            if let Ok(r) = serde_json::from_str::<Record>(line)
                && r.iter < iter
            {
                kept.push(r);
                lines.push_str(line);
                lines.push('\n');
            }
        }
        atomic::write(&self.file(LOSSES), lines.as_bytes())?;
        Ok(kept)
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = fs::remove_file(self.path.join(LOCK));
    }
}
