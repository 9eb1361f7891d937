//! The CUDA path as the seam sees it: burn tensors on the host in, costs and the image
//! gradient out, with the targets kept on the card between iterations.

use super::cuda::{
    CudaCostWeights, CudaCosts, CudaTargets, CudaVgg, HostRegions, HostStyle, HostStyleAdjoint,
    HostStyleRead,
};
use super::resident::{AdamTensors, AdamUpdate, Kept};
use super::{floats, image_floats};
use crate::backend::{CudaSettings, Precision};
use crate::loss::w2::W2Target;
use crate::loss::{CostWeights, Costs, StyleLoss, Targets, guided_adjoints};
use crate::vgg::{HostWeights, Layer, Padding, Pooling};
use anyhow::{Context, Result};
use burn::tensor::{Device, Tensor, TensorData};
use cudarc::driver::CudaSlice;
use std::sync::{Arc, Mutex};

pub struct CudaPath {
    /// The targets on the card, with the id of the host targets they copy. Declared
    /// first, so freed before the network releases the pool's memory.
    targets: Mutex<Option<(u64, CudaTargets)>>,
    vgg: CudaVgg,
}

impl Drop for CudaPath {
    fn drop(&mut self) {
        // The targets are freed before the network, on whichever thread drops the path.
        self.vgg.bind_for_drop();
    }
}

impl CudaPath {
    pub fn new(weights: &HostWeights, padding: Padding, cuda: CudaSettings) -> Result<CudaPath> {
        crate::backend::cuda_libs::load()?;
        let vgg = CudaVgg::new(
            0,
            &weights.convs,
            (weights.input_scale, weights.input_shift),
            padding,
            (cuda.precision == Precision::Tf32, cuda.search),
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

    /// The network on the card.
    pub(super) fn vgg(&self) -> &CudaVgg {
        &self.vgg
    }

    /// Runs `f` with the targets on the card, uploading them where they changed.
    pub(super) fn with_targets<T>(
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
pub(super) fn costs_of(parts: CudaCosts, weights: &CostWeights) -> Costs {
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

/// A resident Adam run on the card (`super::resident`): per iteration the costs come
/// back and nothing else crosses the bus.
pub struct CardState {
    kept: Kept<CudaSlice<f32>>,
    /// The gradient at the image now, written by each evaluation.
    grad: CudaSlice<f32>,
    evaluated: bool,
    /// Declared last, so dropped last: the buffers above are freed before the network
    /// (where this is its last holder) hands the pool's memory back.
    path: Arc<CudaPath>,
}

impl CudaPath {
    /// Takes over a run's state: the image, Adam's moments and the EMA's average.
    pub fn resident(self: &Arc<Self>, state: &AdamTensors) -> Result<CardState> {
        let kept = Kept::new(state, |v| self.vgg.upload(v))?;
        Ok(CardState {
            path: self.clone(),
            grad: self.vgg.alloc(kept.dims.iter().product())?,
            kept,
            evaluated: false,
        })
    }
}

impl Drop for CardState {
    fn drop(&mut self) {
        // The buffers are freed in the stream's order, which needs the context current
        // on this thread; cudarc would otherwise keep the error for the next call.
        self.path.vgg.bind_for_drop();
    }
}

impl CardState {
    pub fn evaluate(
        &mut self,
        pooling: Pooling,
        targets: &Targets,
        weights: &CostWeights,
    ) -> Result<Costs> {
        let [_, _, h, w] = self.kept.dims;
        let (path, x, grad) = (&self.path, &self.kept.now().x, &mut self.grad);
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
        let (vgg, grad) = (&self.path.vgg, &self.grad);
        self.kept.advance(
            |b| vgg.duplicate(b),
            |now, next| vgg.adam(now, grad, next, update),
        )
    }

    pub fn roll_back(&mut self) -> Result<()> {
        self.evaluated = false;
        let vgg = &self.path.vgg;
        self.kept.roll_back(|b| vgg.duplicate(b))
    }

    pub fn store(&self, device: &Device) -> Result<AdamTensors> {
        let vgg = &self.path.vgg;
        self.kept.store(device, |b| vgg.download(b))
    }
}
