//! The costs of docs/design.md §1, each with its per-layer breakdown.
//!
//! - content: `sum((a_C - a_G)^2) / (4 nH nW nC)` at one layer;
//! - Gram: `A A^T` for the activation unrolled to `(nC, nH*nW)`;
//! - style of a layer: `sum((G_S - G_G)^2) / (4 nC^2 (nH nW)^2)`;
//! - style: `sum_l lambda_l J_style[l]`; total: `alpha J_content + beta J_style + tv_weight TV`;
//! - or, with `style_loss: w2`, each layer's style cost from its mean and covariance
//!   ([`w2`]).

pub mod regions;
pub mod w2;

use crate::vgg::Layer;
use anyhow::{Context, Result};
use burn::tensor::{FloatDType, Tensor, TensorData};
use regions::RegionTarget;
use serde::{Deserialize, Serialize};
use w2::W2Target;

/// How a layer's style is compared with the style image's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StyleLoss {
    /// Gatys et al.: the squared difference of the Grams (the seed's).
    #[default]
    Gram,
    /// The 2-Wasserstein distance between the features' Gaussians (mean, covariance).
    W2,
}

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
    pub style_loss: StyleLoss,
    /// With `regions`, each region's style weight, in the mask's order (0 for a region
    /// without a style); empty without.
    pub region_weights: Vec<f64>,
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
    content_cost_part(a_c, a_g, [c, h, w])
}

/// The part of `J_content` over a window of the layer (a tile), normalised by the
/// whole layer's size `[C, H, W]`: the parts of a layer's windows sum to its `J_content`.
pub fn content_cost_part(a_c: Tensor<4>, a_g: Tensor<4>, [c, h, w]: [usize; 3]) -> Tensor<1> {
    sum_squares(a_c - a_g) / (4.0 * (c * h * w) as f64)
}

/// `J_style[l]` from the style Gram and the Gram `g` of an activation of size `[C, H, W]`.
pub fn style_cost_of_gram(g_s: Tensor<2>, g: Tensor<2>, [c, h, w]: [usize; 3]) -> Tensor<1> {
    // A region over the whole image, of mass H W.
    regions::guided_cost(g_s, g, c, (h * w) as f64)
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
    /// With `style_loss: w2`, one target per style layer (else none).
    pub w2: Vec<W2Target>,
    /// With `regions`, one target per region of the mask (else none); the blended
    /// `grams` are then unused.
    pub regions: Vec<RegionTarget>,
    /// Tells one set of targets from another, so that a compute path may keep its own
    /// copy (the CUDA path keeps them on the card) and know when it is stale.
    id: u64,
}

fn next_targets_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl Targets {
    /// The targets from what the network read of the images: the content activation
    /// of an image of `pixels` pixels (the output's size), and each style image's Grams
    /// and row sums with its blend weight.
    pub fn from_reads(
        content_act: Tensor<4>,
        pixels: usize,
        styles: &[(StyleReads, f64)],
        weights: &CostWeights,
    ) -> anyhow::Result<Targets> {
        let total: f64 = styles.iter().map(|(_, w)| w).sum();
        let mut grams: Vec<(Layer, Tensor<2>)> = Vec::new();
        let mut moments = Moments::default();
        for (reads, blend) in styles {
            // A style image of another size than the output (style_scale) sums its
            // Gram over more or fewer pixels: bring it to the output's pixel count.
            let scaled = blend * pixels as f64 / reads.pixels as f64;
            for (k, ((layer, _), (g, [_, h, w]))) in
                weights.style_layers.iter().zip(&reads.grams).enumerate()
            {
                if let (StyleLoss::W2, Some(sums)) = (weights.style_loss, reads.sums.get(k)) {
                    moments.add(k, sums, g, h * w, blend / total)?;
                }
                let g = g.clone() * (scaled / total);
                match grams.get_mut(k) {
                    Some((_, acc)) => *acc = acc.clone() + g,
                    None => grams.push((*layer, g)),
                }
            }
        }
        Ok(Targets {
            content_layer: weights.content_layer,
            content: content_act,
            grams,
            w2: moments.targets()?,
            regions: Vec::new(),
            id: next_targets_id(),
        })
    }

    /// The same targets with guided Grams for `regions`.
    pub fn with_regions(self, regions: Vec<RegionTarget>) -> Targets {
        Targets {
            regions,
            id: next_targets_id(),
            ..self
        }
    }

    /// The same style targets with another content layer and its activation.
    pub fn with_content(self, layer: Layer, content: Tensor<4>) -> Targets {
        Targets {
            content_layer: layer,
            content,
            grams: self.grams,
            w2: self.w2,
            regions: self.regions,
            id: next_targets_id(),
        }
    }

    pub fn id(&self) -> u64 {
        self.id
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
            w2: self.w2.clone(),
            regions: self.regions.iter().map(|r| r.to_device(device)).collect(),
            id: next_targets_id(),
        }
    }
}

/// The style images' per-position means and second moments per layer, summed over a
/// blend with its weights (the moments of the mixture), for the W2 targets.
#[derive(Default)]
struct Moments {
    layers: Vec<(Vec<f64>, Vec<f64>)>,
}

impl Moments {
    fn add(
        &mut self,
        k: usize,
        sums: &Tensor<1>,
        gram: &Tensor<2>,
        positions: usize,
        weight: f64,
    ) -> Result<()> {
        let c = sums.dims()[0];
        let n = positions as f64;
        let mean = host_f64(sums.clone().into_data())?;
        let second = host_f64(gram.clone().into_data())?;
        if self.layers.len() <= k {
            self.layers.push((vec![0.0; c], vec![0.0; c * c]));
        }
        let (m, s) = &mut self.layers[k];
        m.iter_mut()
            .zip(&mean)
            .for_each(|(a, b)| *a += weight * b / n);
        s.iter_mut()
            .zip(&second)
            .for_each(|(a, b)| *a += weight * b / n);
        Ok(())
    }

    fn targets(&self) -> Result<Vec<W2Target>> {
        self.layers
            .iter()
            .map(|(mean, second)| W2Target::new(mean, second))
            .collect()
    }
}

fn host_f64(data: TensorData) -> Result<Vec<f64>> {
    data.try_into_vec_as::<f64>()
        .map_err(|e| anyhow::anyhow!("cannot read a tensor back: {e:?}"))
}

fn host_f32(t: Tensor<2>) -> Result<Vec<f32>> {
    t.inner()
        .into_data()
        .try_into_vec_as::<f32>()
        .map_err(|e| anyhow::anyhow!("cannot read a tensor back: {e:?}"))
}

/// The cost of one image as tensors (still on the autodiff tape when `x` is).
pub struct CostTerms {
    pub total: Tensor<1>,
    pub content: Tensor<1>,
    /// Unweighted `J_style[l]` per style layer.
    pub style: Vec<Tensor<1>>,
    pub tv: Tensor<1>,
    /// With regions, each region's `sum_l lambda_l J_r[l]`.
    pub regions: Vec<Tensor<1>>,
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
    /// With regions, each region's style cost `sum_l lambda_l J_r[l]`, before its
    /// weight (0 for a region without a style); empty without.
    pub regions: Vec<f64>,
}

impl Costs {
    pub fn is_finite(&self) -> bool {
        self.total.is_finite() && self.content.is_finite() && self.style.is_finite()
    }
}

/// Evaluates the cost of `x` from its features `taps` (as deep as `weights.deepest()`).
/// `targets` must match `weights` (same content layer).
pub fn cost_terms(
    taps: &[Tensor<4>],
    x: Tensor<4>,
    targets: &Targets,
    weights: &CostWeights,
) -> Result<CostTerms> {
    // With regions the cost reads the guided Grams of the regions with a style only.
    let style = if targets.regions.is_empty() {
        StyleReads::of_taps(taps, weights, 0)
    } else {
        StyleReads {
            grams: Vec::new(),
            sums: Vec::new(),
            pixels: 0,
        }
    };
    let regions = targets
        .regions
        .iter()
        .map(|r| match r.grams {
            Some(_) => weights
                .style_layers
                .iter()
                .zip(&r.masks)
                .map(|((l, _), m)| regions::guided_gram(taps[l.0].clone(), &m.tensor))
                .collect(),
            None => Vec::new(),
        })
        .collect();
    let reads = Reads {
        content: taps[weights.content_layer.0].clone(),
        grams: style.grams,
        sums: style.sums,
        regions,
    };
    terms_from_reads(reads, x, targets, weights)
}

/// What the cost reads from the network for one image: the content layer's activation
/// and, per style layer, its Gram with the activation's size `[C, H, W]` and, for
/// `style_loss: w2`, its row sums `A 1` (`[C]`).
pub struct Reads {
    pub content: Tensor<4>,
    pub grams: Vec<(Tensor<2>, [usize; 3])>,
    pub sums: Vec<Tensor<1>>,
    /// With regions, each region's guided Gram per style layer.
    pub regions: Vec<Vec<Tensor<2>>>,
}

/// A style image's (or an output's) Gram with its activation's size `[C, H, W]` and,
/// for `style_loss: w2`, its row sums, per style layer; and the image's pixel count.
pub struct StyleReads {
    pub grams: Vec<(Tensor<2>, [usize; 3])>,
    pub sums: Vec<Tensor<1>>,
    pub pixels: usize,
}

impl StyleReads {
    /// Read from the features of an image of `pixels` pixels.
    pub fn of_taps(taps: &[Tensor<4>], weights: &CostWeights, pixels: usize) -> StyleReads {
        let mut grams = Vec::new();
        let mut sums = Vec::new();
        for (l, _) in &weights.style_layers {
            let [_, c, h, w] = taps[l.0].dims();
            grams.push((gram(taps[l.0].clone()), [c, h, w]));
            if weights.style_loss == StyleLoss::W2 {
                sums.push(
                    taps[l.0]
                        .clone()
                        .reshape([c, h * w])
                        .sum_dim(1)
                        .reshape([c]),
                );
            }
        }
        StyleReads {
            grams,
            sums,
            pixels,
        }
    }
}

/// The cost from what it reads; `x` is used only for total variation.
pub fn terms_from_reads(
    reads: Reads,
    x: Tensor<4>,
    targets: &Targets,
    weights: &CostWeights,
) -> Result<CostTerms> {
    let content = content_cost(targets.content.clone(), reads.content);
    let (style, regions) = if targets.regions.is_empty() {
        (
            style_terms(reads.grams, reads.sums, targets, weights)?,
            Vec::new(),
        )
    } else {
        region_terms(reads.regions, targets, weights)
    };
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
    Ok(CostTerms {
        total,
        content,
        style,
        tv,
        regions,
    })
}

/// The style costs with regions from guided Grams read elsewhere (the CUDA card), on a
/// tape on `device`: the same [`region_terms`] as the CPU paths'.
pub struct GuidedAdjoints {
    /// `J_style[l]` per style layer.
    pub style: Vec<f64>,
    /// Each region's `sum_l lambda_l J_r[l]`.
    pub regions: Vec<f64>,
    /// `[region][layer]`: the gradient of `beta sum_l lambda_l J_style[l]` with respect
    /// to each guided Gram (`[C][C]`), for the regions with a style (else empty).
    pub d_grams: Vec<Vec<Vec<f32>>>,
}

/// [`GuidedAdjoints`] from the guided Grams `grams[r][l]` (`[C][C]` row-major; empty
/// for a region without a style).
pub fn guided_adjoints(
    grams: &[Vec<Vec<f32>>],
    targets: &Targets,
    weights: &CostWeights,
    device: &burn::tensor::Device,
) -> Result<GuidedAdjoints> {
    let leaves: Vec<Vec<Tensor<2>>> = grams
        .iter()
        .map(|layers| {
            layers
                .iter()
                .map(|g| {
                    let c = (g.len() as f64).sqrt() as usize;
                    let t = Tensor::<2>::from_data(TensorData::new(g.clone(), [c, c]), device);
                    t.autodiff().require_grad()
                })
                .collect()
        })
        .collect();
    let (style, regions) = region_terms(leaves.clone(), targets, weights);
    let mut total: Option<Tensor<1>> = None;
    for ((_, lambda), j) in weights.style_layers.iter().zip(&style) {
        let part = j.clone() * (lambda * weights.beta);
        total = Some(match total {
            Some(acc) => acc + part,
            None => part,
        });
    }
    let total = total.ok_or_else(|| anyhow::anyhow!("regions without style layers"))?;
    let values = |v: &[Tensor<1>]| -> Result<Vec<f64>> {
        v.iter()
            .map(|t| {
                let data = t.clone().inner().into_data().convert::<f64>();
                let v = data.try_to_vec::<f64>();
                v.map_err(|e| anyhow::anyhow!("reading a cost back: {e:?}"))
                    .map(|v| v.first().copied().unwrap_or(0.0))
            })
            .collect()
    };
    let (style_values, region_values) = (values(&style)?, values(&regions)?);
    let grads = total.backward();
    let d_grams = leaves
        .iter()
        .map(|layers| {
            layers
                .iter()
                .map(|g| match g.grad(&grads) {
                    Some(d) => host_f32(d),
                    None => Ok(vec![0.0; g.dims()[0] * g.dims()[1]]),
                })
                .collect::<Result<Vec<_>>>()
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(GuidedAdjoints {
        style: style_values,
        regions: region_values,
        d_grams,
    })
}

/// With regions: each style layer's `J_style[l] = sum_r w_r J_r[l]`, and each region's
/// `sum_l lambda_l J_r[l]` ([`regions`]), from the guided Grams `grams[r][l]`.
fn region_terms(
    grams: Vec<Vec<Tensor<2>>>,
    targets: &Targets,
    weights: &CostWeights,
) -> (Vec<Tensor<1>>, Vec<Tensor<1>>) {
    let mut layers: Vec<Option<Tensor<1>>> = vec![None; weights.style_layers.len()];
    let mut per_region = Vec::new();
    for (r, (target, guided)) in targets.regions.iter().zip(grams).enumerate() {
        let w_r = weights.region_weights.get(r).copied().unwrap_or(0.0);
        let mut region: Option<Tensor<1>> = None;
        let Some(style) = &target.grams else {
            per_region.push(None);
            continue;
        };
        for (k, ((g, t), m)) in guided.into_iter().zip(style).zip(&target.masks).enumerate() {
            let c = g.dims()[0];
            let j = regions::guided_cost(t.clone(), g, c, m.mass);
            let lambda = weights.style_layers[k].1;
            region = Some(match region {
                Some(acc) => acc + j.clone() * lambda,
                None => j.clone() * lambda,
            });
            let part = j * w_r;
            layers[k] = Some(match layers[k].take() {
                Some(acc) => acc + part,
                None => part,
            });
        }
        per_region.push(region);
    }
    let zero = || {
        let device = targets.content.device();
        let z = Tensor::<1>::zeros([1], &device);
        if device.supports_dtype(burn::tensor::DType::F64) {
            z.cast(FloatDType::F64)
        } else {
            z
        }
    };
    (
        layers.into_iter().map(|l| l.unwrap_or_else(zero)).collect(),
        per_region
            .into_iter()
            .map(|r| r.unwrap_or_else(zero))
            .collect(),
    )
}

/// Each style layer's unweighted `J_style[l]` from the output's Grams (and, for W2, row
/// sums), on the tape where they are.
pub fn style_terms(
    grams: Vec<(Tensor<2>, [usize; 3])>,
    sums: Vec<Tensor<1>>,
    targets: &Targets,
    weights: &CostWeights,
) -> Result<Vec<Tensor<1>>> {
    Ok(match weights.style_loss {
        StyleLoss::Gram => targets
            .grams
            .iter()
            .zip(grams)
            .map(|((_, g_s), (g, dims))| style_cost_of_gram(g_s.clone(), g, dims))
            .collect(),
        StyleLoss::W2 => w2_terms(&targets.w2, grams, sums)?,
    })
}

/// The W2 cost of each style layer as a tensor whose value is the cost (computed on the
/// host, the layers in parallel) and whose gradient with respect to the Gram `g` and the
/// row sums `s` is the cost's: `<dG, g> + <ds, s>` with `dG`, `ds` held constant,
/// shifted to the cost's value.
fn w2_terms(
    targets: &[W2Target],
    grams: Vec<(Tensor<2>, [usize; 3])>,
    sums: Vec<Tensor<1>>,
) -> Result<Vec<Tensor<1>>> {
    use rayon::prelude::*;
    let mut host = Vec::new();
    for ((g, [c, h, w]), s) in grams.iter().zip(&sums) {
        host.push((
            host_f32(g.clone())?,
            host_f32(s.clone().reshape([1, *c]))?,
            h * w,
        ));
    }
    let costs: Vec<w2::W2Cost> = targets
        .par_iter()
        .zip(host.par_iter())
        .map(|(t, (gram, sums, n))| t.cost(gram, sums, *n).context("style_loss w2"))
        .collect::<Result<_>>()?;
    let mut terms = Vec::new();
    for (((g, [c, _, _]), s), cost) in grams.into_iter().zip(sums).zip(costs) {
        let device = g.device();
        let dg = Tensor::<2>::from_data(TensorData::new(cost.d_gram, [c, c]), &device);
        let ds = Tensor::<1>::from_data(TensorData::new(cost.d_sums, [c]), &device);
        let surrogate = (g * dg).sum() + (s * ds).sum();
        // In the dtype the other costs are summed in (float64 where the device has it).
        let surrogate = if device.supports_dtype(burn::tensor::DType::F64) {
            surrogate.cast(FloatDType::F64)
        } else {
            surrogate
        };
        terms.push(surrogate.clone() - surrogate.detach() + cost.value);
    }
    Ok(terms)
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
        parts.extend(self.regions.iter().map(|t| t.clone().inner()));
        let all = Tensor::cat(parts, 0).into_data().convert::<f64>();
        let v: Vec<f64> = all.try_to_vec::<f64>().unwrap_or_default();
        let n = self.style.len();
        let mut costs = Costs::from_parts(weights, v[1], &v[3..3 + n], v[2]);
        costs.regions = v[3 + n..].to_vec();
        // The total as the tape summed it, which the gradient is the gradient of.
        costs.total = v[0];
        costs
    }
}

impl Costs {
    /// The costs from their unweighted parts: `J_content`, `J_style[l]` per style layer
    /// (in the order of `weights.style_layers`) and TV.
    pub fn from_parts(weights: &CostWeights, content: f64, style: &[f64], tv: f64) -> Costs {
        let style_layers: Vec<(Layer, f64)> = weights
            .style_layers
            .iter()
            .zip(style)
            .map(|((l, _), j)| (*l, *j))
            .collect();
        let style: f64 = weights
            .style_layers
            .iter()
            .zip(style)
            .map(|((_, lambda), j)| lambda * j)
            .sum();
        Costs {
            total: weights.alpha * content + weights.beta * style + weights.tv_weight * tv,
            content,
            style,
            style_layers,
            tv,
            regions: Vec::new(),
        }
    }
}
