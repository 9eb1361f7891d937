//! The costs of SPEC §2, each with its per-layer breakdown.
//!
//! - content: `sum((a_C - a_G)^2) / (4 nH nW nC)` at one layer;
//! - Gram: `A A^T` for the activation unrolled to `(nC, nH*nW)`;
//! - style of a layer: `sum((G_S - G_G)^2) / (4 nC^2 (nH nW)^2)`;
//! - style: `sum_l lambda_l J_style[l]`; total: `alpha J_content + beta J_style + tv_weight TV`.

use crate::vgg::cpu::CpuVgg;
use crate::vgg::{Layer, Pooling, Vgg19};
use burn::tensor::{FloatDType, Tensor, TensorData};

/// Squares and sums in float64. The costs are sums of up to millions of float32 terms;
/// a float32 total carries ~1e-7 relative noise, which is the size of J's change over the
/// first tiny L-BFGS step and would steer the line search by chance.
/// Where the device has no float64 (most GPUs), rows are summed first instead.
fn sum_squares<const D: usize>(t: Tensor<D>) -> Tensor<1> {
    if t.device().supports_dtype(burn::tensor::DType::F64) {
        t.cast(FloatDType::F64).square().sum()
    } else {
        let n = t.dims()[D - 1];
        t.square().reshape([-1, n as i64]).sum_dim(1).sum()
    }
}

/// The weights of the cost, as they may change during a run.
#[derive(Debug, Clone, PartialEq)]
pub struct CostWeights {
    pub alpha: f64,
    pub beta: f64,
    pub content_layer: Layer,
    /// Style layers with their lambda, in network order.
    pub style_layers: Vec<(Layer, f64)>,
    pub tv_weight: f64,
}

impl CostWeights {
    /// The deepest layer the cost needs.
    pub fn deepest(&self) -> Layer {
        self.style_layers
            .iter()
            .map(|(l, _)| *l)
            .chain([self.content_layer])
            .max()
            .unwrap_or(self.content_layer)
    }
}

/// The Gram matrix `A A^T` of a `[1, C, H, W]` activation, as `[C, C]`.
pub fn gram(a: Tensor<4>) -> Tensor<2> {
    let [_, c, h, w] = a.dims();
    let a = a.reshape([c, h * w]);
    a.clone().matmul(a.transpose())
}

/// `J_content` at one layer.
pub fn content_cost(a_c: Tensor<4>, a_g: Tensor<4>) -> Tensor<1> {
    let [_, c, h, w] = a_g.dims();
    sum_squares(a_c - a_g) / (4.0 * (c * h * w) as f64)
}

/// `J_style[l]` from the style Gram and the Gram `g` of an activation of size `[C, H, W]`.
pub fn style_cost_of_gram(g_s: Tensor<2>, g: Tensor<2>, [c, h, w]: [usize; 3]) -> Tensor<1> {
    // Scale before squaring: Gram entries reach 1e9 at conv1_1, their squares would
    // cost float32 precision.
    let norm = 2.0 * (c * h * w) as f64;
    sum_squares((g_s - g) / norm)
}

/// Total variation: the sum of squared differences between neighbouring pixels.
pub fn tv_cost(x: Tensor<4>) -> Tensor<1> {
    let [_, _, h, w] = x.dims();
    let dy =
        x.clone().slice([0..1, 0..3, 1..h, 0..w]) - x.clone().slice([0..1, 0..3, 0..h - 1, 0..w]);
    let dx = x.clone().slice([0..1, 0..3, 0..h, 1..w]) - x.slice([0..1, 0..3, 0..h, 0..w - 1]);
    sum_squares(dy) + sum_squares(dx)
}

/// What the cost compares against: the content activation and the (blended) style
/// Grams, computed once per run from the fixed images.
#[derive(Debug, Clone)]
pub struct Targets {
    pub content_layer: Layer,
    pub content: Tensor<4>,
    /// One Gram per style layer, in the order of `CostWeights::style_layers`.
    pub grams: Vec<(Layer, Tensor<2>)>,
}

impl Targets {
    /// Computes the targets. `styles` are pixel-space images with their blend weights;
    /// their Grams are mixed by weight.
    pub fn compute(
        vgg: &Vgg19,
        content: Tensor<4>,
        styles: &[(Tensor<4>, f64)],
        weights: &CostWeights,
    ) -> Targets {
        let [_, _, hc, wc] = content.dims();
        let content_act = vgg
            .forward(content, weights.content_layer)
            .swap_remove(weights.content_layer.0);
        let deepest_style = weights
            .style_layers
            .iter()
            .map(|(l, _)| *l)
            .max()
            .unwrap_or(Layer(0));
        let total: f64 = styles.iter().map(|(_, w)| w).sum();
        let mut grams: Vec<(Layer, Tensor<2>)> = Vec::new();
        for (image, blend) in styles {
            // A style image of another size than the output (style_scale) sums its
            // Gram over more or fewer pixels: bring it to the output's pixel count.
            let [_, _, hs, ws] = image.dims();
            let blend = blend * (hc * wc) as f64 / (hs * ws) as f64;
            let taps = vgg.forward(image.clone(), deepest_style);
            for (k, (layer, _)) in weights.style_layers.iter().enumerate() {
                let g = gram(taps[layer.0].clone()) * (blend / total);
                match grams.get_mut(k) {
                    Some((_, acc)) => *acc = acc.clone() + g,
                    None => grams.push((*layer, g)),
                }
            }
        }
        Targets {
            content_layer: weights.content_layer,
            content: content_act,
            grams,
        }
    }

    pub fn to_device(&self, device: &burn::tensor::Device) -> Targets {
        Targets {
            content_layer: self.content_layer,
            content: self.content.clone().to_device(device),
            grams: self
                .grams
                .iter()
                .map(|(l, g)| (*l, g.clone().to_device(device)))
                .collect(),
        }
    }
}

/// The cost of one image as tensors (still on the autodiff tape when `x` is).
pub struct CostTerms {
    pub total: Tensor<1>,
    pub content: Tensor<1>,
    /// Unweighted `J_style[l]` per style layer.
    pub style: Vec<Tensor<1>>,
    pub tv: Tensor<1>,
}

/// The cost of one image as numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct Costs {
    pub total: f64,
    pub content: f64,
    /// `beta`-free, lambda-weighted sum: `sum_l lambda_l J_style[l]`.
    pub style: f64,
    /// Unweighted `J_style[l]` per style layer.
    pub style_layers: Vec<(Layer, f64)>,
    pub tv: f64,
}

impl Costs {
    pub fn is_finite(&self) -> bool {
        self.total.is_finite() && self.content.is_finite() && self.style.is_finite()
    }
}

/// Evaluates the cost of `x`. `targets` must match `weights` (same content layer).
pub fn cost_terms(
    vgg: &Vgg19,
    x: Tensor<4>,
    targets: &Targets,
    weights: &CostWeights,
) -> CostTerms {
    let taps = vgg.forward(x.clone(), weights.deepest());
    let reads = Reads {
        content: taps[weights.content_layer.0].clone(),
        grams: weights
            .style_layers
            .iter()
            .map(|(l, _)| {
                let [_, c, h, w] = taps[l.0].dims();
                (gram(taps[l.0].clone()), [c, h, w])
            })
            .collect(),
    };
    terms_from_reads(reads, x, targets, weights)
}

/// What the cost reads from the network for one image: the content layer's activation
/// and, per style layer, its Gram with the activation's size `[C, H, W]`.
struct Reads {
    content: Tensor<4>,
    grams: Vec<(Tensor<2>, [usize; 3])>,
}

/// The cost from what it reads; `x` is used only for total variation.
fn terms_from_reads(
    reads: Reads,
    x: Tensor<4>,
    targets: &Targets,
    weights: &CostWeights,
) -> CostTerms {
    let content = content_cost(targets.content.clone(), reads.content);
    let style: Vec<Tensor<1>> = targets
        .grams
        .iter()
        .zip(reads.grams)
        .map(|((_, g_s), (g, dims))| style_cost_of_gram(g_s.clone(), g, dims))
        .collect();
    let mut style_total = content.zeros_like();
    for ((_, lambda), j) in weights.style_layers.iter().zip(&style) {
        style_total = style_total + j.clone() * *lambda;
    }
    let tv = if weights.tv_weight > 0.0 {
        tv_cost(x)
    } else {
        content.zeros_like()
    };
    let total = content.clone() * weights.alpha
        + style_total * weights.beta
        + tv.clone() * weights.tv_weight;
    CostTerms {
        total,
        content,
        style,
        tv,
    }
}

impl CostTerms {
    /// Reads all terms back in one transfer.
    pub fn read(&self, weights: &CostWeights) -> Costs {
        let mut parts = vec![
            self.total.clone().inner(),
            self.content.clone().inner(),
            self.tv.clone().inner(),
        ];
        parts.extend(self.style.iter().map(|t| t.clone().inner()));
        let all = Tensor::cat(parts, 0).into_data().convert::<f64>();
        let v: Vec<f64> = all.try_to_vec::<f64>().unwrap_or_default();
        let style_layers: Vec<(Layer, f64)> = weights
            .style_layers
            .iter()
            .zip(&v[3..])
            .map(|((l, _), j)| (*l, *j))
            .collect();
        let style = weights
            .style_layers
            .iter()
            .zip(&v[3..])
            .map(|((_, lambda), j)| lambda * j)
            .sum();
        Costs {
            total: v[0],
            content: v[1],
            style,
            style_layers,
            tv: v[2],
        }
    }
}

/// The cost of `x` and the gradient of the total cost with respect to its pixels.
pub fn evaluate(
    vgg: &Vgg19,
    x: &Tensor<4>,
    targets: &Targets,
    weights: &CostWeights,
) -> anyhow::Result<(Costs, Tensor<4>)> {
    if let Some(cpu) = vgg.winograd() {
        return evaluate_winograd(cpu, vgg.pooling, x, targets, weights);
    }
    let xa = x.clone().inner().autodiff().require_grad();
    let terms = cost_terms(vgg, xa.clone(), targets, weights);
    let costs = terms.read(weights);
    let grads = terms.total.backward();
    let g = xa
        .grad(&grads)
        .ok_or_else(|| anyhow::anyhow!("the backward pass produced no gradient for the image"))?;
    Ok((costs, g))
}

/// [`evaluate`] on the Winograd path: the network, and the Grams of the style layers,
/// run forward and backward outside the autodiff tape, which covers only the costs from
/// the content activation and the Grams (and TV from the image).
fn evaluate_winograd(
    cpu: &CpuVgg,
    pooling: Pooling,
    x: &Tensor<4>,
    targets: &Targets,
    weights: &CostWeights,
) -> anyhow::Result<(Costs, Tensor<4>)> {
    let plain = x.clone().inner();
    let device = plain.device();
    let [_, _, h, w] = plain.dims();
    let pixels = floats(plain.to_data(), "the image")?;
    let acts = cpu.forward(&pixels, h, w, weights.deepest(), pooling);
    let leaf = |data: Vec<f32>, shape: Vec<usize>| {
        Tensor::<2>::from_data(TensorData::new(data, shape), &device)
            .autodiff()
            .require_grad()
    };
    let content_act = &acts.layers[weights.content_layer.0];
    let content = content_act.to_tensor(&device).autodiff().require_grad();
    let grams: Vec<(Tensor<2>, [usize; 3])> = weights
        .style_layers
        .iter()
        .map(|(l, _)| {
            let a = &acts.layers[l.0];
            let g = leaf(a.gram(), vec![a.channels, a.channels]);
            (g, [a.channels, a.height, a.width])
        })
        .collect();
    let xa = plain.autodiff().require_grad();
    let reads = Reads {
        content: content.clone(),
        grams: grams.clone(),
    };
    let terms = terms_from_reads(reads, xa.clone(), targets, weights);
    let costs = terms.read(weights);
    let grads = terms.total.backward();

    // The gradient at each layer the cost read: the content's directly, the Grams'
    // through the Gram's adjoint.
    let mut tap_grads: Vec<Option<Vec<f32>>> = vec![None; acts.layers.len()];
    let mut add = |layer: usize, g: Vec<f32>| match &mut tap_grads[layer] {
        Some(acc) => acc.iter_mut().zip(&g).for_each(|(a, b)| *a += b),
        slot => *slot = Some(g),
    };
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
    let g = cpu.backward(&acts, tap_grads, pooling);
    acts.recycle();
    let mut g = Tensor::<4>::from_data(TensorData::new(g, [1, 3, h, w]), &device);
    if let Some(tv) = xa.grad(&grads) {
        g = g + tv;
    }
    Ok((costs, g))
}

fn floats(data: TensorData, what: &str) -> anyhow::Result<Vec<f32>> {
    data.try_into_vec_as::<f32>()
        .map_err(|e| anyhow::anyhow!("reading {what} back: {e:?}"))
}
