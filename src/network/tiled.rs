//! The CPU's Winograd path over tiles, for images whose activations do not fit in memory
//! at once; the objective and its gradient are the untiled ones (docs/design.md, "Tiles").
//!
//! - **Reads pass** (halo `r`): per tile, the Grams (and row sums) over the interior's
//!   positions of each style layer are added up, which gives the global Grams, as a Gram
//!   is a sum over positions; the content cost's part over the interior is added too.
//! - **On the tape**: the style costs from the global Grams give their gradients `dG`;
//!   total variation is taken on the whole image (it reads neighbouring pixels only).
//! - **Gradient pass** (halo `2 r`): per tile, the gradient at each tap is local given
//!   `dG` (`(dG + dG^T) A` at each position, the content's `F - P`), so the backward
//!   pass of the tile gives the exact image gradient over its interior.
//!
//! Geometry in [`super::tiles`].

use super::floats;
use super::tiles::{Rect, TilePlan, scale};
use crate::loss::{CostWeights, Costs, StyleLoss, StyleReads, Targets, content_cost_part};
use crate::vgg::cpu::{Activation, Activations, CpuVgg};
use crate::vgg::{Layer, Pooling};
use anyhow::Result;
use burn::tensor::{Device, Tensor, TensorData};
use std::sync::Arc;

/// The gradient of the style costs with respect to one layer's Gram and row sums.
struct StyleGradient {
    gram: Option<Vec<f32>>,
    sums: Option<Vec<f32>>,
}

/// Which pass a tiled evaluation is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// The forward pass for the Grams and the content cost (or a target's reads).
    Reads,
    /// The forward and backward pass for the gradient.
    Gradient,
}

/// How far a tiled evaluation is: `done` of `total` tiles of `pass`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TileProgress {
    pub pass: Pass,
    pub done: usize,
    pub total: usize,
}

impl TileProgress {
    /// How much of an evaluation this is, counting a gradient tile (forward and back
    /// over a larger crop) as three reads tiles.
    pub fn fraction(&self) -> f64 {
        let units = match self.pass {
            Pass::Reads => self.done,
            Pass::Gradient => self.total + 3 * self.done,
        };
        units as f64 / (4 * self.total.max(1)) as f64
    }

    /// E.g. `tiles: gradient 12/48`.
    pub fn label(&self) -> String {
        let pass = match self.pass {
            Pass::Reads => "reads",
            Pass::Gradient => "gradient",
        };
        format!("tiles: {pass} {}/{}", self.done, self.total)
    }
}

/// Where tile progress goes (the engine turns it into events).
pub type ProgressSink = Arc<dyn Fn(TileProgress) + Send + Sync>;

/// The Winograd kernels with a tile plan.
pub struct Tiled<'a> {
    pub cpu: &'a CpuVgg,
    pub pooling: Pooling,
    pub plan: TilePlan,
    pub progress: Option<&'a ProgressSink>,
}

/// The image's top left corner, which rectangles in image coordinates are relative to.
const ORIGIN: Rect = Rect {
    y0: 0,
    y1: 0,
    x0: 0,
    x1: 0,
};

/// Sums of a style layer's Gram and row sums over the tiles, in float64.
struct LayerSums {
    gram: Vec<f64>,
    sums: Vec<f64>,
    dims: [usize; 3],
}

/// What the reads pass gives: per style layer its sums, and the content layer's
/// activation (assembled over the whole image) or its cost against a target.
struct ReadsOut {
    style: Vec<LayerSums>,
    content: Option<Vec<f32>>,
    content_cost: f64,
}

/// What the reads pass does at the content layer.
enum ContentRead<'t> {
    Skip,
    Assemble(Layer),
    CostAgainst(&'t Targets),
}

/// The window `rect` of an activation as an activation of its own.
fn window(a: &Activation, rect: &Rect) -> Activation {
    Activation {
        data: rect.copy_from(&a.data, a.channels, a.height, a.width),
        channels: a.channels,
        height: rect.height(),
        width: rect.width(),
    }
}

/// A one-element tensor's value.
fn scalar(t: Tensor<1>) -> Result<f64> {
    let v = floats_f64(t.into_data())?;
    v.first()
        .copied()
        .ok_or_else(|| anyhow::anyhow!("an empty cost"))
}

fn floats_f64(data: TensorData) -> Result<Vec<f64>> {
    data.convert::<f64>()
        .try_into_vec::<f64>()
        .map_err(|e| anyhow::anyhow!("reading a cost back: {e:?}"))
}

/// A window of a `[1, C, H, W]` tensor.
fn slice(t: &Tensor<4>, r: &Rect) -> Tensor<4> {
    let c = t.dims()[1];
    t.clone().slice([0..1, 0..c, r.y0..r.y1, r.x0..r.x1])
}

impl Tiled<'_> {
    fn report(&self, pass: Pass, done: usize) {
        if let Some(sink) = self.progress {
            sink(TileProgress {
                pass,
                done,
                total: self.plan.interiors.len(),
            });
        }
    }

    /// The layer `layer`'s size over the whole image.
    fn layer_dims(&self, layer: Layer) -> (usize, usize) {
        let s = scale(layer);
        (self.plan.height / s, self.plan.width / s)
    }

    /// Runs `visit` on every tile's activations (to `deepest`) with the crop it came from.
    fn each_tile(
        &self,
        pixels: &[f32],
        halo: usize,
        deepest: Layer,
        pass: Pass,
        mut visit: impl FnMut(&Rect, &Rect, &Activations) -> Result<()>,
    ) -> Result<()> {
        let (h, w) = (self.plan.height, self.plan.width);
        // The largest crops first, so that the smaller ones reuse their buffers instead
        // of adding a set of their own to the pool; the last pass's go first.
        crate::vgg::buffers::clear();
        let mut order: Vec<(&Rect, Rect)> = self
            .plan
            .interiors
            .iter()
            .map(|t| (t, self.plan.crop(t, halo)))
            .collect();
        order.sort_by_key(|(_, crop)| std::cmp::Reverse(crop.area()));
        // What the first (largest) tile needed, which every later one fits in.
        let mut working_set = None;
        for (i, (interior, crop)) in order.into_iter().enumerate() {
            let image = crop.copy_from(pixels, 3, h, w);
            let acts = self
                .cpu
                .forward(&image, crop.height(), crop.width(), deepest, self.pooling);
            let visited = visit(interior, &crop, &acts);
            acts.recycle();
            let bytes = *working_set.get_or_insert_with(crate::vgg::buffers::pooled_bytes);
            crate::vgg::buffers::trim_to(bytes);
            visited?;
            self.report(pass, i + 1);
        }
        Ok(())
    }

    /// The reads pass over `pixels` (`[3][H][W]`).
    fn reads(
        &self,
        pixels: &[f32],
        weights: &CostWeights,
        content: ContentRead,
        device: &Device,
    ) -> Result<ReadsOut> {
        let deepest = match content {
            ContentRead::Skip => weights.style_layers.iter().map(|(l, _)| *l).max(),
            ContentRead::Assemble(l) => Some(l),
            ContentRead::CostAgainst(_) => Some(weights.deepest()),
        }
        .unwrap_or(Layer(0));
        let mut style: Vec<LayerSums> = weights
            .style_layers
            .iter()
            .map(|(l, _)| {
                let (lh, lw) = self.layer_dims(*l);
                LayerSums {
                    gram: vec![0.0; l.channels() * l.channels()],
                    sums: vec![0.0; l.channels()],
                    dims: [l.channels(), lh, lw],
                }
            })
            .collect();
        let mut assembled = match content {
            ContentRead::Assemble(l) => {
                let (lh, lw) = self.layer_dims(l);
                Some(vec![0f32; l.channels() * lh * lw])
            }
            _ => None,
        };
        let mut content_cost = 0.0;
        let style_layers = if matches!(content, ContentRead::Assemble(_)) {
            &[][..]
        } else {
            &weights.style_layers[..]
        };
        self.each_tile(
            pixels,
            self.plan.reads_halo,
            deepest,
            Pass::Reads,
            |interior, crop, acts| {
                for ((l, _), acc) in style_layers.iter().zip(&mut style) {
                    let a = &acts.layers[l.0];
                    let part = window(a, &interior.at_scale(scale(*l), crop, a.height, a.width));
                    acc.gram
                        .iter_mut()
                        .zip(part.gram())
                        .for_each(|(s, v)| *s += v as f64);
                    if weights.style_loss == StyleLoss::W2 {
                        acc.sums
                            .iter_mut()
                            .zip(part.row_sums())
                            .for_each(|(s, v)| *s += v as f64);
                    }
                    crate::vgg::buffers::give(part.data);
                }
                match &content {
                    ContentRead::Skip => {}
                    ContentRead::Assemble(l) => {
                        let a = &acts.layers[l.0];
                        let inner = interior.at_scale(scale(*l), crop, a.height, a.width);
                        let (lh, lw) = self.layer_dims(*l);
                        let at = interior.at_scale(scale(*l), &ORIGIN, lh, lw);
                        if let Some(out) = assembled.as_mut() {
                            at.paste((out, lh, lw), (&a.data, a.height, a.width), &inner);
                        }
                    }
                    ContentRead::CostAgainst(targets) => {
                        let l = targets.content_layer;
                        let a = &acts.layers[l.0];
                        let inner = interior.at_scale(scale(l), crop, a.height, a.width);
                        let (lh, lw) = self.layer_dims(l);
                        let at = interior.at_scale(scale(l), &ORIGIN, lh, lw);
                        let part = window(a, &inner).into_tensor(device);
                        let cost = content_cost_part(
                            slice(&targets.content, &at),
                            part,
                            [l.channels(), lh, lw],
                        );
                        content_cost += scalar(cost)?;
                    }
                }
                Ok(())
            },
        )?;
        Ok(ReadsOut {
            style,
            content: assembled,
            content_cost,
        })
    }
}

impl LayerSums {
    /// As the untiled path reads them: the Gram with its size, and the row sums.
    fn into_reads(self, device: &Device) -> ((Tensor<2>, [usize; 3]), Tensor<1>) {
        let c = self.dims[0];
        let f32s = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<f32>>();
        let gram = Tensor::<2>::from_data(TensorData::new(f32s(self.gram), [c, c]), device);
        let sums = Tensor::<1>::from_data(TensorData::new(f32s(self.sums), [c]), device);
        ((gram, self.dims), sums)
    }
}

impl Tiled<'_> {
    /// The activation of `x` (`[1, 3, H, W]`, the plan's size) at `layer`.
    pub fn activation(&self, x: &Tensor<4>, layer: Layer) -> Result<Tensor<4>> {
        let (pixels, _, _) = super::image_floats(x)?;
        let device = x.device();
        let weights = CostWeights {
            alpha: 0.0,
            beta: 0.0,
            content_layer: layer,
            style_layers: Vec::new(),
            tv_weight: 0.0,
            style_loss: StyleLoss::Gram,
            region_weights: Vec::new(),
        };
        let out = self.reads(&pixels, &weights, ContentRead::Assemble(layer), &device)?;
        let (lh, lw) = self.layer_dims(layer);
        let data = out.content.unwrap_or_default();
        Ok(Tensor::from_data(
            TensorData::new(data, [1, layer.channels(), lh, lw]),
            &device,
        ))
    }

    /// A style image's Grams (and row sums) at the style layers, as the targets read them.
    pub fn style_reads(&self, x: &Tensor<4>, weights: &CostWeights) -> Result<StyleReads> {
        let (pixels, h, w) = super::image_floats(x)?;
        let device = x.device();
        let out = self.reads(&pixels, weights, ContentRead::Skip, &device)?;
        let mut reads = StyleReads {
            grams: Vec::new(),
            sums: Vec::new(),
            pixels: h * w,
        };
        for layer in out.style {
            let (gram, sums) = layer.into_reads(&device);
            reads.grams.push(gram);
            if weights.style_loss == StyleLoss::W2 {
                reads.sums.push(sums);
            }
        }
        Ok(reads)
    }

    /// The cost of `x` and the gradient of the total cost with respect to its pixels,
    /// equal to the untiled path's.
    pub fn evaluate(
        &self,
        x: &Tensor<4>,
        targets: &Targets,
        weights: &CostWeights,
    ) -> Result<(Costs, Tensor<4>)> {
        anyhow::ensure!(
            targets.content_layer == weights.content_layer,
            "the targets are for {} but the cost reads {}",
            targets.content_layer,
            weights.content_layer
        );
        let plain = x.clone().inner();
        let device = plain.device();
        let (pixels, h, w) = super::image_floats(&plain)?;
        let read = self.reads(&pixels, weights, ContentRead::CostAgainst(targets), &device)?;
        let (style, d_style) = self.style_gradients(read.style, targets, weights, &device)?;
        let mut gradient = vec![0f32; 3 * h * w];
        self.each_tile(
            &pixels,
            self.plan.gradient_halo,
            weights.deepest(),
            Pass::Gradient,
            |interior, crop, acts| {
                let taps = self.tap_gradients(acts, crop, &d_style, targets, weights, &device)?;
                let g = self.cpu.backward(acts, taps, self.pooling);
                let inner = interior.at_scale(1, crop, crop.height(), crop.width());
                interior.paste(
                    (&mut gradient, h, w),
                    (&g, crop.height(), crop.width()),
                    &inner,
                );
                crate::vgg::buffers::give(g);
                Ok(())
            },
        )?;
        let mut g = Tensor::<4>::from_data(TensorData::new(gradient, [1, 3, h, w]), &device);
        let tv = if weights.tv_weight > 0.0 {
            let xa = plain.autodiff().require_grad();
            let tv = crate::loss::tv_cost(xa.clone());
            let grads = (tv.clone() * weights.tv_weight).backward();
            if let Some(d) = xa.grad(&grads) {
                g = g + d;
            }
            scalar(tv.inner())?
        } else {
            0.0
        };
        let costs = Costs::from_parts(weights, read.content_cost, &style, tv);
        Ok((costs, g))
    }

    /// Each style layer's `J_style[l]` from the global Grams, and the gradient of
    /// `beta sum_l lambda_l J_style[l]` with respect to each Gram and row sum.
    fn style_gradients(
        &self,
        sums: Vec<LayerSums>,
        targets: &Targets,
        weights: &CostWeights,
        device: &Device,
    ) -> Result<(Vec<f64>, Vec<StyleGradient>)> {
        let leaf2 = |t: Tensor<2>| t.autodiff().require_grad();
        let mut grams = Vec::new();
        let mut row_sums = Vec::new();
        for layer in sums {
            let ((g, dims), s) = layer.into_reads(device);
            grams.push((leaf2(g), dims));
            if weights.style_loss == StyleLoss::W2 {
                row_sums.push(s.autodiff().require_grad());
            }
        }
        let terms = crate::loss::style_terms(grams.clone(), row_sums.clone(), targets, weights)?;
        let mut values = Vec::new();
        let mut total: Option<Tensor<1>> = None;
        for ((_, lambda), j) in weights.style_layers.iter().zip(&terms) {
            values.push(scalar(j.clone().inner())?);
            let part = j.clone() * (lambda * weights.beta);
            total = Some(match total {
                Some(t) => t + part,
                None => part,
            });
        }
        let Some(total) = total else {
            return Ok((values, Vec::new()));
        };
        let grads = total.backward();
        let mut d = Vec::new();
        for (k, (g, _)) in grams.iter().enumerate() {
            let dg = match g.grad(&grads) {
                Some(t) => Some(floats(t.into_data(), "a Gram's gradient")?),
                None => None,
            };
            let ds = match row_sums.get(k).and_then(|s| s.grad(&grads)) {
                Some(t) => Some(floats(t.into_data(), "a row sum's gradient")?),
                None => None,
            };
            d.push(StyleGradient { gram: dg, sums: ds });
        }
        Ok((values, d))
    }

    /// The gradient of the cost at each tap of a tile: the content cost's over the
    /// whole crop, and each style layer's from its global Gram's gradient.
    fn tap_gradients(
        &self,
        acts: &Activations,
        crop: &Rect,
        d_style: &[StyleGradient],
        targets: &Targets,
        weights: &CostWeights,
        device: &Device,
    ) -> Result<Vec<Option<Vec<f32>>>> {
        let mut taps: Vec<Option<Vec<f32>>> = vec![None; acts.layers.len()];
        let mut add = |layer: usize, g: Vec<f32>| super::add_tap(&mut taps, layer, g);
        let l = targets.content_layer;
        if weights.alpha > 0.0 {
            let a = &acts.layers[l.0];
            let (lh, lw) = self.layer_dims(l);
            let at = crop.at_scale(scale(l), &ORIGIN, lh, lw);
            let leaf = a.to_tensor(device).autodiff().require_grad();
            let part = content_cost_part(
                slice(&targets.content, &at),
                leaf.clone(),
                [l.channels(), lh, lw],
            );
            let grads = (part * weights.alpha).backward();
            if let Some(g) = leaf.grad(&grads) {
                add(l.0, floats(g.into_data(), "the content gradient")?);
            }
        }
        for ((layer, _), d) in weights.style_layers.iter().zip(d_style) {
            let a = &acts.layers[layer.0];
            if let Some(dg) = &d.gram {
                add(layer.0, a.gram_adjoint(dg));
            }
            if let Some(ds) = &d.sums {
                add(layer.0, a.row_sums_adjoint(ds));
            }
        }
        Ok(taps)
    }
}
