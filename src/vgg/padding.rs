//! Replicate padding by one pixel on the host, and its adjoint: the compute paths that
//! run outside an autodiff tape pad the image, run conv1_1 over the padded image, and
//! fold the gradient of the padded image back onto the image's own pixels.

use super::buffers;
use rayon::prelude::*;

/// `x` (`[C][h][w]`) with its edge repeated once on every side: `[C][h + 2][w + 2]`.
pub fn replicate(x: &[f32], c: usize, h: usize, w: usize) -> Vec<f32> {
    assert_eq!(x.len(), c * h * w, "the input is not {c}x{h}x{w}");
    let (hp, wp) = (h + 2, w + 2);
    let mut out = vec![0f32; c * hp * wp];
    for (src, dst) in x.chunks(h * w).zip(out.chunks_mut(hp * wp)) {
        for (yp, row) in dst.chunks_mut(wp).enumerate() {
            let y = yp.saturating_sub(1).min(h - 1);
            let line = &src[y * w..][..w];
            row[1..=w].copy_from_slice(line);
            row[0] = line[0];
            row[w + 1] = line[w - 1];
        }
    }
    out
}

/// The adjoint of [`replicate`]: `g` (`[C][h + 2][w + 2]`) summed onto the pixels each
/// padded pixel copies, `[C][h][w]` (an edge pixel collects its copies, a corner three).
pub fn fold(g: &[f32], c: usize, h: usize, w: usize) -> Vec<f32> {
    let (hp, wp) = (h + 2, w + 2);
    assert_eq!(g.len(), c * hp * wp, "the gradient is not {c}x{hp}x{wp}");
    let mut out = vec![0f32; c * h * w];
    for (src, dst) in g.chunks(hp * wp).zip(out.chunks_mut(h * w)) {
        for (yp, row) in src.chunks(wp).enumerate() {
            let y = yp.saturating_sub(1).min(h - 1);
            let line = &mut dst[y * w..][..w];
            line.iter_mut().zip(&row[1..=w]).for_each(|(o, v)| *o += v);
            line[0] += row[0];
            line[w - 1] += row[w + 1];
        }
    }
    out
}

/// The interior `[C][h][w]` of `x` (`[C][h + 2][w + 2]`), a channel per task and in a
/// recycled buffer: at conv1_1's 64 channels this is a large copy every iteration.
pub fn crop(x: &[f32], c: usize, h: usize, w: usize) -> Vec<f32> {
    let wp = w + 2;
    let mut out = buffers::any(c * h * w);
    out.par_chunks_mut(h * w)
        .zip(x.par_chunks((h + 2) * wp))
        .for_each(|(dst, plane)| {
            for (line, row) in dst.chunks_mut(w).zip(plane.chunks(wp).skip(1)) {
                line.copy_from_slice(&row[1..=w]);
            }
        });
    out
}

/// The adjoint of [`crop`]: `x` (`[C][h][w]`) inside a border of zeros.
pub fn embed(x: &[f32], c: usize, h: usize, w: usize) -> Vec<f32> {
    let (hp, wp) = (h + 2, w + 2);
    let mut out = buffers::zeroed(c * hp * wp);
    out.par_chunks_mut(hp * wp)
        .zip(x.par_chunks(h * w))
        .for_each(|(dst, src)| {
            for (line, row) in src.chunks(w).zip(dst.chunks_mut(wp).skip(1)) {
                row[1..=w].copy_from_slice(line);
            }
        });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dot(a: &[f32], b: &[f32]) -> f64 {
        a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum()
    }

    fn ramp(n: usize, k: f32) -> Vec<f32> {
        (0..n).map(|i| (i as f32 * k).sin() * 3.0).collect()
    }

    #[test]
    fn replicate_repeats_the_edge() {
        // One channel, 2x3: [[1,2,3],[4,5,6]].
        let p = replicate(&[1., 2., 3., 4., 5., 6.], 1, 2, 3);
        let want = [
            1., 1., 2., 3., 3., //
            1., 1., 2., 3., 3., //
            4., 4., 5., 6., 6., //
            4., 4., 5., 6., 6.,
        ];
        assert_eq!(p, want);
        assert_eq!(crop(&p, 1, 2, 3), [1., 2., 3., 4., 5., 6.]);
    }

    #[test]
    fn fold_and_embed_are_the_adjoints() {
        let (c, h, w) = (2, 3, 5);
        let x = ramp(c * h * w, 0.7);
        let y = ramp(c * (h + 2) * (w + 2), 1.3);
        let lhs = dot(&replicate(&x, c, h, w), &y);
        assert!((lhs - dot(&x, &fold(&y, c, h, w))).abs() < 1e-4 * lhs.abs().max(1.0));
        let lhs = dot(&crop(&y, c, h, w), &x);
        assert!((lhs - dot(&y, &embed(&x, c, h, w))).abs() < 1e-4 * lhs.abs().max(1.0));
    }

    #[test]
    fn a_single_pixel_collects_all_nine() {
        let g = vec![1f32; 9];
        assert_eq!(fold(&g, 1, 1, 1), [9.0]);
    }
}
