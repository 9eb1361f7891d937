//! Presets: the YAML file that describes a run (docs/design.md §2), `--set` overrides, validation.
//!
//! Paths in a preset are relative to the preset file. Every error names the file, the
//! key and the fix.

use crate::atomic;
use crate::backend::{BackendChoice, Precision};
use crate::color::PreserveColors;
use crate::engine::schedule::Scales;
use crate::image::Size;
use crate::loss::CostWeights;
use crate::optim::OptimizerSpec;
use crate::vgg::{LAYER_NAMES, Layer, Pooling};
use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use serde_yaml_ng::{Mapping, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The style: one image, or several with blend weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum StyleSpec {
    One(PathBuf),
    Blend(Vec<StyleImage>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StyleImage {
    pub image: PathBuf,
    #[serde(default = "one")]
    pub weight: f64,
}

fn one() -> f64 {
    1.0
}

impl StyleSpec {
    /// The style images with their blend weights.
    pub fn images(&self) -> Vec<(PathBuf, f64)> {
        match self {
            StyleSpec::One(p) => vec![(p.clone(), 1.0)],
            StyleSpec::Blend(v) => v.iter().map(|s| (s.image.clone(), s.weight)).collect(),
        }
    }
}

/// The initial image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum Init {
    /// `noise_ratio * U(-20, 20) + (1 - noise_ratio) * content`.
    Noise {
        #[serde(default = "default_noise_ratio")]
        noise_ratio: f64,
    },
    Content,
    Style,
    File {
        path: PathBuf,
    },
}

fn default_noise_ratio() -> f64 {
    0.6
}

/// A setting changed during a run, recorded with the iteration it took effect.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Change {
    pub iter: u64,
    pub key: String,
    pub value: Value,
}

/// A preset, as in docs/design.md §2.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preset {
    pub name: String,
    pub content: PathBuf,
    pub style: StyleSpec,
    #[serde(default = "default_size")]
    pub size: Size,
    #[serde(default = "default_init")]
    pub init: Init,
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    #[serde(default = "default_beta")]
    pub beta: f64,
    #[serde(default = "default_content_layer")]
    pub content_layer: String,
    #[serde(default = "default_style_layers")]
    pub style_layers: BTreeMap<String, f64>,
    #[serde(default)]
    pub pooling: Pooling,
    #[serde(default)]
    pub optimizer: OptimizerSpec,
    #[serde(default = "default_iterations")]
    pub iterations: u64,
    #[serde(default)]
    pub tv_weight: f64,
    #[serde(default)]
    pub seed: u64,
    #[serde(default = "default_save_every")]
    pub save_every: u64,
    #[serde(default)]
    pub backend: BackendChoice,
    /// The CUDA path's arithmetic: fp32, or tf32 on tensor cores.
    #[serde(default, skip_serializing_if = "is_fp32")]
    pub precision: Precision,
    /// Coarse to fine: `{min_side: 128, steps: 5}` (off when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scales: Option<Scales>,
    /// Decay of an exponential moving average of the image, used for previews and
    /// output (bias-corrected); 0 turns it off. 0.99 is usual.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ema: f64,
    /// The style image's long side relative to the output's (keeping its aspect); when
    /// absent the style is resized to the output size, as in the seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub style_scale: Option<f64>,
    /// Colour preservation: none, luminance or histogram.
    #[serde(default)]
    pub preserve_colors: PreserveColors,
    /// Clamp the pixels to the valid range after every step.
    #[serde(default)]
    pub clamp: bool,
    /// Settings changed during a run (written into a run directory's `preset.yaml`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<Change>,
}

fn is_fp32(p: &Precision) -> bool {
    *p == Precision::Fp32
}

fn is_zero(v: &f64) -> bool {
    *v == 0.0
}

fn default_size() -> Size {
    Size::Exact {
        width: 400,
        height: 300,
    }
}
fn default_init() -> Init {
    Init::Noise { noise_ratio: 0.6 }
}
fn default_alpha() -> f64 {
    10.0
}
fn default_beta() -> f64 {
    40.0
}
fn default_content_layer() -> String {
    "conv4_2".into()
}
fn default_style_layers() -> BTreeMap<String, f64> {
    ["conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1"]
        .iter()
        .map(|l| (l.to_string(), 0.2))
        .collect()
}
fn default_iterations() -> u64 {
    200
}
fn default_save_every() -> u64 {
    20
}

/// Sets `key` (dotted for nested keys) to `value` (a YAML scalar or flow collection).
pub fn set_override(doc: &mut Value, assignment: &str) -> Result<()> {
    let (key, raw) = assignment.split_once('=').ok_or_else(|| {
        anyhow!("--set {assignment}: expected KEY=VALUE, e.g. --set optimizer.lr=1.0")
    })?;
    let value: Value =
        serde_yaml_ng::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string()));
    let mut node = doc;
    let parts: Vec<&str> = key.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        if part.is_empty() {
            bail!("--set {assignment}: `{key}` has an empty path segment");
        }
        if !node.is_mapping() {
            *node = Value::Mapping(Mapping::new());
        }
        let map = node
            .as_mapping_mut()
            .ok_or_else(|| anyhow!("--set {assignment}: not a mapping"))?;
        let k = Value::String(part.to_string());
        if i + 1 == parts.len() {
            map.insert(k, value);
            return Ok(());
        }
        node = map.entry(k).or_insert(Value::Null);
    }
    Ok(())
}

impl Preset {
    /// Reads a preset, applies `--set` overrides, resolves paths against the preset's
    /// folder and validates it.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Preset> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read preset {}: check the path", path.display()))?;
        Self::parse(&text, path, overrides)
    }

    /// Parses preset text as if read from `path` (which names it in errors and anchors
    /// its relative paths), applies overrides and validates.
    pub fn parse(text: &str, path: &Path, overrides: &[String]) -> Result<Preset> {
        let mut doc: Value = serde_yaml_ng::from_str(text)
            .map_err(|e| anyhow!("preset {} is not valid YAML: {e}", path.display()))?;
        if doc.is_null() {
            bail!(
                "preset {} is empty; it needs at least `name`, `content` and `style` (see presets/default.yaml)",
                path.display()
            );
        }
        for o in overrides {
            set_override(&mut doc, o)?;
        }
        let mut preset = Self::from_value(doc, path)?;
        // Absolute, so the copy in a run directory still points at the images.
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
        let base = std::path::absolute(parent.unwrap_or(Path::new(".")))?;
        preset.resolve_paths(&base);
        preset.validate(path)?;
        Ok(preset)
    }

    /// Deserialises with the path of the key that failed in the error.
    fn from_value(doc: Value, path: &Path) -> Result<Preset> {
        serde_path_to_error::deserialize(doc).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            let fix = if inner.to_string().contains("unknown field") {
                "remove the key or correct its spelling (see presets/default.yaml for every key)"
            } else if inner.to_string().contains("missing field") {
                "add the key"
            } else {
                "give a value of the type shown (see presets/default.yaml)"
            };
            anyhow!(
                "preset {}: key `{}`: {inner}; {fix}",
                path.display(),
                if key == "." { "(top level)" } else { &key }
            )
        })
    }

    /// Makes the image paths relative to `base` where they lie under it (for a preset
    /// saved into `presets/`, so it moves with the folder).
    pub fn relativize_paths(&mut self, base: &Path) {
        let rel = |p: &mut PathBuf| {
            if let Ok(r) = p.strip_prefix(base) {
                *p = r.to_path_buf();
            }
        };
        self.for_each_path(rel);
    }

    fn for_each_path(&mut self, mut f: impl FnMut(&mut PathBuf)) {
        f(&mut self.content);
        match &mut self.style {
            StyleSpec::One(p) => f(p),
            StyleSpec::Blend(v) => v.iter_mut().for_each(|s| f(&mut s.image)),
        }
        if let Init::File { path } = &mut self.init {
            f(path);
        }
    }

    fn resolve_paths(&mut self, base: &Path) {
        let abs = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        self.for_each_path(abs);
    }

    /// Checks every value; the error names the file, the key and the fix.
    pub fn validate(&self, file: &Path) -> Result<()> {
        let err = |key: &str, msg: String| anyhow!("preset {}: key `{key}`: {msg}", file.display());
        let non_negative = |key: &str, v: f64| {
            if !v.is_finite() || v < 0.0 {
                Err(err(
                    key,
                    format!("{v} is not allowed; give a finite number >= 0"),
                ))
            } else {
                Ok(())
            }
        };
        if self.name.trim().is_empty() || self.name.contains(['/', '\\']) {
            return Err(err(
                "name",
                "must be a non-empty name without slashes".into(),
            ));
        }
        non_negative("alpha", self.alpha)?;
        non_negative("beta", self.beta)?;
        non_negative("tv_weight", self.tv_weight)?;
        if self.alpha == 0.0 && self.beta == 0.0 {
            return Err(err(
                "beta",
                "alpha and beta are both 0, so there is nothing to optimise; set beta (e.g. 40)"
                    .into(),
            ));
        }
        check_layer(&self.content_layer).map_err(|m| err("content_layer", m))?;
        if self.style_layers.is_empty() {
            return Err(err(
                "style_layers",
                "is empty; name at least one layer, e.g. {conv1_1: 0.2}".into(),
            ));
        }
        for (name, lambda) in &self.style_layers {
            check_layer(name).map_err(|m| err(&format!("style_layers.{name}"), m))?;
            non_negative(&format!("style_layers.{name}"), *lambda)?;
        }
        if self.beta > 0.0 && self.style_layers.values().all(|l| *l == 0.0) {
            return Err(err(
                "style_layers",
                "every style layer has weight 0; give at least one a weight > 0 (e.g. 0.2)".into(),
            ));
        }
        for (i, (_, w)) in self.style.images().iter().enumerate() {
            if !w.is_finite() || *w <= 0.0 {
                return Err(err(
                    &format!("style[{i}].weight"),
                    format!("{w} is not allowed; blend weights must be > 0"),
                ));
            }
        }
        let (w, h) = match self.size {
            Size::Exact { width, height } => (width, height),
            Size::MaxSide { max_side } => (max_side, max_side),
        };
        if w < 16 || h < 16 || w > 8192 || h > 8192 {
            return Err(err(
                "size",
                format!(
                    "{w}x{h} is out of range; each side must be 16..8192 pixels (VGG-19 pools four times)"
                ),
            ));
        }
        if let Init::Noise { noise_ratio } = self.init
            && !(0.0..=1.0).contains(&noise_ratio)
        {
            return Err(err(
                "init.noise_ratio",
                format!("{noise_ratio} is out of range; give a value in 0..1"),
            ));
        }
        let lr = self.optimizer.lr();
        if !lr.is_finite() || lr <= 0.0 {
            return Err(err(
                "optimizer.lr",
                format!("{lr} is not allowed; give a learning rate > 0 (Adam: 2.0)"),
            ));
        }
        if !(0.0..1.0).contains(&self.ema) {
            return Err(err(
                "ema",
                format!(
                    "{} is out of range; give a decay in 0..1 (0.99 is usual, 0 turns it off)",
                    self.ema
                ),
            ));
        }
        if let Some(s) = self.style_scale
            && !(s.is_finite() && (0.05..=20.0).contains(&s))
        {
            return Err(err(
                "style_scale",
                format!("{s} is out of range; give a factor in 0.05..20 (1 is the output's size)"),
            ));
        }
        if let Some(s) = &self.scales {
            if s.min_side < 16 {
                return Err(err(
                    "scales.min_side",
                    format!(
                        "{} is too small; give at least 16 pixels (128 is usual)",
                        s.min_side
                    ),
                ));
            }
            if s.steps == 0 || s.steps > 20 {
                return Err(err(
                    "scales.steps",
                    format!("{} is out of range; give 1..20 scales", s.steps),
                ));
            }
        }
        if self.optimizer.history == 0 {
            return Err(err(
                "optimizer.history",
                "must be at least 1 (100 is usual)".into(),
            ));
        }
        Ok(())
    }

    /// The layers and weights of the cost.
    pub fn cost_weights(&self) -> CostWeights {
        let mut style_layers: Vec<(Layer, f64)> = self
            .style_layers
            .iter()
            .filter_map(|(n, w)| Layer::parse(n).map(|l| (l, *w)))
            .collect();
        style_layers.sort_by_key(|(l, _)| *l);
        CostWeights {
            alpha: self.alpha,
            beta: self.beta,
            content_layer: Layer::parse(&self.content_layer).unwrap_or(Layer(9)),
            style_layers,
            tv_weight: self.tv_weight,
        }
    }

    pub fn to_yaml(&self) -> Result<String> {
        Ok(serde_yaml_ng::to_string(self)?)
    }

    /// Writes the preset atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        atomic::write(path, self.to_yaml()?.as_bytes())
    }
}

fn check_layer(name: &str) -> std::result::Result<(), String> {
    if Layer::parse(name).is_some() {
        Ok(())
    } else {
        Err(format!(
            "`{name}` is not a VGG-19 layer; use one of {}",
            LAYER_NAMES.join(", ")
        ))
    }
}
