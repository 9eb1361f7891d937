//! The tile transforms of [`super`]: one row of 4x4 output tiles at a time, each loop
//! along the row so that it vectorises.

use multiversion::multiversion;

/// `B^T d` for one column of six input values.
#[inline(always)]
fn input_transform(d: [f32; 6]) -> [f32; 6] {
    [
        4.0 * d[0] - 5.0 * d[2] + d[4],
        -4.0 * (d[1] + d[2]) + d[3] + d[4],
        4.0 * (d[1] - d[2]) - d[3] + d[4],
        2.0 * (d[3] - d[1]) - d[2] + d[4],
        2.0 * (d[1] - d[3]) - d[2] + d[4],
        4.0 * d[1] - 5.0 * d[3] + d[5],
    ]
}

/// `A^T m` for one column of six products.
#[inline(always)]
fn output_transform(m: [f32; 6]) -> [f32; 4] {
    let (s12, d12) = (m[1] + m[2], m[1] - m[2]);
    let (s34, d34) = (m[3] + m[4], m[3] - m[4]);
    [
        m[0] + s12 + s34,
        d12 + 2.0 * d34,
        s12 + 4.0 * s34,
        d12 + 8.0 * d34 + m[5],
    ]
}

/// Applies a transform of six values to `n` columns at once: for each `j`,
/// `dst[r * stride + j] = f([src[0][j], .., src[5][j]])[r]`. Written for the vectoriser:
/// every row is a plain slice of length `n`.
#[inline(always)]
fn transform_columns<const O: usize>(
    src: [&[f32]; 6],
    dst: &mut [f32],
    stride: usize,
    n: usize,
    f: impl Fn([f32; 6]) -> [f32; O],
) {
    let src = src.map(|s| &s[..n]);
    let mut rows = dst.chunks_mut(stride);
    let mut out: [&mut [f32]; O] = std::array::from_fn(|_| {
        let row = rows.next().expect("the destination holds O rows");
        &mut row[..n]
    });
    for j in 0..n {
        let o = f([
            src[0][j], src[1][j], src[2][j], src[3][j], src[4][j], src[5][j],
        ]);
        for (row, v) in out.iter_mut().zip(o) {
            row[j] = v;
        }
    }
}

/// The tiling of an `h` x `w` plane: `th` rows of `tw` 4x4 output tiles.
#[derive(Clone, Copy)]
pub(super) struct Tiling {
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) th: usize,
    pub(super) tw: usize,
}

impl Tiling {
    pub(super) fn new(h: usize, w: usize) -> Self {
        Tiling {
            h,
            w,
            th: h.div_ceil(4),
            tw: w.div_ceil(4),
        }
    }
    pub(super) fn tiles(&self) -> usize {
        self.th * self.tw
    }
    /// Width of a padded input row: x from -1 to 4 tw.
    fn padded(&self) -> usize {
        4 * self.tw + 2
    }
}

/// Working memory for one row of tiles.
pub(super) struct Scratch {
    rows: Vec<f32>,
    cols: Vec<f32>,
    q: Vec<f32>,
    out: Vec<f32>,
}

impl Scratch {
    pub(super) fn new(t: &Tiling) -> Self {
        Scratch {
            rows: vec![0.0; 6 * t.padded()],
            cols: vec![0.0; 6 * t.padded()],
            q: vec![0.0; 24 * t.tw],
            out: vec![0.0; 16 * t.tw],
        }
    }
}

/// Transforms tile row `ti` of one channel: writes `dst[ξ * xs + j]` for the row's tiles j.
/// Every loop runs along the row, so that it vectorises; compiled for AVX-512 and AVX2,
/// chosen at run time.
#[multiversion(targets("x86_64+avx512f+avx512vl+avx2+fma", "x86_64+avx2+fma"))]
pub(super) fn input_row(
    x: &[f32],
    mask: Option<&[f32]>,
    t: &Tiling,
    ti: usize,
    s: &mut Scratch,
    dst: &mut [f32],
    xs: usize,
) {
    let (w, tw, wp) = (t.w, t.tw, t.padded());
    // The six input rows, zero-padded: rows[i][1 + x] = input(4 ti - 1 + i, x).
    for i in 0..6 {
        let r = &mut s.rows[i * wp..][..wp];
        r.fill(0.0);
        let y = (4 * ti + i) as isize - 1;
        if y < 0 || y >= t.h as isize {
            continue;
        }
        let src = &x[y as usize * w..][..w];
        let r = &mut r[1..1 + w];
        match mask {
            None => r.copy_from_slice(src),
            Some(m) => {
                let m = &m[y as usize * w..][..w];
                for ((o, v), m) in r.iter_mut().zip(src).zip(m) {
                    *o = if *m > 0.0 { *v } else { 0.0 };
                }
            }
        }
    }
    // B^T along the columns, for every x at once.
    let rows: [&[f32]; 6] = std::array::from_fn(|i| &s.rows[i * wp..][..wp]);
    transform_columns(rows, &mut s.cols, wp, wp, input_transform);
    // B^T along the rows: tile j takes padded columns 4j .. 4j+5, that is phases 0..3
    // of the row split four ways at j, then phases 0 and 1 at j + 1.
    let n = tw + 1;
    for a in 0..6 {
        let ca = &s.cols[a * wp..][..wp];
        let (p0, rest) = s.q[..4 * n].split_at_mut(n);
        let (p1, rest) = rest.split_at_mut(n);
        let (p2, p3) = rest.split_at_mut(n);
        for (j, c) in ca.chunks_exact(4).enumerate() {
            p0[j] = c[0];
            p1[j] = c[1];
            p2[j] = c[2];
            p3[j] = c[3];
        }
        p0[tw] = ca[4 * tw];
        p1[tw] = ca[4 * tw + 1];
        let d: [&[f32]; 6] = [
            &p0[..tw],
            &p1[..tw],
            &p2[..tw],
            &p3[..tw],
            &p0[1..],
            &p1[1..],
        ];
        transform_columns(d, &mut dst[a * 6 * xs..], xs, tw, input_transform);
    }
}

/// Turns the products of tile row `ti` (`src[ξ * xs + j]`) of one output channel into
/// its `ys` output rows `dst` (`ys` x `w`), adding the bias and applying the ReLU.
#[multiversion(targets("x86_64+avx512f+avx512vl+avx2+fma", "x86_64+avx2+fma"))]
#[allow(clippy::too_many_arguments)]
pub(super) fn output_row(
    src: &[f32],
    xs: usize,
    t: &Tiling,
    ys: usize,
    bias: f32,
    relu: bool,
    s: &mut Scratch,
    dst: &mut [f32],
) {
    let (w, tw) = (t.w, t.tw);
    // q[a][jj][j]: A^T along the rows (b -> jj) for each a.
    for a in 0..6 {
        let m: [&[f32]; 6] = std::array::from_fn(|b| &src[(a * 6 + b) * xs..][..tw]);
        transform_columns(m, &mut s.cols[a * 4 * tw..], tw, tw, output_transform);
    }
    // A^T along the columns (a -> i): y[i][jj][j] is pixel (4 ti + i, 4 j + jj).
    let q = &s.cols[..24 * tw];
    for jj in 0..4 {
        let m: [&[f32]; 6] = std::array::from_fn(|a| &q[(a * 4 + jj) * tw..][..tw]);
        transform_columns(m, &mut s.out[jj * tw..], 4 * tw, tw, output_transform);
    }
    // The pixels into the rows, four at a time.
    let act = |v: f32| {
        let v = v + bias;
        if relu && v < 0.0 { 0.0 } else { v }
    };
    for i in 0..ys {
        let y: [&[f32]; 4] = std::array::from_fn(|jj| &s.out[(i * 4 + jj) * tw..][..tw]);
        let mut px = dst[i * w..][..w].chunks_exact_mut(4);
        for (j, p) in (&mut px).enumerate() {
            p[0] = act(y[0][j]);
            p[1] = act(y[1][j]);
            p[2] = act(y[2][j]);
            p[3] = act(y[3][j]);
        }
        for (jj, p) in px.into_remainder().iter_mut().enumerate() {
            *p = act(y[jj][w / 4]);
        }
    }
}
