//! Where an image is cut into tiles for the tiled path ([`super::tiled`]), and the
//! rectangles it copies between the image and a tile.
//!
//! A tile is an *interior* (the tiles' interiors cover the image exactly once) inside a
//! *crop* of the image: the interior with a halo on every side, cut off at the image's
//! edge. Why the halo makes the result exact, not approximate (docs/design.md, "Tiles"):
//! the crop's edge is wrong (it pads where the image goes on) and the error spreads
//! inwards by `r` pixels up to a layer ([`reach`]), so
//! - with a halo of `r`, every activation over the interior is the untiled one (the
//!   Grams' pass);
//! - the image gradient at a pixel reads the activations' gradients within `r` of it,
//!   each of which needs exact activations, so a halo of `2 r` gives the untiled
//!   gradient over the interior (the gradient's pass).
//!
//! Interiors and halos start on multiples of 64: every 2x2 pooling of the crop then
//! pools the same pixels as the untiled network (16 would do), and every convolution
//! cuts its 4x4 Winograd tiles where the untiled one does, so the two agree bit for bit.

use crate::vgg::{BLOCK_ENDS, Layer};
use serde::{Deserialize, Serialize};

/// Tile origins and halos are multiples of this: the four poolings' 2^4.
pub const ALIGN: usize = 64;

/// The smallest tile: below it, the halo costs many times the tile.
pub const MIN_TILE: usize = 64;

/// The preset's `tile`: `auto` (tile only when the untiled run would not fit in memory),
/// `off`, or a fixed tile side `{size: 1024}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    untagged,
    expecting = "`auto`, `off` or `{size: N}` (N a multiple of 64, e.g. 1024)"
)]
pub enum TileChoice {
    Mode(TileMode),
    Size(TileSize),
}

/// `{size: N}`: tiles of side N.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TileSize {
    pub size: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TileMode {
    Auto,
    Off,
}

impl Default for TileChoice {
    fn default() -> Self {
        TileChoice::Mode(TileMode::Auto)
    }
}

impl TileSize {
    /// Why this side is not a tile size, if it is not; the caller adds how its own
    /// syntax writes one (a preset's `{size: 1024}`, bench's `--tile 1024`).
    pub fn problem(&self) -> Option<String> {
        let size = self.size;
        (size < MIN_TILE || !size.is_multiple_of(ALIGN)).then(|| {
            format!("{size} is not a tile size; give a multiple of {ALIGN} of at least {MIN_TILE}")
        })
    }
}

impl TileChoice {
    /// Why a fixed tile size is not allowed, if it is not.
    pub fn problem(&self) -> Option<String> {
        match self {
            TileChoice::Size(t) => t
                .problem()
                .map(|p| format!("{p}, e.g. {{size: 1024}}, or `auto`")),
            TileChoice::Mode(_) => None,
        }
    }
}

/// A rectangle of pixels: rows `y0..y1`, columns `x0..x1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    pub y0: usize,
    pub y1: usize,
    pub x0: usize,
    pub x1: usize,
}

impl Rect {
    pub fn height(&self) -> usize {
        self.y1 - self.y0
    }
    pub fn width(&self) -> usize {
        self.x1 - self.x0
    }
    pub fn area(&self) -> usize {
        self.height() * self.width()
    }

    /// This rectangle of the image, grown by `halo` on every side within `h` x `w`.
    fn grown(&self, halo: usize, h: usize, w: usize) -> Rect {
        Rect {
            y0: self.y0.saturating_sub(halo),
            y1: (self.y1 + halo).min(h),
            x0: self.x0.saturating_sub(halo),
            x1: (self.x1 + halo).min(w),
        }
    }

    /// This rectangle at a layer `scale` times smaller, relative to `origin` (a
    /// rectangle of the image that contains it) and cut to the layer's `h` x `w`.
    /// Pooling rounds odd sizes down; with every corner but the image's far edges on a
    /// multiple of [`ALIGN`], dividing each corner rounds the same way.
    pub fn at_scale(&self, scale: usize, origin: &Rect, h: usize, w: usize) -> Rect {
        let (oy, ox) = (origin.y0 / scale, origin.x0 / scale);
        Rect {
            y0: (self.y0 / scale - oy).min(h),
            y1: (self.y1 / scale - oy).min(h),
            x0: (self.x0 / scale - ox).min(w),
            x1: (self.x1 / scale - ox).min(w),
        }
    }

    /// Copies this rectangle out of `x` (`[C][h][w]`).
    pub fn copy_from(&self, x: &[f32], c: usize, h: usize, w: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(c * self.area());
        for plane in x.chunks(h * w).take(c) {
            for y in self.y0..self.y1 {
                out.extend_from_slice(&plane[y * w + self.x0..y * w + self.x1]);
            }
        }
        out
    }

    /// Writes the rectangle `inner` of `part` (`[C][ph][pw]`) into this rectangle of `x`
    /// (`[C][h][w]`); the two rectangles have the same size.
    pub fn paste(
        &self,
        (x, h, w): (&mut [f32], usize, usize),
        (part, ph, pw): (&[f32], usize, usize),
        inner: &Rect,
    ) {
        for (dst, src) in x.chunks_mut(h * w).zip(part.chunks(ph * pw)) {
            for (y, yi) in (self.y0..self.y1).zip(inner.y0..inner.y1) {
                dst[y * w + self.x0..y * w + self.x1]
                    .copy_from_slice(&src[yi * pw + inner.x0..yi * pw + inner.x1]);
            }
        }
    }
}

/// How many times smaller than the image layer `i`'s activation is.
pub fn scale(layer: Layer) -> usize {
    1 << BLOCK_ENDS.iter().filter(|&&e| e < layer.0).count()
}

/// How far, in image pixels, a wrong edge spreads inwards up to `deepest`: each 3x3
/// convolution adds one position at its scale, and a 2x2 pooling rounds the band up to
/// whole pooled cells (conv5_1: 80 pixels). The image gradient spreads back as far.
pub fn reach(deepest: Layer) -> usize {
    let mut band: usize = 0;
    for i in 0..=deepest.0 {
        if i > 0 && BLOCK_ENDS.contains(&(i - 1)) {
            band = band.div_ceil(2);
        }
        band += 1;
    }
    band * scale(deepest)
}

fn round_up(v: usize) -> usize {
    v.div_ceil(ALIGN) * ALIGN
}

/// The tiles of an image and the halos of the two passes.
#[derive(Debug, Clone, PartialEq)]
pub struct TilePlan {
    pub height: usize,
    pub width: usize,
    pub interiors: Vec<Rect>,
    /// For the Grams and the content activation: the [`reach`], rounded up to [`ALIGN`].
    pub reads_halo: usize,
    /// For the gradient: twice the reach, rounded up.
    pub gradient_halo: usize,
}

/// Cuts `0..len` at multiples of `size`; a last piece shorter than half a tile joins the
/// one before it (a sliver would cost a whole halo for a few pixels).
fn cuts(len: usize, size: usize) -> Vec<(usize, usize)> {
    let mut out: Vec<(usize, usize)> = (0..len)
        .step_by(size)
        .map(|a| (a, (a + size).min(len)))
        .collect();
    if out.len() > 1 && out.last().is_some_and(|(a, b)| b - a < size / 2) {
        let (_, end) = out.pop().unwrap_or_default();
        if let Some(last) = out.last_mut() {
            last.1 = end;
        }
    }
    out
}

impl TilePlan {
    /// Tiles of side `size` (a multiple of [`ALIGN`]) over an `height` x `width` image
    /// for a network as deep as `deepest`.
    pub fn new(height: usize, width: usize, size: usize, deepest: Layer) -> TilePlan {
        let size = round_up(size.max(MIN_TILE));
        let mut interiors = Vec::new();
        for (y0, y1) in cuts(height, size) {
            for (x0, x1) in cuts(width, size) {
                interiors.push(Rect { y0, y1, x0, x1 });
            }
        }
        let r = reach(deepest);
        TilePlan {
            height,
            width,
            interiors,
            reads_halo: round_up(r),
            gradient_halo: round_up(2 * r),
        }
    }

    /// Whether the plan cuts the image at all (a last piece under half a tile joins the
    /// one before it, so an image a little larger than a tile is one tile).
    pub fn is_tiled(&self) -> bool {
        self.interiors.len() > 1
    }

    /// The crop that holds `interior` with `halo`.
    pub fn crop(&self, interior: &Rect, halo: usize) -> Rect {
        interior.grown(halo, self.height, self.width)
    }

    /// The pixels a pass with `halo` computes, as a multiple of the image's.
    pub fn overhead(&self, halo: usize) -> f64 {
        let computed: usize = self
            .interiors
            .iter()
            .map(|t| self.crop(t, halo).area())
            .sum();
        computed as f64 / (self.height * self.width).max(1) as f64
    }

    /// The largest crop of either pass, in pixels (what the memory estimate holds).
    pub fn largest_crop(&self) -> usize {
        self.interiors
            .iter()
            .map(|t| self.crop(t, self.gradient_halo).area())
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reach_of_the_default_layers() {
        // conv1_x: 2 positions, pooled 1; conv2_x: 3, pooled 2; conv3_x: 6, pooled 3;
        // conv4_x: 7, pooled 4; conv5_1: 5 positions of 16 pixels.
        assert_eq!(reach(Layer::CONV5_1), 80);
        assert_eq!(reach(Layer(15)), 128);
        assert_eq!(reach(Layer(0)), 1);
        assert_eq!(scale(Layer::CONV4_2), 8);
    }

    #[test]
    fn interiors_cover_the_image_once() {
        let plan = TilePlan::new(520, 300, 256, Layer::CONV5_1);
        let mut seen = vec![0u8; 520 * 300];
        for t in &plan.interiors {
            assert_eq!(t.y0 % ALIGN, 0);
            assert_eq!(t.x0 % ALIGN, 0);
            for y in t.y0..t.y1 {
                for x in t.x0..t.x1 {
                    seen[y * 300 + x] += 1;
                }
            }
        }
        assert!(seen.iter().all(|&s| s == 1));
        // 520 = 256 + 264 (an 8-row sliver joins the tile before it); 300 = one tile (its
        // 44-column rest is under half a tile).
        assert_eq!(plan.interiors.len(), 2);
        assert_eq!(plan.reads_halo, 128);
        assert_eq!(plan.gradient_halo, 192);
    }

    #[test]
    fn a_rectangle_copies_and_pastes_back() {
        let (c, h, w) = (2, 5, 7);
        let x: Vec<f32> = (0..c * h * w).map(|v| v as f32).collect();
        let r = Rect {
            y0: 1,
            y1: 4,
            x0: 2,
            x1: 6,
        };
        let part = r.copy_from(&x, c, h, w);
        assert_eq!(part.len(), c * 3 * 4);
        let mut y = vec![0f32; c * h * w];
        let whole = Rect {
            y0: 0,
            y1: 3,
            x0: 0,
            x1: 4,
        };
        r.paste((&mut y, h, w), (&part, 3, 4), &whole);
        for ch in 0..c {
            for yy in 0..h {
                for xx in 0..w {
                    let i = ch * h * w + yy * w + xx;
                    let inside = (1..4).contains(&yy) && (2..6).contains(&xx);
                    assert_eq!(y[i], if inside { x[i] } else { 0.0 });
                }
            }
        }
    }
}
