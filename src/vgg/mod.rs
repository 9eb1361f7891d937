//! VGG-19's sixteen 3x3 convolutions, with taps by layer name.
//!
//! `conv{block}_{n}` is the output of that convolution *after* its ReLU (other tools call
//! it `relu{block}_{n}`). Between blocks sits a 2x2 stride-2 pooling, average by default
//! (Gatys et al. suggest it) or max; odd sizes round down, as in PyTorch. The network
//! runs only as deep as the deepest layer asked for.

pub mod buffers;
pub mod cpu;
pub mod matmul;
pub mod padding;
pub mod winograd;

use anyhow::{Result, bail};
use burn::tensor::module::{avg_pool2d, conv2d, max_pool2d};
use burn::tensor::ops::{AvgPoolOptions, ConvOptions, MaxPoolOptions, PadMode};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::fmt;

/// The sixteen layer names in network order.
pub const LAYER_NAMES: [&str; 16] = [
    "conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3", "conv3_4",
    "conv4_1", "conv4_2", "conv4_3", "conv4_4", "conv5_1", "conv5_2", "conv5_3", "conv5_4",
];

/// Output channels of each layer.
pub const CHANNELS: [usize; 16] = [
    64, 64, 128, 128, 256, 256, 256, 256, 512, 512, 512, 512, 512, 512, 512, 512,
];

/// Convolutions per block.
pub const BLOCK_SIZES: [usize; 5] = [2, 2, 4, 4, 4];

/// The layers after which a block ends and the image is pooled.
pub const BLOCK_ENDS: [usize; 4] = [1, 3, 7, 11];

/// A layer of the network, by index into [`LAYER_NAMES`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Layer(pub usize);

impl Layer {
    /// The content layer of the paper and the seed.
    pub const CONV4_2: Layer = Layer(9);
    /// The deepest of the seed's style layers.
    pub const CONV5_1: Layer = Layer(12);

    pub fn parse(name: &str) -> Option<Layer> {
        LAYER_NAMES.iter().position(|n| *n == name).map(Layer)
    }
    pub fn name(self) -> &'static str {
        LAYER_NAMES[self.0]
    }
    pub fn channels(self) -> usize {
        CHANNELS[self.0]
    }
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The pooling between blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    #[default]
    Avg,
    Max,
}

/// What the first convolution sees beyond the image's edge. The paper's network (and
/// the seed) pads every convolution with zeros, which makes the border a feature of its
/// own: the optimiser darkens or saturates the outer pixels to match it. `Replicate`
/// repeats the edge pixel for conv1_1 only, as crowsonkb's style-transfer-pytorch does;
/// the deeper layers keep zero padding (their inputs are ReLU outputs, where zero is
/// "no feature"). docs/design.md §1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Padding {
    #[default]
    Zero,
    Replicate,
}

/// One convolution: weight `[out, in, 3, 3]`, bias `[out]`.
#[derive(Debug, Clone)]
pub struct Conv {
    pub weight: Tensor<4>,
    pub bias: Tensor<1>,
}

/// The network's weights as burn tensors, with the pooling between blocks. The tensors
/// live on a plain (non-autodiff) device: they are constants, so the backward pass
/// computes no weight gradients. Which kernels run them is the network seam's choice
/// (`crate::network`); this type only runs burn's own.
#[derive(Debug, Clone)]
pub struct Vgg19 {
    pub convs: Vec<Conv>,
    /// Per-channel affine map from our pixel space to the input the weights were trained
    /// on: `scale * x + shift`, shape `[1, 3, 1, 1]`. Identity for the Caffe/Keras weights.
    pub input_scale: Tensor<4>,
    pub input_shift: Tensor<4>,
    pub pooling: Pooling,
    pub padding: Padding,
}

/// The weights as plain floats, for the compute paths that run outside burn.
pub struct HostWeights {
    /// Per layer: weight `[K][C][3][3]` and bias `[K]`.
    pub convs: Vec<(Vec<f32>, Vec<f32>)>,
    pub input_scale: [f32; 3],
    pub input_shift: [f32; 3],
}

fn host_floats<const D: usize>(t: &Tensor<D>) -> Result<Vec<f32>> {
    t.clone()
        .reshape([-1])
        .to_data()
        .try_into_vec_as::<f32>()
        .map_err(|e| anyhow::anyhow!("reading the network's weights: {e:?}"))
}

impl Vgg19 {
    /// Checks the shapes of sixteen convolutions against VGG-19's.
    pub fn new(convs: Vec<Conv>, input_scale: Tensor<4>, input_shift: Tensor<4>) -> Result<Self> {
        if convs.len() != 16 {
            bail!(
                "VGG-19 has 16 convolution layers, the weights hold {}",
                convs.len()
            );
        }
        let mut cin = 3;
        for (i, conv) in convs.iter().enumerate() {
            let want = [CHANNELS[i], cin, 3, 3];
            if conv.weight.dims() != want || conv.bias.dims() != [CHANNELS[i]] {
                bail!(
                    "layer {} has weight shape {:?} and bias shape {:?}, VGG-19 needs {:?} and [{}]: these are not VGG-19 weights",
                    LAYER_NAMES[i],
                    conv.weight.dims(),
                    conv.bias.dims(),
                    want,
                    CHANNELS[i]
                );
            }
            cin = CHANNELS[i];
        }
        Ok(Vgg19 {
            convs,
            input_scale,
            input_shift,
            pooling: Pooling::Avg,
            padding: Padding::Zero,
        })
    }

    pub fn with_pooling(mut self, pooling: Pooling) -> Self {
        self.pooling = pooling;
        self
    }

    pub fn with_padding(mut self, padding: Padding) -> Self {
        self.padding = padding;
        self
    }

    pub fn device(&self) -> Device {
        self.input_scale.device()
    }

    /// The weights as plain floats.
    pub fn host_weights(&self) -> Result<HostWeights> {
        let three = |t: &Tensor<4>| -> Result<[f32; 3]> {
            host_floats(t)?
                .try_into()
                .map_err(|_| anyhow::anyhow!("the input normalisation is not per channel"))
        };
        Ok(HostWeights {
            convs: self
                .convs
                .iter()
                .map(|c| Ok((host_floats(&c.weight)?, host_floats(&c.bias)?)))
                .collect::<Result<_>>()?,
            input_scale: three(&self.input_scale)?,
            input_shift: three(&self.input_shift)?,
        })
    }

    /// Moves every tensor to `device`.
    pub fn to_device(&self, device: &Device) -> Self {
        Vgg19 {
            convs: self
                .convs
                .iter()
                .map(|c| Conv {
                    weight: c.weight.clone().to_device(device),
                    bias: c.bias.clone().to_device(device),
                })
                .collect(),
            input_scale: self.input_scale.clone().to_device(device),
            input_shift: self.input_shift.clone().to_device(device),
            pooling: self.pooling,
            padding: self.padding,
        }
    }

    /// Runs the network on `x` with burn's own convolutions (`[N, 3, H, W]`, pixel space) up to and including
    /// `deepest`, and returns every layer's activation from `conv1_1` to `deepest`.
    pub fn forward(&self, x: Tensor<4>, deepest: Layer) -> Vec<Tensor<4>> {
        let mut h = x * self.input_scale.clone() + self.input_shift.clone();
        let mut taps = Vec::with_capacity(deepest.0 + 1);
        let padded = ConvOptions::new([1, 1], [1, 1], [1, 1], 1);
        for i in 0..=deepest.0 {
            let conv = &self.convs[i];
            let mut options = padded.clone();
            if i == 0 && self.padding == Padding::Replicate {
                // The edge repeated by hand, then a convolution without padding.
                h = h.pad([(1, 1), (1, 1)], PadMode::Edge);
                options = ConvOptions::new([1, 1], [0, 0], [1, 1], 1);
            }
            h = conv2d(h, conv.weight.clone(), Some(conv.bias.clone()), options);
            h = burn::tensor::activation::relu(h);
            taps.push(h.clone());
            if BLOCK_ENDS.contains(&i) && i < deepest.0 {
                h = self.pool(h);
            }
        }
        taps
    }

    fn pool(&self, h: Tensor<4>) -> Tensor<4> {
        match self.pooling {
            Pooling::Avg => avg_pool2d(h, AvgPoolOptions::new([2, 2]).with_stride([2, 2])),
            Pooling::Max => max_pool2d(h, MaxPoolOptions::new([2, 2]).with_stride([2, 2])),
        }
    }
}
