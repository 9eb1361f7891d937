//! Adam's iterations where the network keeps the image: the image, Adam's moments and
//! the EMA's running average stay with the compute path between iterations (on the CUDA
//! card, or in plain host buffers for the CPU's Winograd kernels), and each iteration is
//! one evaluation and one fused update. Only the costs come back; the engine reads the
//! state back ([`Resident::store`]) for previews, checkpoints and moves.
//!
//! Why: on a GPU, the engine's tensor Adam (burn-flex on the host) moves the image up
//! and the gradient down every iteration and runs ten passes over the image on the
//! host. At 2048x2048 that is ~0.24 s an iteration on two cores, where the card's own
//! work takes ~0.06 s (docs/design.md §4). burn's own paths (wgpu) keep tensor Adam:
//! their tensors already live on the device.
//!
//! The update is `torch.optim.Adam`'s, as [`crate::optim::Adam::step`] has it, then the
//! clamp to the pixel range and the EMA, in one pass per element.

use super::lbfgs_image::LbfgsImage;
use super::{Evaluation, Network, floats};
use crate::loss::{CostWeights, Costs, Targets};
use crate::optim::{AfterStep, Optimizer};
use anyhow::{Result, anyhow, bail, ensure};
use burn::tensor::{Device, Tensor, TensorData};
use rayon::prelude::*;

/// The state a resident run keeps, as the engine holds it: the image, Adam's moments
/// (absent before the first step) and the EMA's running average (where `ema` is on).
#[derive(Debug, Clone)]
pub struct AdamTensors {
    pub x: Tensor<4>,
    pub m: Option<Tensor<4>>,
    pub v: Option<Tensor<4>>,
    pub avg: Option<Tensor<4>>,
}

/// One update's constants, worked out on the host in float64 and applied in float32.
/// The complements `1 - beta` are taken in float64 as PyTorch and burn take them: in
/// float32, `1 - 0.999` is 1.3e-5 off.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamUpdate {
    pub beta1: f32,
    pub beta2: f32,
    /// `1 - beta1`, `1 - beta2`.
    pub keep1: f32,
    pub keep2: f32,
    pub eps: f32,
    /// `lr / (1 - beta1^t)`.
    pub step: f32,
    /// `sqrt(1 - beta2^t)`.
    pub sqrt_bc2: f32,
    /// The clamp and the EMA after the step.
    pub after: AfterStep,
}

impl AdamUpdate {
    /// The update of Adam's step `t` (1-based) with learning rate `lr`, then `after`.
    pub fn new(adam: &crate::optim::Adam, t: u64, lr: f64, after: AfterStep) -> AdamUpdate {
        let t = t.min(i32::MAX as u64) as i32;
        AdamUpdate {
            beta1: adam.beta1 as f32,
            beta2: adam.beta2 as f32,
            keep1: (1.0 - adam.beta1) as f32,
            keep2: (1.0 - adam.beta2) as f32,
            eps: adam.eps as f32,
            step: (lr / (1.0 - adam.beta1.powi(t))) as f32,
            sqrt_bc2: (1.0 - adam.beta2.powi(t)).sqrt() as f32,
            after,
        }
    }

    /// The update of a run of elements of channel `c`: `next` (x, m, v, avg) from
    /// `now` (x, m, v, avg) and the gradient `g`. The CUDA kernel `adam`
    /// (cuda/kernels.rs) is [`AdamUpdate::element`], line by line.
    pub fn apply(&self, c: usize, now: [&[f32]; 4], g: &[f32], next: [&mut [f32]; 4]) {
        match self.after.clamp {
            Some((lo, hi)) => self.apply_as::<true>(now, g, next, (lo[c], hi[c])),
            None => self.apply_as::<false>(now, g, next, (0.0, 0.0)),
        }
    }

    /// [`AdamUpdate::apply`] with the clamp decided outside the loop, which leaves the
    /// loop free of branches and bounds checks, so that it vectorises.
    fn apply_as<const CLAMP: bool>(
        &self,
        [x, m, v, avg]: [&[f32]; 4],
        g: &[f32],
        [x2, m2, v2, avg2]: [&mut [f32]; 4],
        range: (f32, f32),
    ) {
        let old = x.iter().zip(m).zip(v).zip(avg).zip(g);
        let new = x2.iter_mut().zip(m2).zip(v2).zip(avg2.iter_mut());
        for (((((x, m), v), avg), g), (((x2, m2), v2), avg2)) in old.zip(new) {
            [*x2, *m2, *v2] = self.element::<CLAMP>(*x, *m, *v, *g, range);
            if let Some((decay, keep)) = self.after.ema {
                *avg2 = *avg * decay + *x2 * keep;
            }
        }
        // Without the EMA the average is carried as it is (also where a step is NaN).
        if self.after.ema.is_none() {
            avg2.copy_from_slice(avg);
        }
    }

    /// One element's step, then the clamp to `[lo, hi]` where `CLAMP`.
    #[inline(always)]
    fn element<const CLAMP: bool>(
        &self,
        x: f32,
        m: f32,
        v: f32,
        g: f32,
        (lo, hi): (f32, f32),
    ) -> [f32; 3] {
        let m = m * self.beta1 + g * self.keep1;
        let v = v * self.beta2 + g * g * self.keep2;
        let denom = v.sqrt() / self.sqrt_bc2 + self.eps;
        let x = x - m / denom * self.step;
        // As `image::clamp_pixels` (burn's max_pair, min_pair): NaN stays NaN, so that a
        // blown-up step shows as a NaN cost and rolls back.
        let x = if !CLAMP {
            x
        } else if x < lo {
            lo
        } else if x > hi {
            hi
        } else {
            x
        };
        [x, m, v]
    }
}

/// The resident state of one run, on the path that computes it: Adam's in host buffers
/// or on the card, or L-BFGS's image among the path's vectors.
pub enum Resident {
    Host(Box<HostState>),
    #[cfg(feature = "cuda")]
    Cuda(Box<super::cuda_path::CardState>),
    Lbfgs(Box<LbfgsImage>),
}

/// The error of a resident state that is not the run's optimiser's: a bug.
const NOT_THE_OPTIMISERS: &str = "the network's state is not the run's optimiser's";

impl Resident {
    /// Takes over a run's image `x`, the EMA's average `avg` and `optimizer`'s state:
    /// Adam's moments (zero where they are absent, which gives the first step's
    /// `m = (1 - beta1) g` exactly), or for L-BFGS the image among its vectors.
    pub fn new(
        network: &Network,
        (x, avg): (&Tensor<4>, Option<&Tensor<4>>),
        optimizer: &Optimizer,
    ) -> Result<Resident> {
        let Optimizer::Adam(adam) = optimizer else {
            return Ok(Resident::Lbfgs(Box::new(LbfgsImage::new(network, x, avg)?)));
        };
        let state = AdamTensors {
            x: x.clone(),
            m: adam.m.clone(),
            v: adam.v.clone(),
            avg: avg.cloned(),
        };
        match &network.path {
            #[cfg(feature = "cuda")]
            super::Path::Cuda(cuda) => Ok(Resident::Cuda(Box::new(cuda.resident(&state)?))),
            _ => Ok(Resident::Host(Box::new(HostState::new(&state)?))),
        }
    }

    /// The costs of the image held, which the engine records: Adam's evaluation (its
    /// gradient kept for [`Resident::update`]), or L-BFGS's whole step with its line
    /// search (its next image kept). `around` wraps each evaluation of the network.
    pub fn evaluate(
        &mut self,
        (network, targets, weights): (&Network, &Targets, &CostWeights),
        (optimizer, lr): (&mut Optimizer, f64),
        around: &mut Evaluation,
    ) -> Result<Costs> {
        match (self, optimizer) {
            (Resident::Lbfgs(image), Optimizer::Lbfgs(lbfgs)) => {
                image.step(lbfgs, lr, (targets, weights), around)
            }
            (Resident::Host(h), Optimizer::Adam(_)) => {
                around(&mut || h.evaluate(network, targets, weights))
            }
            #[cfg(feature = "cuda")]
            (Resident::Cuda(c), Optimizer::Adam(_)) => {
                around(&mut || c.evaluate(network.pooling(), targets, weights))
            }
            _ => bail!(NOT_THE_OPTIMISERS),
        }
    }

    /// Takes the step evaluated (Adam's update from the gradient, or L-BFGS's next
    /// image), then `after`; the state before becomes the one a rollback returns to.
    pub fn update(
        &mut self,
        (optimizer, lr): (&mut Optimizer, f64),
        after: AfterStep,
    ) -> Result<()> {
        let adam = match (self, optimizer) {
            (Resident::Lbfgs(image), Optimizer::Lbfgs(_)) => return image.update(after),
            (Resident::Lbfgs(_), _) | (_, Optimizer::Lbfgs(_)) => bail!(NOT_THE_OPTIMISERS),
            (Resident::Host(h), Optimizer::Adam(adam)) => {
                h.update(&AdamUpdate::new(adam, adam.t + 1, lr, after))?;
                adam
            }
            #[cfg(feature = "cuda")]
            (Resident::Cuda(c), Optimizer::Adam(adam)) => {
                c.update(&AdamUpdate::new(adam, adam.t + 1, lr, after))?;
                adam
            }
        };
        adam.t += 1;
        Ok(())
    }

    /// Goes back to the state before the last update.
    pub fn roll_back(&mut self) -> Result<()> {
        match self {
            Resident::Host(h) => h.roll_back(),
            #[cfg(feature = "cuda")]
            Resident::Cuda(c) => c.roll_back(),
            Resident::Lbfgs(l) => l.roll_back(),
        }
    }

    /// The state as tensors on `device`.
    pub fn store(&self, device: &Device) -> Result<AdamTensors> {
        match self {
            Resident::Host(h) => h.store(device),
            #[cfg(feature = "cuda")]
            Resident::Cuda(c) => c.store(device),
            Resident::Lbfgs(l) => l.store(device),
        }
    }
}

/// The image, Adam's moments and the EMA's average in one kind of buffer (host floats,
/// card buffers); `avg` is zeros where `ema` is off.
#[derive(Clone)]
pub struct AdamSet<B> {
    pub x: B,
    pub m: B,
    pub v: B,
    pub avg: B,
}

impl<B> AdamSet<B> {
    pub fn try_map<C>(&self, mut f: impl FnMut(&B) -> Result<C>) -> Result<AdamSet<C>> {
        Ok(AdamSet {
            x: f(&self.x)?,
            m: f(&self.m)?,
            v: f(&self.v)?,
            avg: f(&self.avg)?,
        })
    }
}

/// A tensor's floats, or zeros where it is absent.
fn floats_or_zeros(t: Option<&Tensor<4>>, n: usize, what: &str) -> Result<Vec<f32>> {
    match t {
        Some(t) => {
            let v = floats(t.to_data(), what)?;
            ensure!(v.len() == n, "{what} holds {} floats, not {n}", v.len());
            Ok(v)
        }
        None => Ok(vec![0.0; n]),
    }
}

/// A run's state kept by a compute path in buffers `B`: the state now and the one
/// before the last update, whose buffers the next update reuses.
pub(crate) struct Kept<B> {
    pub dims: [usize; 4],
    averaged: bool,
    now: AdamSet<B>,
    before: Option<AdamSet<B>>,
}

impl<B> Kept<B> {
    /// Takes over `state`, its floats put into buffers by `put`. The moments start at
    /// zero where they are absent.
    pub fn new(state: &AdamTensors, put: impl FnMut(&Vec<f32>) -> Result<B>) -> Result<Self> {
        let dims = state.x.dims();
        let x = floats(state.x.to_data(), "the image")?;
        let n = x.len();
        let host = AdamSet {
            m: floats_or_zeros(state.m.as_ref(), n, "Adam's first moment")?,
            v: floats_or_zeros(state.v.as_ref(), n, "Adam's second moment")?,
            avg: floats_or_zeros(state.avg.as_ref(), n, "the EMA")?,
            x,
        };
        Ok(Kept {
            dims,
            averaged: state.avg.is_some(),
            now: host.try_map(put)?,
            before: None,
        })
    }

    pub fn now(&self) -> &AdamSet<B> {
        &self.now
    }

    /// Writes the next state with `step` (from the state now, into the buffers of the
    /// state before, or a `copy` of now the first time); the state now becomes the one
    /// a rollback returns to.
    pub fn advance(
        &mut self,
        copy: impl FnMut(&B) -> Result<B>,
        step: impl FnOnce(&AdamSet<B>, &mut AdamSet<B>) -> Result<()>,
    ) -> Result<()> {
        let mut next = match self.before.take() {
            Some(set) => set,
            None => self.now.try_map(copy)?,
        };
        step(&self.now, &mut next)?;
        self.before = Some(std::mem::replace(&mut self.now, next));
        Ok(())
    }

    /// Goes back to the state before the last update.
    pub fn roll_back(&mut self, copy: impl FnMut(&B) -> Result<B>) -> Result<()> {
        let before = self
            .before
            .as_ref()
            .ok_or_else(|| anyhow!("no state before an update to roll back to"))?;
        self.now = before.try_map(copy)?;
        Ok(())
    }

    /// The state now as tensors on `device`, each buffer's floats from `get`.
    pub fn store(
        &self,
        device: &Device,
        mut get: impl FnMut(&B) -> Result<Vec<f32>>,
    ) -> Result<AdamTensors> {
        let mut t = |b: &B| -> Result<Tensor<4>> {
            Ok(Tensor::from_data(
                TensorData::new(get(b)?, self.dims),
                device,
            ))
        };
        Ok(AdamTensors {
            x: t(&self.now.x)?,
            m: Some(t(&self.now.m)?),
            v: Some(t(&self.now.v)?),
            avg: match self.averaged {
                true => Some(t(&self.now.avg)?),
                false => None,
            },
        })
    }
}

/// The state in host buffers, for the CPU's Winograd path.
pub struct HostState {
    kept: Kept<Vec<f32>>,
    /// The gradient at the image now, once evaluated.
    grad: Option<Vec<f32>>,
}

impl HostState {
    fn new(state: &AdamTensors) -> Result<HostState> {
        Ok(HostState {
            kept: Kept::new(state, |v| Ok(v.clone()))?,
            grad: None,
        })
    }

    fn evaluate(
        &mut self,
        network: &Network,
        targets: &Targets,
        weights: &CostWeights,
    ) -> Result<Costs> {
        let x = Tensor::<4>::from_data(
            TensorData::new(self.kept.now().x.clone(), self.kept.dims),
            &network.device(),
        );
        let (costs, g) = network.evaluate(&x, targets, weights)?;
        self.grad = Some(floats(g.into_data(), "the image gradient")?);
        Ok(costs)
    }

    fn update(&mut self, u: &AdamUpdate) -> Result<()> {
        let g = self
            .grad
            .take()
            .ok_or_else(|| anyhow!("an Adam update before the image was evaluated"))?;
        let [_, _, h, w] = self.kept.dims;
        let (plane, row) = (h * w, w.max(1));
        self.kept.advance(
            |v| Ok(v.clone()),
            |now, next| {
                // Rows never cross a channel, so each knows its channel.
                next.x
                    .par_chunks_mut(row)
                    .zip(next.m.par_chunks_mut(row))
                    .zip(next.v.par_chunks_mut(row))
                    .zip(next.avg.par_chunks_mut(row))
                    .enumerate()
                    .for_each(|(k, (((xs, ms), vs), avgs))| {
                        let start = k * row;
                        let r = start..start + xs.len();
                        let old = [&now.x, &now.m, &now.v, &now.avg].map(|v| &v[r.clone()]);
                        u.apply(start / plane, old, &g[r], [xs, ms, vs, avgs]);
                    });
                Ok(())
            },
        )
    }

    fn roll_back(&mut self) -> Result<()> {
        self.grad = None;
        self.kept.roll_back(|v| Ok(v.clone()))
    }

    fn store(&self, device: &Device) -> Result<AdamTensors> {
        self.kept.store(device, |v| Ok(v.clone()))
    }
}
