//! A sweep file and the points it expands to.
//!
//! ```yaml
//! name: beta-by-style            # optional; the file's stem otherwise
//! base: quick                    # a preset file (relative to this file) or a built-in
//! axes:                          # any key `--set` takes; the first axis varies slowest
//!   beta: [10, 40, 160]
//!   style: [images/starry_night.jpg, images/hubble_deep_field.jpg]
//!   zip: {alpha: [1, 10], optimizer.lr: [1.0, 2.0]}   # keys that move together: one axis
//! ```

use crate::preset::{Preset, set_value};
use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use yaml_serde::{Mapping, Value};

/// At most this many points: a typo like `[1, 2, ..., 1000]` twice is refused, not run.
const MAX_POINTS: usize = 1000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SweepFile {
    name: Option<String>,
    base: PathBuf,
    axes: Mapping,
}

/// One axis: the keys it sets (several for `zip`) and, per value, what each key gets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Axis {
    pub keys: Vec<String>,
    /// `values[i][k]`: the value of `keys[k]` at the axis' i-th step.
    pub values: Vec<Vec<Value>>,
    /// How the contact sheet and tables name each step.
    pub labels: Vec<String>,
}

impl Axis {
    /// The axis' name for headers: its key, or its keys joined for `zip`.
    pub fn name(&self) -> String {
        self.keys.join(", ")
    }
}

/// One run of the sweep: its place on each axis.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub index: usize,
    /// The run directory's name under the sweep's directory, `p000`.
    pub dir: String,
    /// The step on each axis.
    pub steps: Vec<usize>,
}

/// Everything a sweep directory needs to run, resume and collect its points
/// (`plan.json` in the sweep directory).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub name: String,
    /// The base preset, absolute.
    pub base: PathBuf,
    /// The base preset's sha256 when the sweep was planned: a sweep folder is refused to
    /// a changed base, whose points would mix old and new settings.
    pub base_sha256: String,
    pub axes: Vec<Axis>,
    pub points: Vec<Point>,
}

impl Point {
    /// `key = value` of every axis at this point, in axis order.
    pub fn settings(&self, axes: &[Axis]) -> Vec<(String, Value)> {
        axes.iter()
            .zip(&self.steps)
            .flat_map(|(axis, &step)| axis.keys.iter().cloned().zip(axis.values[step].clone()))
            .collect()
    }

    /// `beta=40 style=starry_night.jpg`: the point in a line.
    pub fn label(&self, axes: &[Axis]) -> String {
        axes.iter()
            .zip(&self.steps)
            .map(|(a, &s)| format!("{}={}", a.name(), a.labels[s]))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl Plan {
    /// Reads a sweep file and expands its axes; the base preset and every point's
    /// settings are checked here, before anything runs.
    pub fn load(path: &Path) -> Result<Plan> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read sweep file {}", path.display()))?;
        let file: SweepFile = serde_path_to_error::deserialize(
            yaml_serde::Deserializer::from_str(&text),
        )
        .map_err(|e| {
            anyhow!(
                "sweep file {}: key `{}`: {}; a sweep needs `base` (a preset) and `axes` (key: [values])",
                path.display(),
                e.path(),
                e.inner()
            )
        })?;
        let folder = std::path::absolute(
            path.parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new(".")),
        )?;
        // A path is the sweep file's neighbour (its error then names where it was
        // looked for); a bare name that is no file there is a preset's name.
        let bare = crate::builtin::is_bare_name(&file.base);
        let base = if folder.join(&file.base).is_file() || !bare {
            folder.join(&file.base)
        } else {
            let preset = crate::builtin::resolve(&file.base).with_context(|| {
                format!(
                    "sweep file {}: key `base`: there is no file {}, so `{}` was taken for a preset's name",
                    path.display(),
                    folder.join(&file.base).display(),
                    file.base.display()
                )
            })?;
            std::path::absolute(preset)?
        };
        if !base.is_file() {
            bail!(
                "sweep file {}: key `base`: there is no preset file {}; give a path relative to the sweep file, or a preset's name (`easel presets` lists them)",
                path.display(),
                base.display()
            );
        }
        let name = match file.name {
            Some(n) => n,
            None => path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "sweep".into()),
        };
        if name.is_empty()
            || name == "."
            || name == ".."
            || name.contains(['/', '\\'])
            || name.len() > 100
        {
            bail!(
                "sweep file {}: key `name`: {name:?} must be 1 to 100 characters without slashes; it names the sweep's folder",
                path.display()
            );
        }
        let axes = axes(&file.axes, &folder)
            .map_err(|e| anyhow!("sweep file {}: {e:#}", path.display()))?;
        let count = axes
            .iter()
            .try_fold(1usize, |n, a| n.checked_mul(a.values.len()));
        if count.is_none_or(|n| n > MAX_POINTS) {
            bail!(
                "sweep file {}: the axes make more than {MAX_POINTS} points; split the sweep",
                path.display()
            );
        }
        let plan = Plan {
            name,
            base_sha256: crate::weights::sha256_file(&base)?,
            base,
            points: points(&axes),
            axes,
        };
        for p in &plan.points {
            plan.preset(p).with_context(|| {
                format!(
                    "sweep file {}: point {} ({})",
                    path.display(),
                    p.dir,
                    p.label(&plan.axes)
                )
            })?;
        }
        Ok(plan)
    }

    /// The point's effective preset: the base with the point's settings.
    pub fn preset(&self, point: &Point) -> Result<Preset> {
        let text = std::fs::read_to_string(&self.base)
            .with_context(|| format!("cannot read the base preset {}", self.base.display()))?;
        let mut doc: Value = yaml_serde::from_str(&text)
            .with_context(|| format!("the base preset {} is not YAML", self.base.display()))?;
        for (key, value) in point.settings(&self.axes) {
            set_value(&mut doc, &key, value)?;
        }
        set_value(
            &mut doc,
            "name",
            Value::String(format!("{}-{}", self.name, point.dir)),
        )?;
        Preset::parse(&yaml_serde::to_string(&doc)?, &self.base, &[])
    }
}

/// The keys whose values are image paths: those given in a sweep file are relative to it.
fn absolutize(key: &str, value: &mut Value, folder: &Path) {
    let abs = |v: &mut Value| {
        if let Some(s) = v.as_str()
            && Path::new(s).is_relative()
        {
            *v = Value::String(folder.join(s).display().to_string());
        }
    };
    match (key, value) {
        ("content" | "init.path", v) => abs(v),
        ("style", Value::Sequence(blend)) => blend
            .iter_mut()
            .filter_map(|s| s.get_mut("image"))
            .for_each(abs),
        ("style", v) => abs(v),
        ("init", Value::Mapping(m)) => {
            if let Some(p) = m.get_mut("path") {
                abs(p)
            }
        }
        _ => {}
    }
}

/// A value as a short label: an image by its file name, a number or word as written.
fn label(value: &Value) -> String {
    match value {
        Value::String(s) if s.contains('/') => Path::new(s)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| s.clone()),
        Value::String(s) => s.clone(),
        other => yaml_serde::to_string(other)
            .unwrap_or_default()
            .trim()
            .replace('\n', " "),
    }
}

fn axes(map: &Mapping, folder: &Path) -> Result<Vec<Axis>> {
    if map.is_empty() {
        bail!("key `axes` is empty; give at least one, e.g. `axes: {{beta: [10, 40]}}`");
    }
    let mut axes = Vec::new();
    for (k, v) in map {
        let key = k
            .as_str()
            .ok_or_else(|| anyhow!("key `axes`: {k:?} is not a key name"))?;
        if key == "zip" {
            let groups: Vec<&Mapping> = match v {
                Value::Mapping(m) => vec![m],
                Value::Sequence(s) => s
                    .iter()
                    .map(|g| {
                        g.as_mapping().ok_or_else(|| {
                            anyhow!("key `axes.zip`: each group is a mapping of key: [values]")
                        })
                    })
                    .collect::<Result<_>>()?,
                _ => bail!(
                    "key `axes.zip`: give a mapping of key: [values], the lists of equal length"
                ),
            };
            for g in groups {
                if g.is_empty() {
                    bail!(
                        "key `axes.zip`: a group is empty; give keys with lists, e.g. `zip: {{alpha: [1, 10], beta: [100, 1000]}}`"
                    );
                }
                axes.push(zipped(g, folder)?);
            }
        } else {
            axes.push(zipped(
                &Mapping::from_iter([(k.clone(), v.clone())]),
                folder,
            )?);
        }
    }
    if axes.is_empty() {
        bail!("key `axes` gives no axis; give at least one, e.g. `axes: {{beta: [10, 40]}}`");
    }
    // A key on two axes (or a key and one inside it, `optimizer` and `optimizer.lr`)
    // would take the later one's value while the labels showed both.
    let keys: Vec<&String> = axes.iter().flat_map(|a| &a.keys).collect();
    for (i, key) in keys.iter().enumerate() {
        let overlaps = |other: &&&String| {
            other == &key
                || other.starts_with(&format!("{key}."))
                || key.starts_with(&format!("{other}."))
        };
        if let Some(other) = keys[i + 1..].iter().find(overlaps) {
            let what = match other == key {
                true => format!("`{key}` is on two axes"),
                false => format!("`{key}` and `{other}` are on two axes and set the same value"),
            };
            bail!(
                "key `axes`: {what} (a key and a `zip` group, two groups, or a key and one inside it), and a point can give it one value; keep it in one place"
            );
        }
    }
    Ok(axes)
}

/// An axis of one key or several that move together.
fn zipped(group: &Mapping, folder: &Path) -> Result<Axis> {
    let mut keys = Vec::new();
    let mut columns: Vec<Vec<Value>> = Vec::new();
    for (k, v) in group {
        let key = k
            .as_str()
            .ok_or_else(|| anyhow!("key `axes`: {k:?} is not a key name"))?
            .to_string();
        let Some(list) = v.as_sequence().filter(|l| !l.is_empty()) else {
            bail!("key `axes.{key}`: give a non-empty list of values, e.g. `{key}: [a, b]`");
        };
        let mut list = list.clone();
        list.iter_mut().for_each(|v| absolutize(&key, v, folder));
        keys.push(key);
        columns.push(list);
    }
    let n = columns[0].len();
    if let Some(i) = columns.iter().position(|c| c.len() != n) {
        bail!(
            "key `axes.zip`: `{}` has {} values and `{}` {n}; keys that move together need as many values each",
            keys[i],
            columns[i].len(),
            keys[0]
        );
    }
    let values: Vec<Vec<Value>> = (0..n)
        .map(|i| columns.iter().map(|c| c[i].clone()).collect())
        .collect();
    let labels = values
        .iter()
        .map(|vs| vs.iter().map(label).collect::<Vec<_>>().join(", "))
        .collect();
    Ok(Axis {
        keys,
        values,
        labels,
    })
}

/// Every combination of the axes' steps, the first axis varying slowest.
fn points(axes: &[Axis]) -> Vec<Point> {
    let mut steps = vec![Vec::new()];
    for a in axes {
        steps = steps
            .into_iter()
            .flat_map(|s: Vec<usize>| {
                (0..a.values.len()).map(move |i| {
                    let mut t = s.clone();
                    t.push(i);
                    t
                })
            })
            .collect();
    }
    steps
        .into_iter()
        .enumerate()
        .map(|(index, steps)| Point {
            index,
            dir: format!("p{index:03}"),
            steps,
        })
        .collect()
}
