//! L-BFGS's iterations with the image where the path keeps L-BFGS's vectors (on the card
//! for CUDA, the run's tensors elsewhere): the image, the EMA's average and L-BFGS's
//! history stay there between iterations, the clamp and the EMA's update run there, and
//! only the costs and the line search's scalars cross to the host. The engine reads the
//! image back ([`LbfgsImage::store`]) for previews, checkpoints and moves, as it reads
//! Adam's resident state ([`super::resident`]).
//!
//! Why: otherwise each iteration takes the image up to the card and back and clamps and
//! averages it on the host; at 2048x2048 that is two 50 MB copies and three passes over
//! the image on the host (docs/design.md §4).

use super::resident::AdamTensors;
use super::{Evaluation, Network, PathVectors};
use crate::loss::{CostWeights, Costs, Targets};
use crate::optim::vector::Vector;
use crate::optim::{AfterStep, Lbfgs};
use anyhow::{Result, anyhow};
use burn::tensor::{Device, Tensor};

/// The image of an L-BFGS run, and the EMA's average where `ema` is on, as the path's
/// vectors.
pub struct LbfgsImage {
    vectors: Box<dyn PathVectors>,
    dims: [usize; 4],
    now: Held,
    /// What a rollback returns to: the state before the last update. Vectors never
    /// change once made, so keeping it copies nothing.
    before: Option<Held>,
    /// The last step's next image, before the clamp: made by [`LbfgsImage::step`], taken
    /// by [`LbfgsImage::update`] once the engine accepts the step's costs.
    next: Option<Vector>,
}

#[derive(Clone)]
struct Held {
    x: Vector,
    avg: Option<Vector>,
}

impl LbfgsImage {
    /// Takes over the image `x` and the EMA's average `avg`, placed where `network`
    /// keeps L-BFGS's vectors.
    pub fn new(network: &Network, x: &Tensor<4>, avg: Option<&Tensor<4>>) -> Result<Self> {
        let vectors = network.lbfgs_vectors();
        let dims = x.dims();
        let n: usize = dims.iter().product();
        let place = |t: &Tensor<4>| vectors.ops().place(t.clone().reshape([n]));
        let now = Held {
            x: place(x)?,
            avg: avg.map(place).transpose()?,
        };
        Ok(LbfgsImage {
            vectors,
            dims,
            now,
            before: None,
            next: None,
        })
    }

    /// One step of `lbfgs` from the image held: the costs of the image, the next image
    /// kept for [`LbfgsImage::update`]. `around` wraps each evaluation (fault injection,
    /// timing).
    pub fn step(
        &mut self,
        lbfgs: &mut Lbfgs,
        lr: f64,
        (targets, weights): (&Targets, &CostWeights),
        around: &mut Evaluation,
    ) -> Result<Costs> {
        let [_, _, h, w] = self.dims;
        let vectors = &*self.vectors;
        let mut eval = |v: &Vector| -> Result<(Costs, Vector)> {
            let mut gradient = None;
            let costs = around(&mut || {
                let (costs, g) = vectors.evaluate(v, (h, w), targets, weights)?;
                gradient = Some(g);
                Ok(costs)
            })?;
            let g = gradient.ok_or_else(|| anyhow!("an evaluation returned no gradient"))?;
            Ok((costs, g))
        };
        let (next, costs) = lbfgs.step(lr, &self.now.x, &mut eval, vectors.ops())?;
        self.next = Some(next);
        Ok(costs)
    }

    /// Takes the last step: its next image, clamped, becomes the image, and the average
    /// moves towards it (`avg decay + x (1 - decay)`, as `engine::Ema::update`).
    pub fn update(&mut self, after: AfterStep) -> Result<()> {
        let next = self
            .next
            .take()
            .ok_or_else(|| anyhow!("an L-BFGS update before its step"))?;
        let ops = self.vectors.ops();
        let x = match after.clamp {
            Some(range) => ops.clamp(&next, range)?,
            None => next,
        };
        let avg = match (&self.now.avg, after.ema) {
            (Some(avg), Some((decay, keep))) => {
                Some(ops.add_scaled(&ops.scaled(avg, decay.into())?, keep.into(), &x)?)
            }
            (avg, _) => avg.clone(),
        };
        self.before = Some(std::mem::replace(&mut self.now, Held { x, avg }));
        Ok(())
    }

    /// Goes back to the state before the last update.
    pub fn roll_back(&mut self) -> Result<()> {
        self.next = None;
        self.now = self
            .before
            .clone()
            .ok_or_else(|| anyhow!("no state before an update to roll back to"))?;
        Ok(())
    }

    /// The image and the average as tensors on `device` (no moments: L-BFGS's own
    /// state stays in the optimiser).
    pub fn store(&self, device: &Device) -> Result<AdamTensors> {
        let ops = self.vectors.ops();
        let tensor =
            |v: &Vector| -> Result<Tensor<4>> { Ok(ops.to_host(v, device)?.reshape(self.dims)) };
        Ok(AdamTensors {
            x: tensor(&self.now.x)?,
            m: None,
            v: None,
            avg: self.now.avg.as_ref().map(tensor).transpose()?,
        })
    }
}
