//! VGG-19 on an NVIDIA card: cuDNN's convolutions ([`conv`]), cuBLAS's Grams ([`gram`])
//! and nvrtc's small kernels ([`kernels`]), forward and backward to the image outside
//! any autodiff tape. It mirrors the CPU path (`crate::vgg::cpu`, `crate::loss`) step
//! for step; the formulas are docs/design.md §1, the design §4.
//!
//! Everything runs on one stream in order, so buffers go back to the pool as soon as
//! their last use is queued; the host waits only for the final copies back.

mod algorithm_cache;
mod compile;
mod conv;
mod gram;
mod host_style;
mod kernel_cache;
mod kernels;
#[cfg(test)]
mod on_cpu;
mod profile;
mod search;
mod vectors;

use host_style::HostTap;
pub use host_style::{HostRegions, HostStyle, HostStyleAdjoint, HostStyleRead};
pub use profile::LayerTiming;

use crate::backend::{ConvSearch, cuda_memory};
use crate::network::resident::AdamSet;
use crate::vgg::{BLOCK_ENDS, CHANNELS, Layer, Padding, Pooling};
use anyhow::{Context, Result, anyhow, ensure};
use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DeviceRepr, ValidAsZeroBits};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// VGG-19 on an NVIDIA GPU: the forward pass, and the gradient of the style-transfer
/// costs with respect to the image, outside any autodiff tape.
pub struct CudaVgg {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    name: String,
    kernels: kernels::Kernels,
    /// Per layer: weight `[K][C][3][3]` and bias `[K]`.
    weights: Vec<(CudaSlice<f32>, CudaSlice<f32>)>,
    scale: [f32; 3],
    shift: [f32; 3],
    /// Pixels the host pads the image by on each side: 1 for replicate padding, where
    /// conv1_1 runs without padding of its own; else 0.
    pad: usize,
    state: Mutex<State>,
    /// Declared last, so dropped last: releases what the pool keeps once every buffer
    /// above is freed.
    _release: ReleaseOnDrop,
}

impl Drop for CudaVgg {
    fn drop(&mut self) {
        // Runs before the fields' drops: the weights, the handles and the pools free
        // their memory in the stream's order, which needs the context current here.
        self.bind_for_drop();
    }
}

/// Hands the pool's unused memory back to the driver when dropped
/// (`backend::cuda_memory`).
struct ReleaseOnDrop(Arc<CudaContext>);

impl Drop for ReleaseOnDrop {
    fn drop(&mut self) {
        if let Err(e) = cuda_memory::release_freed_memory(&self.0) {
            tracing::debug!("{e:#}");
        }
    }
}

/// The targets on the card.
pub struct CudaTargets {
    content_layer: Layer,
    content: CudaSlice<f32>,
    grams: Vec<(Layer, CudaSlice<f32>)>,
    /// Per region of the mask: where it has a style, its mask at each style layer.
    masks: Vec<Option<Vec<CudaSlice<f32>>>>,
}

/// One activation on the host: `(data [C][H][W], C, H, W)`.
pub type HostActivation = (Vec<f32>, usize, usize, usize);

/// The costs the GPU computed, unweighted, summed in float64.
#[derive(Debug, Clone, PartialEq)]
pub struct CudaCosts {
    pub content: f64,
    /// One per style layer, in the order given.
    pub style: Vec<f64>,
    pub tv: f64,
    /// With regions, each region's `sum_l lambda_l J_r[l]`.
    pub regions: Vec<f64>,
}

/// What the cost needs besides the targets.
#[derive(Clone, Copy)]
pub struct CudaCostWeights<'a> {
    pub alpha: f64,
    pub beta: f64,
    pub content_layer: Layer,
    pub style_layers: &'a [(Layer, f64)],
    pub tv_weight: f64,
    /// Where the host computes the style costs from the card's Grams and row sums
    /// (`style_loss: w2`, whose matrix square roots the card does not take); else the
    /// card's Gram cost.
    pub host_style: Option<&'a HostStyle<'a>>,
    /// Where the host computes the style costs of regions from the card's guided Grams.
    pub host_regions: Option<&'a HostRegions<'a>>,
}

/// What one thread at a time may touch: the library handles and the buffer pools.
struct State {
    convs: conv::Convs,
    gram: gram::Gram,
    f32s: Pool<f32>,
    f64s: Pool<f64>,
    /// The image size the pools hold buffers for; another size empties them.
    size: (usize, usize),
}

/// Device buffers by length, kept between calls so that iterations allocate nothing.
struct Pool<T>(HashMap<usize, Vec<CudaSlice<T>>>);

impl<T: DeviceRepr + ValidAsZeroBits> Pool<T> {
    /// A buffer of `len` elements with whatever it held.
    fn take(&mut self, stream: &Arc<CudaStream>, len: usize) -> Result<CudaSlice<T>> {
        match self.0.get_mut(&len).and_then(Vec::pop) {
            Some(b) => Ok(b),
            None => unsafe { stream.alloc::<T>(len) }
                .with_context(|| format!("allocating {len} elements on the CUDA device")),
        }
    }
    fn zeroed(&mut self, stream: &Arc<CudaStream>, len: usize) -> Result<CudaSlice<T>> {
        let mut b = self.take(stream, len)?;
        stream
            .memset_zeros(&mut b)
            .context("zeroing a CUDA buffer")?;
        Ok(b)
    }
    fn give(&mut self, b: CudaSlice<T>) {
        self.0.entry(b.len()).or_default().push(b);
    }
}

/// One layer's activation on the card, `[c][h][w]`.
struct Act {
    data: CudaSlice<f32>,
    c: usize,
    h: usize,
    w: usize,
}

/// Whether the activation of layer `i - 1` is pooled before layer `i`.
fn pooled_before(i: usize) -> bool {
    i > 0 && BLOCK_ENDS.contains(&(i - 1))
}

// The caller shares one `CudaVgg` between threads.
const _: fn() = || {
    fn is<T: Send + Sync>() {}
    is::<CudaVgg>();
    is::<CudaTargets>();
};

impl CudaVgg {
    /// `convs[i]` = (weight `[K][C][3][3]`, bias `[K]`) for the 16 layers in order;
    /// the image is mapped `x * input_scale[c] + input_shift[c]` first. `tf32`: allow
    /// TF32 tensor-core math in cuDNN and cuBLAS. `padding`: what conv1_1 sees beyond
    /// the edge. `search`: how cuDNN's algorithms are chosen.
    pub fn new(
        ordinal: usize,
        convs: &[(Vec<f32>, Vec<f32>)],
        (input_scale, input_shift): ([f32; 3], [f32; 3]),
        padding: Padding,
        (tf32, search): (bool, ConvSearch),
    ) -> Result<CudaVgg> {
        ensure!(
            convs.len() == 16,
            "VGG-19 has 16 layers, got {}",
            convs.len()
        );
        let ctx =
            CudaContext::new(ordinal).with_context(|| format!("opening CUDA device {ordinal}"))?;
        // SAFETY: everything runs on one stream (cuDNN and cuBLAS are set to it), so the
        // stream's order alone keeps every buffer's uses apart. cudarc's per-buffer
        // events would add two driver calls per argument to each of ~100 launches an
        // iteration.
        unsafe { ctx.disable_event_tracking() };
        if let Err(e) = cuda_memory::keep_freed_memory(&ctx) {
            tracing::warn!("{e:#}: freed card memory goes back to the driver at each wait");
        }
        let name = ctx.name().context("reading the CUDA device's name")?;
        let stream = ctx.default_stream();
        let kernels = kernels::Kernels::new(&ctx)?;
        let mut channels = Vec::with_capacity(16);
        let mut weights = Vec::with_capacity(16);
        for (i, (w, b)) in convs.iter().enumerate() {
            let (c, k) = (if i == 0 { 3 } else { CHANNELS[i - 1] }, CHANNELS[i]);
            ensure!(
                w.len() == k * c * 9 && b.len() == k,
                "layer {i}'s weights are not [{k}][{c}][3][3] and [{k}]"
            );
            let up = |v: &[f32]| {
                stream
                    .clone_htod(v)
                    .with_context(|| format!("copying layer {i}'s weights to the CUDA device"))
            };
            weights.push((up(w)?, up(b)?));
            channels.push((c, k));
        }
        let pad = usize::from(padding == Padding::Replicate);
        let state = State {
            convs: conv::Convs::new(
                stream.clone(),
                &channels,
                (
                    tf32,
                    search,
                    algorithm_cache::AlgorithmCache::for_card(&name),
                ),
                pad == 1,
            )?,
            gram: gram::Gram::new(stream.clone(), tf32)?,
            f32s: Pool(HashMap::new()),
            f64s: Pool(HashMap::new()),
            size: (0, 0),
        };
        Ok(CudaVgg {
            _release: ReleaseOnDrop(ctx.clone()),
            ctx,
            stream,
            name,
            kernels,
            weights,
            scale: input_scale,
            shift: input_shift,
            pad,
            state: Mutex::new(state),
        })
    }

    /// The card's name, e.g. "NVIDIA H200".
    pub fn device_name(&self) -> String {
        self.name.clone()
    }

    /// Whether the first run of an `h` x `w` image to `deepest` will time cuDNN's
    /// algorithms (`conv_search`), which a run says before the pause.
    pub fn times_algorithms(&self, h: usize, w: usize, deepest: Layer) -> bool {
        let Ok(st) = self.state.lock() else {
            return false;
        };
        let sizes = conv::layer_sizes(h, w, deepest);
        sizes
            .into_iter()
            .any(|(i, hh, ww)| st.convs.will_time(i, hh, ww))
    }

    /// `(free, total)` bytes of device memory now; free counts what the pool keeps of
    /// buffers this process freed (`backend::cuda_memory`).
    pub fn memory(&self) -> Result<(u64, u64)> {
        let (free, total) = self
            .ctx
            .mem_get_info()
            .context("reading the CUDA device's memory")?;
        let free = free as u64 + cuda_memory::cached_bytes(&self.ctx);
        Ok((free.min(total as u64), total as u64))
    }

    /// The state for an image of `h` x `w`, with the context bound to this thread (cuDNN
    /// and cuBLAS calls need it current).
    fn lock(&self, h: usize, w: usize) -> Result<MutexGuard<'_, State>> {
        self.bind()?;
        let mut st = self
            .state
            .lock()
            .map_err(|_| anyhow!("the CUDA network's state was poisoned by a panic"))?;
        if st.size != (h, w) {
            // Buffers sized for another image would only hold memory. The driver's pool
            // keeps what they free, where cuDNN's algorithm search and handles, which
            // allocate outside it, cannot have it: it goes back to the driver.
            st.f32s.0.clear();
            st.size = (h, w);
            if let Err(e) = cuda_memory::release_freed_memory(&self.ctx) {
                tracing::debug!("{e:#}");
            }
        }
        Ok(st)
    }

    /// Runs the network on a pixel-space image `[3][h][w]`; returns every layer's
    /// post-ReLU activation from conv1_1 to `deepest`, each `(data [C][H][W], C, H, W)`.
    /// `download`: copy the activations back; else only wait for the pass (what a
    /// benchmark of the forward pass times).
    pub fn forward(
        &self,
        image: &[f32],
        (h, w): (usize, usize),
        deepest: Layer,
        pooling: Pooling,
        download: bool,
    ) -> Result<Vec<HostActivation>> {
        conv::check_size(h, w, deepest)?;
        ensure!(
            image.len() == 3 * h * w,
            "the image holds {} floats, not 3x{h}x{w}",
            image.len()
        );
        let mut st = self.lock(h, w)?;
        let mut x = st.f32s.take(&self.stream, image.len())?;
        self.stream
            .memcpy_htod(image, &mut x)
            .context("copying the image to the CUDA device")?;
        let padded = self.padded(&mut st, &x, h, w)?;
        let acts = self.run(
            &mut st,
            padded.as_ref().unwrap_or(&x),
            h,
            w,
            deepest,
            pooling,
        )?;
        st.f32s.give(x);
        padded.into_iter().for_each(|p| st.f32s.give(p));
        let mut out = Vec::with_capacity(acts.len());
        for a in acts {
            if !download {
                st.f32s.give(a.data);
                continue;
            }
            let host = self.stream.clone_dtoh(&a.data);
            let host = host.context("copying an activation back from the CUDA device")?;
            out.push((host, a.c, a.h, a.w));
            st.f32s.give(a.data);
        }
        // A copy into pageable memory may return before it lands.
        self.stream
            .synchronize()
            .context("waiting for the CUDA device to copy the activations back")?;
        Ok(out)
    }

    /// Uploads the targets: the content activation at `content_layer` (`[C][H][W]`) and
    /// one style Gram `[C][C]` per style layer, in order.
    pub fn upload_targets(
        &self,
        content_layer: Layer,
        content: &[f32],
        grams: &[(Layer, Vec<f32>)],
        masks: &[Option<Vec<Vec<f32>>>],
    ) -> Result<CudaTargets> {
        self.bind()?;
        let up = |what: &str, v: &[f32]| {
            self.stream
                .clone_htod(v)
                .with_context(|| format!("copying {what} to the CUDA device"))
        };
        let mut on_card = Vec::with_capacity(grams.len());
        for (l, g) in grams {
            ensure!(
                g.len() == l.channels() * l.channels(),
                "the style Gram at {l} is not {0}x{0}",
                l.channels()
            );
            on_card.push((*l, up("a style Gram", g)?));
        }
        let masks = masks
            .iter()
            .map(|region| {
                let up_all = |ms: &Vec<Vec<f32>>| -> Result<Vec<CudaSlice<f32>>> {
                    ms.iter().map(|m| up("a region's mask", m)).collect()
                };
                region.as_ref().map(up_all).transpose()
            })
            .collect::<Result<_>>()?;
        Ok(CudaTargets {
            content_layer,
            content: up("the content target", content)?,
            grams: on_card,
            masks,
        })
    }

    /// The costs of `image` (`[3][h][w]`, pixel space) and the gradient of the total cost
    /// `alpha J_content + beta sum_l lambda_l J_style[l] + tv_weight TV` with respect to
    /// it. One copy up, two copies back; everything else stays on the card.
    pub fn evaluate(
        &self,
        image: &[f32],
        h: usize,
        w: usize,
        pooling: Pooling,
        targets: &CudaTargets,
        weights: &CudaCostWeights,
    ) -> Result<(CudaCosts, Vec<f32>)> {
        ensure!(
            image.len() == 3 * h * w,
            "the image holds {} floats, not 3x{h}x{w}",
            image.len()
        );
        let [mut x, mut grad] = self.pooled(h, w, [image.len(); 2])?;
        self.stream
            .memcpy_htod(image, &mut x)
            .context("copying the image to the CUDA device")?;
        let costs = self.evaluate_on_card(&x, h, w, pooling, targets, weights, &mut grad);
        let out = costs.and_then(|c| Ok((c, self.download(&grad)?)));
        self.give_back([x, grad])?;
        out
    }

    /// `N` buffers from the pool for an `h` x `w` image.
    fn pooled<const N: usize>(
        &self,
        h: usize,
        w: usize,
        lens: [usize; N],
    ) -> Result<[CudaSlice<f32>; N]> {
        let mut st = self.lock(h, w)?;
        let mut out = Vec::with_capacity(N);
        for len in lens {
            out.push(st.f32s.take(&self.stream, len)?);
        }
        out.try_into()
            .map_err(|_| anyhow!("the pool gave the wrong number of buffers"))
    }

    /// Buffers back to the pool.
    fn give_back<const N: usize>(&self, buffers: [CudaSlice<f32>; N]) -> Result<()> {
        let mut st = self
            .state
            .lock()
            .map_err(|_| anyhow!("the CUDA network's state was poisoned by a panic"))?;
        buffers.into_iter().for_each(|b| st.f32s.give(b));
        Ok(())
    }

    /// [`CudaVgg::evaluate`] of an image on the card, writing the gradient into `grad`
    /// (`[3][h][w]`) on the card. Only the costs come back: one small copy, which is the
    /// iteration's one wait for the card.
    #[allow(clippy::too_many_arguments)]
    pub fn evaluate_on_card(
        &self,
        image: &CudaSlice<f32>,
        h: usize,
        w: usize,
        pooling: Pooling,
        targets: &CudaTargets,
        weights: &CudaCostWeights,
        grad: &mut CudaSlice<f32>,
    ) -> Result<CudaCosts> {
        let deepest = gram::check_targets(targets, weights)?;
        conv::check_size(h, w, deepest)?;
        ensure!(
            image.len() == 3 * h * w && grad.len() == 3 * h * w,
            "the image and its gradient on the card are not 3x{h}x{w}"
        );
        let mut guard = self.lock(h, w)?;
        let st = &mut *guard;
        let s = &self.stream;
        let padded = self.padded(st, image, h, w)?;
        let x = padded.as_ref().unwrap_or(image);
        let acts = self.run(st, x, h, w, deepest, pooling)?;
        let host = self.host_reply(st, &acts, targets, weights)?;
        let taps = host.as_ref().map(|h| &h.taps[..]);
        // [content, tv, style...], raw sums the host scales below.
        let mut costs = st.f64s.zeroed(s, 2 + weights.style_layers.len())?;
        let mut g = st.f32s.zeroed(s, acts[deepest.0].data.len())?;
        // The chain of input gradients, as `CpuVgg::backward`: at each layer the taps'
        // gradients join what came from above, then the ReLU mask, the transposed
        // convolution, and the pooling's gradient where a block begins.
        for (i, a) in acts.iter().enumerate().rev() {
            self.taps(st, a, i, (targets, taps), weights, &mut g, &mut costs)?;
            self.kernels.relu_mask(s, &mut g, &a.data)?;
            let (c_in, margin) = match i {
                0 => (3, 2 * self.pad),
                _ => (CHANNELS[i - 1], 0),
            };
            let mut dx = st.f32s.take(s, c_in * (a.h + margin) * (a.w + margin))?;
            let weight = &self.weights[i].0;
            st.convs.backward_data(i, (a.h, a.w), &g, weight, &mut dx)?;
            st.f32s.give(std::mem::replace(&mut g, dx));
            if pooled_before(i) {
                let prev = &acts[i - 1];
                let mut up = st.f32s.take(s, prev.data.len())?;
                let max = pooling == Pooling::Max;
                let size = (prev.h, prev.w);
                self.kernels.unpool(s, &g, &prev.data, &mut up, size, max)?;
                st.f32s.give(std::mem::replace(&mut g, up));
            }
        }
        // The input scale, then TV, which is the image's own: on the padded image each
        // edge's differences would count twice, since the border copies the edge.
        let tv = weights.tv_weight;
        match self.pad {
            0 => {
                self.kernels
                    .finish(s, &mut g, x, (h, w), self.scale, tv, &mut costs, 1)?;
                s.memcpy_dtod(&g, grad)
                    .context("copying the image gradient on the CUDA device")?;
            }
            _ => {
                let padded_size = (h + 2, w + 2);
                self.kernels
                    .finish(s, &mut g, x, padded_size, self.scale, 0.0, &mut costs, 1)?;
                self.kernels.fold(s, &g, grad, (h, w))?;
                // Scaling by 1 is exact: only TV is added.
                self.kernels
                    .finish(s, grad, image, (h, w), [1.0; 3], tv, &mut costs, 1)?;
            }
        }
        let sums = s.clone_dtoh(&costs);
        let sums = sums.context("copying the costs back from the CUDA device")?;
        // A copy to pageable memory returns once done; said here rather than assumed.
        s.synchronize()
            .context("waiting for the CUDA device to finish the iteration")?;
        let content = &acts[weights.content_layer.0];
        let parts = CudaCosts {
            content: sums[0] / (4 * content.data.len()) as f64,
            tv: sums[1],
            style: match &host {
                Some(h) => h.style.clone(),
                None => sums[2..].to_vec(),
            },
            regions: host.map(|h| h.regions).unwrap_or_default(),
        };
        st.f32s.give(g);
        st.f64s.give(costs);
        acts.into_iter().for_each(|a| st.f32s.give(a.data));
        padded.into_iter().for_each(|p| st.f32s.give(p));
        Ok(parts)
    }

    /// The image padded on the card where conv1_1 reads it padded (replicate padding).
    fn padded(
        &self,
        st: &mut State,
        image: &CudaSlice<f32>,
        h: usize,
        w: usize,
    ) -> Result<Option<CudaSlice<f32>>> {
        if self.pad == 0 {
            return Ok(None);
        }
        let mut x = st.f32s.take(&self.stream, 3 * (h + 2) * (w + 2))?;
        self.kernels
            .replicate_pad(&self.stream, image, &mut x, (h, w))?;
        Ok(Some(x))
    }

    /// Makes the card's context current on this thread (before work, or before buffers
    /// are dropped).
    pub fn bind(&self) -> Result<()> {
        self.ctx
            .bind_to_thread()
            .context("binding the CUDA context to this thread")
    }

    /// Makes the card's context current for the frees of a `drop`. cudarc's own bind
    /// returns an error an earlier call left behind instead of binding, and a buffer
    /// freed without the context current fails and leaves every later free failing too.
    pub fn bind_for_drop(&self) {
        // SAFETY: the context lives as long as `self`, and stays owned by it.
        if let Err(e) = unsafe { cudarc::driver::result::ctx::set_current(self.ctx.cu_ctx()) } {
            tracing::debug!("binding the CUDA context to free its buffers: {e:?}");
        }
    }

    /// A new buffer of `len` floats on the card, contents undefined.
    pub fn alloc(&self, len: usize) -> Result<CudaSlice<f32>> {
        self.bind()?;
        unsafe { self.stream.alloc::<f32>(len) }
            .with_context(|| format!("allocating {len} floats on the CUDA device"))
    }

    /// A copy of host floats on the card.
    pub fn upload(&self, v: &[f32]) -> Result<CudaSlice<f32>> {
        self.bind()?;
        self.stream
            .clone_htod(v)
            .context("copying to the CUDA device")
    }

    /// A copy of a buffer on the card.
    pub fn duplicate(&self, v: &CudaSlice<f32>) -> Result<CudaSlice<f32>> {
        self.bind()?;
        self.stream
            .clone_dtod(v)
            .context("copying a buffer on the CUDA device")
    }

    /// A buffer's floats on the host.
    pub fn download(&self, v: &CudaSlice<f32>) -> Result<Vec<f32>> {
        self.bind()?;
        let host = self.stream.clone_dtoh(v);
        let host = host.context("copying back from the CUDA device")?;
        self.stream
            .synchronize()
            .context("waiting for the CUDA device")?;
        Ok(host)
    }

    /// One Adam step on the card (see `kernels.rs`'s `adam`).
    pub(crate) fn adam(
        &self,
        now: &AdamSet<CudaSlice<f32>>,
        g: &CudaSlice<f32>,
        next: &mut AdamSet<CudaSlice<f32>>,
        update: &crate::network::resident::AdamUpdate,
    ) -> Result<()> {
        self.bind()?;
        self.kernels.adam(&self.stream, now, g, next, update)
    }
}
