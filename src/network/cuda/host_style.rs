//! Style costs the host computes from what the card reads, for the costs the card's
//! kernels do not have: `style_loss: w2` (matrix square roots, from each style layer's
//! Gram and row sums) and regions (from each region's guided Gram). After the forward
//! pass the reads come back in one wait; the host answers with the costs and their
//! gradients, computed by the same code as the CPU paths' (`crate::loss`); the card
//! then takes the gradients back through the network with the rest (docs/design.md §4).

use super::{Act, CudaCostWeights, CudaTargets, CudaVgg, State};
use crate::loss::GuidedAdjoints;
use crate::vgg::Layer;
use anyhow::{Context, Result, ensure};
use cudarc::driver::{CudaSlice, CudaStream};
use std::sync::Arc;

/// One style layer's reads for a cost the host computes: the Gram `[C][C]` and the row
/// sums `[C]` of an activation of `positions` positions.
pub struct HostStyleRead {
    pub gram: Vec<f32>,
    pub sums: Vec<f32>,
    pub positions: usize,
}

/// What the host answers per style layer: the unweighted cost `J_style[l]`, and the
/// gradients of the weighted cost `beta lambda_l J_style[l]` with respect to the Gram
/// and the row sums.
pub struct HostStyleAdjoint {
    pub cost: f64,
    pub d_gram: Vec<f32>,
    pub d_sums: Vec<f32>,
}

/// The host's style cost: one answer per read, in the style layers' order.
pub type HostStyle<'a> = dyn Fn(&[HostStyleRead]) -> Result<Vec<HostStyleAdjoint>> + Sync + 'a;

/// The host's style cost with regions, from the guided Grams `[region][layer]` (empty
/// for a region without a style).
pub type HostRegions<'a> = dyn Fn(&[Vec<Vec<f32>>]) -> Result<GuidedAdjoints> + Sync + 'a;

/// A style layer's gradients from the host, on the card.
pub(super) struct HostTap {
    /// `dG + dG^T` and `ds` of the layer's Gram and row sums, where the cost reads them.
    unguided: Option<(CudaSlice<f32>, CudaSlice<f32>)>,
    /// Per region: `dG_r + dG_r^T` of its guided Gram, where it has a style.
    guided: Vec<Option<CudaSlice<f32>>>,
}

/// The host's answer for one evaluation: the taps' gradients by style layer, and the
/// costs (`J_style[l]`, and with regions each region's).
pub(super) struct HostReply {
    pub taps: Vec<HostTap>,
    pub style: Vec<f64>,
    pub regions: Vec<f64>,
}

/// `d + d^T` of a row-major `[c][c]` matrix.
fn symmetric(d: &[f32], c: usize) -> Result<Vec<f32>> {
    ensure!(d.len() == c * c, "the host's style gradient is not {c}x{c}");
    Ok((0..c * c).map(|i| d[i] + d[(i % c) * c + i / c]).collect())
}

fn upload(s: &Arc<CudaStream>, v: &[f32]) -> Result<CudaSlice<f32>> {
    s.clone_htod(v)
        .context("copying a style gradient to the CUDA device")
}

impl CudaVgg {
    /// The style costs the host computes, where the weights ask for them.
    pub(super) fn host_reply(
        &self,
        st: &mut State,
        acts: &[Act],
        targets: &CudaTargets,
        weights: &CudaCostWeights,
    ) -> Result<Option<HostReply>> {
        if let Some(f) = weights.host_regions {
            return self
                .host_regions(st, acts, targets, weights.style_layers, f)
                .map(Some);
        }
        match weights.host_style {
            Some(f) => self.host_style(st, acts, weights.style_layers, f).map(Some),
            None => Ok(None),
        }
    }

    /// Each style layer's Gram (in strict FP32: W2 takes covariances from it) and row
    /// sums back, the host's answer up.
    fn host_style(
        &self,
        st: &mut State,
        acts: &[Act],
        layers: &[(Layer, f64)],
        f: &HostStyle,
    ) -> Result<HostReply> {
        let s = &self.stream;
        let mut reads = Vec::with_capacity(layers.len());
        for (l, _) in layers {
            let a = &acts[l.0];
            let (c, n) = (a.c, a.h * a.w);
            let mut gram = st.f32s.take(s, c * c)?;
            st.gram
                .strict(|blas| blas.gram(l.0, &a.data, (c, n), &mut gram))?;
            let mut sums = st.f64s.zeroed(s, c)?;
            self.kernels.row_sums(s, &a.data, &mut sums, (c, n))?;
            let host_gram = s.clone_dtoh(&gram);
            let host_sums = s.clone_dtoh(&sums);
            reads.push(HostStyleRead {
                gram: host_gram.context("copying a Gram back from the CUDA device")?,
                // As the CPU's row sums: summed in float64, kept in float32.
                sums: host_sums
                    .context("copying row sums back from the CUDA device")?
                    .iter()
                    .map(|&v| v as f32)
                    .collect(),
                positions: n,
            });
            st.f32s.give(gram);
            st.f64s.give(sums);
        }
        s.synchronize()
            .context("waiting for the CUDA device's Grams")?;
        let answers = f(&reads)?;
        ensure!(
            answers.len() == layers.len(),
            "the host's style cost answered {} layers of {}",
            answers.len(),
            layers.len()
        );
        let mut reply = HostReply {
            taps: Vec::with_capacity(answers.len()),
            style: Vec::with_capacity(answers.len()),
            regions: Vec::new(),
        };
        for (answer, read) in answers.iter().zip(&reads) {
            let c = read.sums.len();
            ensure!(
                answer.d_sums.len() == c,
                "the host's row-sum gradient is not {c} long"
            );
            let sym = upload(s, &symmetric(&answer.d_gram, c)?)?;
            reply.taps.push(HostTap {
                unguided: Some((sym, upload(s, &answer.d_sums)?)),
                guided: Vec::new(),
            });
            reply.style.push(answer.cost);
        }
        Ok(reply)
    }

    /// Each region's guided Gram at each style layer back (the activation masked by the
    /// region's mask there), the host's answer up.
    fn host_regions(
        &self,
        st: &mut State,
        acts: &[Act],
        targets: &CudaTargets,
        layers: &[(Layer, f64)],
        f: &HostRegions,
    ) -> Result<HostReply> {
        let s = &self.stream;
        let mut reads = Vec::with_capacity(targets.masks.len());
        for masks in &targets.masks {
            let mut per_layer = Vec::new();
            for ((l, _), m) in layers.iter().zip(masks.iter().flatten()) {
                let a = &acts[l.0];
                let (c, n) = (a.c, a.h * a.w);
                ensure!(m.len() == n, "a region's mask does not have {l}'s size");
                let mut masked = st.f32s.take(s, c * n)?;
                self.kernels.mask_planes(s, &a.data, m, &mut masked)?;
                let mut gram = st.f32s.take(s, c * c)?;
                st.gram.gram(l.0, &masked, (c, n), &mut gram)?;
                let host = s.clone_dtoh(&gram);
                per_layer.push(host.context("copying a guided Gram back from the CUDA device")?);
                st.f32s.give(masked);
                st.f32s.give(gram);
            }
            reads.push(per_layer);
        }
        s.synchronize()
            .context("waiting for the CUDA device's guided Grams")?;
        let answer = f(&reads)?;
        let shaped = answer.style.len() == layers.len()
            && answer.regions.len() == reads.len()
            && answer.d_grams.len() == reads.len()
            && answer
                .d_grams
                .iter()
                .zip(&reads)
                .all(|(d, r)| d.len() == r.len());
        ensure!(
            shaped,
            "the host's region costs do not match {} regions at {} style layers",
            reads.len(),
            layers.len()
        );
        let mut taps: Vec<HostTap> = layers
            .iter()
            .map(|_| HostTap {
                unguided: None,
                guided: Vec::new(),
            })
            .collect();
        for (d_region, read) in answer.d_grams.iter().zip(&reads) {
            for (k, tap) in taps.iter_mut().enumerate() {
                let sym = match (d_region.get(k), read.get(k)) {
                    // A layer where the region has no positions adds nothing.
                    (Some(d), Some(_)) if d.iter().all(|v| *v == 0.0) => None,
                    (Some(d), Some(g)) => {
                        let c = (g.len() as f64).sqrt() as usize;
                        Some(upload(s, &symmetric(d, c)?)?)
                    }
                    _ => None,
                };
                tap.guided.push(sym);
            }
        }
        Ok(HostReply {
            taps,
            style: answer.style,
            regions: answer.regions,
        })
    }

    /// Adds the host's gradients at the `k`th style layer (layer `layer`, activation
    /// `a`) to `g`.
    pub(super) fn add_host_tap(
        &self,
        st: &mut State,
        (layer, a): (Layer, &Act),
        (k, tap): (usize, &HostTap),
        targets: &CudaTargets,
        g: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let s = &self.stream;
        let (c, n) = (a.c, a.h * a.w);
        if let Some((sym, d_sums)) = &tap.unguided {
            st.gram.adjoint_add(layer.0, sym, &a.data, (c, n), g)?;
            self.kernels.add_rows(s, g, d_sums, n)?;
        }
        for (sym, masks) in tap.guided.iter().zip(&targets.masks) {
            let (Some(sym), Some(m)) = (sym, masks.as_ref().and_then(|ms| ms.get(k))) else {
                continue;
            };
            // The guided Gram's adjoint is the masked activation's, masked again.
            let mut masked = st.f32s.take(s, c * n)?;
            self.kernels.mask_planes(s, &a.data, m, &mut masked)?;
            let mut d = st.f32s.zeroed(s, c * n)?;
            st.gram.adjoint_add(layer.0, sym, &masked, (c, n), &mut d)?;
            self.kernels.add_masked(s, g, &d, m)?;
            st.f32s.give(masked);
            st.f32s.give(d);
        }
        Ok(())
    }
}
