//! Presets: the YAML file that describes a run (docs/design.md §2), `--set` overrides, validation.
//!
//! Paths in a preset are relative to the preset file. Every error names the file, the
//! key and the fix.

use crate::atomic;
use crate::backend::{BackendChoice, ConvSearch, CudaSettings, Precision};
use crate::color::PreserveColors;
use crate::image::Size;
use crate::loss::{CostWeights, StyleLoss};
use crate::mask::{Regions, RegionsFile};
use crate::network::tiles::TileChoice;
use crate::optim::OptimizerSpec;
use crate::settings::{Setting, Settings};
use crate::vgg::{LAYER_NAMES, Layer, Padding, Pooling};
use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use yaml_serde::{Mapping, Value};

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

/// Coarse to fine (`crate::engine::schedule` turns it into sizes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scales {
    /// Long side of the first scale, in pixels.
    #[serde(default = "default_min_side")]
    pub min_side: u32,
    /// The most scales to use (the last is the target size).
    #[serde(default = "default_steps")]
    pub steps: u32,
    /// Iterations at each scale but the last, which runs to `iterations`; by default
    /// the iterations are shared equally. Give it to extend a run later with `resume
    /// --set iterations=N`: the shared split moves with the total.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iterations: Option<u64>,
}

fn default_min_side() -> u32 {
    128
}
fn default_steps() -> u32 {
    5
}

/// A setting changed during a run, recorded with the iteration it took effect. The log
/// belongs to the run directory (`crate::run_dir`), which keeps it in its `preset.yaml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Change {
    pub iter: u64,
    pub key: String,
    pub value: Value,
}

impl Change {
    /// The new value as YAML text, e.g. `50` or `lbfgs`.
    pub fn value_text(&self) -> String {
        yaml_serde::to_string(&self.value)
            .unwrap_or_default()
            .trim()
            .to_string()
    }
}

/// A preset as the file holds it (docs/design.md §2): layers by name, checked by
/// [`PresetFile::validate`] before they become a [`Preset`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PresetFile {
    pub name: String,
    pub content: PathBuf,
    /// One style for the whole image; absent where `regions` gives each region its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub style: Option<StyleSpec>,
    /// A mask whose colours give regions their own styles (`crate::mask`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regions: Option<RegionsFile>,
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
    /// How a layer's style is compared: gram (the paper's) or w2 (mean and covariance).
    #[serde(default, skip_serializing_if = "is_gram")]
    pub style_loss: StyleLoss,
    #[serde(default)]
    pub pooling: Pooling,
    /// What conv1_1 sees beyond the image's edge: zero (the paper's) or replicate.
    #[serde(default, skip_serializing_if = "is_zero_padding")]
    pub padding: Padding,
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
    /// How the CUDA path picks cuDNN's algorithms: auto, heuristic, or measured on the card.
    #[serde(default, skip_serializing_if = "is_auto_search")]
    pub conv_search: ConvSearch,
    /// Coarse to fine: `{min_side: 128, steps: 5}` (off when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scales: Option<Scales>,
    /// Tiles on the CPU: `auto` (only where the image would not fit in memory), `off`,
    /// or `{size: 1024}`.
    #[serde(default, skip_serializing_if = "is_auto_tile")]
    pub tile: TileChoice,
    /// Decay of an exponential moving average of the image, used for previews and
    /// output (bias-corrected); 0 turns it off. 0.99 is usual.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub ema: f64,
    /// The style image's long side relative to the output's (keeping its aspect); when
    /// absent the style is resized to the output size, as in the seed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub style_scale: Option<f64>,
    /// Cut flat borders (a frame, a mat) off the style images before use.
    #[serde(default, skip_serializing_if = "is_false")]
    pub trim_style: bool,
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

/// A preset: what a run is made of. The settings a run may change while it runs are
/// [`Settings`]; the rest is fixed for the run.
#[derive(Debug, Clone, PartialEq)]
pub struct Preset {
    pub name: String,
    pub content: PathBuf,
    /// The style images: the preset's `style`, or with `regions` the regions' images.
    pub style: StyleSpec,
    /// With `regions`: the mask and which style image each region takes.
    pub regions: Option<Regions>,
    pub size: Size,
    pub init: Init,
    pub settings: Settings,
    pub pooling: Pooling,
    pub padding: Padding,
    pub iterations: u64,
    pub seed: u64,
    pub save_every: u64,
    pub backend: BackendChoice,
    pub precision: Precision,
    pub conv_search: ConvSearch,
    /// Coarse to fine: `{min_side: 128, steps: 5}` (off when absent).
    pub scales: Option<Scales>,
    /// Where the CPU computes the image in tiles (`crate::network::tiles`).
    pub tile: TileChoice,
    /// Decay of an exponential moving average of the image, used for previews and
    /// output (bias-corrected); 0 turns it off.
    pub ema: f64,
    /// The style image's long side relative to the output's.
    pub style_scale: Option<f64>,
    /// Cut flat borders off the style images (`crate::image::trim_border`).
    pub trim_style: bool,
    pub preserve_colors: PreserveColors,
    pub clamp: bool,
}

impl PresetFile {
    /// The typed preset; the file has been validated, so every layer name is known.
    fn into_preset(self, file: &Path) -> Result<Preset> {
        let layer = |n: &str, key: String| {
            Layer::parse(n)
                .ok_or_else(|| anyhow!("preset {}: key `{key}`: unknown layer", file.display()))
        };
        let mut style_layers = self
            .style_layers
            .iter()
            .map(|(n, w)| Ok((layer(n, format!("style_layers.{n}"))?, *w)))
            .collect::<Result<Vec<_>>>()?;
        style_layers.sort_by_key(|(l, _)| *l);
        let (style, regions, region_weights) = match (&self.regions, self.style) {
            (Some(file), _) => {
                let (regions, images, weights) = Regions::from_file(file);
                (StyleSpec::Blend(images), Some(regions), weights)
            }
            (None, Some(style)) => (style, None, Vec::new()),
            (None, None) => bail!(
                "preset {}: key `style`: missing; give a style image, or `regions`",
                file.display()
            ),
        };
        let settings = Settings {
            region_weights,
            alpha: self.alpha,
            beta: self.beta,
            content_layer: layer(&self.content_layer, "content_layer".into())?,
            style_layers,
            tv_weight: self.tv_weight,
            optimizer: self.optimizer,
            style_loss: self.style_loss,
        };
        Ok(Preset {
            name: self.name,
            content: self.content,
            style,
            regions,
            size: self.size,
            init: self.init,
            settings,
            pooling: self.pooling,
            padding: self.padding,
            iterations: self.iterations,
            seed: self.seed,
            save_every: self.save_every,
            backend: self.backend,
            precision: self.precision,
            conv_search: self.conv_search,
            scales: self.scales,
            tile: self.tile,
            ema: self.ema,
            style_scale: self.style_scale,
            trim_style: self.trim_style,
            preserve_colors: self.preserve_colors,
            clamp: self.clamp,
        })
    }
}

impl From<&Preset> for PresetFile {
    fn from(p: &Preset) -> PresetFile {
        let s = &p.settings;
        let regions = p.regions.as_ref().map(|r| {
            let images: Vec<PathBuf> = p.style.images().into_iter().map(|(i, _)| i).collect();
            r.to_file(&images, &s.region_weights)
        });
        PresetFile {
            name: p.name.clone(),
            content: p.content.clone(),
            style: regions.is_none().then(|| p.style.clone()),
            regions,
            size: p.size,
            init: p.init.clone(),
            alpha: s.alpha,
            beta: s.beta,
            content_layer: s.content_layer.name().to_string(),
            style_layers: s
                .style_layers
                .iter()
                .map(|(l, w)| (l.name().to_string(), *w))
                .collect(),
            style_loss: s.style_loss,
            pooling: p.pooling,
            padding: p.padding,
            optimizer: s.optimizer.clone(),
            iterations: p.iterations,
            tv_weight: s.tv_weight,
            seed: p.seed,
            save_every: p.save_every,
            backend: p.backend,
            precision: p.precision,
            conv_search: p.conv_search,
            scales: p.scales.clone(),
            tile: p.tile,
            ema: p.ema,
            style_scale: p.style_scale,
            trim_style: p.trim_style,
            preserve_colors: p.preserve_colors,
            clamp: p.clamp,
            changes: Vec::new(),
        }
    }
}

fn is_gram(l: &StyleLoss) -> bool {
    *l == StyleLoss::Gram
}

fn is_auto_tile(t: &TileChoice) -> bool {
    *t == TileChoice::default()
}

fn is_fp32(p: &Precision) -> bool {
    *p == Precision::Fp32
}

fn is_auto_search(s: &ConvSearch) -> bool {
    *s == ConvSearch::Auto
}

fn is_zero_padding(p: &Padding) -> bool {
    *p == Padding::Zero
}

fn is_false(v: &bool) -> bool {
    !*v
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
/// Coarse to fine starts from the content where the preset names no `init`: from noise,
/// the first, coarse scale lays out the picture before the content cost can hold the
/// subject, and the subject is lost (docs/quality.md: SSIM 0.16 against 0.34 at 512).
fn content_init_for_scales(doc: &mut Value) {
    if let Value::Mapping(m) = doc
        && m.contains_key("scales")
        && !m.contains_key("init")
    {
        let mut init = Mapping::new();
        init.insert("kind".into(), "content".into());
        m.insert("init".into(), Value::Mapping(init));
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
    let value: Value = yaml_serde::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string()));
    set_value(doc, key, value).map_err(|e| anyhow!("--set {assignment}: {e}"))
}

/// Sets the dotted `key` of a preset document to `value`, making the mappings on the way.
pub fn set_value(doc: &mut Value, key: &str, value: Value) -> Result<()> {
    let mut node = doc;
    let parts: Vec<&str> = key.split('.').collect();
    for (i, part) in parts.iter().enumerate() {
        if part.is_empty() {
            bail!("`{key}` has an empty path segment");
        }
        if !node.is_mapping() {
            *node = Value::Mapping(Mapping::new());
        }
        let map = node
            .as_mapping_mut()
            .ok_or_else(|| anyhow!("`{key}`: not a mapping"))?;
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
    /// What the run asks of the CUDA path.
    pub fn cuda_settings(&self) -> CudaSettings {
        CudaSettings {
            precision: self.precision,
            search: self.conv_search,
        }
    }

    /// Reads a preset, applies `--set` overrides, resolves paths against the preset's
    /// folder and validates it.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Preset> {
        let text = read_preset_file(path)?;
        Self::parse(&text, path, overrides)
    }

    /// Parses preset text as if read from `path` (which names it in errors and anchors
    /// its relative paths), applies overrides and validates.
    pub fn parse(text: &str, path: &Path, overrides: &[String]) -> Result<Preset> {
        let mut doc: Value = yaml_serde::from_str(text)
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
        content_init_for_scales(&mut doc);
        let file = Self::from_value(doc, path).map_err(|e| blame_override(e, overrides))?;
        file.validate(path)
            .map_err(|e| blame_override(e, overrides))?;
        let mut preset = file.into_preset(path)?;
        // Absolute, so the copy in a run directory still points at the images.
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
        let base = std::path::absolute(parent.unwrap_or(Path::new(".")))?;
        preset.resolve_paths(&base);
        Ok(preset)
    }

    /// Deserialises with the path of the key that failed in the error.
    fn from_value(doc: Value, path: &Path) -> Result<PresetFile> {
        serde_path_to_error::deserialize(doc).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner().to_string();
            let (inner, fix) = if inner.contains("untagged enum Size") {
                (
                    "is not a size".to_string(),
                    "give {width: W, height: H} or {max_side: N}, in whole pixels (16..8192)",
                )
            } else if inner.contains("unknown field") {
                (
                    inner,
                    "remove the key or correct its spelling (see presets/default.yaml for every key)",
                )
            } else if inner.contains("missing field") {
                (inner, "add the key")
            } else {
                (
                    inner,
                    "give a value of the type shown (see presets/default.yaml)",
                )
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

    /// The image files the run reads: content, styles, and the initial image if any.
    pub fn input_paths(&self) -> Vec<PathBuf> {
        let mut paths = vec![self.content.clone()];
        paths.extend(self.regions.as_ref().map(|r| r.mask.clone()));
        paths.extend(self.style.images().into_iter().map(|(p, _)| p));
        if let Init::File { path } = &self.init {
            paths.push(path.clone());
        }
        paths
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
        if let Some(r) = &mut self.regions {
            f(&mut r.mask);
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

    /// The layers and weights of the cost.
    pub fn cost_weights(&self) -> CostWeights {
        self.settings.cost_weights()
    }

    pub fn to_yaml(&self) -> Result<String> {
        self.to_yaml_with(&[])
    }

    /// The preset's YAML followed by a run's change log (`changes:`).
    pub fn to_yaml_with(&self, changes: &[Change]) -> Result<String> {
        let mut file = PresetFile::from(self);
        file.changes = changes.to_vec();
        Ok(yaml_serde::to_string(&file)?)
    }

    /// Writes the preset atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        atomic::write(path, self.to_yaml()?.as_bytes())
    }

    /// The keys `newer` gives other values, dotted (`optimizer.lr`), with its values:
    /// what `easel resume --set` changed, for the run's change log. A key `newer` sets
    /// back to its default, which the file leaves out, has the value `default`.
    pub fn changed_keys(&self, newer: &Preset) -> Result<Vec<(String, Value)>> {
        let as_value = |p: &Preset| yaml_serde::to_value(PresetFile::from(p));
        let mut changed = Vec::new();
        changed_under("", (&as_value(self)?, &as_value(newer)?), &mut changed);
        Ok(changed)
    }
}

/// Adds to `changed` the keys under `prefix` whose values differ from `old` to `new`.
fn changed_under(prefix: &str, (old, new): (&Value, &Value), changed: &mut Vec<(String, Value)>) {
    let (Value::Mapping(old), Value::Mapping(new)) = (old, new) else {
        if old != new {
            changed.push((prefix.to_string(), new.clone()));
        }
        return;
    };
    let key = |k: &Value| {
        let k = k.as_str().map_or_else(|| format!("{k:?}"), str::to_string);
        if prefix.is_empty() {
            k
        } else {
            format!("{prefix}.{k}")
        }
    };
    for (k, v) in new {
        match old.get(k) {
            Some(o) => changed_under(&key(k), (o, v), changed),
            None => changed.push((key(k), v.clone())),
        }
    }
    for k in old.keys().filter(|k| !new.contains_key(*k)) {
        changed.push((key(k), Value::String("default".into())));
    }
}

impl PresetFile {
    /// Checks every value; the error names the file, the key and the fix.
    fn validate(&self, file: &Path) -> Result<()> {
        match self.cost_problem().or_else(|| self.run_problem()) {
            Some((key, msg)) => bail!("preset {}: key `{key}`: {msg}", file.display()),
            None => Ok(()),
        }
    }

    /// The first problem with the cost's settings: `(key, what is wrong and the fix)`.
    fn cost_problem(&self) -> Option<(String, String)> {
        let fail = |key: &str, msg: &str| Some((key.to_string(), msg.to_string()));
        if self.name.trim().is_empty() || self.name.contains(['/', '\\']) {
            return fail("name", "must be a non-empty name without slashes");
        }
        if self.name.chars().count() > 100 {
            // It names the run directory, and file names end at 255 bytes.
            return fail("name", "is longer than 100 characters; give a shorter name");
        }
        let weights = [
            ("alpha", self.alpha),
            ("beta", self.beta),
            ("tv_weight", self.tv_weight),
        ];
        let lambdas = self.style_layers.iter().map(|(n, l)| (n.as_str(), *l));
        for (key, v) in weights.into_iter().chain(lambdas) {
            if let Err(m) = Setting::Alpha.check(v) {
                let key = if self.style_layers.contains_key(key) {
                    format!("style_layers.{key}")
                } else {
                    key.to_string()
                };
                return Some((key, m));
            }
        }
        if self.alpha == 0.0 && self.beta == 0.0 {
            return fail(
                "beta",
                "alpha and beta are both 0, so there is nothing to optimise; set beta (e.g. 40)",
            );
        }
        if let Err(m) = check_layer(&self.content_layer) {
            return Some(("content_layer".into(), m));
        }
        if self.style_layers.is_empty() {
            return fail(
                "style_layers",
                "is empty; name at least one layer, e.g. {conv1_1: 0.2}",
            );
        }
        for name in self.style_layers.keys() {
            if let Err(m) = check_layer(name) {
                return Some((format!("style_layers.{name}"), m));
            }
        }
        if self.beta > 0.0 && self.style_layers.values().all(|l| *l == 0.0) {
            return fail(
                "style_layers",
                "every style layer has weight 0; give at least one a weight > 0 (e.g. 0.2)",
            );
        }
        match (&self.style, &self.regions) {
            (Some(_), Some(_)) => {
                return fail(
                    "regions",
                    "comes with `style`; give one style (`style`) or a style per region (`regions`), not both",
                );
            }
            (None, None) => return fail("style", "is missing; give a style image, or `regions`"),
            (None, Some(regions)) => {
                if let Some(problem) = regions.problem() {
                    return Some(problem);
                }
                if self.style_loss != StyleLoss::Gram {
                    return fail(
                        "style_loss",
                        "w2 does not take `regions` yet; use style_loss: gram with regions",
                    );
                }
                return None;
            }
            (Some(_), None) => {}
        }
        let blends = self.style.as_ref().map(|s| s.images()).unwrap_or_default();
        if blends.is_empty() {
            return fail(
                "style",
                "is an empty list; give a style image, or a list of {image, weight}",
            );
        }
        let bad = blends
            .iter()
            .position(|(_, w)| !w.is_finite() || *w <= 0.0)?;
        Some((
            format!("style[{bad}].weight"),
            format!(
                "{} is not allowed; blend weights must be > 0",
                blends[bad].1
            ),
        ))
    }

    /// The first problem with the run's other settings: `(key, what is wrong and the fix)`.
    fn run_problem(&self) -> Option<(String, String)> {
        let fail = |key: &str, msg: String| Some((key.to_string(), msg));
        let (w, h) = match self.size {
            Size::Exact { width, height } => (width, height),
            Size::MaxSide { max_side } => (max_side, max_side),
        };
        if w < 16 || h < 16 || w > 8192 || h > 8192 {
            return fail(
                "size",
                format!(
                    "{w}x{h} is out of range; each side must be 16..8192 pixels (VGG-19 pools four times)"
                ),
            );
        }
        if let Some(m) = self.tile.problem() {
            return fail("tile", m);
        }
        if let Init::Noise { noise_ratio } = self.init
            && !(0.0..=1.0).contains(&noise_ratio)
        {
            return fail(
                "init.noise_ratio",
                format!("{noise_ratio} is out of range; give a value in 0..1"),
            );
        }
        if let Err(m) = Setting::LearningRate.check(self.optimizer.lr()) {
            return fail("optimizer.lr", m);
        }
        if self.optimizer.history == 0 {
            return fail(
                "optimizer.history",
                "must be at least 1 (100 is usual)".into(),
            );
        }
        if !(0.0..1.0).contains(&self.ema) {
            return fail(
                "ema",
                format!(
                    "{} is out of range; give a decay in 0..1 (0.99 is usual, 0 turns it off)",
                    self.ema
                ),
            );
        }
        if let Some(s) = self.style_scale
            && !(s.is_finite() && (0.05..=20.0).contains(&s))
        {
            return fail(
                "style_scale",
                format!("{s} is out of range; give a factor in 0.05..20 (1 is the output's size)"),
            );
        }
        let s = self.scales.as_ref()?;
        if s.min_side < 16 {
            return fail(
                "scales.min_side",
                format!(
                    "{} is too small; give at least 16 pixels (128 is usual)",
                    s.min_side
                ),
            );
        }
        if s.steps == 0 || s.steps > 20 {
            return fail(
                "scales.steps",
                format!("{} is out of range; give 1..20 scales", s.steps),
            );
        }
        None
    }
}

/// Puts the `--set` that gave a refused value in front of the error, which names the
/// preset file and the key: the fix is in the command line, not the file. Where a key
/// is set twice, the last `--set` is the one that holds.
fn blame_override(e: anyhow::Error, overrides: &[String]) -> anyhow::Error {
    let text = format!("{e:#}");
    let culprit = overrides.iter().rev().find(|o| {
        o.split_once('=')
            .is_some_and(|(k, _)| text.contains(&format!("key `{}", k.trim())))
    });
    match culprit {
        Some(o) => anyhow!("--set {o}: {text}"),
        None => e,
    }
}

/// The most a preset file may hold: presets are a few hundred bytes.
const MAX_PRESET_BYTES: u64 = 1 << 20;

/// Reads a preset file, refusing what is not a regular file (a FIFO would block, a
/// device would never end) or is larger than any preset.
fn read_preset_file(path: &Path) -> Result<String> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot read preset {}: check the path", path.display()))?;
    if !meta.is_file() {
        bail!(
            "preset {} is not a regular file (a folder, a device or a pipe); give the path of a .yaml file",
            path.display()
        );
    }
    if meta.len() > MAX_PRESET_BYTES {
        bail!(
            "preset {} is {} bytes; a preset is a small YAML file (at most {} bytes): check the path",
            path.display(),
            meta.len(),
            MAX_PRESET_BYTES
        );
    }
    std::fs::read_to_string(path)
        .with_context(|| format!("cannot read preset {} as UTF-8 text", path.display()))
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
