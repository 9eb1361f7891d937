//! What a run may change while it runs: the cost's weights and the optimiser, typed,
//! with their ranges checked in one place (here) for presets, `--set` and the workbench.

use crate::loss::{CostWeights, StyleLoss};
use crate::optim::OptimizerSpec;
use crate::vgg::Layer;
use anyhow::{Result, anyhow};

/// A setting that can change mid-run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Setting {
    Alpha,
    Beta,
    /// The lambda of one style layer.
    StyleLayer(Layer),
    LearningRate,
    TvWeight,
    /// The style weight of the mask's region of this colour.
    RegionWeight(Rgb),
}

impl Setting {
    /// The preset key this setting is stored under (dotted for nested keys).
    pub fn key(&self) -> String {
        match self {
            Setting::Alpha => "alpha".into(),
            Setting::Beta => "beta".into(),
            Setting::StyleLayer(l) => format!("style_layers.{l}"),
            Setting::LearningRate => "optimizer.lr".into(),
            Setting::TvWeight => "tv_weight".into(),
            Setting::RegionWeight(c) => format!("regions.styles.{}.weight", colour_label(*c)),
        }
    }

    /// Whether `value` is allowed; the error says what is.
    pub fn check(&self, value: f64) -> std::result::Result<(), String> {
        match self {
            Setting::LearningRate if !(value.is_finite() && value > 0.0) => Err(format!(
                "{value} is not allowed; give a learning rate > 0 (Adam: 2.0)"
            )),
            _ if !(value.is_finite() && value >= 0.0) => {
                Err(format!("{value} is not allowed; give a finite number >= 0"))
            }
            _ => Ok(()),
        }
    }
}

/// The cost's weights and the optimiser of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub alpha: f64,
    pub beta: f64,
    pub content_layer: Layer,
    /// Style layers with their lambda, in network order.
    pub style_layers: Vec<(Layer, f64)>,
    pub tv_weight: f64,
    pub optimizer: OptimizerSpec,
    /// Fixed for the run (its targets depend on it).
    pub style_loss: StyleLoss,
    /// With `regions`, each region's colour (as in the mask) and style weight, in the
    /// mask's order; a region without a style has weight 0 and no setting.
    pub region_weights: Vec<(Rgb, Option<f64>)>,
}

/// A mask colour.
pub type Rgb = [u8; 3];

/// A mask colour as the preset writes it, `#rrggbb`.
pub fn colour_label([r, g, b]: Rgb) -> String {
    format!("#{r:02x}{g:02x}{b:02x}")
}

impl Settings {
    /// A setting's value; `None` for a style layer the run does not use.
    pub fn get(&self, setting: Setting) -> Option<f64> {
        match setting {
            Setting::Alpha => Some(self.alpha),
            Setting::Beta => Some(self.beta),
            Setting::StyleLayer(l) => self.lambda(l),
            Setting::LearningRate => Some(self.optimizer.lr()),
            Setting::TvWeight => Some(self.tv_weight),
            Setting::RegionWeight(c) => self
                .region_weights
                .iter()
                .find(|(r, _)| *r == c)
                .and_then(|(_, w)| *w),
        }
    }

    /// Changes a setting, or says why it cannot be.
    pub fn set(&mut self, setting: Setting, value: f64) -> Result<()> {
        setting
            .check(value)
            .map_err(|e| anyhow!("{} = {e}", setting.key()))?;
        match setting {
            Setting::Alpha => self.alpha = value,
            Setting::Beta => self.beta = value,
            Setting::StyleLayer(l) => {
                let (_, lambda) = self
                    .style_layers
                    .iter_mut()
                    .find(|(s, _)| *s == l)
                    .ok_or_else(|| anyhow!("{l} is not a style layer of this run"))?;
                *lambda = value;
            }
            Setting::LearningRate => self.optimizer.set_lr(value),
            Setting::TvWeight => self.tv_weight = value,
            Setting::RegionWeight(c) => {
                let w = self
                    .region_weights
                    .iter_mut()
                    .find_map(|(r, w)| (*r == c).then_some(w).and_then(|w| w.as_mut()))
                    .ok_or_else(|| {
                        anyhow!(
                            "{} is not a region with a style in this run",
                            colour_label(c)
                        )
                    })?;
                *w = value;
            }
        }
        Ok(())
    }

    pub fn lambda(&self, layer: Layer) -> Option<f64> {
        self.style_layers
            .iter()
            .find(|(l, _)| *l == layer)
            .map(|(_, w)| *w)
    }

    /// The layers and weights of the cost.
    pub fn cost_weights(&self) -> CostWeights {
        CostWeights {
            alpha: self.alpha,
            beta: self.beta,
            content_layer: self.content_layer,
            style_layers: self.style_layers.clone(),
            tv_weight: self.tv_weight,
            style_loss: self.style_loss,
            region_weights: self
                .region_weights
                .iter()
                .map(|(_, w)| w.unwrap_or(0.0))
                .collect(),
        }
    }
}
