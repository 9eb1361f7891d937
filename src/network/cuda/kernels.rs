//! The small kernels around cuDNN and cuBLAS (their source: `kernels.cu`), compiled by
//! nvrtc once per card and source and kept ([`super::kernel_cache`]), and their
//! launchers: the input normalisation, bias and ReLU, the ReLU mask, pooling and its
//! gradient, the costs with their gradients (formulas in docs/design.md §1), each
//! summed in float64, Adam's step and L-BFGS's vector arithmetic.
//!
//! Every kernel is a grid-stride loop over `unsigned` indices: the caller has checked
//! that no buffer exceeds `i32::MAX` elements. Contraction to FMA is off (`--fmad=false`,
//! [`super::compile`]) so that `x * s + t` rounds as the CPU path's does.

use super::kernel_cache;
use crate::network::resident::AdamSet;
use anyhow::{Context, Result, ensure};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, LaunchConfig, PushKernelArg,
};
use std::sync::Arc;

/// The kernels' CUDA C source.
pub(super) const SOURCE: &str = include_str!("kernels.cu");

/// Threads per block: a multiple of 32, as `block_add` needs.
const THREADS: u32 = 256;
/// Enough blocks to fill any current card; the loops stride over the rest.
const MAX_BLOCKS: usize = 4096;

/// A launch over `n` elements: a thread each, up to [`MAX_BLOCKS`] blocks (the kernels'
/// loops stride over the rest).
pub(super) fn grid(n: usize) -> LaunchConfig {
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

/// A launch over `c` rows: a block each, up to [`MAX_BLOCKS`].
pub(super) fn rows(c: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (c.clamp(1, MAX_BLOCKS) as u32, 1, 1),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// A size as the kernels' `unsigned`; the caller checked it fits.
fn u(n: usize) -> u32 {
    debug_assert!(
        n <= u32::MAX as usize,
        "{n} does not fit the kernels' indices"
    );
    n as u32
}

/// Refuses a cost slot beyond the costs buffer of `len` slots.
fn cost_slot(kernel: &str, slot: usize, len: usize) -> Result<()> {
    ensure!(
        slot < len,
        "the CUDA kernel {kernel} was given cost slot {slot} of {len}"
    );
    Ok(())
}

/// Refuses a `[C][n]` buffer of `total` elements that is not whole planes of a mask of `n`.
fn whole_planes(kernel: &str, total: usize, n: usize) -> Result<()> {
    ensure!(
        n > 0 && total.is_multiple_of(n),
        "the CUDA kernel {kernel} was given {total} elements, not whole planes of {n}"
    );
    Ok(())
}

/// Refuses a launch whose buffers are not the lengths its kernel indexes: each
/// `(buffer, length, expected)`. On the card a short buffer is a silent out-of-bounds
/// access, so the launchers say it here.
fn lengths(kernel: &str, buffers: &[(&str, usize, usize)]) -> Result<()> {
    for &(buffer, len, want) in buffers {
        ensure!(
            len == want,
            "the CUDA kernel {kernel} was given {buffer} of {len} elements, not {want}"
        );
    }
    Ok(())
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
    add_scaled_dots,
    scale,
    clamp_planes,
);

impl Kernels {
    /// Compiles the kernels for the device (see [`super::compile`]) and loads them.
    pub fn new(ctx: &Arc<CudaContext>) -> Result<Kernels> {
        let capability = ctx
            .compute_capability()
            .context("reading the CUDA device's compute capability")?;
        let dir = kernel_cache::default_dir();
        let (compiled, kept) = kernel_cache::compile_kept(SOURCE, capability, dir.as_deref())?;
        let module = match (ctx.load_module(compiled.into_module_image()), kept) {
            (Ok(module), _) => module,
            // A kept file the driver refuses is compiled again.
            (Err(e), Some(file)) => {
                tracing::debug!(
                    "the kept CUDA kernels in {} do not load: {e:?}",
                    file.display()
                );
                kernel_cache::forget(&file);
                let (compiled, _) = kernel_cache::compile_kept(SOURCE, capability, None)?;
                ctx.load_module(compiled.into_module_image())
                    .context("loading easel's CUDA kernels")?
            }
            (Err(e), None) => return Err(e).context("loading easel's CUDA kernels"),
        };
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
        lengths(
            "normalize",
            &[("x", x.len(), 3 * plane), ("y", y.len(), 3 * plane)],
        )?;
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
        lengths("bias_relu", &[("y", y.len(), bias.len() * plane)])?;
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
        lengths("relu_mask", &[("the activation", a.len(), g.len())])?;
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
        let channels = y.len() / ((h / 2) * (w / 2)).max(1);
        let shapes = [
            ("x", x.len(), channels * h * w),
            ("y", y.len(), channels * (h / 2) * (w / 2)),
        ];
        lengths("pool", &shapes)?;
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
        let channels = out.len() / (h * w).max(1);
        let pooled = channels * (h / 2) * (w / 2);
        let shapes = [
            ("g", g.len(), pooled),
            ("x", x.len(), out.len()),
            ("out", out.len(), channels * h * w),
        ];
        lengths("unpool", &shapes)?;
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
        let shapes = [("the target", t.len(), a.len()), ("g", g.len(), a.len())];
        lengths("content", &shapes)?;
        cost_slot("content", slot, costs.len())?;
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
        let cc = c * c;
        let shapes = [
            ("the Gram", gram.len(), cc),
            ("its target", target.len(), cc),
            ("sym", sym.len(), cc),
        ];
        lengths("style", &shapes)?;
        cost_slot("style", slot, costs.len())?;
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
        lengths(
            "finish",
            &[("g", g.len(), 3 * h * w), ("x", x.len(), 3 * h * w)],
        )?;
        cost_slot("finish", slot, costs.len())?;
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
        let padded = 3 * (h + 2) * (w + 2);
        lengths(
            "replicate_pad",
            &[("x", x.len(), 3 * h * w), ("y", n, padded)],
        )?;
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
        let padded = 3 * (h + 2) * (w + 2);
        lengths("fold", &[("gp", gp.len(), padded), ("g", n, 3 * h * w)])?;
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
        let sets = [now, &*next];
        let buffers = sets.iter().flat_map(|set| {
            [
                ("x", &set.x),
                ("m", &set.m),
                ("v", &set.v),
                ("avg", &set.avg),
            ]
        });
        let shapes: Vec<_> = buffers.map(|(name, b)| (name, b.len(), n)).collect();
        lengths("adam", &shapes)?;
        ensure!(
            n.is_multiple_of(3),
            "the CUDA kernel adam: {n} elements are not 3 planes"
        );
        let plane = u(n / 3);
        let (clamp, ([lo0, lo1, lo2], [hi0, hi1, hi2])) = match update.after.clamp {
            Some(range) => (1i32, range),
            None => (0, ([0.0; 3], [0.0; 3])),
        };
        let (ema, (decay, keep)) = match update.after.ema {
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
        lengths(
            "row_sums",
            &[("a", a.len(), c * n), ("sums", sums.len(), c)],
        )?;
        let cfg = rows(c);
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
        lengths("add_rows", &[("g", total, ds.len() * n)])?;
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
        lengths("mask_planes", &[("out", out.len(), total)])?;
        whole_planes("mask_planes", total, m.len())?;
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
        lengths("add_masked", &[("t", t.len(), total)])?;
        whole_planes("add_masked", total, m.len())?;
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
        (out, slot): (&mut CudaSlice<f64>, usize),
    ) -> Result<()> {
        lengths("dot", &[("b", b.len(), a.len())])?;
        cost_slot("dot", slot, out.len())?;
        let n = u(a.len());
        let mut at = out.slice_mut(slot..slot + 1);
        let mut l = s.launch_builder(&self.dot);
        l.arg(a).arg(b).arg(&n).arg(&mut at);
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

    /// `out = y + x * a`, `a` from the dot products `dots` of the two-loop recursion:
    /// `-dots[i] ro` in the first loop (`j` none), `dots[i] ro - dots[j] ro` in the
    /// second.
    pub fn add_scaled_dots(
        &self,
        s: &CudaStream,
        (y, x): (&CudaSlice<f32>, &CudaSlice<f32>),
        (dots, i, j, ro): (&CudaSlice<f64>, usize, Option<usize>, f64),
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let n = y.len();
        lengths(
            "add_scaled_dots",
            &[("x", x.len(), n), ("out", out.len(), n)],
        )?;
        cost_slot("add_scaled_dots", i.max(j.unwrap_or(0)), dots.len())?;
        let (second, j) = (i32::from(j.is_some()), u(j.unwrap_or(0)));
        let (i, n) = (u(i), u(n));
        let mut l = s.launch_builder(&self.add_scaled_dots);
        l.arg(y)
            .arg(x)
            .arg(dots)
            .arg(&i)
            .arg(&j)
            .arg(&second)
            .arg(&ro);
        l.arg(out).arg(&n);
        unsafe { l.launch(grid(n as usize)) }.context("launching add_scaled_dots")?;
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

    /// `out = x` clamped to `[lo[c], hi[c]]` on `[3][plane]`.
    pub fn clamp_planes(
        &self,
        s: &CudaStream,
        x: &CudaSlice<f32>,
        (lo, hi): ([f32; 3], [f32; 3]),
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let n = x.len();
        lengths("clamp_planes", &[("out", out.len(), n)])?;
        ensure!(
            n.is_multiple_of(3),
            "the CUDA kernel clamp_planes: {n} elements are not 3 planes"
        );
        let plane = u(n / 3);
        let mut l = s.launch_builder(&self.clamp_planes);
        l.arg(x).arg(out).arg(&plane);
        for bound in lo.iter().chain(&hi) {
            l.arg(bound);
        }
        unsafe { l.launch(grid(n)) }.context("launching clamp_planes")?;
        Ok(())
    }
}
