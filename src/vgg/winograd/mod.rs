//! Winograd F(4x4, 3x3): a 3x3 convolution (stride 1, zero padding 1) with 36
//! multiplications per 4x4 output tile and channel pair instead of 144.
//!
//! Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (2016):
//! `Y = A^T [(G g G^T) ⊙ (B^T d B)] A` for each 6x6 input tile `d` (tiles overlap, stride 4)
//! and 3x3 kernel `g`. Summed over input channels, the elementwise products become 36
//! matrix products, one per position ξ of the 6x6 transformed tile, which `gemm` does.
//! The transforms use the interpolation points 0, ±1, ±2 and ∞, the usual choice for
//! float32 (the result agrees with direct convolution to ~1e-6 relative on VGG-19).
//!
//! Each layer splits the work over rayon's threads one of two ways ([`Split`]): blocks of
//! tile rows small enough to stay in cache, or the 36 products shared out by position.
//! The tile transforms are in [`tiles`].

mod tiles;

use super::buffers;
use rayon::prelude::*;
use tiles::{Scratch, Tiling, input_row, output_row};

/// `G`, the kernel transform (6x3).
const G: [[f64; 3]; 6] = [
    [1.0 / 4.0, 0.0, 0.0],
    [-1.0 / 6.0, -1.0 / 6.0, -1.0 / 6.0],
    [-1.0 / 6.0, 1.0 / 6.0, -1.0 / 6.0],
    [1.0 / 24.0, 1.0 / 12.0, 1.0 / 6.0],
    [1.0 / 24.0, -1.0 / 12.0, 1.0 / 6.0],
    [0.0, 0.0, 1.0],
];

/// A convolution's weights in the transformed domain: for each of the 36 positions ξ,
/// a row-major `[K][C]` matrix.
pub struct WinogradKernel {
    /// Output channels.
    pub k: usize,
    /// Input channels.
    pub c: usize,
    u: Vec<f32>,
}

impl WinogradKernel {
    /// From a convolution weight `[K][C][3][3]` (PyTorch's layout, cross-correlation).
    /// The transform is done in float64, so the only rounding is the final one.
    pub fn new(weight: &[f32], k: usize, c: usize) -> Self {
        assert_eq!(weight.len(), k * c * 9, "weight is not [K][C][3][3]");
        let mut u = vec![0f32; 36 * k * c];
        for kk in 0..k {
            for cc in 0..c {
                let g = &weight[(kk * c + cc) * 9..][..9];
                // G g: 6x3.
                let mut gg = [[0f64; 3]; 6];
                for (row, grow) in gg.iter_mut().zip(&G) {
                    for (j, v) in row.iter_mut().enumerate() {
                        *v = (0..3).map(|i| grow[i] * g[i * 3 + j] as f64).sum();
                    }
                }
                // (G g) G^T: 6x6.
                for (a, ggrow) in gg.iter().enumerate() {
                    for (b, grow) in G.iter().enumerate() {
                        let v: f64 = (0..3).map(|j| ggrow[j] * grow[j]).sum();
                        u[((a * 6 + b) * k + kk) * c + cc] = v as f32;
                    }
                }
            }
        }
        WinogradKernel { k, c, u }
    }

    /// The kernel whose convolution gives the gradient with respect to the input of the
    /// convolution by `weight`: input and output channels swapped, taps turned 180°.
    pub fn input_gradient(weight: &[f32], k: usize, c: usize) -> Self {
        assert_eq!(weight.len(), k * c * 9, "weight is not [K][C][3][3]");
        let mut turned = vec![0f32; k * c * 9];
        for kk in 0..k {
            for cc in 0..c {
                let from = &weight[(kk * c + cc) * 9..][..9];
                let to = &mut turned[(cc * k + kk) * 9..][..9];
                for (i, v) in to.iter_mut().enumerate() {
                    *v = from[8 - i];
                }
            }
        }
        Self::new(&turned, c, k)
    }
}

/// What is done to the output: bias added, then ReLU.
#[derive(Clone, Copy)]
pub struct Epilogue<'a> {
    pub bias: Option<&'a [f32]>,
    pub relu: bool,
}

/// A raw pointer to the output, shared by the blocks. Each block writes only the rows
/// of its own tiles, and tiles do not overlap in the output.
#[derive(Clone, Copy)]
struct Output(*mut f32);
unsafe impl Send for Output {}
unsafe impl Sync for Output {}

impl Output {
    /// Through a method, so that closures capture the whole `Output` (which is `Sync`),
    /// not its raw pointer field.
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// How the work is split over threads.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Split {
    /// Blocks of whole tile rows, each doing all 36 products for its tiles; the block's
    /// data stays in cache. Best where the image is large and the channels few.
    Rows(usize),
    /// All tiles at once, the 36 products shared out by position ξ, so that each of the
    /// 36 weight matrices is read once. Best for the deep layers: few tiles, big weights.
    Positions,
}

fn split(c: usize, k: usize, t: &Tiling) -> Split {
    // Blocks in cache: the block's transformed input and products, 36 values per tile
    // and channel each, in about half of a core's L2; but at least one tile row, and
    // every thread should get a block.
    let fit = ((512 * 1024) / (36 * 4 * (c + k))).max(16);
    let per_thread = t.tiles().div_ceil(rayon::current_num_threads().max(1));
    let rows = (fit.min(per_thread) / t.tw).clamp(1, t.th);
    let blocks = t.th.div_ceil(rows);
    // By rows, every block reads all the weights; by positions, the products go through
    // memory once (written, then read). Measured on VGG-19's layers, by positions pays
    // once the weights' traffic exceeds twice the products'.
    let weights = 36 * k * c * blocks;
    let products = 2 * 36 * (c + k) * t.tiles();
    if weights > 2 * products {
        Split::Positions
    } else {
        Split::Rows(rows)
    }
}

/// Convolves `input` (`[C][H][W]`) with `kernel` and returns `[K][H][W]`.
///
/// With `mask`, the input is first multiplied by `mask > 0` (the backward pass of a
/// ReLU, with the ReLU's output as mask), so that pass costs no extra sweep.
pub fn conv3x3(
    input: &[f32],
    mask: Option<&[f32]>,
    h: usize,
    w: usize,
    kernel: &WinogradKernel,
    epilogue: Epilogue,
) -> Vec<f32> {
    let (c, k) = (kernel.c, kernel.k);
    assert_eq!(input.len(), c * h * w, "input is not [C][H][W]");
    if let Some(m) = mask {
        assert_eq!(m.len(), input.len(), "mask differs from input in size");
    }
    if let Some(b) = epilogue.bias {
        assert_eq!(b.len(), k, "bias is not [K]");
    }
    let t = Tiling::new(h, w);
    let mut out = buffers::any(k * h * w);
    if h == 0 || w == 0 {
        return out;
    }
    match split(c, k, &t) {
        Split::Rows(rows) => by_rows(input, mask, &t, kernel, epilogue, rows, &mut out),
        Split::Positions => by_positions(input, mask, &t, kernel, epilogue, &mut out),
    }
    out
}

/// The 36 products `m[ξ] = u[ξ] v[ξ]` for tiles that lie at stride `xs` between
/// positions ξ and `cs` between channels, `n` tiles each.
///
/// # Safety
/// `v` must hold `36` x `c` rows of `n` at those strides, `m` likewise for `k`, and
/// nothing else may touch the rows of `m` for positions in `xis` meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn products(
    kernel: &WinogradKernel,
    v: *const f32,
    m: *mut f32,
    xs: usize,
    cs: usize,
    n: usize,
    xis: std::ops::Range<usize>,
) {
    let (c, k) = (kernel.c, kernel.k);
    for xi in xis {
        unsafe {
            gemm::gemm(
                k,
                n,
                c,
                m.add(xi * xs),
                1,
                cs as isize,
                false,
                kernel.u.as_ptr().add(xi * k * c),
                1,
                c as isize,
                v.add(xi * xs),
                1,
                cs as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    }
}

fn by_rows(
    input: &[f32],
    mask: Option<&[f32]>,
    t: &Tiling,
    kernel: &WinogradKernel,
    epilogue: Epilogue,
    rows: usize,
    out: &mut [f32],
) {
    let (c, k) = (kernel.c, kernel.k);
    let tb = rows * t.tw;
    let plane = t.h * t.w;
    let ptr = Output(out.as_mut_ptr());
    (0..t.th.div_ceil(rows)).into_par_iter().for_each_init(
        || {
            (
                vec![0f32; 36 * c * tb],
                vec![0f32; 36 * k * tb],
                Scratch::new(t),
            )
        },
        |(v, m, s), b| {
            let rows = b * rows..((b + 1) * rows).min(t.th);
            let n = rows.len() * t.tw;
            // Layout: [channel][ξ][tile], n tiles used of tb.
            for ch in 0..c {
                let x = &input[ch * plane..][..plane];
                let mk = mask.map(|m| &m[ch * plane..][..plane]);
                for (r, ti) in rows.clone().enumerate() {
                    input_row(x, mk, t, ti, s, &mut v[ch * 36 * tb + r * t.tw..], tb);
                }
            }
            // SAFETY: v and m hold c (k) chunks of 36 rows of tb >= n, and both are this
            // block's own.
            unsafe { products(kernel, v.as_ptr(), m.as_mut_ptr(), tb, 36 * tb, n, 0..36) };
            for kk in 0..k {
                let bias = epilogue.bias.map_or(0.0, |b| b[kk]);
                for (r, ti) in rows.clone().enumerate() {
                    let y0 = 4 * ti;
                    let ys = (t.h - y0).min(4);
                    // SAFETY: rows y0..y0+ys of plane kk belong to tile row ti, which
                    // only this block writes; they lie inside `out`.
                    let dst = unsafe {
                        std::slice::from_raw_parts_mut(
                            ptr.get().add(kk * plane + y0 * t.w),
                            ys * t.w,
                        )
                    };
                    let src = &m[kk * 36 * tb + r * t.tw..];
                    output_row(src, tb, t, ys, bias, epilogue.relu, s, dst);
                }
            }
        },
    );
}

fn by_positions(
    input: &[f32],
    mask: Option<&[f32]>,
    t: &Tiling,
    kernel: &WinogradKernel,
    epilogue: Epilogue,
    out: &mut [f32],
) {
    let (c, k) = (kernel.c, kernel.k);
    let n = t.tiles();
    let plane = t.h * t.w;
    // Layout: [channel][ξ][tile], so that each channel's part is one chunk.
    let mut v = buffers::any(c * 36 * n);
    v.par_chunks_mut(36 * n).enumerate().for_each_init(
        || Scratch::new(t),
        |s, (ch, vc)| {
            let x = &input[ch * plane..][..plane];
            let mk = mask.map(|m| &m[ch * plane..][..plane]);
            for ti in 0..t.th {
                input_row(x, mk, t, ti, s, &mut vc[ti * t.tw..], n);
            }
        },
    );
    let mut m = buffers::any(k * 36 * n);
    let mp = Output(m.as_mut_ptr());
    let threads = rayon::current_num_threads().clamp(1, 36);
    (0..threads).into_par_iter().for_each(|i| {
        // SAFETY: each task writes the rows of its own positions ξ, and v and m hold
        // c (k) chunks of 36 rows of n at strides n and 36 n.
        unsafe {
            products(
                kernel,
                v.as_ptr(),
                mp.get(),
                n,
                36 * n,
                n,
                i * 36 / threads..(i + 1) * 36 / threads,
            )
        };
    });
    out.par_chunks_mut(plane).enumerate().for_each_init(
        || Scratch::new(t),
        |s, (kk, o)| {
            let bias = epilogue.bias.map_or(0.0, |b| b[kk]);
            for ti in 0..t.th {
                let y0 = 4 * ti;
                let ys = (t.h - y0).min(4);
                let src = &m[kk * 36 * n + ti * t.tw..];
                output_row(
                    src,
                    n,
                    t,
                    ys,
                    bias,
                    epilogue.relu,
                    s,
                    &mut o[y0 * t.w..][..ys * t.w],
                );
            }
        },
    );
    buffers::give(v);
    buffers::give(m);
}
