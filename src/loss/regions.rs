//! Spatial control by region (Gatys et al. 2017, "Controlling Perceptual Factors in
//! Neural Style Transfer"): a mask over the content gives each region its own style, or
//! none. docs/design.md §6.
//!
//! Guided Grams: at each style layer the region's mask `m` is the image's mask averaged
//! down as the network pools (so it is fractional along the region's edge), and the
//! region's Gram is that of the masked activation, `G_r = (A ⊙ m)(A ⊙ m)^T`, a sum over
//! the region's positions weighted by `m^2` (its *mass*, `n_r = sum m^2`). The style's
//! Gram, a sum over its `N_s` positions, is brought to the region's mass,
//! `T_r = G_s n_r / N_s`, and the region's cost at the layer is
//! `J_r[l] = sum((T_r - G_r)^2) / (4 C^2 n_r^2)`: the paper's cost between mean Grams,
//! which for one region over the whole image is the unguided cost. A layer's style cost
//! is `J_style[l] = sum_r w_r J_r[l]`, `w_r` the region's weight; a region without a
//! style adds nothing, and its pixels change through the content cost alone where no
//! styled region's positions reach them.

use super::sum_squares;
use crate::vgg::cpu::pool;
use crate::vgg::{BLOCK_ENDS, Layer, Pooling};
use burn::tensor::{Device, Tensor, TensorData};

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

/// The mask `mask` (`[H][W]`, 0 or 1) averaged down to each of `layers`, as the network
/// pools (odd sizes round down).
pub fn layer_masks(
    mask: &[f32],
    (h, w): (usize, usize),
    layers: &[Layer],
    device: &Device,
) -> Vec<LayerMask> {
    let deepest = layers.iter().copied().max().unwrap_or(Layer(0));
    let (mut m, mut hh, mut ww) = (mask.to_vec(), h, w);
    let mut out = Vec::new();
    for i in 0..=deepest.0 {
        if i > 0 && BLOCK_ENDS.contains(&(i - 1)) {
            m = pool(&m, 1, hh, ww, Pooling::Avg);
            (hh, ww) = (hh / 2, ww / 2);
        }
        if layers.contains(&Layer(i)) {
            let mass = m.iter().map(|&v| (v as f64) * (v as f64)).sum();
            let tensor = Tensor::from_data(TensorData::new(m.clone(), [1, 1, hh, ww]), device);
            out.push(LayerMask {
                host: m.clone(),
                tensor,
                mass,
            });
        }
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
