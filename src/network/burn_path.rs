//! The network on burn's own convolutions, differentiated by burn's autodiff tape.

use crate::loss::{self, CostWeights, Costs, Targets};
use crate::vgg::Vgg19;
use anyhow::Result;
use burn::tensor::Tensor;

/// The cost of `x` and its gradient, the whole network on the tape.
pub fn evaluate(
    vgg: &Vgg19,
    x: &Tensor<4>,
    targets: &Targets,
    weights: &CostWeights,
) -> Result<(Costs, Tensor<4>)> {
    let xa = x.clone().inner().autodiff().require_grad();
    let taps = vgg.forward(xa.clone(), weights.deepest());
    let terms = loss::cost_terms(&taps, xa.clone(), targets, weights)?;
    let costs = terms.read(weights);
    let grads = terms.total.backward();
    let g = xa
        .grad(&grads)
        .ok_or_else(|| anyhow::anyhow!("the backward pass produced no gradient for the image"))?;
    Ok((costs, g))
}
