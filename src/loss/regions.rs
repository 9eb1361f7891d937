//! Spatial control by region (Gatys et al. 2017, "Controlling Perceptual Factors in
//! Neural Style Transfer"): a mask over the content gives each region its own style, or
//! none. docs/design.md §6.
//!
//! Guided Grams: at each style layer the region's mask `m` holds the positions whose
//! receptive field lies inside the region ([`layer_masks`]; the paper's "inside"
//! guidance), and the region's Gram is that of the masked activation, `G_r = (A ⊙ m)(A ⊙ m)^T`, a sum over
//! the region's positions weighted by `m^2` (its *mass*, `n_r = sum m^2`). The style's
//! Gram, a sum over its `N_s` positions, is brought to the region's mass,
//! `T_r = G_s n_r / N_s`, and the region's cost at the layer is
//! `J_r[l] = sum((T_r - G_r)^2) / (4 C^2 n_r^2)`: the paper's cost between mean Grams,
//! which for one region over the whole image is the unguided cost. A layer's style cost
//! is `J_style[l] = sum_r w_r J_r[l]`, `w_r` the region's weight; a region without a
//! style adds nothing, and as no styled position reaches into it, its pixels change
//! through the content cost alone. (Masks averaged down as the network pools let the
//! edge positions of the styled regions push the pixels inside their neighbours': the
//! demo's face grew a ring of rainbow colours.)

use super::sum_squares;
use crate::network::tiles::{reach, scale};
use crate::vgg::Layer;
use burn::tensor::{Device, Tensor, TensorData};

/// A region of a run's mask at one scale: its mask (`[H][W]`, 1 inside, 0 outside) and
/// the index of its style among the run's style images (`None`: no style).
pub type RegionMask = (Vec<f32>, Option<usize>);

/// A region's mask at one style layer: the host floats (for the CPU's kernels) and the
/// same as a `[1, 1, h, w]` tensor (for burn's), with its mass `sum m^2`.
#[derive(Debug, Clone)]
pub struct LayerMask {
    pub host: Vec<f32>,
    pub tensor: Tensor<4>,
    pub mass: f64,
}

/// One region of a run's mask: its mask at each style layer and, for a region with a
/// style, that style's Gram at each layer brought to the region's mass.
#[derive(Debug, Clone)]
pub struct RegionTarget {
    pub masks: Vec<LayerMask>,
    pub grams: Option<Vec<Tensor<2>>>,
}

/// `mask` (`[H][W]`, 0 or 1) at each of `layers`: a position is in the region where
/// every pixel that reaches it is (the mask eroded by the layer's reach, then the
/// smallest value over the position's cell); pixels beyond the image's edge count as
/// inside. Positions whose receptive field crosses into another region are left out,
/// so a region's style cost never reaches a pixel outside it.
pub fn layer_masks(
    mask: &[f32],
    (h, w): (usize, usize),
    layers: &[Layer],
    device: &Device,
) -> Vec<LayerMask> {
    layers
        .iter()
        .map(|&l| {
            let (s, r) = (scale(l), reach(l));
            let eroded = min_filter(mask, (h, w), r);
            let (hh, ww) = (h / s, w / s);
            let mut m = vec![0f32; hh * ww];
            for (q, v) in m.iter_mut().enumerate() {
                let (y, x) = (q / ww.max(1), q % ww.max(1));
                *v = (y * s..(y + 1) * s)
                    .flat_map(|yy| eroded[yy * w + x * s..yy * w + (x + 1) * s].iter().copied())
                    .fold(1.0, f32::min);
            }
            let mass = m.iter().map(|&v| (v as f64) * (v as f64)).sum();
            let tensor = Tensor::from_data(TensorData::new(m.clone(), [1, 1, hh, ww]), device);
            LayerMask {
                host: m,
                tensor,
                mass,
            }
        })
        .collect()
}

/// The smallest value within `r` pixels (a square window, cut at the image's edge), by
/// rows then columns.
fn min_filter(x: &[f32], (h, w): (usize, usize), r: usize) -> Vec<f32> {
    let along = |v: &[f32], out: &mut [f32], n: usize, stride: usize| {
        for i in 0..n {
            let (a, b) = (i.saturating_sub(r), (i + r + 1).min(n));
            out[i * stride] = (a..b).map(|j| v[j * stride]).fold(1.0, f32::min);
        }
    };
    let mut rows = vec![0f32; h * w];
    for y in 0..h {
        along(&x[y * w..(y + 1) * w], &mut rows[y * w..(y + 1) * w], w, 1);
    }
    let mut out = vec![0f32; h * w];
    for x0 in 0..w {
        along(&rows[x0..], &mut out[x0..], h, w);
    }
    out
}

impl RegionTarget {
    /// The region of `mask` (`[H][W]`) with the style whose Grams (with their sizes
    /// `[C, H_s, W_s]`) are `style`, or without a style.
    pub fn new(
        mask: &[f32],
        size: (usize, usize),
        layers: &[Layer],
        style: Option<&[(Tensor<2>, [usize; 3])]>,
        device: &Device,
    ) -> RegionTarget {
        let masks = layer_masks(mask, size, layers, device);
        let grams = style.map(|grams| {
            grams
                .iter()
                .zip(&masks)
                .map(|((g, [_, hs, ws]), m)| g.clone() * (m.mass / (hs * ws).max(1) as f64))
                .collect()
        });
        RegionTarget { masks, grams }
    }

    pub fn to_device(&self, device: &Device) -> RegionTarget {
        RegionTarget {
            masks: self
                .masks
                .iter()
                .map(|m| LayerMask {
                    host: m.host.clone(),
                    tensor: m.tensor.clone().to_device(device),
                    mass: m.mass,
                })
                .collect(),
            grams: self
                .grams
                .as_ref()
                .map(|g| g.iter().map(|t| t.clone().to_device(device)).collect()),
        }
    }
}

/// `J_r[l]` of a guided Gram `g` against the region's target `t`, for `c` channels and
/// the region's mass at the layer (0 where the region has no positions there).
pub fn guided_cost(t: Tensor<2>, g: Tensor<2>, c: usize, mass: f64) -> Tensor<1> {
    if mass <= 0.0 {
        return sum_squares(g) * 0.0;
    }
    // Scaled before squaring, as the unguided cost is (float32 range).
    sum_squares((t - g) / (2.0 * c as f64 * mass))
}

/// The Gram of `a` (`[1, C, H, W]`) masked by `m` (`[1, 1, H, W]`), on the tape where
/// `a` is.
pub fn guided_gram(a: Tensor<4>, m: &Tensor<4>) -> Tensor<2> {
    super::gram(a * m.clone())
}
