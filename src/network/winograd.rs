//! The network on the CPU's Winograd kernels (`crate::vgg::cpu`), outside burn's
//! autodiff tape, which covers only the costs: from the content activation and the
//! Grams (with `style_loss: w2`, the row sums too), and TV from the image.

use super::{add_tap, floats, image_floats};
use crate::loss::{CostWeights, Costs, Reads, StyleLoss, Targets, terms_from_reads};
use crate::vgg::cpu::{Activation, CpuVgg, mask_planes};
use crate::vgg::{Layer, Pooling};
use anyhow::Result;
use burn::tensor::{Tensor, TensorData};

/// The forward pass, as tensors on `x`'s device.
pub fn features(
    cpu: &CpuVgg,
    x: &Tensor<4>,
    deepest: Layer,
    pooling: Pooling,
) -> Result<Vec<Tensor<4>>> {
    let (pixels, h, w) = image_floats(x)?;
    let acts = cpu.forward(&pixels, h, w, deepest, pooling);
    Ok(acts
        .layers
        .into_iter()
        .map(|a| a.into_tensor(&x.device()))
        .collect())
}

/// The cost of `x` and the gradient of the total cost with respect to its pixels.
pub fn evaluate(
    cpu: &CpuVgg,
    pooling: Pooling,
    x: &Tensor<4>,
    targets: &Targets,
    weights: &CostWeights,
) -> Result<(Costs, Tensor<4>)> {
    let plain = x.clone().inner();
    let device = plain.device();
    let (pixels, h, w) = image_floats(&plain)?;
    let acts = cpu.forward(&pixels, h, w, weights.deepest(), pooling);
    let leaf = |data: Vec<f32>, shape: Vec<usize>| {
        Tensor::<2>::from_data(TensorData::new(data, shape), &device)
            .autodiff()
            .require_grad()
    };
    let content_act = &acts.layers[weights.content_layer.0];
    let content = content_act.to_tensor(&device).autodiff().require_grad();
    // With regions the cost reads the guided Grams only.
    let unguided = if targets.regions.is_empty() {
        &weights.style_layers[..]
    } else {
        &[]
    };
    let grams: Vec<(Tensor<2>, [usize; 3])> = unguided
        .iter()
        .map(|(l, _)| {
            let a = &acts.layers[l.0];
            let g = leaf(a.gram(), vec![a.channels, a.channels]);
            (g, [a.channels, a.height, a.width])
        })
        .collect();
    let sums: Vec<Tensor<1>> = match weights.style_loss {
        StyleLoss::Gram => Vec::new(),
        StyleLoss::W2 => weights
            .style_layers
            .iter()
            .map(|(l, _)| {
                let a = &acts.layers[l.0];
                Tensor::<1>::from_data(TensorData::new(a.row_sums(), [a.channels]), &device)
                    .autodiff()
                    .require_grad()
            })
            .collect(),
    };
    // With regions, each region's guided Gram per style layer, from its masked
    // activation (kept for the adjoint).
    let mut masked: Vec<Vec<(usize, Activation, Tensor<2>)>> = Vec::new();
    for region in &targets.regions {
        let mut per_layer = Vec::new();
        if region.grams.is_some() {
            for ((l, _), m) in weights.style_layers.iter().zip(&region.masks) {
                let a = acts.layers[l.0].masked(&m.host);
                let g = leaf(a.gram(), vec![a.channels, a.channels]);
                per_layer.push((l.0, a, g));
            }
        }
        masked.push(per_layer);
    }
    let xa = plain.autodiff().require_grad();
    let reads = Reads {
        content: content.clone(),
        grams: grams.clone(),
        sums: sums.clone(),
        regions: masked
            .iter()
            .map(|r| r.iter().map(|(_, _, g)| g.clone()).collect())
            .collect(),
    };
    let terms = terms_from_reads(reads, xa.clone(), targets, weights)?;
    let costs = terms.read(weights);
    let grads = terms.total.backward();

    // The gradient at each layer the cost read: the content's directly, the Grams'
    // through the Gram's adjoint.
    let mut tap_grads: Vec<Option<Vec<f32>>> = vec![None; acts.layers.len()];
    let mut add = |layer: usize, g: Vec<f32>| add_tap(&mut tap_grads, layer, g);
    if let Some(g) = content.grad(&grads) {
        add(
            weights.content_layer.0,
            floats(g.into_data(), "the content gradient")?,
        );
    }
    for ((l, _), (g, _)) in weights.style_layers.iter().zip(&grams) {
        if let Some(dg) = g.grad(&grads) {
            let dg = floats(dg.into_data(), "a Gram's gradient")?;
            add(l.0, acts.layers[l.0].gram_adjoint(&dg));
        }
    }
    // W2 reads the row sums too: their gradient reaches every position alike.
    for ((l, _), s) in weights.style_layers.iter().zip(&sums) {
        if let Some(ds) = s.grad(&grads) {
            let ds = floats(ds.into_data(), "a row sum's gradient")?;
            add(l.0, acts.layers[l.0].row_sums_adjoint(&ds));
        }
    }
    // A guided Gram's adjoint: the masked activation's, masked again.
    for (region, layers) in targets.regions.iter().zip(masked) {
        for ((layer, a, g), m) in layers.into_iter().zip(&region.masks) {
            if let Some(dg) = g.grad(&grads) {
                let dg = floats(dg.into_data(), "a guided Gram's gradient")?;
                let mut d = a.gram_adjoint(&dg);
                mask_planes(&mut d, &m.host);
                add(layer, d);
            }
            crate::vgg::buffers::give(a.data);
        }
    }
    let g = cpu.backward(&acts, tap_grads, pooling);
    acts.recycle();
    let mut g = Tensor::<4>::from_data(TensorData::new(g, [1, 3, h, w]), &device);
    if let Some(tv) = xa.grad(&grads) {
        g = g + tv;
    }
    Ok((costs, g))
}
