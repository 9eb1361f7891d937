//! The costs read at the taps: the content's, and the style's through the Gram matrix
//! and its adjoint on cuBLAS.
//!
//! cuBLAS is column-major: the row-major `[C][N]` activation `A` is, to it, the `N x C`
//! matrix `A^T` (leading dimension N), and a row-major `[C][C]` result is stored as its
//! transpose. Both products below are written in those terms.

use super::{Act, CudaCostWeights, CudaTargets, CudaVgg, HostTap, State};
use crate::vgg::Layer;
use anyhow::{Context, Result, ensure};
use cudarc::cublas::sys::{cublasMath_t, cublasOperation_t};
use cudarc::cublas::{CudaBlas, Gemm, GemmConfig};
use cudarc::driver::{CudaSlice, CudaStream};
use std::sync::Arc;

pub(super) struct Gram {
    blas: CudaBlas,
    tf32: bool,
}

/// cuBLAS's math mode: strict FP32, or TF32 tensor cores allowed.
fn set_math(blas: &CudaBlas, tf32: bool) -> Result<()> {
    let math = if tf32 {
        cublasMath_t::CUBLAS_TF32_TENSOR_OP_MATH
    } else {
        cublasMath_t::CUBLAS_DEFAULT_MATH
    };
    // SAFETY: the handle is live (owned by `blas`) and the mode is a valid enum value.
    unsafe { cudarc::cublas::sys::cublasSetMathMode(*blas.handle(), math) }
        .result()
        .context("setting cuBLAS's math mode")
}

impl Gram {
    /// `tf32`: allow TF32 tensor cores for the FP32 products; otherwise cuBLAS's default
    /// math, which keeps FP32 precision throughout.
    pub fn new(stream: Arc<CudaStream>, tf32: bool) -> Result<Gram> {
        let blas = CudaBlas::new(stream).context("creating the cuBLAS handle")?;
        set_math(&blas, tf32)?;
        Ok(Gram { blas, tf32 })
    }

    /// Runs `f` with cuBLAS in strict FP32 whatever the precision: W2 takes covariances
    /// `G / n - mu mu^T` from the Grams, where TF32's 10-bit mantissa would cancel away.
    pub fn strict<T>(&self, f: impl FnOnce(&Gram) -> Result<T>) -> Result<T> {
        if !self.tf32 {
            return f(self);
        }
        set_math(&self.blas, false)?;
        let out = f(self);
        set_math(&self.blas, true)?;
        out
    }

    /// `g = A A^T` (`[c][c]`) for `a` the row-major `[c][n]` activation of layer `layer`.
    pub fn gram(
        &self,
        layer: usize,
        a: &CudaSlice<f32>,
        (c, n): (usize, usize),
        g: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let cfg = gram_config(c, n);
        // SAFETY: a holds c * n floats and g c * c (checked by the caller).
        unsafe { self.blas.gemm(cfg, a, a, g) }
            .with_context(|| format!("cuBLAS's Gram product at layer {layer}"))
    }

    /// `out += sym A` (`[c][n]`), `sym` the row-major `[c][c]` matrix `dG + dG^T`.
    pub fn adjoint_add(
        &self,
        layer: usize,
        sym: &CudaSlice<f32>,
        a: &CudaSlice<f32>,
        (c, n): (usize, usize),
        out: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let cfg = adjoint_config(c, n);
        // SAFETY: a and out hold c * n floats, sym c * c (checked by the caller).
        unsafe { self.blas.gemm(cfg, a, sym, out) }
            .with_context(|| format!("cuBLAS's Gram adjoint at layer {layer}"))
    }
}

/// The Gram product `G = A A^T` for the row-major `[c][n]` activation `A`. Column-major,
/// `A`'s storage is the `n x c` matrix `A^T` (leading dimension n), so this is
/// `G^T = (A^T)^T (A^T)`; G is symmetric, so G^T's storage is G's.
fn gram_config(c: usize, n: usize) -> GemmConfig<f32> {
    let (c, n) = (c as i32, n as i32);
    GemmConfig {
        transa: cublasOperation_t::CUBLAS_OP_T,
        transb: cublasOperation_t::CUBLAS_OP_N,
        m: c,
        n: c,
        k: n,
        alpha: 1.0f32,
        lda: n,
        ldb: n,
        beta: 0.0f32,
        ldc: c,
    }
}

/// The adjoint `out += sym A`, `sym` row-major `[c][c]`: column-major this is
/// `out^T (n x c) += A^T sym^T`, and sym^T is what sym's storage is to cuBLAS. beta = 1
/// adds to the gradient already there (the content's, the layers' above).
fn adjoint_config(c: usize, n: usize) -> GemmConfig<f32> {
    let (c, n) = (c as i32, n as i32);
    GemmConfig {
        transa: cublasOperation_t::CUBLAS_OP_N,
        transb: cublasOperation_t::CUBLAS_OP_N,
        m: n,
        n: c,
        k: c,
        alpha: 1.0f32,
        lda: n,
        ldb: c,
        beta: 1.0f32,
        ldc: n,
    }
}

/// Checks that the targets are the ones the weights read; returns the deepest layer.
pub(super) fn check_targets(targets: &CudaTargets, weights: &CudaCostWeights) -> Result<Layer> {
    ensure!(
        targets.content_layer == weights.content_layer,
        "the content target is for {}, the cost reads {}",
        targets.content_layer,
        weights.content_layer
    );
    let same = |((a, _), (b, _)): (&(Layer, _), &(Layer, _))| a == b;
    ensure!(
        targets.grams.len() == weights.style_layers.len()
            && targets.grams.iter().zip(weights.style_layers).all(same),
        "the style targets are not for the cost's style layers"
    );
    let styles = weights.style_layers.iter().map(|(l, _)| *l);
    Ok(styles.fold(weights.content_layer, Layer::max))
}

impl CudaVgg {
    /// Adds to `g` the gradients of the costs read at layer `i` (activation `a`), and
    /// their values to `costs`; the style's from `host` where the host computed it.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn taps(
        &self,
        st: &mut State,
        a: &Act,
        i: usize,
        (targets, host): (&CudaTargets, Option<&[HostTap]>),
        weights: &CudaCostWeights,
        g: &mut CudaSlice<f32>,
        costs: &mut CudaSlice<f64>,
    ) -> Result<()> {
        let s = &self.stream;
        let chw = (a.c * a.h * a.w) as f64;
        if weights.content_layer.0 == i {
            ensure!(
                targets.content.len() == a.data.len(),
                "the content target does not have the size of {} for this image",
                Layer(i)
            );
            let coef = (weights.alpha * 2.0 / (4.0 * chw)) as f32;
            let target = &targets.content;
            self.kernels
                .content(s, &a.data, target, g, coef, costs, 0)?;
        }
        let styles = weights.style_layers.iter().zip(&targets.grams);
        for (k, ((l, lambda), (_, target))) in styles.enumerate() {
            if l.0 != i {
                continue;
            }
            let (c, n, norm) = (a.c, a.h * a.w, 2.0 * chw);
            if let Some(tap) = host.and_then(|taps| taps.get(k)) {
                self.add_host_tap(st, (*l, a), (k, tap), targets, g)?;
                continue;
            }
            let coef = 2.0 * weights.beta * lambda / norm;
            let mut gram = st.f32s.take(s, c * c)?;
            let mut sym = st.f32s.take(s, c * c)?;
            st.gram.gram(i, &a.data, (c, n), &mut gram)?;
            let scales = (norm as f32, coef as f32);
            self.kernels
                .style(s, &gram, target, &mut sym, c, scales, costs, 2 + k)?;
            st.gram.adjoint_add(i, &sym, &a.data, (c, n), g)?;
            st.f32s.give(gram);
            st.f32s.give(sym);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{adjoint_config, gram_config};
    use crate::vgg::cpu::Activation;
    use cudarc::cublas::GemmConfig;
    use cudarc::cublas::sys::cublasOperation_t;

    /// BLAS's sgemm as its reference defines it, on column-major storage:
    /// `C = alpha op(A) op(B) + beta C`, `op(A)` m x k, `op(B)` k x n, C m x n, with
    /// cuBLAS's checks on the leading dimensions.
    fn sgemm(cfg: &GemmConfig<f32>, a: &[f32], b: &[f32], c: &mut [f32]) {
        let (m, n, k) = (cfg.m as usize, cfg.n as usize, cfg.k as usize);
        let t = |op| op == cublasOperation_t::CUBLAS_OP_T;
        let (ta, tb) = (t(cfg.transa), t(cfg.transb));
        let (rows_a, cols_a) = if ta { (k, m) } else { (m, k) };
        let (rows_b, cols_b) = if tb { (n, k) } else { (k, n) };
        let (lda, ldb, ldc) = (cfg.lda as usize, cfg.ldb as usize, cfg.ldc as usize);
        assert!(lda >= rows_a.max(1) && ldb >= rows_b.max(1) && ldc >= m.max(1));
        assert!(a.len() >= lda * (cols_a - 1) + rows_a, "A is too short");
        assert!(b.len() >= ldb * (cols_b - 1) + rows_b, "B is too short");
        assert!(c.len() >= ldc * (n - 1) + m, "C is too short");
        let op_a = |i: usize, p: usize| if ta { a[p + i * lda] } else { a[i + p * lda] };
        let op_b = |p: usize, j: usize| if tb { b[j + p * ldb] } else { b[p + j * ldb] };
        for j in 0..n {
            for i in 0..m {
                let sum: f64 = (0..k).map(|p| op_a(i, p) as f64 * op_b(p, j) as f64).sum();
                let old = c[i + j * ldc] as f64;
                c[i + j * ldc] = (cfg.alpha as f64 * sum + cfg.beta as f64 * old) as f32;
            }
        }
    }

    fn activation(c: usize, h: usize, w: usize) -> Activation {
        let data = (0..c * h * w)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
            .collect();
        Activation {
            data,
            channels: c,
            height: h,
            width: w,
        }
    }

    fn assert_close(got: &[f32], want: &[f32], what: &str) {
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= 1e-4 * w.abs().max(1.0),
                "{what} at {i}: {g} {w}"
            );
        }
    }

    #[test]
    fn the_gram_product_as_cublas_is_told_it_is_a_a_transposed() {
        for (c, h, w) in [(3, 4, 5), (8, 1, 3), (1, 2, 2)] {
            let a = activation(c, h, w);
            let mut g = vec![0.0; c * c];
            sgemm(&gram_config(c, h * w), &a.data, &a.data, &mut g);
            assert_close(&g, &a.gram(), &format!("Gram at {c}x{h}x{w}"));
        }
    }

    #[test]
    fn the_adjoint_as_cublas_is_told_adds_sym_a_to_the_gradient() {
        let (c, h, w) = (4, 3, 5);
        let a = activation(c, h, w);
        // dG not symmetric: the adjoint takes dG + dG^T, which the kernel `style` forms.
        let dg: Vec<f32> = (0..c * c).map(|i| (i as f32 * 0.3).sin()).collect();
        let sym: Vec<f32> = (0..c * c)
            .map(|i| dg[i] + dg[(i % c) * c + i / c])
            .collect();
        let before: Vec<f32> = (0..c * h * w).map(|i| (i as f32).cos()).collect();
        let mut out = before.clone();
        sgemm(&adjoint_config(c, h * w), &a.data, &sym, &mut out);
        let want: Vec<f32> = a
            .gram_adjoint(&dg)
            .iter()
            .zip(&before)
            .map(|(x, b)| x + b)
            .collect();
        assert_close(&out, &want, "adjoint");
    }
}
