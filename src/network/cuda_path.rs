//! The CUDA path as the seam sees it: burn tensors on the host in, costs and the image
//! gradient out, with the targets kept on the card between iterations.

use super::cuda::{
    AdamBuffers, AdamOutputs, CudaCostWeights, CudaCosts, CudaTargets, CudaVgg, HostRegions,
    HostStyle, HostStyleAdjoint, HostStyleRead,
};
use super::resident::{AdamTensors, AdamUpdate};
use super::{floats, image_floats};
use crate::backend::Precision;
use crate::loss::w2::W2Target;
use crate::loss::{CostWeights, Costs, StyleLoss, Targets, guided_adjoints};
use crate::vgg::{HostWeights, Layer, Padding, Pooling};
use anyhow::{Context, Result};
use burn::tensor::{Device, Tensor, TensorData};
use cudarc::driver::CudaSlice;
use std::sync::{Arc, Mutex};

pub struct CudaPath {
    vgg: CudaVgg,
    /// The targets on the card, with the id of the host targets they copy.
    targets: Mutex<Option<(u64, CudaTargets)>>,
}

impl CudaPath {
    pub fn new(weights: &HostWeights, padding: Padding, precision: Precision) -> Result<CudaPath> {
        crate::backend::cuda_libs::load()?;
        let vgg = CudaVgg::new(
            0,
            &weights.convs,
            (weights.input_scale, weights.input_shift),
            padding,
            precision == Precision::Tf32,
        )?;
        Ok(CudaPath {
            vgg,
            targets: Mutex::new(None),
        })
    }

    pub fn features(
        &self,
        x: &Tensor<4>,
        deepest: Layer,
        pooling: Pooling,
    ) -> Result<Vec<Tensor<4>>> {
        let (pixels, h, w) = image_floats(x)?;
        let acts = self.vgg.forward(&pixels, (h, w), deepest, pooling, true)?;
        Ok(acts
            .into_iter()
            .map(|(data, c, h, w)| {
                Tensor::from_data(TensorData::new(data, [1, c, h, w]), &x.device())
            })
            .collect())
    }

    pub fn evaluate(
        &self,
        x: &Tensor<4>,
        targets: &Targets,
        weights: &CostWeights,
        pooling: Pooling,
    ) -> Result<(Costs, Tensor<4>)> {
        let (pixels, h, w) = image_floats(x)?;
        let (parts, g) = self.with_targets(targets, weights, |on_card, cost| {
            self.vgg.evaluate(&pixels, h, w, pooling, on_card, cost)
        })?;
        let g = Tensor::from_data(TensorData::new(g, [1, 3, h, w]), &x.device());
        Ok((costs_of(parts, weights), g))
    }

    /// The forward pass alone, waited for, with nothing copied back.
    pub fn forward_pass(&self, x: &Tensor<4>, deepest: Layer, pooling: Pooling) -> Result<()> {
        let (pixels, h, w) = image_floats(x)?;
        self.vgg
            .forward(&pixels, (h, w), deepest, pooling, false)
            .map(drop)
    }

    /// Runs `f` with the targets on the card, uploading them where they changed.
    fn with_targets<T>(
        &self,
        targets: &Targets,
        weights: &CostWeights,
        f: impl FnOnce(&CudaTargets, &CudaCostWeights) -> Result<T>,
    ) -> Result<T> {
        let mut held = self
            .targets
            .lock()
            .map_err(|_| anyhow::anyhow!("the CUDA path's targets were poisoned by a panic"))?;
        if held.as_ref().is_none_or(|(id, _)| *id != targets.id()) {
            *held = Some((targets.id(), self.upload(targets)?));
        }
        let Some((_, on_card)) = held.as_ref() else {
            unreachable!("the targets were just uploaded")
        };
        let w2 = |reads: &[HostStyleRead]| w2_adjoints(&targets.w2, weights, reads);
        let device = targets.content.device();
        let regions = |grams: &[Vec<Vec<f32>>]| guided_adjoints(grams, targets, weights, &device);
        let cost = CudaCostWeights {
            alpha: weights.alpha,
            beta: weights.beta,
            content_layer: weights.content_layer,
            style_layers: &weights.style_layers,
            tv_weight: weights.tv_weight,
            host_style: match weights.style_loss {
                StyleLoss::Gram => None,
                StyleLoss::W2 => Some(&w2 as &HostStyle),
            },
            host_regions: (!targets.regions.is_empty()).then_some(&regions as &HostRegions),
        };
        f(on_card, &cost)
    }

    fn upload(&self, targets: &Targets) -> Result<CudaTargets> {
        let content = floats(targets.content.to_data(), "the content target")?;
        let grams = targets
            .grams
            .iter()
            .map(|(l, g)| Ok((*l, floats(g.to_data(), "a style Gram")?)))
            .collect::<Result<Vec<_>>>()?;
        // Regions with a style read their guided Grams through their masks.
        let masks: Vec<Option<Vec<Vec<f32>>>> = targets
            .regions
            .iter()
            .map(|r| {
                r.grams
                    .as_ref()
                    .map(|_| r.masks.iter().map(|m| m.host.clone()).collect())
            })
            .collect();
        self.vgg
            .upload_targets(targets.content_layer, &content, &grams, &masks)
    }
}

/// The run's costs from the card's parts.
fn costs_of(parts: CudaCosts, weights: &CostWeights) -> Costs {
    let mut costs = Costs::from_parts(weights, parts.content, &parts.style, parts.tv);
    costs.regions = parts.regions;
    costs
}

/// `style_loss: w2` from the card's Grams and row sums, on the host as the CPU paths
/// compute it (`loss::w2`), the layers in parallel; the gradients weighted by
/// `beta lambda_l` for the card's backward pass.
fn w2_adjoints(
    targets: &[W2Target],
    weights: &CostWeights,
    reads: &[HostStyleRead],
) -> Result<Vec<HostStyleAdjoint>> {
    use rayon::prelude::*;
    anyhow::ensure!(
        targets.len() == reads.len() && reads.len() == weights.style_layers.len(),
        "style_loss w2 has {} targets for {} style layers",
        targets.len(),
        weights.style_layers.len()
    );
    reads
        .par_iter()
        .zip(targets.par_iter())
        .zip(weights.style_layers.par_iter())
        .map(|((read, target), (_, lambda))| {
            let cost = target
                .cost(&read.gram, &read.sums, read.positions)
                .context("style_loss w2")?;
            let scale = (weights.beta * lambda) as f32;
            let scaled = |v: Vec<f32>| v.into_iter().map(|d| d * scale).collect();
            Ok(HostStyleAdjoint {
                cost: cost.value,
                d_gram: scaled(cost.d_gram),
                d_sums: scaled(cost.d_sums),
            })
        })
        .collect()
}

/// One copy of a resident Adam run's state on the card, `[3][h][w]` each; `avg` is
/// zeros where `ema` is off.
struct CardSet {
    x: CudaSlice<f32>,
    m: CudaSlice<f32>,
    v: CudaSlice<f32>,
    avg: CudaSlice<f32>,
}

/// A resident Adam run on the card (`super::resident`): per iteration the costs come
/// back and nothing else crosses the bus.
pub struct CardState {
    path: Arc<CudaPath>,
    dims: [usize; 4],
    averaged: bool,
    now: CardSet,
    /// The state before the last update.
    before: Option<CardSet>,
    /// The gradient at `now.x`, written by each evaluation.
    grad: CudaSlice<f32>,
    evaluated: bool,
}

impl CudaPath {
    /// Takes over a run's state: the image, Adam's moments and the EMA's average.
    pub fn resident(self: &Arc<Self>, state: &AdamTensors) -> Result<CardState> {
        let dims = state.x.dims();
        let n = dims.iter().product();
        let up = |t: Option<&Tensor<4>>, what: &str| -> Result<CudaSlice<f32>> {
            let host = match t {
                Some(t) => floats(t.to_data(), what)?,
                None => vec![0.0; n],
            };
            anyhow::ensure!(
                host.len() == n,
                "{what} holds {} floats, not {n}",
                host.len()
            );
            self.vgg.upload(&host)
        };
        Ok(CardState {
            path: self.clone(),
            dims,
            averaged: state.avg.is_some(),
            now: CardSet {
                x: up(Some(&state.x), "the image")?,
                m: up(state.m.as_ref(), "Adam's first moment")?,
                v: up(state.v.as_ref(), "Adam's second moment")?,
                avg: up(state.avg.as_ref(), "the EMA")?,
            },
            before: None,
            grad: self.vgg.alloc(n)?,
            evaluated: false,
        })
    }
}

impl Drop for CardState {
    fn drop(&mut self) {
        // The buffers are freed in the stream's order, which needs the context current
        // on this thread; cudarc would otherwise keep the error for the next call.
        let _ = self.path.vgg.bind();
    }
}

impl CardState {
    pub fn evaluate(
        &mut self,
        pooling: Pooling,
        targets: &Targets,
        weights: &CostWeights,
    ) -> Result<Costs> {
        let [_, _, h, w] = self.dims;
        let (path, x, grad) = (&self.path, &self.now.x, &mut self.grad);
        let parts = path.with_targets(targets, weights, |on_card, cost| {
            path.vgg
                .evaluate_on_card(x, h, w, pooling, on_card, cost, grad)
        })?;
        self.evaluated = true;
        Ok(costs_of(parts, weights))
    }

    pub fn update(&mut self, update: &AdamUpdate) -> Result<()> {
        anyhow::ensure!(
            std::mem::take(&mut self.evaluated),
            "an Adam update before the image was evaluated"
        );
        let vgg = &self.path.vgg;
        // The buffers of the state before last are reused for the next one.
        let mut next = match self.before.take() {
            Some(set) => set,
            None => self.copy(&self.now)?,
        };
        let now = AdamBuffers {
            x: &self.now.x,
            m: &self.now.m,
            v: &self.now.v,
            avg: &self.now.avg,
        };
        let out = AdamOutputs {
            x: &mut next.x,
            m: &mut next.m,
            v: &mut next.v,
            avg: &mut next.avg,
        };
        vgg.adam(now, &self.grad, out, update)?;
        self.before = Some(std::mem::replace(&mut self.now, next));
        Ok(())
    }

    pub fn roll_back(&mut self) -> Result<()> {
        let before = self
            .before
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("no state before an update to roll back to"))?;
        self.now = self.copy(before)?;
        self.evaluated = false;
        Ok(())
    }

    pub fn store(&self, device: &Device) -> Result<AdamTensors> {
        let vgg = &self.path.vgg;
        let t = |v: &CudaSlice<f32>| -> Result<Tensor<4>> {
            Ok(Tensor::from_data(
                TensorData::new(vgg.download(v)?, self.dims),
                device,
            ))
        };
        Ok(AdamTensors {
            x: t(&self.now.x)?,
            m: Some(t(&self.now.m)?),
            v: Some(t(&self.now.v)?),
            avg: if self.averaged {
                Some(t(&self.now.avg)?)
            } else {
                None
            },
        })
    }

    fn copy(&self, set: &CardSet) -> Result<CardSet> {
        let vgg = &self.path.vgg;
        Ok(CardSet {
            x: vgg.duplicate(&set.x)?,
            m: vgg.duplicate(&set.m)?,
            v: vgg.duplicate(&set.v)?,
            avg: vgg.duplicate(&set.avg)?,
        })
    }
}
