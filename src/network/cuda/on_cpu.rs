//! The kernels of [`super::kernels`] compiled as C++ and run on the CPU as a single
//! thread, against the CPU path's own functions and the costs' definitions.
//!
//! What this covers without a card: every kernel's index arithmetic (pooling windows,
//! odd sizes, padding borders, transposes, channel of an index) and its float32
//! operations in their order. Contraction to FMA is off here as nvrtc is told, and
//! nvrtc's default division and square root are IEEE's, so element-wise results are
//! the card's bit for bit. What it does not cover is `block_add`'s reduction across a
//! block's threads (here the block is one thread), and the launch wrappers' arguments;
//! the GPU tests (tests/cuda.rs) cover both.
//!
//! L-BFGS runs here on vectors these kernels compute ([`EmulatedOps`]), against L-BFGS on
//! the host's tensors: the device side of `optim::vector` (adoption, downloads for a
//! checkpoint) with the card's arithmetic.

use super::kernels::SOURCE;
use crate::loss::{self, Costs};
use crate::network::resident::AdamUpdate;
use crate::optim::vector::{DeviceVector, HostOps, Vector, VectorOps};
use crate::optim::{Optimizer, OptimizerSpec};
use crate::vgg::cpu::{self, Activation};
use crate::vgg::{Pooling, padding};
use burn::tensor::{Device, Tensor, TensorData};
use libloading::Library;
use rand::{RngExt, SeedableRng};
use std::any::Any;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, OnceLock};

/// What CUDA provides that C++ does not: one block of one thread.
const PRELUDE: &str = r#"
#include <math.h>
#include <string.h>
static unsigned __float_as_uint(float f) { unsigned u; memcpy(&u, &f, 4); return u; }
struct easel_dim3 { unsigned x, y, z; };
static const easel_dim3 blockIdx = {0, 0, 0}, threadIdx = {0, 0, 0};
static const easel_dim3 blockDim = {1, 1, 1}, gridDim = {1, 1, 1};
#define __global__
#define __device__ static
#define __syncthreads() ((void)0)
"#;

/// The kernels as a shared library, built once per test process with the system's C++
/// compiler (`CXX`, else `c++`).
fn library() -> &'static Library {
    static LIB: OnceLock<Library> = OnceLock::new();
    LIB.get_or_init(|| {
        build().unwrap_or_else(|e| {
            panic!("running the CUDA kernels on the CPU needs a C++ compiler (`c++`, or set CXX; Debian: apt install g++): {e}")
        })
    })
}

fn build() -> Result<Library, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?.keep();
    let source = dir.join("easel_kernels.cpp");
    std::fs::write(&source, format!("{PRELUDE}{SOURCE}")).map_err(|e| e.to_string())?;
    let lib = dir.join("libeasel_kernels.so");
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let out = Command::new(&cxx)
        .args(["-std=c++17", "-O2", "-ffp-contract=off", "-fPIC", "-shared"])
        .arg("-DEASEL_ON_CPU")
        .arg(&source)
        .arg("-o")
        .arg(&lib)
        .output()
        .map_err(|e| format!("{cxx}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cxx} failed on {}: {}",
            source.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    open(&lib)
}

fn open(lib: &Path) -> Result<Library, String> {
    // SAFETY: the library is the kernels just compiled; loading it runs no initialisers.
    unsafe { Library::new(lib) }.map_err(|e| e.to_string())
}

/// The kernel `name` with the C signature `F`, which must match the source's.
fn kernel<F: Copy>(name: &str) -> F {
    // SAFETY: each caller names `F` as the kernel's C signature in SOURCE.
    let symbol = unsafe { library().get::<F>(name.as_bytes()) };
    *symbol.unwrap_or_else(|e| panic!("kernel {name}: {e}"))
}

type F32p = *const f32;
type F32m = *mut f32;

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn host_tensor<const D: usize>(data: &[f32], shape: [usize; D]) -> Tensor<D> {
    Tensor::from_data(TensorData::new(data.to_vec(), shape), &Device::flex())
}

fn scalar(t: Tensor<1>) -> f64 {
    t.into_scalar::<f32>() as f64
}

fn assert_close(got: &[f32], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs() / w.abs().max(1.0);
        assert!(err <= tol, "{what} at {i}: {g} against {w}");
    }
}

fn relative(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(f64::MIN_POSITIVE)
}

#[test]
fn pooling_and_its_gradient_match_the_cpu_path_at_odd_sizes_and_on_ties() {
    let pool: unsafe extern "C" fn(F32p, F32m, u32, u32, u32, i32) = kernel("pool");
    let unpool: unsafe extern "C" fn(F32p, F32p, F32m, u32, u32, u32, i32) = kernel("unpool");
    let (c, h, w) = (3, 7, 9);
    let mut x = random(c * h * w, 1);
    // A window of equal values: max pooling's gradient goes to the first of them.
    for i in [w + 2, w + 3, 2 * w + 2, 2 * w + 3] {
        x[i] = 0.5;
    }
    for pooling in [Pooling::Avg, Pooling::Max] {
        let max = i32::from(pooling == Pooling::Max);
        let want = cpu::pool(&x, c, h, w, pooling);
        let mut y = vec![f32::NAN; want.len()];
        // SAFETY: the buffers have the sizes the kernel indexes.
        unsafe {
            pool(
                x.as_ptr(),
                y.as_mut_ptr(),
                h as u32,
                w as u32,
                y.len() as u32,
                max,
            )
        };
        assert_eq!(y, want, "{pooling:?} pooling");
        let g = random(want.len(), 2);
        let want = cpu::unpool(&g, &x, c, h, w, pooling);
        let mut out = vec![f32::NAN; c * h * w];
        let n = out.len() as u32;
        // SAFETY: as above.
        unsafe {
            unpool(
                g.as_ptr(),
                x.as_ptr(),
                out.as_mut_ptr(),
                h as u32,
                w as u32,
                n,
                max,
            )
        };
        assert_eq!(out, want, "{pooling:?} pooling's gradient");
    }
}

#[test]
fn replicate_padding_and_its_fold_match_the_cpu_path() {
    let pad: unsafe extern "C" fn(F32p, F32m, u32, u32) = kernel("replicate_pad");
    let fold: unsafe extern "C" fn(F32p, F32m, u32, u32) = kernel("fold");
    for (h, w) in [(5, 4), (1, 3), (2, 1)] {
        let x = random(3 * h * w, 3);
        let want = padding::replicate(&x, 3, h, w);
        let mut y = vec![f32::NAN; want.len()];
        // SAFETY: y is [3][h+2][w+2], x [3][h][w].
        unsafe { pad(x.as_ptr(), y.as_mut_ptr(), h as u32, w as u32) };
        assert_eq!(y, want, "padding at {h}x{w}");
        let gp = random(want.len(), 4);
        let want: Vec<f64> = padding::fold(&gp, 3, h, w)
            .iter()
            .map(|&v| v as f64)
            .collect();
        let mut g = vec![f32::NAN; 3 * h * w];
        // SAFETY: as above.
        unsafe { fold(gp.as_ptr(), g.as_mut_ptr(), h as u32, w as u32) };
        assert_close(&g, &want, 1e-6, &format!("fold at {h}x{w}"));
    }
}

#[rustfmt::skip]
type AdamKernel = unsafe extern "C" fn(
    F32p, F32p, F32p, F32p, F32p, F32m, F32m, F32m, F32m, u32, f32, f32, f32, f32, f32, f32,
    f32, i32, f32, f32, f32, f32, f32, f32, i32, f32, f32,
);

/// The kernel's Adam step on `[3][plane]`, as `Kernels::adam` passes `update`.
fn adam_on_cpu(update: &AdamUpdate, now: &[Vec<f32>; 4], g: &[f32]) -> [Vec<f32>; 4] {
    let adam: AdamKernel = kernel("adam");
    let n = g.len();
    let mut next: [Vec<f32>; 4] = std::array::from_fn(|_| vec![f32::NAN; n]);
    let (clamp, (lo, hi)) = update.clamp.map_or((0, ([0.0; 3], [0.0; 3])), |r| (1, r));
    let (ema, (decay, keep)) = update.ema.map_or((0, (0.0, 0.0)), |d| (1, d));
    let [x2, m2, v2, avg2] = &mut next;
    // SAFETY: every buffer holds 3 * plane floats.
    unsafe {
        adam(
            now[0].as_ptr(),
            now[1].as_ptr(),
            now[2].as_ptr(),
            now[3].as_ptr(),
            g.as_ptr(),
            x2.as_mut_ptr(),
            m2.as_mut_ptr(),
            v2.as_mut_ptr(),
            avg2.as_mut_ptr(),
            (n / 3) as u32,
            update.beta1,
            update.beta2,
            update.keep1,
            update.keep2,
            update.eps,
            update.step,
            update.sqrt_bc2,
            clamp,
            lo[0],
            lo[1],
            lo[2],
            hi[0],
            hi[1],
            hi[2],
            ema,
            decay,
            keep,
        )
    };
    next
}

#[test]
fn adams_step_is_the_hosts_bit_for_bit_with_clamp_ema_and_nan() {
    let plane = 40;
    let n = 3 * plane;
    let mut now: [Vec<f32>; 4] = std::array::from_fn(|k| random(n, 10 + k as u64));
    now[2].iter_mut().for_each(|v| *v = v.abs() * 1e-3);
    let mut g = random(n, 20);
    g[7] = f32::NAN;
    let base = AdamUpdate::new(&crate::optim::Adam::default(), 3, 0.05);
    let range = ([-0.9f32, -0.2, -0.5], [0.1f32, 0.8, 0.3]);
    for (clamp, ema) in [(None, None), (Some(range), Some((0.99f32, 0.01f32)))] {
        let update = AdamUpdate { clamp, ema, ..base };
        let got = adam_on_cpu(&update, &now, &g);
        let mut want: [Vec<f32>; 4] = std::array::from_fn(|_| vec![0.0; n]);
        for c in 0..3 {
            let span = c * plane..(c + 1) * plane;
            let [x, m, v, avg] = &now;
            let [x2, m2, v2, avg2] = &mut want;
            update.apply(
                c,
                [
                    &x[span.clone()],
                    &m[span.clone()],
                    &v[span.clone()],
                    &avg[span.clone()],
                ],
                &g[span.clone()],
                [
                    &mut x2[span.clone()],
                    &mut m2[span.clone()],
                    &mut v2[span.clone()],
                    &mut avg2[span.clone()],
                ],
            );
        }
        for (k, name) in ["x", "m", "v", "avg"].iter().enumerate() {
            let same =
                |(a, b): (&f32, &f32)| a.to_bits() == b.to_bits() || a.is_nan() && b.is_nan();
            assert!(
                got[k].iter().zip(&want[k]).all(same),
                "{name} with clamp {clamp:?} and ema {ema:?}"
            );
        }
        assert!(
            got[0][7].is_nan(),
            "a NaN gradient stays NaN through the clamp"
        );
    }
}

#[test]
fn the_content_cost_and_its_gradient_follow_the_definition() {
    let content: unsafe extern "C" fn(F32p, F32p, F32m, u32, f32, *mut f64, u32) =
        kernel("content");
    let (c, h, w) = (4, 5, 6);
    let n = c * h * w;
    let (a, t, g0) = (random(n, 30), random(n, 31), random(n, 32));
    let alpha = 3.0;
    let coef = (alpha * 2.0 / (4.0 * n as f64)) as f32;
    let mut g = g0.clone();
    let mut costs = [0f64; 3];
    // SAFETY: a, t and g hold n floats; slot 1 is within costs.
    unsafe {
        let out = costs.as_mut_ptr();
        content(
            a.as_ptr(),
            t.as_ptr(),
            g.as_mut_ptr(),
            n as u32,
            coef,
            out,
            1,
        )
    };
    let want = scalar(loss::content_cost(
        host_tensor(&t, [1, c, h, w]),
        host_tensor(&a, [1, c, h, w]),
    ));
    assert!(
        relative(costs[1] / (4.0 * n as f64), want) < 1e-6,
        "{costs:?} {want}"
    );
    assert_eq!((costs[0], costs[2]), (0.0, 0.0), "other slots untouched");
    // alpha dJ/da = alpha 2 (a - t) / 4CHW.
    let grad: Vec<f64> = (0..n)
        .map(|i| g0[i] as f64 + alpha * 2.0 * (a[i] - t[i]) as f64 / (4.0 * n as f64))
        .collect();
    assert_close(&g, &grad, 1e-6, "content gradient");
}

#[test]
fn the_style_cost_and_its_symmetrised_gradient_follow_the_definition() {
    let style: unsafe extern "C" fn(F32p, F32p, F32m, u32, f32, f32, *mut f64, u32) =
        kernel("style");
    let (c, h, w) = (5, 3, 4);
    // Not symmetric, so that a transposed index shows.
    let (gram, target) = (random(c * c, 40), random(c * c, 41));
    let norm = 2.0 * (c * h * w) as f64;
    let (beta, lambda) = (7.0, 0.25);
    let coef = 2.0 * beta * lambda / norm;
    let mut sym = vec![f32::NAN; c * c];
    let mut costs = [0f64; 4];
    // SAFETY: gram, target and sym hold c * c floats; slot 3 is within costs.
    unsafe {
        let out = costs.as_mut_ptr();
        let (g, t, s) = (gram.as_ptr(), target.as_ptr(), sym.as_mut_ptr());
        style(g, t, s, c as u32, norm as f32, coef as f32, out, 3)
    };
    let want = scalar(loss::style_cost_of_gram(
        host_tensor(&target, [c, c]),
        host_tensor(&gram, [c, c]),
        [c, h, w],
    ));
    assert!(relative(costs[3], want) < 1e-5, "{costs:?} {want}");
    // beta lambda dJ/dG = -2 beta lambda (G_S - G) / norm^2, plus its transpose.
    let d = |i: usize| -coef * (target[i] - gram[i]) as f64 / norm;
    let want: Vec<f64> = (0..c * c).map(|i| d(i) + d((i % c) * c + i / c)).collect();
    assert_close(&sym, &want, 1e-6, "dG + dG^T");
}

#[test]
fn the_last_step_scales_by_channel_and_adds_the_total_variations_gradient() {
    let finish: unsafe extern "C" fn(F32m, F32p, u32, u32, f32, f32, f32, i32, f32, *mut f64, u32) =
        kernel("finish");
    let (h, w) = (4, 5);
    let n = 3 * h * w;
    let (x, g0) = (random(n, 50), random(n, 51));
    let scale = [0.5f32, 2.0, 3.0];
    let tv_weight = 0.3f32;
    let run = |tv: i32| {
        let (mut g, mut costs) = (g0.clone(), [0f64; 2]);
        // SAFETY: g and x hold 3 h w floats; slot 1 is within costs.
        unsafe {
            let [s0, s1, s2] = scale;
            let (gp, out) = (g.as_mut_ptr(), costs.as_mut_ptr());
            finish(
                gp,
                x.as_ptr(),
                h as u32,
                w as u32,
                s0,
                s1,
                s2,
                tv,
                tv_weight,
                out,
                1,
            )
        };
        (g, costs)
    };
    let (g, costs) = run(0);
    let scaled: Vec<f32> = (0..n).map(|i| g0[i] * scale[i / (h * w)]).collect();
    assert_eq!((g, costs), (scaled, [0.0; 2]), "without TV: the scale only");

    let (g, costs) = run(1);
    let want = scalar(loss::tv_cost(host_tensor(&x, [1, 3, h, w])));
    assert!(relative(costs[1], want) < 1e-6, "{costs:?} {want}");
    // The TV gradient pair by pair: each neighbour pair (p, q) adds 2 (x_p - x_q) to p.
    let mut tv = vec![0f64; n];
    let mut pair = |p: usize, q: usize| {
        let d = (x[q] - x[p]) as f64;
        tv[p] -= 2.0 * d;
        tv[q] += 2.0 * d;
    };
    for c in 0..3 {
        for y in 0..h {
            for xx in 0..w {
                let p = (c * h + y) * w + xx;
                if y + 1 < h {
                    pair(p, p + w);
                }
                if xx + 1 < w {
                    pair(p, p + 1);
                }
            }
        }
    }
    let want: Vec<f64> = (0..n)
        .map(|i| (g0[i] * scale[i / (h * w)]) as f64 + tv_weight as f64 * tv[i])
        .collect();
    assert_close(&g, &want, 1e-5, "TV gradient");
}

#[test]
fn row_sums_masks_and_their_adjoints_match_the_cpu_path() {
    let row_sums: unsafe extern "C" fn(F32p, *mut f64, u32, u32) = kernel("row_sums");
    let add_rows: unsafe extern "C" fn(F32m, F32p, u32, u32) = kernel("add_rows");
    let mask_planes: unsafe extern "C" fn(F32p, F32p, F32m, u32, u32) = kernel("mask_planes");
    let add_masked: unsafe extern "C" fn(F32m, F32p, F32p, u32, u32) = kernel("add_masked");
    let (c, h, w) = (3, 2, 4);
    let n = h * w;
    let act = Activation {
        data: random(c * n, 60),
        channels: c,
        height: h,
        width: w,
    };
    let (total, m, ds, g0) = (
        (c * n) as u32,
        random(n, 61),
        random(c, 62),
        random(c * n, 63),
    );
    let mut sums = vec![0f64; c];
    // SAFETY: the activation is [c][n], sums [c].
    unsafe { row_sums(act.data.as_ptr(), sums.as_mut_ptr(), c as u32, n as u32) };
    let sums: Vec<f32> = sums.iter().map(|&s| s as f32).collect();
    assert_eq!(sums, act.row_sums(), "row sums");

    let mut g = g0.clone();
    // SAFETY: g is [c][n], ds [c].
    unsafe { add_rows(g.as_mut_ptr(), ds.as_ptr(), n as u32, total) };
    let adjoint = act.row_sums_adjoint(&ds);
    let want: Vec<f32> = g0.iter().zip(&adjoint).map(|(a, b)| a + b).collect();
    assert_eq!(g, want, "the row sums' adjoint");

    let mut out = vec![f32::NAN; c * n];
    // SAFETY: the activation and out are [c][n], m [n].
    unsafe {
        mask_planes(
            act.data.as_ptr(),
            m.as_ptr(),
            out.as_mut_ptr(),
            n as u32,
            total,
        )
    };
    assert_eq!(out, act.masked(&m).data, "masked planes");

    let mut g = g0.clone();
    // SAFETY: as above.
    unsafe {
        add_masked(
            g.as_mut_ptr(),
            act.data.as_ptr(),
            m.as_ptr(),
            n as u32,
            total,
        )
    };
    let want: Vec<f32> = (0..c * n).map(|i| g0[i] + act.data[i] * m[i % n]).collect();
    assert_eq!(g, want, "the masked adjoint");
}

#[test]
fn normalisation_bias_and_relu_work_per_channel() {
    let normalize: unsafe extern "C" fn(F32p, F32m, u32, f32, f32, f32, f32, f32, f32) =
        kernel("normalize");
    let bias_relu: unsafe extern "C" fn(F32m, F32p, u32, u32) = kernel("bias_relu");
    let relu_mask: unsafe extern "C" fn(F32m, F32p, u32) = kernel("relu_mask");
    let plane = 6;
    let x = random(3 * plane, 70);
    let (s, t) = ([0.5f32, 2.0, 4.0], [0.1f32, -0.2, 0.3]);
    let mut y = vec![f32::NAN; 3 * plane];
    // SAFETY: x and y are [3][plane].
    unsafe {
        let p = y.as_mut_ptr();
        normalize(
            x.as_ptr(),
            p,
            plane as u32,
            s[0],
            s[1],
            s[2],
            t[0],
            t[1],
            t[2],
        )
    };
    let want: Vec<f32> = (0..3 * plane)
        .map(|i| x[i] * s[i / plane] + t[i / plane])
        .collect();
    assert_eq!(y, want, "normalisation");

    let bias = [0.3f32, -0.4, 0.0];
    let mut a = x.clone();
    // SAFETY: a is [3][plane], bias [3].
    unsafe {
        bias_relu(
            a.as_mut_ptr(),
            bias.as_ptr(),
            plane as u32,
            (3 * plane) as u32,
        )
    };
    let want: Vec<f32> = (0..3 * plane)
        .map(|i| (x[i] + bias[i / plane]).max(0.0))
        .collect();
    assert_eq!(a, want, "bias and ReLU");

    let g0 = random(3 * plane, 71);
    let mut g = g0.clone();
    // SAFETY: g and a are [3][plane].
    unsafe { relu_mask(g.as_mut_ptr(), a.as_ptr(), (3 * plane) as u32) };
    let want: Vec<f32> = (0..3 * plane)
        .map(|i| if a[i] > 0.0 { g0[i] } else { 0.0 })
        .collect();
    assert_eq!(g, want, "the ReLU's mask");
}

/// A vector in "device" memory whose arithmetic is the card's kernels, run here.
#[derive(Debug)]
struct EmulatedVector(Vec<f32>);

impl DeviceVector for EmulatedVector {
    fn download(&self) -> anyhow::Result<Vec<f32>> {
        Ok(self.0.clone())
    }
    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }
}

/// [`VectorOps`] through the kernels `dot`, `abs_stats`, `add_scaled` and `scale`, as
/// `network::cuda_vectors::CardOps` calls them on a card.
struct EmulatedOps;

impl EmulatedOps {
    fn get(&self, v: &Vector) -> anyhow::Result<Arc<EmulatedVector>> {
        if let Vector::Device(d) = v
            && let Ok(e) = d.clone().into_any().downcast::<EmulatedVector>()
        {
            return Ok(e);
        }
        let host = v.to_host(&Device::flex())?;
        Ok(Arc::new(EmulatedVector(crate::network::floats(
            host.to_data(),
            "a vector",
        )?)))
    }
    fn wrap(v: Vec<f32>) -> Vector {
        Vector::Device(Arc::new(EmulatedVector(v)))
    }
    fn abs_stats(&self, a: &Vector) -> anyhow::Result<(f64, f64)> {
        let abs_stats: unsafe extern "C" fn(F32p, u32, *mut f64, *mut u32) = kernel("abs_stats");
        let a = self.get(a)?;
        let (mut sum, mut bits) = (0f64, 0u32);
        // SAFETY: a holds n floats; the outputs are one each.
        unsafe { abs_stats(a.0.as_ptr(), a.0.len() as u32, &mut sum, &mut bits) };
        Ok((sum, f32::from_bits(bits) as f64))
    }
}

impl VectorOps for EmulatedOps {
    fn place(&self, x: Tensor<1>) -> anyhow::Result<Vector> {
        self.adopt(&Vector::Host(x))
    }
    fn adopt(&self, v: &Vector) -> anyhow::Result<Vector> {
        Ok(Vector::Device(self.get(v)?))
    }
    fn dot(&self, a: &Vector, b: &Vector) -> anyhow::Result<f64> {
        let dot: unsafe extern "C" fn(F32p, F32p, u32, *mut f64) = kernel("dot");
        let (a, b) = (self.get(a)?, self.get(b)?);
        anyhow::ensure!(a.0.len() == b.0.len(), "lengths differ");
        let mut out = 0f64;
        // SAFETY: both hold n floats.
        unsafe { dot(a.0.as_ptr(), b.0.as_ptr(), a.0.len() as u32, &mut out) };
        Ok(out)
    }
    fn abs_max(&self, a: &Vector) -> anyhow::Result<f64> {
        Ok(self.abs_stats(a)?.1)
    }
    fn abs_sum(&self, a: &Vector) -> anyhow::Result<f64> {
        Ok(self.abs_stats(a)?.0)
    }
    fn add_scaled(&self, y: &Vector, a: f64, x: &Vector) -> anyhow::Result<Vector> {
        let add_scaled: unsafe extern "C" fn(F32p, F32p, f32, F32m, u32) = kernel("add_scaled");
        let (y, x) = (self.get(y)?, self.get(x)?);
        anyhow::ensure!(x.0.len() == y.0.len(), "lengths differ");
        let mut out = vec![f32::NAN; y.0.len()];
        let n = out.len() as u32;
        // SAFETY: all three hold n floats.
        unsafe { add_scaled(y.0.as_ptr(), x.0.as_ptr(), a as f32, out.as_mut_ptr(), n) };
        Ok(Self::wrap(out))
    }
    fn scaled(&self, x: &Vector, a: f64) -> anyhow::Result<Vector> {
        let scale: unsafe extern "C" fn(F32p, f32, F32m, u32) = kernel("scale");
        let x = self.get(x)?;
        let mut out = vec![f32::NAN; x.0.len()];
        // SAFETY: both hold n floats.
        unsafe { scale(x.0.as_ptr(), a as f32, out.as_mut_ptr(), out.len() as u32) };
        Ok(Self::wrap(out))
    }
}

#[test]
fn the_vector_kernels_agree_with_the_hosts_tensors() {
    let host = HostOps {
        device: Device::flex(),
    };
    let (a, b) = (random(1000, 80), random(1000, 81));
    let on = |ops: &dyn VectorOps, v: &[f32]| ops.place(host_tensor(v, [v.len()])).expect("place");
    let floats = |v: anyhow::Result<Vector>| {
        let t = v.expect("op").to_host(&Device::flex()).expect("host");
        crate::network::floats(t.to_data(), "v").expect("floats")
    };
    let (ha, hb, ea, eb) = (
        on(&host, &a),
        on(&host, &b),
        on(&EmulatedOps, &a),
        on(&EmulatedOps, &b),
    );
    let e = &EmulatedOps;
    let close = |x: f64, y: f64| relative(x, y) < 1e-5;
    assert!(close(
        e.dot(&ea, &eb).expect("dot"),
        host.dot(&ha, &hb).expect("dot")
    ));
    assert!(close(
        e.abs_sum(&ea).expect("sum"),
        host.abs_sum(&ha).expect("sum")
    ));
    assert_eq!(
        e.abs_max(&ea).expect("max"),
        host.abs_max(&ha).expect("max")
    );
    // Element-wise operations are the same float32 operations: equal bit for bit.
    assert_eq!(
        floats(e.add_scaled(&ea, -0.3, &eb)),
        floats(host.add_scaled(&ha, -0.3, &hb))
    );
    assert_eq!(floats(e.scaled(&ea, 1.7)), floats(host.scaled(&ha, 1.7)));
    assert_eq!(floats(e.sub(&ea, &eb)), floats(host.sub(&ha, &hb)));
    // A mixed pair: the host vector is adopted.
    assert_eq!(floats(e.sub(&ea, &hb)), floats(host.sub(&ha, &hb)));
    // A NaN is the largest magnitude, as torch's max has it.
    let mut with_nan = a.clone();
    with_nan[500] = f32::NAN;
    assert!(e.abs_max(&on(e, &with_nan)).expect("max").is_nan());
}

/// A smooth cost of a `[1, 3, 4, 5]` image with a known gradient:
/// `sum_i w_i (x_i - t_i)^2 + 0.01 sum_i x_i^4`.
fn quartic(x: &Tensor<4>) -> anyhow::Result<(Costs, Tensor<4>)> {
    let v = crate::network::floats(x.to_data(), "x")?;
    let (t, w) = (random(v.len(), 90), random(v.len(), 91));
    let mut total = 0f64;
    let g: Vec<f32> = (0..v.len())
        .map(|i| {
            let (d, wi) = (v[i] - t[i], 1.5 + w[i]);
            total += (wi * d * d + 0.01 * v[i].powi(4)) as f64;
            2.0 * wi * d + 0.04 * v[i].powi(3)
        })
        .collect();
    let costs = Costs {
        total,
        content: total,
        style: 0.0,
        style_layers: Vec::new(),
        tv: 0.0,
        regions: Vec::new(),
    };
    Ok((
        costs,
        Tensor::from_data(TensorData::new(g, x.dims()), &x.device()),
    ))
}

#[test]
fn lbfgs_on_the_cards_vectors_follows_lbfgs_on_the_host() {
    let dims = [1, 3, 4, 5];
    let n: usize = dims.iter().product();
    let start = host_tensor(&random(n, 92), dims);
    let mut on_host = Optimizer::new(&OptimizerSpec::lbfgs(1.0, 3));
    let mut on_card = on_host.clone();
    let (mut x_host, mut x_card) = (start.clone(), start);
    let mut eval = |x: &Tensor<4>| quartic(x);
    let mut on_vectors = |v: &Vector| -> anyhow::Result<(Costs, Vector)> {
        let (costs, g) = quartic(&v.to_host(&Device::flex())?.reshape(dims))?;
        Ok((costs, EmulatedOps.place(g.reshape([n]))?))
    };
    // Five steps: the history of 3 fills and then drops its oldest pair.
    let mut first: Option<f64> = None;
    for step in 0..5 {
        let (next, want) = on_host.step(1.0, x_host, &mut eval).expect("host step");
        x_host = next;
        let with = Some((
            &mut on_vectors as &mut crate::optim::VectorEvaluator,
            &EmulatedOps as &dyn VectorOps,
        ));
        let (next, got) = on_card
            .step_with(1.0, x_card, &mut eval, with)
            .expect("card step");
        x_card = next;
        assert!(
            relative(got.total, want.total) < 1e-4,
            "step {step}: {} {}",
            got.total,
            want.total
        );
        let first = *first.get_or_insert(got.total);
        if step == 4 {
            assert!(
                got.total < 0.5 * first,
                "L-BFGS descends: {} from {first}",
                got.total
            );
        }
    }
    let (a, b) = (floats_of(&x_card), floats_of(&x_host));
    let want: Vec<f64> = b.iter().map(|&v| v as f64).collect();
    assert_close(&a, &want, 1e-3, "the image after 5 steps");
    let Optimizer::Lbfgs(l) = &on_card else {
        panic!("L-BFGS")
    };
    assert_eq!(l.state.old_dirs.len(), 3, "the history holds 3 pairs");
    assert!(
        l.state
            .old_dirs
            .iter()
            .all(|v| matches!(v, Vector::Device(_))),
        "the history stays on the device"
    );
    // A checkpoint copies the device's vectors back.
    let back = l.state.old_dirs[0]
        .to_host(&Device::flex())
        .expect("download");
    assert_eq!(back.dims(), [n]);
}

fn floats_of(t: &Tensor<4>) -> Vec<f32> {
    crate::network::floats(t.to_data(), "x").expect("floats")
}
