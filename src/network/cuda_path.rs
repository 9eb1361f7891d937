//! The CUDA path as the seam sees it: burn tensors on the host in, costs and the image
//! gradient out, with the targets kept on the card between iterations.

use super::cuda::{CudaCostWeights, CudaTargets, CudaVgg};
use super::{floats, image_floats};
use crate::backend::Precision;
use crate::loss::{CostWeights, Costs, Targets};
use crate::vgg::{HostWeights, Layer, Padding, Pooling};
use anyhow::Result;
use burn::tensor::{Tensor, TensorData};
use std::sync::Mutex;

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
        let acts = self.vgg.forward(&pixels, h, w, deepest, pooling)?;
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
        let cost = CudaCostWeights {
            alpha: weights.alpha,
            beta: weights.beta,
            content_layer: weights.content_layer,
            style_layers: &weights.style_layers,
            tv_weight: weights.tv_weight,
        };
        let (parts, g) = self.vgg.evaluate(&pixels, h, w, pooling, on_card, &cost)?;
        let costs = Costs::from_parts(weights, parts.content, &parts.style, parts.tv);
        let g = Tensor::from_data(TensorData::new(g, [1, 3, h, w]), &x.device());
        Ok((costs, g))
    }

    fn upload(&self, targets: &Targets) -> Result<CudaTargets> {
        let content = floats(targets.content.to_data(), "the content target")?;
        let grams = targets
            .grams
            .iter()
            .map(|(l, g)| Ok((*l, floats(g.to_data(), "a style Gram")?)))
            .collect::<Result<Vec<_>>>()?;
        self.vgg
            .upload_targets(targets.content_layer, &content, &grams)
    }
}
