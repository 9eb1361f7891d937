//! VGG-19 on the CPU without burn's autodiff: Winograd convolutions forward and
//! backward, with ReLU and pooling done by hand.
//!
//! The image is the only thing that needs a gradient, so the backward pass is a chain of
//! input gradients: ReLU mask, the convolution with the turned kernel, pooling spread
//! back. That chain is written here once; the losses above the taps still use burn's
//! autodiff, which hands this pass the gradient at each tap.

use super::matmul::{View, matmul};
use super::winograd::{Epilogue, WinogradKernel, conv3x3};
use super::{BLOCK_ENDS, CHANNELS, HostWeights, Layer, Padding, Pooling, buffers, padding};
use rayon::prelude::*;
use std::sync::OnceLock;

/// One layer's kernels, made on first use: each holds four times the layer's weights,
/// so layers a run never reaches cost nothing.
struct CpuConv {
    weight: Vec<f32>,
    bias: Vec<f32>,
    c: usize,
    k: usize,
    forward: OnceLock<WinogradKernel>,
    input_gradient: OnceLock<WinogradKernel>,
}

impl CpuConv {
    fn forward(&self) -> &WinogradKernel {
        self.forward
            .get_or_init(|| WinogradKernel::new(&self.weight, self.k, self.c))
    }
    fn input_gradient(&self) -> &WinogradKernel {
        self.input_gradient
            .get_or_init(|| WinogradKernel::input_gradient(&self.weight, self.k, self.c))
    }
}

/// The network's weights as plain floats.
pub struct CpuVgg {
    convs: Vec<CpuConv>,
    input_scale: [f32; 3],
    input_shift: [f32; 3],
    padding: Padding,
}

/// Every layer's output after its ReLU, `[C][H][W]`, with its size.
pub struct Activations {
    pub layers: Vec<Activation>,
    /// Size of the input image.
    pub height: usize,
    pub width: usize,
}

pub struct Activation {
    pub data: Vec<f32>,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl std::fmt::Debug for CpuVgg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CpuVgg")
    }
}

impl CpuVgg {
    pub fn new(weights: &HostWeights, padding: Padding) -> Self {
        let mut convs = Vec::with_capacity(16);
        let mut c = 3;
        for (i, (weight, bias)) in weights.convs.iter().enumerate() {
            let k = CHANNELS[i];
            convs.push(CpuConv {
                weight: weight.clone(),
                bias: bias.clone(),
                c,
                k,
                forward: OnceLock::new(),
                input_gradient: OnceLock::new(),
            });
            c = k;
        }
        CpuVgg {
            convs,
            input_scale: weights.input_scale,
            input_shift: weights.input_shift,
            padding,
        }
    }

    /// Layer `i`'s forward kernel, its input-gradient kernel and its bias (for profiling).
    pub fn layer(&self, i: Layer) -> (&WinogradKernel, &WinogradKernel, &[f32]) {
        let conv = &self.convs[i.0];
        (conv.forward(), conv.input_gradient(), &conv.bias)
    }

    /// Runs the network on a pixel-space image `[3][H][W]` up to `deepest`.
    pub fn forward(
        &self,
        image: &[f32],
        height: usize,
        width: usize,
        deepest: Layer,
        pooling: Pooling,
    ) -> Activations {
        let plane = height * width;
        let mut normalised = buffers::any(3 * plane);
        for (ch, (o, p)) in normalised
            .chunks_mut(plane)
            .zip(image.chunks(plane))
            .enumerate()
        {
            let (s, t) = (self.input_scale[ch], self.input_shift[ch]);
            o.iter_mut().zip(p).for_each(|(o, v)| *o = v * s + t);
        }
        let (mut hh, mut ww) = (height, width);
        let mut layers: Vec<Activation> = Vec::with_capacity(deepest.0 + 1);
        for i in 0..=deepest.0 {
            let pooled = match layers.last() {
                Some(prev) if BLOCK_ENDS.contains(&(i - 1)) => {
                    let p = pool(&prev.data, prev.channels, hh, ww, pooling);
                    (hh, ww) = (hh / 2, ww / 2);
                    Some(p)
                }
                _ => None,
            };
            let input: &[f32] = match (&pooled, layers.last()) {
                (Some(p), _) => p,
                (None, Some(prev)) => &prev.data,
                (None, None) => &normalised,
            };
            let conv = &self.convs[i];
            let epilogue = Epilogue {
                bias: Some(&conv.bias),
                relu: true,
            };
            let out = if i == 0 && self.padding == Padding::Replicate {
                self.replicate_first_layer(input, hh, ww, epilogue)
            } else {
                conv3x3(input, None, hh, ww, conv.forward(), epilogue)
            };
            if let Some(p) = pooled {
                buffers::give(p);
            }
            layers.push(Activation {
                data: out,
                channels: conv.k,
                height: hh,
                width: ww,
            });
        }
        buffers::give(normalised);
        Activations {
            layers,
            height,
            width,
        }
    }

    /// The gradient with respect to the pixel-space image, given the gradient at some
    /// taps (`tap_grads[i]` for layer `i`, each `[C][H][W]`).
    pub fn backward(
        &self,
        acts: &Activations,
        mut tap_grads: Vec<Option<Vec<f32>>>,
        pooling: Pooling,
    ) -> Vec<f32> {
        let depth = acts.layers.len();
        tap_grads.resize_with(depth, || None);
        let mut g: Option<Vec<f32>> = None;
        for i in (0..depth).rev() {
            g = match (g, tap_grads[i].take()) {
                (Some(mut a), Some(b)) => {
                    a.par_iter_mut()
                        .zip(b.par_iter())
                        .for_each(|(x, y)| *x += y);
                    buffers::give(b);
                    Some(a)
                }
                (a, b) => a.or(b),
            };
            let Some(grad) = g.take() else { continue };
            let act = &acts.layers[i];
            let conv = &self.convs[i];
            let none = Epilogue {
                bias: None,
                relu: false,
            };
            let mut gin = if i == 0 && self.padding == Padding::Replicate {
                self.replicate_input_gradient(grad, act)
            } else {
                let (h, w) = (act.height, act.width);
                let gin = conv3x3(&grad, Some(&act.data), h, w, conv.input_gradient(), none);
                buffers::give(grad);
                gin
            };
            if i > 0 && BLOCK_ENDS.contains(&(i - 1)) {
                let prev = &acts.layers[i - 1];
                let pooled = gin;
                gin = unpool(
                    &pooled,
                    &prev.data,
                    prev.channels,
                    prev.height,
                    prev.width,
                    pooling,
                );
                buffers::give(pooled);
            }
            g = Some(gin);
        }
        let plane = acts.height * acts.width;
        let mut g = g.unwrap_or_else(|| vec![0.0; 3 * plane]);
        g.par_chunks_mut(plane)
            .enumerate()
            .for_each(|(ch, p)| p.iter_mut().for_each(|v| *v *= self.input_scale[ch]));
        g
    }
}

impl CpuVgg {
    /// conv1_1 with replicate padding: the kernels pad with zeros, so they run on the
    /// image with its edge repeated, and the inside, which never reads their zeros, is
    /// kept.
    fn replicate_first_layer(
        &self,
        input: &[f32],
        h: usize,
        w: usize,
        epilogue: Epilogue,
    ) -> Vec<f32> {
        let conv = &self.convs[0];
        let padded = padding::replicate(input, 3, h, w);
        let full = conv3x3(&padded, None, h + 2, w + 2, conv.forward(), epilogue);
        let inside = padding::crop(&full, conv.k, h, w);
        buffers::give(full);
        inside
    }

    /// The adjoint of [`Self::replicate_first_layer`]: the ReLU mask on the gradient at
    /// conv1_1, a zero border (where the forward pass kept nothing), the convolution's
    /// input gradient, and the padded image's gradient folded onto its pixels.
    fn replicate_input_gradient(&self, mut grad: Vec<f32>, act: &Activation) -> Vec<f32> {
        let conv = &self.convs[0];
        let (h, w) = (act.height, act.width);
        grad.par_iter_mut()
            .zip(act.data.par_iter())
            .for_each(|(g, a)| *g = if *a > 0.0 { *g } else { 0.0 });
        let grad_p = padding::embed(&grad, conv.k, h, w);
        buffers::give(grad);
        let none = Epilogue {
            bias: None,
            relu: false,
        };
        let full = conv3x3(&grad_p, None, h + 2, w + 2, conv.input_gradient(), none);
        buffers::give(grad_p);
        let folded = padding::fold(&full, 3, h, w);
        buffers::give(full);
        folded
    }
}

/// 2x2 stride-2 pooling of `[C][H][W]`; odd sizes drop the last row or column.
pub fn pool(x: &[f32], c: usize, h: usize, w: usize, pooling: Pooling) -> Vec<f32> {
    let (ho, wo) = (h / 2, w / 2);
    let mut out = buffers::any(c * ho * wo);
    out.par_chunks_mut(ho * wo).enumerate().for_each(|(ch, o)| {
        let p = &x[ch * h * w..][..h * w];
        for y in 0..ho {
            for xx in 0..wo {
                let (a, b) = (p[2 * y * w + 2 * xx], p[2 * y * w + 2 * xx + 1]);
                let (cc, d) = (p[(2 * y + 1) * w + 2 * xx], p[(2 * y + 1) * w + 2 * xx + 1]);
                o[y * wo + xx] = match pooling {
                    Pooling::Avg => (a + b + cc + d) * 0.25,
                    Pooling::Max => a.max(b).max(cc).max(d),
                };
            }
        }
    });
    out
}

/// The gradient of [`pool`]: average spreads a quarter to each of the four inputs, max
/// sends it all to the first largest (PyTorch's choice on ties).
pub fn unpool(g: &[f32], x: &[f32], c: usize, h: usize, w: usize, pooling: Pooling) -> Vec<f32> {
    let (ho, wo) = (h / 2, w / 2);
    let mut out = buffers::zeroed(c * h * w);
    out.par_chunks_mut(h * w).enumerate().for_each(|(ch, o)| {
        let gp = &g[ch * ho * wo..][..ho * wo];
        let p = &x[ch * h * w..][..h * w];
        for y in 0..ho {
            for xx in 0..wo {
                let gv = gp[y * wo + xx];
                let idx = [
                    2 * y * w + 2 * xx,
                    2 * y * w + 2 * xx + 1,
                    (2 * y + 1) * w + 2 * xx,
                    (2 * y + 1) * w + 2 * xx + 1,
                ];
                match pooling {
                    Pooling::Avg => idx.iter().for_each(|&i| o[i] = gv * 0.25),
                    Pooling::Max => {
                        let best = idx
                            .iter()
                            .copied()
                            .reduce(|a, b| if p[b] > p[a] { b } else { a })
                            .unwrap_or(idx[0]);
                        o[best] = gv;
                    }
                }
            }
        }
    });
    out
}

/// Multiplies each `[H][W]` plane of `x` (`[C][H][W]`) by `mask` (`[H][W]`), position
/// by position.
pub fn mask_planes(x: &mut [f32], mask: &[f32]) {
    x.par_chunks_mut(mask.len().max(1))
        .for_each(|plane| plane.iter_mut().zip(mask).for_each(|(v, m)| *v *= m));
}

impl Activations {
    /// Gives the buffers back for the next iteration.
    pub fn recycle(self) {
        self.layers.into_iter().for_each(|a| buffers::give(a.data));
    }
}

impl Activation {
    /// As a `[1, C, H, W]` tensor.
    pub fn into_tensor(self, device: &burn::tensor::Device) -> burn::tensor::Tensor<4> {
        let shape = [1, self.channels, self.height, self.width];
        burn::tensor::Tensor::from_data(burn::tensor::TensorData::new(self.data, shape), device)
    }
    /// A copy as a `[1, C, H, W]` tensor.
    pub fn to_tensor(&self, device: &burn::tensor::Device) -> burn::tensor::Tensor<4> {
        let shape = [1, self.channels, self.height, self.width];
        burn::tensor::Tensor::from_data(
            burn::tensor::TensorData::new(self.data.clone(), shape),
            device,
        )
    }
}

impl Activation {
    /// The Gram matrix `A A^T` (`[C][C]`) of this activation unrolled to `[C][H W]`.
    pub fn gram(&self) -> Vec<f32> {
        let c = self.channels;
        let a = View::row_major(&self.data, c, self.height * self.width);
        let mut g = vec![0f32; c * c];
        matmul(a, a.transposed(), &mut g);
        g
    }

    /// This activation with each channel multiplied by `mask` (`[H][W]`), position by
    /// position (a region's guided Gram reads it).
    pub fn masked(&self, mask: &[f32]) -> Activation {
        let mut data = buffers::any(self.data.len());
        data.copy_from_slice(&self.data);
        mask_planes(&mut data, mask);
        Activation {
            data,
            channels: self.channels,
            height: self.height,
            width: self.width,
        }
    }

    /// The sum over positions of each channel, `A 1` (`[C]`).
    pub fn row_sums(&self) -> Vec<f32> {
        let n = self.height * self.width;
        self.data
            .chunks(n.max(1))
            .map(|row| row.iter().map(|&v| v as f64).sum::<f64>() as f32)
            .collect()
    }

    /// The gradient with respect to this activation of a cost whose gradient with respect
    /// to its row sums is `ds` (`[C]`): `ds 1^T`.
    pub fn row_sums_adjoint(&self, ds: &[f32]) -> Vec<f32> {
        let n = self.height * self.width;
        let mut out = buffers::any(self.channels * n);
        out.chunks_mut(n.max(1))
            .zip(ds)
            .for_each(|(row, &d)| row.fill(d));
        out
    }

    /// The gradient with respect to this activation of a cost whose gradient with respect
    /// to its Gram is `dg` (`[C][C]`): `(dG + dG^T) A`.
    pub fn gram_adjoint(&self, dg: &[f32]) -> Vec<f32> {
        let (c, n) = (self.channels, self.height * self.width);
        assert_eq!(dg.len(), c * c, "the Gram's gradient is not C x C");
        let mut s = vec![0f32; c * c];
        for i in 0..c {
            for j in 0..c {
                s[i * c + j] = dg[i * c + j] + dg[j * c + i];
            }
        }
        let mut out = buffers::any(c * n);
        matmul(
            View::row_major(&s, c, c),
            View::row_major(&self.data, c, n),
            &mut out,
        );
        out
    }
}
