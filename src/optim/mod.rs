//! Optimisers on one image tensor: Adam and L-BFGS with a strong-Wolfe line search.
//!
//! Both take the image and an evaluator that returns the cost of an image and its
//! gradient, and return the next image with the cost of the one they were given (the
//! record `losses.jsonl` keeps for that iteration). Their state is plain tensors, so it
//! can move between devices and be written to a checkpoint.

mod after_step;
mod lbfgs;
pub mod vector;

pub use after_step::AfterStep;
pub use lbfgs::{Lbfgs, LbfgsState, VectorEvaluator};

use crate::loss::Costs;
use anyhow::Result;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

/// An optimiser step's result: the next image and the cost of the one it was given.
pub type Step = Result<(Tensor<4>, Costs)>;

/// Evaluates an image: its cost and the gradient of the total cost.
pub type Evaluator<'a> = dyn FnMut(&Tensor<4>) -> Result<(Costs, Tensor<4>)> + 'a;

/// Adam (Kingma & Ba), in PyTorch's formulation.
#[derive(Debug, Clone)]
pub struct Adam {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Steps taken so far.
    pub t: u64,
    pub m: Option<Tensor<4>>,
    pub v: Option<Tensor<4>>,
}

impl Default for Adam {
    fn default() -> Self {
        Adam {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            t: 0,
            m: None,
            v: None,
        }
    }
}

impl Adam {
    pub fn step(&mut self, lr: f64, x: Tensor<4>, eval: &mut Evaluator) -> Step {
        let (costs, g) = eval(&x)?;
        self.t += 1;
        let m = match self.m.take() {
            Some(m) => m * self.beta1 + g.clone() * (1.0 - self.beta1),
            None => g.clone() * (1.0 - self.beta1),
        };
        let v = match self.v.take() {
            Some(v) => v * self.beta2 + g.square() * (1.0 - self.beta2),
            None => g.square() * (1.0 - self.beta2),
        };
        let bc1 = 1.0 - self.beta1.powi(self.t as i32);
        let bc2 = 1.0 - self.beta2.powi(self.t as i32);
        let denom = v.clone().sqrt() / bc2.sqrt() + self.eps;
        let next = x - m.clone() / denom * (lr / bc1);
        self.m = Some(m);
        self.v = Some(v);
        Ok((next, costs))
    }

    fn move_to(&mut self, device: &Device) {
        self.m = self.m.take().map(|t| t.to_device(device));
        self.v = self.v.take().map(|t| t.to_device(device));
    }

    /// Carries the moments to the next scale of a coarse-to-fine run, `width` x `height`.
    ///
    /// The costs are normalised per pixel, so each pixel's gradient shrinks in proportion
    /// to the pixel count. The moments are resized and scaled with it (`m` by the ratio
    /// `r` of the pixel counts, `v` by `r^2`), so that the step `m / sqrt(v)` carries on
    /// as it was; unscaled, the carried second moment would damp the first
    /// ~1/(1-beta2) steps of the finer scale.
    pub fn carry_to(&mut self, width: u32, height: u32) {
        let Some(m) = self.m.take() else { return };
        let [_, _, h, w] = m.dims();
        let r = (w * h) as f64 / (width as f64 * height as f64);
        self.m = Some(crate::image::resize_tensor(m, width, height) * r);
        self.v = self
            .v
            .take()
            .map(|v| crate::image::resize_tensor(v, width, height) * (r * r));
    }
}

/// Which optimiser.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    #[default]
    Adam,
    Lbfgs,
}

/// The optimiser a preset asks for: `{kind: adam, lr: 2.0}` or `{kind: lbfgs, history: 100}`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerSpec {
    #[serde(default)]
    pub kind: OptimizerKind,
    /// The learning rate (L-BFGS: the line search's initial step); the kind's default
    /// when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    /// L-BFGS history length (memory: history x 2 x pixels x 3 floats).
    #[serde(default = "default_history")]
    pub history: usize,
}

fn default_history() -> usize {
    100
}

/// Written as read, except that Adam's leaves `history` out: it means nothing to Adam,
/// and a run's preset.yaml that showed it would suggest otherwise.
impl Serialize for OptimizerSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let lbfgs = self.kind == OptimizerKind::Lbfgs;
        let fields = 1 + usize::from(self.lr.is_some()) + usize::from(lbfgs);
        let mut out = s.serialize_struct("OptimizerSpec", fields)?;
        out.serialize_field("kind", &self.kind)?;
        if let Some(lr) = self.lr {
            out.serialize_field("lr", &lr)?;
        }
        if lbfgs {
            out.serialize_field("history", &self.history)?;
        }
        out.end()
    }
}

impl Default for OptimizerSpec {
    fn default() -> Self {
        OptimizerSpec {
            kind: OptimizerKind::Adam,
            lr: None,
            history: default_history(),
        }
    }
}

impl OptimizerSpec {
    pub fn adam(lr: f64) -> Self {
        OptimizerSpec {
            kind: OptimizerKind::Adam,
            lr: Some(lr),
            history: default_history(),
        }
    }
    pub fn lbfgs(lr: f64, history: usize) -> Self {
        OptimizerSpec {
            kind: OptimizerKind::Lbfgs,
            lr: Some(lr),
            history,
        }
    }
    pub fn lr(&self) -> f64 {
        self.lr.unwrap_or(match self.kind {
            OptimizerKind::Adam => 2.0,
            OptimizerKind::Lbfgs => 1.0,
        })
    }
    pub fn set_lr(&mut self, value: f64) {
        self.lr = Some(value);
    }
}

/// A running optimiser.
#[derive(Debug, Clone)]
pub enum Optimizer {
    Adam(Adam),
    Lbfgs(Lbfgs),
}

impl Optimizer {
    pub fn new(spec: &OptimizerSpec) -> Self {
        match spec.kind {
            OptimizerKind::Adam => Optimizer::Adam(Adam::default()),
            OptimizerKind::Lbfgs => Optimizer::Lbfgs(Lbfgs::new(spec.history)),
        }
    }

    /// One iteration on the host's tensors: returns the next image and the cost of `x`.
    pub fn step(&mut self, lr: f64, x: Tensor<4>, eval: &mut Evaluator) -> Step {
        match self {
            Optimizer::Adam(a) => a.step(lr, x, eval),
            Optimizer::Lbfgs(l) => l.step_tensor(lr, x, eval),
        }
    }

    /// Forgets curvature information that no longer fits the cost (L-BFGS only: Adam's
    /// moments adapt by themselves).
    pub fn cost_changed(&mut self) {
        if let Optimizer::Lbfgs(l) = self {
            l.reset();
        }
    }

    pub fn move_to(&mut self, device: &Device) {
        match self {
            Optimizer::Adam(a) => a.move_to(device),
            Optimizer::Lbfgs(l) => l.move_to(device),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adam_is_written_without_lbfgs_history_and_read_back_the_same() {
        for (spec, yaml) in [
            (OptimizerSpec::adam(2.0), "kind: adam\nlr: 2.0\n"),
            (
                OptimizerSpec::lbfgs(1.0, 5),
                "kind: lbfgs\nlr: 1.0\nhistory: 5\n",
            ),
        ] {
            let written = yaml_serde::to_string(&spec).expect("serialises");
            assert_eq!(written, yaml);
            let read: OptimizerSpec = yaml_serde::from_str(&written).expect("parses");
            assert_eq!(read, spec);
        }
    }
}
