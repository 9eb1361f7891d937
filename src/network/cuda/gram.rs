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
        let (c, n) = (c as i32, n as i32);
        // Column-major: g^T = (A^T)^T (A^T), with A^T the N x C matrix a is to cuBLAS;
        // g is symmetric, so g^T's storage is g's.
        let cfg = GemmConfig {
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
        };
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
        let (c, n) = (c as i32, n as i32);
        // Column-major: out^T (N x C) = A^T sym^T, and sym^T is what sym's storage is to
        // cuBLAS. beta = 1 adds to the gradient already there (the content's, the
        // layers' above).
        let cfg = GemmConfig {
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
        };
        // SAFETY: a and out hold c * n floats, sym c * c (checked by the caller).
        unsafe { self.blas.gemm(cfg, a, sym, out) }
            .with_context(|| format!("cuBLAS's Gram adjoint at layer {layer}"))
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
