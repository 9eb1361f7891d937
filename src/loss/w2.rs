//! The style cost as a 2-Wasserstein distance between Gaussians (`style_loss: w2`),
//! after crowsonkb's style-transfer-pytorch: each layer's features are summarised by
//! their mean and covariance rather than their Gram, and
//!
//! `J_w2[l] = (|mu - mu_s|^2 + tr(S) + tr(S_s) - 2 tr((S_s^1/2 S S_s^1/2)^1/2)) / C`
//!
//! with `S = G/N - mu mu^T` from the Gram `G = A A^T` and the row sums `s = A 1` of the
//! activation `A` (`C` channels, `N` positions), `mu = s/N`. Departures from a plain
//! W2: both covariances get `eps I`, `eps` a thousandth of the style's mean variance,
//! which keeps the inverse square root of the gradient finite where a layer has fewer
//! positions than channels (conv5_1 of a small image has a covariance of low rank); and
//! the cost is divided by `C`, as the Gram cost is normalised per layer.
//!
//! The matrix square roots come from symmetric eigendecompositions in float64 on the
//! host (faer), eigenvalues clamped at zero. The gradient, with `B = (S_s + eps I)^1/2`
//! and `M = B (S + eps I) B`:
//!
//! `dJ/dS = (I - B M^-1/2 B) / C =: P`, `dJ/dG = P / N`,
//! `dJ/ds = (2 (mu - mu_s) / C - 2 P mu) / N`.

use anyhow::{Result, anyhow, bail};
use faer::{Mat, Side};

/// Relative size of the ridge added to both covariances.
const RIDGE: f64 = 1e-3;

/// The style's side of one layer, computed once per set of targets.
#[derive(Debug, Clone)]
pub struct W2Target {
    mean: Vec<f64>,
    /// `B = (S_s + eps I)^1/2`.
    root: Mat<f64>,
    /// `tr(S_s + eps I)`.
    trace: f64,
    eps: f64,
}

/// One layer's cost and its gradients with respect to the Gram and the row sums.
pub struct W2Cost {
    pub value: f64,
    /// `[C][C]`, row-major.
    pub d_gram: Vec<f32>,
    /// `[C]`.
    pub d_sums: Vec<f32>,
}

/// `U diag(f(lambda)) U^T` for a symmetric `m = U diag(lambda) U^T`.
fn spectral(m: &Mat<f64>, f: impl Fn(f64) -> f64) -> Result<(Mat<f64>, Vec<f64>)> {
    let eig = m
        .self_adjoint_eigen(Side::Lower)
        .map_err(|e| anyhow!("the eigendecomposition of a covariance failed: {e:?}"))?;
    let (u, s) = (eig.U(), eig.S());
    let lambda: Vec<f64> = (0..m.nrows()).map(|i| s[i]).collect();
    let scaled = Mat::from_fn(m.nrows(), m.ncols(), |i, j| u[(i, j)] * f(lambda[j]));
    Ok((&scaled * u.transpose(), lambda))
}

/// The symmetric part of a square matrix (rounding leaves products slightly asymmetric).
fn symmetric(m: Mat<f64>) -> Mat<f64> {
    Mat::from_fn(m.nrows(), m.ncols(), |i, j| 0.5 * (m[(i, j)] + m[(j, i)]))
}

/// `G/N - mu mu^T + eps I` from a Gram and a mean.
fn covariance(gram: impl Fn(usize, usize) -> f64, mean: &[f64], n: f64, eps: f64) -> Mat<f64> {
    let c = mean.len();
    symmetric(Mat::from_fn(c, c, |i, j| {
        gram(i, j) / n - mean[i] * mean[j] + if i == j { eps } else { 0.0 }
    }))
}

impl W2Target {
    /// From the style's mean per channel and its second moment `E[a a^T]` (`[C][C]`,
    /// row-major), both per position (a blend of styles: their weighted sums).
    pub fn new(mean: &[f64], second_moment: &[f64]) -> Result<W2Target> {
        let c = mean.len();
        let plain = covariance(|i, j| second_moment[i * c + j], mean, 1.0, 0.0);
        let variance = (0..c).map(|i| plain[(i, i)]).sum::<f64>() / c as f64;
        // A floor for a style without spread (a flat layer), where eps would underflow.
        let eps = (RIDGE * variance).max(1e-9);
        let cov = covariance(|i, j| second_moment[i * c + j], mean, 1.0, eps);
        let (root, _) = spectral(&cov, |l| l.max(0.0).sqrt())?;
        Ok(W2Target {
            mean: mean.to_vec(),
            root: symmetric(root),
            trace: (0..c).map(|i| cov[(i, i)]).sum(),
            eps,
        })
    }

    pub fn channels(&self) -> usize {
        self.mean.len()
    }

    /// The cost of an activation of `n` positions with Gram `gram` and row sums `sums`.
    pub fn cost(&self, gram: &[f32], sums: &[f32], n: usize) -> Result<W2Cost> {
        let c = self.channels();
        let nf = n as f64;
        let mean: Vec<f64> = sums.iter().map(|&s| s as f64 / nf).collect();
        let cov = covariance(|i, j| gram[i * c + j] as f64, &mean, nf, self.eps);
        let m = symmetric(&self.root * &cov * &self.root);
        // M >= eps^2 I in exact arithmetic; the floor only guards rounding.
        let floor = 0.25 * self.eps * self.eps;
        let (inv_root, lambda) = spectral(&m, |l| 1.0 / l.max(floor).sqrt())?;
        let tr_root: f64 = lambda.iter().map(|l| l.max(0.0).sqrt()).sum();
        let diff: f64 = mean
            .iter()
            .zip(&self.mean)
            .map(|(a, b)| (a - b) * (a - b))
            .sum();
        let tr_cov: f64 = (0..c).map(|i| cov[(i, i)]).sum();
        let value = (diff + tr_cov + self.trace - 2.0 * tr_root) / c as f64;
        let brb = &self.root * &inv_root * &self.root;
        let p = Mat::from_fn(c, c, |i, j| {
            (if i == j { 1.0 } else { 0.0 } - 0.5 * (brb[(i, j)] + brb[(j, i)])) / c as f64
        });
        let d_gram = (0..c * c)
            .map(|k| (p[(k / c, k % c)] / nf) as f32)
            .collect();
        let d_sums = (0..c)
            .map(|i| {
                let p_mu: f64 = (0..c).map(|j| p[(i, j)] * mean[j]).sum();
                ((2.0 * (mean[i] - self.mean[i]) / c as f64 - 2.0 * p_mu) / nf) as f32
            })
            .collect();
        if !value.is_finite() {
            bail!("the W2 cost is {value} (the features are not finite)");
        }
        Ok(W2Cost {
            value,
            d_gram,
            d_sums,
        })
    }
}
