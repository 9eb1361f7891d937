//! cuDNN's 3x3 convolutions, forward and backward to the input: descriptors and
//! algorithms made once per shape, one workspace grown to the largest need; and the
//! network's forward pass built on them.

use super::algorithm_cache::AlgorithmCache;
use super::search::{ConvShape, Searcher, first_fit};
use super::{Act, CudaVgg, State, pooled_before};
use crate::backend::ConvSearch;
use crate::vgg::{CHANNELS, Layer, Pooling};
use anyhow::{Context, Result, bail, ensure};
use cudarc::cudnn::sys::{
    cudnnConvolutionBwdDataAlgo_t, cudnnConvolutionFwdAlgo_t, cudnnConvolutionMode_t,
    cudnnMathType_t, cudnnTensorFormat_t,
};
use cudarc::cudnn::{
    ConvBackwardData, ConvDescriptor, ConvForward, Cudnn, CudnnError, FilterDescriptor,
    TensorDescriptor,
};
use cudarc::driver::{CudaSlice, CudaStream};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

const NCHW: cudnnTensorFormat_t = cudnnTensorFormat_t::CUDNN_TENSOR_NCHW;
/// The most workspace one convolution may ask for before a leaner algorithm is used.
const WORKSPACE_LIMIT: usize = 1 << 30;
const FWD_FALLBACK: cudnnConvolutionFwdAlgo_t =
    cudnnConvolutionFwdAlgo_t::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM;
const BWD_FALLBACK: cudnnConvolutionBwdDataAlgo_t =
    cudnnConvolutionBwdDataAlgo_t::CUDNN_CONVOLUTION_BWD_DATA_ALGO_1;

/// One layer at one image size: its input and output descriptors and the algorithms
/// picked for them (`search`).
struct Shape {
    x: TensorDescriptor<f32>,
    y: TensorDescriptor<f32>,
    forward: cudnnConvolutionFwdAlgo_t,
    backward: cudnnConvolutionBwdDataAlgo_t,
}

/// The convolutions of the sixteen layers.
pub(super) struct Convs {
    cudnn: Arc<Cudnn>,
    stream: Arc<CudaStream>,
    /// Padding 1, stride 1, cross-correlation: every layer's but, with replicate
    /// padding, the first's.
    conv: ConvDescriptor<f32>,
    /// Padding 0 for the first layer, which then reads an image padded on the host
    /// (replicate padding, `crate::vgg::Padding`); `None` with zero padding.
    first_valid: Option<ConvDescriptor<f32>>,
    /// Per layer: `(C_in, C_out)` and the filter `[C_out][C_in][3][3]`.
    filters: Vec<((usize, usize), FilterDescriptor<f32>)>,
    /// By `(layer, h, w)`.
    shapes: HashMap<(usize, usize, usize), Shape>,
    workspace: Option<CudaSlice<u8>>,
    math: cudnnMathType_t,
    search: ConvSearch,
    searcher: Searcher,
    /// Measured rankings kept between runs.
    kept: RefCell<AlgorithmCache>,
}

// SAFETY: cudarc leaves `Cudnn` (and so the descriptors, which hold it) `!Send` because a
// cuDNN handle must not be used by two threads at once. `Convs` lives only inside
// `CudaVgg`'s mutex, so one thread at a time uses it; cuDNN allows a handle to move
// between threads, and every entry point binds the CUDA context to the calling thread
// first. No `Arc<Cudnn>` ever leaves this struct.
unsafe impl Send for Convs {}

/// The pixels of the image whose layer `layer` is `h` x `w`: four times as many per
/// pooling before it.
fn image_pixels(layer: usize, h: usize, w: usize) -> usize {
    let pools = (1..=layer).filter(|&i| pooled_before(i)).count();
    (h * w) << (2 * pools)
}

fn int(n: usize) -> i32 {
    n as i32
}

impl Convs {
    /// `channels[i]` = layer i's `(C_in, C_out)`. `tf32`: FP32 data on tensor cores as
    /// TF32; otherwise FMA math only, since cuDNN's *default* math lets Ampere and later
    /// cards use TF32 for FP32 data. (`TENSOR_OP_MATH_ALLOW_CONVERSION` is avoided: it may
    /// also convert FP32 data to FP16.)
    /// `first_valid`: the first layer convolves without padding (its input comes padded).
    /// `search`: how each shape's algorithms are chosen, and `kept` the measured ones
    /// kept from earlier runs.
    pub fn new(
        stream: Arc<CudaStream>,
        channels: &[(usize, usize)],
        (tf32, search, kept): (bool, ConvSearch, AlgorithmCache),
        first_valid: bool,
    ) -> Result<Convs> {
        let cudnn = Cudnn::new(stream.clone()).context("creating the cuDNN handle")?;
        let math = if tf32 {
            cudnnMathType_t::CUDNN_TENSOR_OP_MATH
        } else {
            cudnnMathType_t::CUDNN_FMA_MATH
        };
        let descriptor = |pad: i32| -> Result<ConvDescriptor<f32>> {
            let mode = cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION;
            let mut conv = cudnn
                .create_conv2d::<f32>([pad, pad], [1, 1], [1, 1], mode)
                .context("creating cuDNN's convolution descriptor")?;
            conv.set_math_type(math)
                .context("setting cuDNN's convolution math type")?;
            Ok(conv)
        };
        let conv = descriptor(1)?;
        let first_valid = first_valid.then(|| descriptor(0)).transpose()?;
        let filters = channels
            .iter()
            .enumerate()
            .map(|(i, &(c, k))| {
                let f = cudnn
                    .create_4d_filter::<f32>(NCHW, [int(k), int(c), 3, 3])
                    .with_context(|| format!("creating cuDNN's filter descriptor for layer {i}"))?;
                Ok(((c, k), f))
            })
            .collect::<Result<Vec<_>>>()?;
        let searcher = Searcher::new(&stream)?;
        Ok(Convs {
            cudnn,
            stream,
            conv,
            first_valid,
            filters,
            shapes: HashMap::new(),
            workspace: None,
            math,
            search,
            searcher,
            kept: RefCell::new(kept),
        })
    }

    /// Makes layer `layer`'s descriptors and algorithms for an `h` x `w` image, once, and
    /// grows the workspace to what they need.
    fn prepare(&mut self, layer: usize, h: usize, w: usize) -> Result<()> {
        if self.shapes.contains_key(&(layer, h, w)) {
            return Ok(());
        }
        let ((c, k), filter) = &self.filters[layer];
        let what = || format!("layer {layer} at {h}x{w}");
        let tensor = |ch: usize, margin: usize| {
            let dims = [1, int(ch), int(h + margin), int(w + margin)];
            self.cudnn
                .create_4d_tensor::<f32>(NCHW, dims)
                .with_context(|| format!("creating cuDNN's tensor descriptor for {}", what()))
        };
        // A padded input is two pixels taller and wider than the output.
        let margin = if self.descriptor(layer).1 { 2 } else { 0 };
        let (x, y) = (tensor(*c, margin)?, tensor(*k, 0)?);
        let conv = self.descriptor(layer).0;
        let fwd = ConvForward {
            conv,
            x: &x,
            w: filter,
            y: &y,
        };
        let bwd = ConvBackwardData {
            conv,
            dx: &x,
            w: filter,
            dy: &y,
        };
        let searched = self.shape(layer, h, w);
        let search = self.search.at(image_pixels(layer, h, w));
        let (fwd_ranked, bwd_ranked) = self.candidates(&searched, search, &what);
        let (forward, fwd_bytes) = first_fit(
            &fwd_ranked,
            |a| fwd.get_workspace_size(a),
            WORKSPACE_LIMIT,
            FWD_FALLBACK,
        )
        .with_context(|| format!("sizing cuDNN's forward workspace for {}", what()))?;
        let (backward, bwd_bytes) = first_fit(
            &bwd_ranked,
            |a| bwd.get_workspace_size(a),
            WORKSPACE_LIMIT,
            BWD_FALLBACK,
        )
        .with_context(|| format!("sizing cuDNN's backward workspace for {}", what()))?;
        tracing::debug!(
            "cuDNN for {}: {forward:?} ({fwd_bytes} B), {backward:?} ({bwd_bytes} B)",
            what()
        );
        // The fallbacks fit too, so that one can replace a refused algorithm at launch.
        let fallbacks = [
            fwd.get_workspace_size(FWD_FALLBACK).unwrap_or(0),
            bwd.get_workspace_size(BWD_FALLBACK).unwrap_or(0),
        ];
        let need = fallbacks
            .into_iter()
            .fold(fwd_bytes.max(bwd_bytes), usize::max);
        if need > self.workspace.as_ref().map_or(0, |ws| ws.len()) {
            // The old workspace is freed in stream order, after the work that uses it.
            self.workspace = None;
            let ws = unsafe { self.stream.alloc::<u8>(need) }
                .with_context(|| format!("allocating {need} bytes of cuDNN workspace"))?;
            self.workspace = Some(ws);
        }
        let shape = Shape {
            x,
            y,
            forward,
            backward,
        };
        self.shapes.insert((layer, h, w), shape);
        Ok(())
    }

    /// Layer `layer` at `h` x `w` as the search describes it to cuDNN.
    fn shape(&self, layer: usize, h: usize, w: usize) -> ConvShape {
        let (c, k) = self.filters[layer].0;
        ConvShape {
            c,
            k,
            h,
            w,
            pad: usize::from(!self.descriptor(layer).1),
            math: self.math,
        }
    }

    /// Whether layer `layer`'s first run at `h` x `w` will time cuDNN's algorithms: a
    /// measured search, for a shape this process has not prepared and no earlier run
    /// on the card kept.
    pub fn will_time(&self, layer: usize, h: usize, w: usize) -> bool {
        self.search.at(image_pixels(layer, h, w)) == ConvSearch::Measured
            && !self.shapes.contains_key(&(layer, h, w))
            && self.kept.borrow().get(&self.shape(layer, h, w)).is_none()
    }

    /// The algorithms cuDNN ranks for `shape`, forward and backward. Where the search
    /// fails, the measured one falls back to the heuristics, and these to none (then
    /// implicit GEMM).
    fn candidates(
        &self,
        shape: &ConvShape,
        search: ConvSearch,
        what: &dyn Fn() -> String,
    ) -> (
        Vec<cudnnConvolutionFwdAlgo_t>,
        Vec<cudnnConvolutionBwdDataAlgo_t>,
    ) {
        let measured = search == ConvSearch::Measured;
        if let Some(kept) = self.kept.borrow().get(shape).filter(|_| measured) {
            tracing::debug!("cuDNN's timings for {} kept from an earlier run", what());
            return kept;
        }
        let started = std::time::Instant::now();
        let searched = self.searcher.candidates(shape, search);
        if let (Ok((ranking, true)), true) = (&searched, measured) {
            self.kept.borrow_mut().put(shape, ranking);
        }
        let ranked = searched.map(|(ranking, _)| ranking).or_else(|e| {
            if search == ConvSearch::Heuristic {
                return Err(e);
            }
            tracing::warn!("{e:#}; using cuDNN's heuristics for {}", what());
            let heuristic = self.searcher.candidates(shape, ConvSearch::Heuristic);
            heuristic.map(|(ranking, _)| ranking)
        });
        let ms = started.elapsed().as_secs_f64() * 1e3;
        tracing::debug!("cuDNN's {search:?} search for {}: {ms:.1} ms", what());
        ranked.unwrap_or_else(|e| {
            tracing::warn!("{e:#}; using implicit GEMM for {}", what());
            (Vec::new(), Vec::new())
        })
    }

    /// Layer `layer`'s input and output channels.
    pub fn channels(&self, layer: usize) -> (usize, usize) {
        self.filters[layer].0
    }

    /// The algorithms picked for layer `layer` at `h` x `w`, forward and backward, once
    /// it has run at that size.
    pub fn algorithms(&self, layer: usize, h: usize, w: usize) -> Option<(String, String)> {
        let shape = self.shapes.get(&(layer, h, w))?;
        let name = |a: String| {
            let short = a.rsplit("_ALGO_").next().unwrap_or(&a);
            short.to_lowercase()
        };
        Some((
            name(format!("{:?}", shape.forward)),
            name(format!("{:?}", shape.backward)),
        ))
    }

    /// Layer `layer`'s convolution descriptor, and whether it reads a padded input.
    fn descriptor(&self, layer: usize) -> (&ConvDescriptor<f32>, bool) {
        match (&self.first_valid, layer) {
            (Some(valid), 0) => (valid, true),
            _ => (&self.conv, false),
        }
    }

    /// What a convolution of layer `layer` at `h` x `w` launches with: the convolution,
    /// the filter and the shape's descriptors, and the workspace.
    #[allow(clippy::type_complexity)]
    fn parts(
        &mut self,
        layer: usize,
        h: usize,
        w: usize,
    ) -> Result<(
        &ConvDescriptor<f32>,
        &FilterDescriptor<f32>,
        &Shape,
        Option<&mut CudaSlice<u8>>,
    )> {
        self.prepare(layer, h, w)?;
        let shape = self.shapes.get(&(layer, h, w)).ok_or_else(|| {
            anyhow::anyhow!("cuDNN's descriptors for layer {layer} at {h}x{w} are missing")
        })?;
        // Field by field, so that the workspace can be lent mutably beside them.
        let conv = match (&self.first_valid, layer) {
            (Some(valid), 0) => valid,
            _ => &self.conv,
        };
        Ok((conv, &self.filters[layer].1, shape, self.workspace.as_mut()))
    }

    /// `y = conv(x, weight)` for layer `layer` on an `h` x `w` image (no bias).
    pub fn forward(
        &mut self,
        layer: usize,
        (h, w): (usize, usize),
        x: &CudaSlice<f32>,
        weight: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let (conv, filter, shape, workspace) = self.parts(layer, h, w)?;
        let algo = shape.forward;
        let op = ConvForward {
            conv,
            x: &shape.x,
            w: filter,
            y: &shape.y,
        };
        // SAFETY: the buffers have the sizes the descriptors say (the caller made them
        // from the same layer and size), and the workspace is the one sized for them.
        let launched = unsafe { op.launch(algo, workspace, (1.0, 0.0), x, weight, y) };
        let what = || format!("cuDNN's forward convolution at layer {layer} ({h}x{w})");
        let Some(refused) = refusal(launched, (algo, FWD_FALLBACK), &what)? else {
            return Ok(());
        };
        if let Some(shape) = self.shapes.get_mut(&(layer, h, w)) {
            shape.forward = FWD_FALLBACK;
        }
        self.forward(layer, (h, w), x, weight, y).context(refused)
    }

    /// `dx = conv^T(dy, weight)`: the gradient at layer `layer`'s input from the one at
    /// its output (before the ReLU), on an `h` x `w` image.
    pub fn backward_data(
        &mut self,
        layer: usize,
        (h, w): (usize, usize),
        dy: &CudaSlice<f32>,
        weight: &CudaSlice<f32>,
        dx: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let (conv, filter, shape, workspace) = self.parts(layer, h, w)?;
        let algo = shape.backward;
        let op = ConvBackwardData {
            conv,
            dx: &shape.x,
            w: filter,
            dy: &shape.y,
        };
        // SAFETY: as in `forward`.
        let launched = unsafe { op.launch(algo, workspace, (1.0, 0.0), dx, weight, dy) };
        let what = || format!("cuDNN's backward-data convolution at layer {layer} ({h}x{w})");
        let Some(refused) = refusal(launched, (algo, BWD_FALLBACK), &what)? else {
            return Ok(());
        };
        if let Some(shape) = self.shapes.get_mut(&(layer, h, w)) {
            shape.backward = BWD_FALLBACK;
        }
        self.backward_data(layer, (h, w), dy, weight, dx)
            .context(refused)
    }
}

/// What a launch of `algo` came to: done (`None`), or refused by cuDNN, then the
/// context for the error of a launch with `fallback` instead (whose workspace `prepare`
/// sized). cuDNN's lists can offer an algorithm its launch then refuses (PyTorch moves
/// down its list for the same reason): the run goes on with a slower one. A failure of
/// the fallback itself is the error.
fn refusal<A: std::fmt::Debug + PartialEq + Copy>(
    launched: Result<(), CudnnError>,
    (algo, fallback): (A, A),
    what: &dyn Fn() -> String,
) -> Result<Option<String>> {
    match launched {
        Ok(()) => Ok(None),
        Err(e) if algo != fallback => {
            tracing::warn!("{} refused {algo:?} ({e:?}); using {fallback:?}", what());
            Ok(Some(format!("after {algo:?} was refused ({e:?})")))
        }
        Err(e) => Err(e).with_context(what),
    }
}

/// Each layer to `deepest` with its output's height and width for an `h` x `w` image.
pub(super) fn layer_sizes(h: usize, w: usize, deepest: Layer) -> Vec<(usize, usize, usize)> {
    let (mut hh, mut ww) = (h, w);
    let layers = (0..CHANNELS.len()).take(deepest.0 + 1);
    layers
        .map(|i| {
            if pooled_before(i) {
                (hh, ww) = (hh / 2, ww / 2);
            }
            (i, hh, ww)
        })
        .collect()
}

/// Refuses images that vanish before `deepest`, or whose buffers pass the 32-bit
/// indices of the kernels and of cuDNN's descriptors.
pub(super) fn check_size(h: usize, w: usize, deepest: Layer) -> Result<()> {
    ensure!(deepest.0 < 16, "VGG-19 has no layer {}", deepest.0);
    for (i, hh, ww) in layer_sizes(h, w, deepest) {
        let k = CHANNELS[i];
        ensure!(
            hh > 0 && ww > 0,
            "a {h}x{w} image is too small for {}",
            Layer(i)
        );
        let n = k * hh * ww;
        ensure!(
            n <= i32::MAX as usize,
            "a {h}x{w} image is too large for the CUDA path"
        );
    }
    Ok(())
}

impl CudaVgg {
    /// The forward pass on the card from the pixel-space image `x` (`[3][h][w]`, or
    /// `[3][h + 2][w + 2]` when padded on the host), as `CpuVgg::forward`; the caller
    /// has run [`check_size`].
    pub(super) fn run(
        &self,
        st: &mut State,
        x: &CudaSlice<f32>,
        h: usize,
        w: usize,
        deepest: Layer,
        pooling: Pooling,
    ) -> Result<Vec<Act>> {
        let s = &self.stream;
        let plane = (h + 2 * self.pad) * (w + 2 * self.pad);
        let mut normalised = st.f32s.take(s, 3 * plane)?;
        let (scale, shift) = (self.scale, self.shift);
        self.kernels
            .normalize(s, x, &mut normalised, plane, scale, shift)?;
        // The input of the next layer where it is not the previous activation.
        let mut input = Some(normalised);
        let mut acts: Vec<Act> = Vec::with_capacity(deepest.0 + 1);
        let (mut hh, mut ww) = (h, w);
        for (i, &k) in CHANNELS.iter().enumerate().take(deepest.0 + 1) {
            if let Some(prev) = acts.last().filter(|_| pooled_before(i)) {
                (hh, ww) = (hh / 2, ww / 2);
                let mut p = st.f32s.take(s, prev.c * hh * ww)?;
                let max = pooling == Pooling::Max;
                self.kernels
                    .pool(s, &prev.data, &mut p, (prev.h, prev.w), max)?;
                input = Some(p);
            }
            let mut y = st.f32s.take(s, k * hh * ww)?;
            let src = match (&input, acts.last()) {
                (Some(t), _) => t,
                (None, Some(prev)) => &prev.data,
                (None, None) => bail!("layer {i} of the CUDA network has no input"),
            };
            let (weight, bias) = &self.weights[i];
            st.convs.forward(i, (hh, ww), src, weight, &mut y)?;
            self.kernels.bias_relu(s, &mut y, bias, hh * ww)?;
            if let Some(t) = input.take() {
                st.f32s.give(t);
            }
            let (c, h, w) = (k, hh, ww);
            acts.push(Act { data: y, c, h, w });
        }
        Ok(acts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_layer_knows_its_images_size_and_auto_measures_from_a_megapixel() {
        // A 400x300 image, at conv1_1, conv2_1 (one pooling), conv3_1 and conv5_1 (four).
        let at_400x300 = [(0, 300, 400), (2, 150, 200), (4, 75, 100), (12, 18, 25)];
        let pixels: Vec<usize> = at_400x300
            .iter()
            .map(|&(l, h, w)| image_pixels(l, h, w))
            .collect();
        assert_eq!(pixels, [120_000, 120_000, 120_000, 115_200]);
        // Every layer of a 1024x1024 image is measured under auto; none of 400x300's.
        let at_1024 = [
            (0, 1024, 1024),
            (1, 1024, 1024),
            (4, 256, 256),
            (15, 64, 64),
        ];
        for (l, h, w) in at_1024 {
            let search = ConvSearch::Auto.at(image_pixels(l, h, w));
            assert_eq!(search, ConvSearch::Measured, "layer {l} at {h}x{w}");
        }
        for (l, h, w) in at_400x300 {
            let search = ConvSearch::Auto.at(image_pixels(l, h, w));
            assert_eq!(search, ConvSearch::Heuristic, "layer {l} at {h}x{w}");
        }
        // The other two are what they say at every size.
        for pixels in [1, 1 << 20, 1 << 26] {
            assert_eq!(ConvSearch::Heuristic.at(pixels), ConvSearch::Heuristic);
            assert_eq!(ConvSearch::Measured.at(pixels), ConvSearch::Measured);
        }
        assert_eq!(ConvSearch::Auto.at((1 << 20) - 1), ConvSearch::Heuristic);
    }
}
