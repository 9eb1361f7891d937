//! The small kernels around cuDNN and cuBLAS, compiled once by nvrtc: the input
//! normalisation, bias and ReLU, the ReLU mask, pooling and its gradient, and the costs
//! with their gradients (formulas in docs/design.md §1), each summed in float64.
//!
//! Every kernel is a grid-stride loop over `unsigned` indices: the caller has checked
//! that no buffer exceeds `i32::MAX` elements. Contraction to FMA is off (`--fmad=false`,
//! [`super::compile`]) so that `x * s + t` rounds as the CPU path's does.

use super::compile::compile;
use crate::network::resident::AdamSet;
use anyhow::{Context, Result};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, LaunchConfig, PushKernelArg,
};
use std::sync::Arc;

pub(super) const SOURCE: &str = r#"
#define LOOP(i, n) for (unsigned i = blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += blockDim.x * gridDim.x)

#ifdef EASEL_ON_CPU
// The unit tests run these kernels on the CPU as a single thread (network/cuda/on_cpu.rs),
// where the block is that one thread.
static void block_add(double v, double* out) { *out += v; }
static void block_max(unsigned v, unsigned* out) { if (v > *out) *out = v; }
#else
// Sums v over the block (in double) and adds the total to *out: one atomic per block.
// Every thread of the block must call it.
__device__ void block_add(double v, double* out) {
    __shared__ double part[32];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
    unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
    if (lane == 0) part[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < (blockDim.x >> 5) ? part[lane] : 0.0;
        for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
        if (lane == 0) atomicAdd(out, v);
    }
}

// The largest v over the block into *out (atomically). For the bits of non-negative
// floats, unsigned order is float order, and a NaN's bits are above infinity's.
__device__ void block_max(unsigned v, unsigned* out) {
    __shared__ unsigned part[32];
    for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_down_sync(0xffffffffu, v, o));
    unsigned lane = threadIdx.x & 31u, warp = threadIdx.x >> 5;
    if (lane == 0) part[warp] = v;
    __syncthreads();
    if (warp == 0) {
        v = lane < (blockDim.x >> 5) ? part[lane] : 0u;
        for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_down_sync(0xffffffffu, v, o));
        if (lane == 0) atomicMax(out, v);
    }
}
#endif

// y = x * scale[c] + shift[c] on [3][plane].
extern "C" __global__ void normalize(const float* x, float* y, unsigned plane,
                                     float s0, float s1, float s2, float t0, float t1, float t2) {
    LOOP(i, 3u * plane) {
        unsigned c = i / plane;
        float s = c == 0 ? s0 : (c == 1 ? s1 : s2);
        float t = c == 0 ? t0 : (c == 1 ? t1 : t2);
        y[i] = x[i] * s + t;
    }
}

// y = relu(y + bias[c]) on [C][plane], in place.
extern "C" __global__ void bias_relu(float* y, const float* bias, unsigned plane, unsigned n) {
    LOOP(i, n) {
        float v = y[i] + bias[i / plane];
        y[i] = v < 0.0f ? 0.0f : v;
    }
}

// g = g where a > 0, else 0 (the ReLU's backward pass; a is the ReLU's output).
extern "C" __global__ void relu_mask(float* g, const float* a, unsigned n) {
    LOOP(i, n) g[i] = a[i] > 0.0f ? g[i] : 0.0f;
}

// 2x2 stride-2 pooling of [C][h][w] into n = C * (h/2) * (w/2) outputs; odd sizes drop
// the last row or column.
extern "C" __global__ void pool(const float* x, float* y, unsigned h, unsigned w,
                                unsigned n, int use_max) {
    unsigned ho = h / 2, wo = w / 2;
    LOOP(i, n) {
        unsigned xo = i % wo, t = i / wo, yo = t % ho, c = t / ho;
        const float* p = x + (c * h + 2 * yo) * w + 2 * xo;
        float a = p[0], b = p[1], cc = p[w], d = p[w + 1];
        y[i] = use_max ? fmaxf(fmaxf(fmaxf(a, b), cc), d) : (a + b + cc + d) * 0.25f;
    }
}

// The gradient of pool: n = C * h * w outputs, each taking its share of its window's
// gradient g; max sends it all to the first largest of x in the window.
extern "C" __global__ void unpool(const float* g, const float* x, float* out, unsigned h,
                                  unsigned w, unsigned n, int use_max) {
    unsigned ho = h / 2, wo = w / 2;
    LOOP(i, n) {
        unsigned xx = i % w, t = i / w, yy = t % h, c = t / h;
        unsigned yo = yy / 2, xo = xx / 2;
        float v = 0.0f;
        if (yo < ho && xo < wo) {
            float gv = g[(c * ho + yo) * wo + xo];
            if (!use_max) {
                v = gv * 0.25f;
            } else {
                unsigned base = (c * h + 2 * yo) * w + 2 * xo;
                unsigned idx[4] = {base, base + 1, base + w, base + w + 1};
                unsigned best = idx[0];
                for (int k = 1; k < 4; ++k) if (x[idx[k]] > x[best]) best = idx[k];
                v = best == i ? gv : 0.0f;
            }
        }
        out[i] = v;
    }
}

// Content: g += coef * (a - t); costs[slot] += sum((a - t)^2) (the host divides by 4CHW).
extern "C" __global__ void content(const float* a, const float* t, float* g, unsigned n,
                                   float coef, double* costs, unsigned slot) {
    double sum = 0.0;
    LOOP(i, n) {
        float d = a[i] - t[i];
        g[i] += coef * d;
        sum += (double)d * (double)d;
    }
    block_add(sum, costs + slot);
}

// Style of one layer from its Gram gram and the target gs ([c][c]): with
// e = (gs - gram) / norm, costs[slot] += sum(e^2), and s = dG + dG^T where
// dG = -coef * e (coef = 2 beta lambda / norm), ready for s A.
extern "C" __global__ void style(const float* gram, const float* gs, float* s, unsigned c,
                                 float norm, float coef, double* costs, unsigned slot) {
    double sum = 0.0;
    LOOP(i, c * c) {
        unsigned r = i / c, k = i % c, j = k * c + r;
        float e = (gs[i] - gram[i]) / norm;
        float et = (gs[j] - gram[j]) / norm;
        s[i] = -(coef * e) - coef * et;
        sum += (double)e * (double)e;
    }
    block_add(sum, costs + slot);
}

// The image gradient's last step on [3][h][w]: g = g * scale[c], plus, when tv is set,
// tv_weight times the gradient of the total variation of the pixel-space image x, whose
// value goes to costs[slot] (each neighbour pair counted once, by its first pixel).
extern "C" __global__ void finish(float* g, const float* x, unsigned h, unsigned w,
                                  float s0, float s1, float s2, int tv, float tv_weight,
                                  double* costs, unsigned slot) {
    double sum = 0.0;
    unsigned plane = h * w;
    LOOP(i, 3u * plane) {
        unsigned c = i / plane, p = i % plane, y = p / w, xx = p % w;
        float v = g[i] * (c == 0 ? s0 : (c == 1 ? s1 : s2));
        if (tv) {
            float xc = x[i], t = 0.0f;
            if (y > 0) t += 2.0f * (xc - x[i - w]);
            if (xx > 0) t += 2.0f * (xc - x[i - 1]);
            if (y + 1 < h) {
                float d = x[i + w] - xc;
                t -= 2.0f * d;
                sum += (double)d * (double)d;
            }
            if (xx + 1 < w) {
                float d = x[i + 1] - xc;
                t -= 2.0f * d;
                sum += (double)d * (double)d;
            }
            v += tv_weight * t;
        }
        g[i] = v;
    }
    block_add(sum, costs + slot);
}

// Row sums of a [c][n] activation, in float64, into sums[c] (zeroed by the caller):
// a block per row at a time.
extern "C" __global__ void row_sums(const float* a, double* sums, unsigned c, unsigned n) {
    for (unsigned r = blockIdx.x; r < c; r += gridDim.x) {
        double sum = 0.0;
        for (unsigned i = threadIdx.x; i < n; i += blockDim.x) sum += (double)a[r * n + i];
        block_add(sum, sums + r);
        // block_add's shared partial sums are read before the next row writes them.
        __syncthreads();
    }
}

// The adjoint of the row sums: g[r][p] += ds[r] on [c][n].
extern "C" __global__ void add_rows(float* g, const float* ds, unsigned n, unsigned total) {
    LOOP(i, total) g[i] += ds[i / n];
}

// A region's mask on each plane: out[c][p] = a[c][p] * m[p] on [C][n].
extern "C" __global__ void mask_planes(const float* a, const float* m, float* out, unsigned n,
                                      unsigned total) {
    LOOP(i, total) out[i] = a[i] * m[i % n];
}

// g[c][p] += t[c][p] * m[p] on [C][n]: a guided Gram's adjoint, masked again.
extern "C" __global__ void add_masked(float* g, const float* t, const float* m, unsigned n,
                                     unsigned total) {
    LOOP(i, total) g[i] += t[i] * m[i % n];
}

// Replicate padding by one pixel: [3][h][w] into [3][h+2][w+2], each border pixel a copy
// of its nearest image pixel (crate::vgg::padding::replicate).
extern "C" __global__ void replicate_pad(const float* x, float* y, unsigned h, unsigned w) {
    unsigned hp = h + 2, wp = w + 2;
    LOOP(i, 3u * hp * wp) {
        unsigned px = i % wp, t = i / wp, py = t % hp, c = t / hp;
        unsigned sy = py == 0 ? 0 : (py > h ? h - 1 : py - 1);
        unsigned sx = px == 0 ? 0 : (px > w ? w - 1 : px - 1);
        y[i] = x[(c * h + sy) * w + sx];
    }
}

// The adjoint of replicate_pad: each image pixel sums the gradient gp ([3][h+2][w+2]) of
// the padded pixels that copy it (crate::vgg::padding::fold).
extern "C" __global__ void fold(const float* gp, float* g, unsigned h, unsigned w) {
    unsigned wp = w + 2, hp = h + 2;
    LOOP(i, 3u * h * w) {
        unsigned x = i % w, t = i / w, y = t % h, c = t / h;
        unsigned y0 = y == 0 ? 0 : y + 1, y1 = y + 1 == h ? hp - 1 : y + 1;
        unsigned x0 = x == 0 ? 0 : x + 1, x1 = x + 1 == w ? wp - 1 : x + 1;
        float sum = 0.0f;
        for (unsigned py = y0; py <= y1; ++py)
            for (unsigned px = x0; px <= x1; ++px)
                sum += gp[(c * hp + py) * wp + px];
        g[i] = sum;
    }
}

// One Adam step on [3][plane] from (x, m, v, avg) with the gradient g into (x2, m2, v2,
// avg2), then the clamp to [lo[c], hi[c]] and the EMA: AdamUpdate::apply and ::element
// (network/resident.rs), operation for operation.
extern "C" __global__ void adam(const float* x, const float* m, const float* v,
                                const float* avg, const float* g, float* x2, float* m2,
                                float* v2, float* avg2, unsigned plane, float b1, float b2,
                                float keep1, float keep2, float eps, float step,
                                float sqrt_bc2, int clamp, float lo0, float lo1, float lo2,
                                float hi0, float hi1, float hi2, int ema, float decay,
                                float keep) {
    LOOP(i, 3u * plane) {
        unsigned c = i / plane;
        float gi = g[i];
        float mi = m[i] * b1 + gi * keep1;
        float vi = v[i] * b2 + gi * gi * keep2;
        float denom = sqrtf(vi) / sqrt_bc2 + eps;
        float xi = x[i] - mi / denom * step;
        if (clamp) {
            float lo = c == 0 ? lo0 : (c == 1 ? lo1 : lo2);
            float hi = c == 0 ? hi0 : (c == 1 ? hi1 : hi2);
            xi = xi < lo ? lo : (xi > hi ? hi : xi);  // NaN stays NaN
        }
        x2[i] = xi;
        m2[i] = mi;
        v2[i] = vi;
        avg2[i] = ema ? avg[i] * decay + xi * keep : avg[i];
    }
}

// L-BFGS's vector arithmetic (optim/vector.rs), in PyTorch's order of operations.

// *out += sum(a * b), in float64.
extern "C" __global__ void dot(const float* a, const float* b, unsigned n, double* out) {
    double sum = 0.0;
    LOOP(i, n) sum += (double)a[i] * (double)b[i];
    block_add(sum, out);
}

// *sum += sum(|a|) in float64; *max_bits = the bits of max(|a|) if larger (zeroed first).
extern "C" __global__ void abs_stats(const float* a, unsigned n, double* sum,
                                     unsigned* max_bits) {
    double total = 0.0;
    unsigned largest = 0u;
    LOOP(i, n) {
        float v = fabsf(a[i]);
        total += (double)v;
        unsigned bits = __float_as_uint(v);
        largest = bits > largest ? bits : largest;
    }
    block_add(total, sum);
    block_max(largest, max_bits);
}

// out = y + x * a.
extern "C" __global__ void add_scaled(const float* y, const float* x, float a, float* out,
                                      unsigned n) {
    LOOP(i, n) out[i] = y[i] + x[i] * a;
}

// out = x * a.
extern "C" __global__ void scale(const float* x, float a, float* out, unsigned n) {
    LOOP(i, n) out[i] = x[i] * a;
}
"#;

/// Threads per block: a multiple of 32, as `block_add` needs.
const THREADS: u32 = 256;
/// Enough blocks to fill any current card; the loops stride over the rest.
const MAX_BLOCKS: usize = 4096;

fn grid(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (
            n.div_ceil(THREADS as usize).clamp(1, MAX_BLOCKS) as u32,
            1,
            1,
        ),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// A size as the kernels' `unsigned`; the caller checked it fits.
fn u(n: usize) -> u32 {
    n as u32
}

/// The kernels, one list: the struct that holds them once loaded and, for the tests,
/// their names.
macro_rules! kernels {
    ($($name:ident),* $(,)?) => {
        /// The kernels' entry points in the source (the tests check them).
        #[cfg(test)]
        pub(super) const NAMES: &[&str] = &[$(stringify!($name)),*];

        /// The compiled kernels.
        pub(super) struct Kernels {
            $($name: CudaFunction,)*
        }

        impl Kernels {
            fn from_module(module: &Arc<CudaModule>) -> Result<Kernels> {
                let f = |name: &str| {
                    module
                        .load_function(name)
                        .with_context(|| format!("finding the CUDA kernel {name}"))
                };
                Ok(Kernels {
                    $($name: f(stringify!($name))?,)*
                })
            }
        }
    };
}

kernels!(
    normalize,
    bias_relu,
    relu_mask,
    pool,
    unpool,
    content,
    style,
    finish,
    replicate_pad,
    fold,
    adam,
    row_sums,
    add_rows,
    mask_planes,
    add_masked,
    dot,
    abs_stats,
    add_scaled,
    scale,
);

impl Kernels {
    /// Compiles the kernels for the device (see [`super::compile`]) and loads them.
    pub fn new(ctx: &Arc<CudaContext>) -> Result<Kernels> {
        let capability = ctx
            .compute_capability()
            .context("reading the CUDA device's compute capability")?;
        let image = compile(SOURCE, capability)?.into_module_image();
        let module = ctx
            .load_module(image)
            .context("loading easel's CUDA kernels")?;
        Kernels::from_module(&module)
    }

    /// `y = x * scale[c] + shift[c]` on `[3][plane]`.
    pub fn normalize(
        &self,
        s: &CudaStream,
        x: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
        plane: usize,
        [s0, s1, s2]: [f32; 3],
        [t0, t1, t2]: [f32; 3],
    ) -> Result<()> {
        let plane = u(plane);
        let mut b = s.launch_builder(&self.normalize);
        b.arg(x).arg(y).arg(&plane);
        b.arg(&s0).arg(&s1).arg(&s2).arg(&t0).arg(&t1).arg(&t2);
        unsafe { b.launch(grid(3 * plane as usize)) }.context("launching normalize")?;
        Ok(())
    }

    /// `y = relu(y + bias[c])` on `[C][plane]`.
    pub fn bias_relu(
        &self,
        s: &CudaStream,
        y: &mut CudaSlice<f32>,
        bias: &CudaSlice<f32>,
        plane: usize,
    ) -> Result<()> {
        let (n, plane) = (u(y.len()), u(plane));
        let mut b = s.launch_builder(&self.bias_relu);
        b.arg(y).arg(bias).arg(&plane).arg(&n);
        unsafe { b.launch(grid(n as usize)) }.context("launching bias_relu")?;
        Ok(())
    }

    /// `g = g` where `a > 0`, else 0.
    pub fn relu_mask(
        &self,
        s: &CudaStream,
        g: &mut CudaSlice<f32>,
        a: &CudaSlice<f32>,
    ) -> Result<()> {
        let n = u(g.len());
        let mut b = s.launch_builder(&self.relu_mask);
        b.arg(g).arg(a).arg(&n);
        unsafe { b.launch(grid(n as usize)) }.context("launching relu_mask")?;
        Ok(())
    }

    /// Pools `x` (`[C][h][w]`) into `y` (`[C][h/2][w/2]`).
    pub fn pool(
        &self,
        s: &CudaStream,
        x: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
        (h, w): (usize, usize),
        max: bool,
    ) -> Result<()> {
        let (n, h, w, max) = (u(y.len()), u(h), u(w), i32::from(max));
        let mut b = s.launch_builder(&self.pool);
        b.arg(x).arg(y).arg(&h).arg(&w).arg(&n).arg(&max);
        unsafe { b.launch(grid(n as usize)) }.context("launching pool")?;
        Ok(())
    }

    /// The gradient `g` at the pooled `[C][h/2][w/2]` spread back to `out` (`[C][h][w]`),
    /// `x` being the pooling's input.
    pub fn unpool(
        &self,
        s: &CudaStream,
        g: &CudaSlice<f32>,
        x: &CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
        (h, w): (usize, usize),
        max: bool,
    ) -> Result<()> {
        let (n, h, w, max) = (u(out.len()), u(h), u(w), i32::from(max));
        let mut b = s.launch_builder(&self.unpool);
        b.arg(g).arg(x).arg(out).arg(&h).arg(&w).arg(&n).arg(&max);
        unsafe { b.launch(grid(n as usize)) }.context("launching unpool")?;
        Ok(())
    }

    /// `g += coef (a - t)`; `costs[slot] += sum((a - t)^2)`.
    #[allow(clippy::too_many_arguments)]
    pub fn content(
        &self,
        s: &CudaStream,
        a: &CudaSlice<f32>,
        t: &CudaSlice<f32>,
        g: &mut CudaSlice<f32>,
        coef: f32,
        costs: &mut CudaSlice<f64>,
        slot: usize,
    ) -> Result<()> {
        let (n, slot) = (u(a.len()), u(slot));
        let mut b = s.launch_builder(&self.content);
        b.arg(a)
            .arg(t)
            .arg(g)
            .arg(&n)
            .arg(&coef)
            .arg(costs)
            .arg(&slot);
        unsafe { b.launch(grid(n as usize)) }.context("launching content")?;
        Ok(())
    }

    /// From a layer's Gram and its target (`[c][c]`): `costs[slot] += J_style[l]` and
    /// `sym = dG + dG^T` for `dG = coef (G - G_S) / norm`.
    #[allow(clippy::too_many_arguments)]
    pub fn style(
        &self,
        s: &CudaStream,
        gram: &CudaSlice<f32>,
        target: &CudaSlice<f32>,
        sym: &mut CudaSlice<f32>,
        c: usize,
        (norm, coef): (f32, f32),
        costs: &mut CudaSlice<f64>,
        slot: usize,
    ) -> Result<()> {
        let (c, slot) = (u(c), u(slot));
        let mut b = s.launch_builder(&self.style);
        b.arg(gram).arg(target).arg(sym).arg(&c);
        b.arg(&norm).arg(&coef).arg(costs).arg(&slot);
        unsafe { b.launch(grid((c * c) as usize)) }.context("launching style")?;
        Ok(())
    }

    /// `g *= scale[c]` on `[3][h][w]`, plus `tv_weight` times the TV gradient of `x`
    /// when `tv_weight > 0` (its value into `costs[slot]`).
    #[allow(clippy::too_many_arguments)]
    pub fn finish(
        &self,
        s: &CudaStream,
        g: &mut CudaSlice<f32>,
        x: &CudaSlice<f32>,
        (h, w): (usize, usize),
        [s0, s1, s2]: [f32; 3],
        tv_weight: f64,
        costs: &mut CudaSlice<f64>,
        slot: usize,
    ) -> Result<()> {
        let (h, w, slot) = (u(h), u(w), u(slot));
        let (tv, tvw) = (i32::from(tv_weight > 0.0), tv_weight as f32);
        let mut b = s.launch_builder(&self.finish);
        b.arg(g).arg(x).arg(&h).arg(&w).arg(&s0).arg(&s1).arg(&s2);
        b.arg(&tv).arg(&tvw).arg(costs).arg(&slot);
        unsafe { b.launch(grid(3 * (h * w) as usize)) }.context("launching finish")?;
        Ok(())
    }

    /// Replicate padding, one pixel: `x` (`[3][h][w]`) into `y` (`[3][h+2][w+2]`).
    pub fn replicate_pad(
        &self,
        s: &CudaStream,
        x: &CudaSlice<f32>,
        y: &mut CudaSlice<f32>,
        (h, w): (usize, usize),
    ) -> Result<()> {
        let n = y.len();
        let (h, w) = (u(h), u(w));
        let mut b = s.launch_builder(&self.replicate_pad);
        b.arg(x).arg(y).arg(&h).arg(&w);
        unsafe { b.launch(grid(n)) }.context("launching replicate_pad")?;
        Ok(())
    }

    /// The adjoint of [`Kernels::replicate_pad`]: `gp` (`[3][h+2][w+2]`) into `g`.
    pub fn fold(
        &self,
        s: &CudaStream,
        gp: &CudaSlice<f32>,
        g: &mut CudaSlice<f32>,
        (h, w): (usize, usize),
    ) -> Result<()> {
        let n = g.len();
        let (h, w) = (u(h), u(w));
        let mut b = s.launch_builder(&self.fold);
        b.arg(gp).arg(g).arg(&h).arg(&w);
        unsafe { b.launch(grid(n)) }.context("launching fold")?;
        Ok(())
    }

    /// One Adam step of `update` from `now` with the gradient `g` into `next`.
    pub fn adam(
        &self,
        s: &CudaStream,
        now: &AdamSet<CudaSlice<f32>>,
        g: &CudaSlice<f32>,
        next: &mut AdamSet<CudaSlice<f32>>,
        update: &crate::network::resident::AdamUpdate,
    ) -> Result<()> {
        let n = g.len();
        let plane = u(n / 3);
        let (clamp, ([lo0, lo1, lo2], [hi0, hi1, hi2])) = match update.clamp {
            Some(range) => (1i32, range),
            None => (0, ([0.0; 3], [0.0; 3])),
        };
        let (ema, (decay, keep)) = match update.ema {
            Some(d) => (1i32, d),
            None => (0, (0.0f32, 0.0f32)),
        };
        let mut b = s.launch_builder(&self.adam);
        b.arg(&now.x).arg(&now.m).arg(&now.v).arg(&now.avg).arg(g);
        b.arg(&mut next.x)
            .arg(&mut next.m)
            .arg(&mut next.v)
            .arg(&mut next.avg)
            .arg(&plane);
        b.arg(&update.beta1).arg(&update.beta2);
        b.arg(&update.keep1).arg(&update.keep2).arg(&update.eps);
        b.arg(&update.step).arg(&update.sqrt_bc2).arg(&clamp);
        b.arg(&lo0)
            .arg(&lo1)
            .arg(&lo2)
            .arg(&hi0)
            .arg(&hi1)
            .arg(&hi2);
        b.arg(&ema).arg(&decay).arg(&keep);
        unsafe { b.launch(grid(n)) }.context("launching adam")?;
        Ok(())
    }

    /// `sums[r] += sum_p a[r][p]` in float64, for `a` the `[c][n]` activation.
    pub fn row_sums(
        &self,
        s: &CudaStream,
        a: &CudaSlice<f32>,
        sums: &mut CudaSlice<f64>,
        (c, n): (usize, usize),
    ) -> Result<()> {
        let cfg = LaunchConfig {
            grid_dim: (c.clamp(1, MAX_BLOCKS) as u32, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        let (c, n) = (u(c), u(n));
        let mut b = s.launch_builder(&self.row_sums);
        b.arg(a).arg(sums).arg(&c).arg(&n);
        unsafe { b.launch(cfg) }.context("launching row_sums")?;
        Ok(())
    }

    /// `g[r][p] += ds[r]` on `[c][n]`: the row sums' adjoint.
    pub fn add_rows(
        &self,
        s: &CudaStream,
        g: &mut CudaSlice<f32>,
        ds: &CudaSlice<f32>,
        n: usize,
    ) -> Result<()> {
        let total = g.len();
        let (n, total32) = (u(n), u(total));
        let mut b = s.launch_builder(&self.add_rows);
        b.arg(g).arg(ds).arg(&n).arg(&total32);
        unsafe { b.launch(grid(total)) }.context("launching add_rows")?;
        Ok(())
    }

    /// `out[c][p] = a[c][p] m[p]` on `[C][n]`, `n = m.len()`.
    pub fn mask_planes(
        &self,
        s: &CudaStream,
        a: &CudaSlice<f32>,
        m: &CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let total = a.len();
        let (n, total32) = (u(m.len()), u(total));
        let mut b = s.launch_builder(&self.mask_planes);
        b.arg(a).arg(m).arg(out).arg(&n).arg(&total32);
        unsafe { b.launch(grid(total)) }.context("launching mask_planes")?;
        Ok(())
    }

    /// `g[c][p] += t[c][p] m[p]` on `[C][n]`, `n = m.len()`.
    pub fn add_masked(
        &self,
        s: &CudaStream,
        g: &mut CudaSlice<f32>,
        t: &CudaSlice<f32>,
        m: &CudaSlice<f32>,
    ) -> Result<()> {
        let total = g.len();
        let (n, total32) = (u(m.len()), u(total));
        let mut b = s.launch_builder(&self.add_masked);
        b.arg(g).arg(t).arg(m).arg(&n).arg(&total32);
        unsafe { b.launch(grid(total)) }.context("launching add_masked")?;
        Ok(())
    }

    /// `out += a . b` in float64 (`out` zeroed by the caller).
    pub fn dot(
        &self,
        s: &CudaStream,
        a: &CudaSlice<f32>,
        b: &CudaSlice<f32>,
        out: &mut CudaSlice<f64>,
    ) -> Result<()> {
        let n = u(a.len());
        let mut l = s.launch_builder(&self.dot);
        l.arg(a).arg(b).arg(&n).arg(out);
        unsafe { l.launch(grid(n as usize)) }.context("launching dot")?;
        Ok(())
    }

    /// `sum += sum |a|` (float64) and `max_bits` = the bits of `max |a|` (both zeroed
    /// by the caller).
    pub fn abs_stats(
        &self,
        s: &CudaStream,
        a: &CudaSlice<f32>,
        sum: &mut CudaSlice<f64>,
        max_bits: &mut CudaSlice<u32>,
    ) -> Result<()> {
        let n = u(a.len());
        let mut l = s.launch_builder(&self.abs_stats);
        l.arg(a).arg(&n).arg(sum).arg(max_bits);
        unsafe { l.launch(grid(n as usize)) }.context("launching abs_stats")?;
        Ok(())
    }

    /// `out = y + x * a`.
    pub fn add_scaled(
        &self,
        s: &CudaStream,
        y: &CudaSlice<f32>,
        x: &CudaSlice<f32>,
        a: f32,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let n = u(out.len());
        let mut l = s.launch_builder(&self.add_scaled);
        l.arg(y).arg(x).arg(&a).arg(out).arg(&n);
        unsafe { l.launch(grid(n as usize)) }.context("launching add_scaled")?;
        Ok(())
    }

    /// `out = x * a`.
    pub fn scale(
        &self,
        s: &CudaStream,
        x: &CudaSlice<f32>,
        a: f32,
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let n = u(out.len());
        let mut l = s.launch_builder(&self.scale);
        l.arg(x).arg(&a).arg(out).arg(&n);
        unsafe { l.launch(grid(n as usize)) }.context("launching scale")?;
        Ok(())
    }
}
