//! Where the card's time goes: each layer's convolution forward (with its bias and
//! ReLU) and backward to its input (with the ReLU mask), timed with CUDA events on the
//! stream, and the algorithms cuDNN runs for them. `easel bench --profile` prints it, so
//! that one benchmark on a card says which layers fall short of the card's speed.

use super::{CudaVgg, State, conv, pooled_before};
use crate::vgg::Layer;
use anyhow::{Context, Result};
use cudarc::driver::sys::CUevent_flags;

/// One layer's convolution at one size, as the card ran it.
#[derive(Debug, Clone)]
pub struct LayerTiming {
    pub layer: Layer,
    /// Input and output channels, and the output's height and width.
    pub c: usize,
    pub k: usize,
    pub h: usize,
    pub w: usize,
    /// Milliseconds per call: forward with bias and ReLU, backward with the ReLU mask.
    pub forward_ms: f64,
    pub backward_ms: f64,
    /// cuDNN's algorithms, forward and backward (e.g. `implicit_precomp_gemm`).
    pub algorithms: (String, String),
}

impl LayerTiming {
    /// The multiply-adds of one direction, counted as two operations each.
    pub fn gflop(&self) -> f64 {
        2.0 * (self.c * self.k * 9 * self.h * self.w) as f64 / 1e9
    }
}

impl CudaVgg {
    /// Each layer from conv1_1 to `deepest` at the sizes an `h` x `w` image gives it,
    /// `iters` calls per direction after one untimed call (which also picks the
    /// algorithms at a new size, as a run's first iteration does).
    pub fn layer_timings(
        &self,
        (h, w): (usize, usize),
        deepest: Layer,
        iters: usize,
    ) -> Result<Vec<LayerTiming>> {
        conv::check_size(h, w, deepest)?;
        let mut guard = self.lock(h, w)?;
        let st = &mut *guard;
        let s = &self.stream;
        let mut out = Vec::with_capacity(deepest.0 + 1);
        let (mut hh, mut ww) = (h, w);
        for i in 0..=deepest.0 {
            if pooled_before(i) {
                (hh, ww) = (hh / 2, ww / 2);
            }
            let (c, k) = st.convs.channels(i);
            let margin = if i == 0 { 2 * self.pad } else { 0 };
            // Zeros: cuDNN's time does not depend on the values.
            let x = st.f32s.zeroed(s, c * (hh + margin) * (ww + margin))?;
            let mut y = st.f32s.zeroed(s, k * hh * ww)?;
            let mut g = st.f32s.zeroed(s, k * hh * ww)?;
            let mut dx = st.f32s.take(s, x.len())?;
            let (weight, bias) = &self.weights[i];
            let size = (hh, ww);
            let forward_ms = self.timed(st, iters, &mut |st| {
                st.convs.forward(i, size, &x, weight, &mut y)?;
                self.kernels.bias_relu(s, &mut y, bias, hh * ww)
            })?;
            let backward_ms = self.timed(st, iters, &mut |st| {
                self.kernels.relu_mask(s, &mut g, &y)?;
                st.convs.backward_data(i, size, &g, weight, &mut dx)
            })?;
            let algorithms = st.convs.algorithms(i, hh, ww).unwrap_or_default();
            [x, y, g, dx].into_iter().for_each(|b| st.f32s.give(b));
            out.push(LayerTiming {
                layer: Layer(i),
                c,
                k,
                h: hh,
                w: ww,
                forward_ms,
                backward_ms,
                algorithms,
            });
        }
        Ok(out)
    }

    /// Milliseconds per call of `f` on the card, over `iters` calls after one untimed.
    fn timed(
        &self,
        st: &mut State,
        iters: usize,
        f: &mut dyn FnMut(&mut State) -> Result<()>,
    ) -> Result<f64> {
        let event = || {
            let timing = Some(CUevent_flags::CU_EVENT_DEFAULT);
            self.ctx.new_event(timing).context("creating a CUDA event")
        };
        let (start, end) = (event()?, event()?);
        f(st)?;
        start.record(&self.stream)?;
        for _ in 0..iters.max(1) {
            f(st)?;
        }
        end.record(&self.stream)?;
        let ms = start
            .elapsed_ms(&end)
            .context("timing on the CUDA device")?;
        Ok(f64::from(ms) / iters.max(1) as f64)
    }
}
