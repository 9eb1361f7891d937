//! Images in and out: loading, resizing, the VGG pixel space, saving.
//!
//! Pixel space (docs/design.md §1): RGB on 0..255 minus the ImageNet means. The optimiser works in
//! this space; a saved image is `clip(x + means, 0, 255)` rounded.

use crate::atomic;
use anyhow::{Context, Result, bail};
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::{Device, Tensor, TensorData};
use image::{ImageReader, RgbImage, imageops::FilterType};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// ImageNet channel means, R, G, B, on 0..255.
pub const MEANS: [f32; 3] = [123.68, 116.779, 103.939];

/// Largest input file we accept; anything bigger is almost surely a mistake.
pub const MAX_FILE_BYTES: u64 = 256 * 1024 * 1024;
/// Largest decoded image (pixels) we accept before resizing.
pub const MAX_DECODED_PIXELS: u64 = 100_000_000;

/// The output size asked for in a preset.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(untagged, deny_unknown_fields)]
pub enum Size {
    Exact { width: u32, height: u32 },
    MaxSide { max_side: u32 },
}

impl Size {
    /// The (width, height) this size gives for a source of `w` x `h`.
    pub fn resolve(&self, w: u32, h: u32) -> (u32, u32) {
        match *self {
            Size::Exact { width, height } => (width, height),
            Size::MaxSide { max_side } => {
                let scale = max_side as f64 / w.max(h) as f64;
                let rw = ((w as f64 * scale).round() as u32).max(1);
                let rh = ((h as f64 * scale).round() as u32).max(1);
                (rw, rh)
            }
        }
    }
}

/// Loads an image file as RGB, with errors that name the file and the problem.
pub fn load_rgb(path: &Path) -> Result<RgbImage> {
    let meta = std::fs::metadata(path).with_context(|| {
        format!(
            "cannot read image {}: the file does not exist or is not readable; check the path",
            path.display()
        )
    })?;
    if !meta.is_file() {
        bail!(
            "image {} is not a file; give the path of a PNG or JPEG image",
            path.display()
        );
    }
    if meta.len() == 0 {
        bail!(
            "image {} is empty (0 bytes); replace it with a real PNG or JPEG image",
            path.display()
        );
    }
    if meta.len() > MAX_FILE_BYTES {
        bail!(
            "image {} is {} MB, more than the {} MB easel accepts; scale it down first",
            path.display(),
            meta.len() / 1_000_000,
            MAX_FILE_BYTES / 1_000_000
        );
    }
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read image {}", path.display()))?;
    decode_rgb(&bytes, path)
}

/// Decodes image bytes (read from `path`, which names them in errors) as RGB.
pub fn decode_rgb(bytes: &[u8], path: &Path) -> Result<RgbImage> {
    // The content decides the format, not the file name.
    let format = image::guess_format(bytes).map_err(|_| {
        anyhow::anyhow!(
            "{} is not an image easel can read (PNG, JPEG, GIF, BMP, TIFF, WebP); convert it to PNG or JPEG",
            path.display()
        )
    })?;
    let damaged = || {
        format!(
            "image {} is damaged or truncated and cannot be decoded; re-export it",
            path.display()
        )
    };
    if format == image::ImageFormat::Jpeg && !jpeg_is_whole(bytes) {
        bail!(
            "image {} is truncated: the JPEG stops before its end marker, so part of the picture is missing; download or export it again",
            path.display()
        );
    }
    let mut reader = ImageReader::with_format(std::io::Cursor::new(bytes), format);
    let (w, h) = reader.into_dimensions().with_context(damaged)?;
    if w as u64 * h as u64 > MAX_DECODED_PIXELS {
        bail!(
            "image {} is {w}x{h} pixels, more than the {} megapixels easel decodes; scale it down first",
            path.display(),
            MAX_DECODED_PIXELS / 1_000_000
        );
    }
    reader = ImageReader::with_format(std::io::Cursor::new(bytes), format);
    // Bound every allocation the decoder makes, not just the header's size: a GIF can
    // declare a frame far larger than its screen (found by fuzzing).
    let mut limits = image::Limits::default();
    limits.max_alloc = Some(MAX_DECODED_PIXELS * 8);
    reader.limits(limits);
    let img = reader.decode().with_context(damaged)?;
    Ok(img.to_rgb8())
}

/// Whether a JPEG holds its end-of-image marker (FF D9) after its last start-of-scan
/// (FF DA). JPEG decoders fill a cut-off scan with grey without a word; a marker cannot
/// occur inside entropy-coded data (an FF there is followed by 00 or a restart code),
/// so an end marker after the last scan means the last scan is whole. Bytes after it
/// (camera padding) are allowed.
fn jpeg_is_whole(bytes: &[u8]) -> bool {
    let marker = |code: u8| bytes.windows(2).rposition(|w| w == [0xFF, code]);
    match (marker(0xDA), marker(0xD9)) {
        (Some(scan), Some(end)) => end > scan,
        _ => false,
    }
}

/// Resizes to exactly `w` x `h` (Lanczos, as PIL's and skimage's high-quality resizes).
pub fn resize(img: &RgbImage, w: u32, h: u32) -> RgbImage {
    if img.width() == w && img.height() == h {
        return img.clone();
    }
    image::imageops::resize(img, w, h, FilterType::Lanczos3)
}

/// RGB pixels to a `[1, 3, H, W]` tensor in pixel space.
pub fn to_pixel_space(img: &RgbImage, device: &Device) -> Tensor<4> {
    let (w, h) = (img.width() as usize, img.height() as usize);
    let mut data = vec![0f32; 3 * w * h];
    for (x, y, p) in img.enumerate_pixels() {
        for c in 0..3 {
            data[c * w * h + y as usize * w + x as usize] = p[c] as f32 - MEANS[c];
        }
    }
    Tensor::from_data(TensorData::new(data, [1, 3, h, w]), device)
}

/// Floats in pixel space (`[3, H, W]` order, as read back from a tensor) to RGB pixels:
/// `clip(x + means, 0, 255)` rounded.
pub fn from_pixel_space(values: &[f32], w: usize, h: usize) -> RgbImage {
    RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let i = y as usize * w + x as usize;
        image::Rgb(std::array::from_fn(|c| {
            (values[c * w * h + i] + MEANS[c]).clamp(0.0, 255.0).round() as u8
        }))
    })
}

/// Reads a `[1, 3, H, W]` pixel-space tensor back as an RGB image.
pub fn tensor_to_rgb(x: &Tensor<4>) -> Result<RgbImage> {
    let [_, _, h, w] = x.dims();
    let data = x.to_data().convert::<f32>();
    let values = data
        .as_slice::<f32>()
        .map_err(|e| anyhow::anyhow!("cannot read image tensor: {e:?}"))?;
    Ok(from_pixel_space(values, w, h))
}

/// Saves an RGB image atomically; the format follows the extension (PNG or JPEG).
pub fn save(img: &RgbImage, path: &Path) -> Result<()> {
    let format = image::ImageFormat::from_path(path).with_context(|| {
        format!(
            "cannot tell the image format of {}; use .png or .jpg",
            path.display()
        )
    })?;
    let mut bytes = std::io::Cursor::new(Vec::new());
    img.write_to(&mut bytes, format)
        .with_context(|| format!("cannot encode {}", path.display()))?;
    atomic::write(path, bytes.get_ref())
}

/// `U(-20, 20)` noise in pixel space, `[1, 3, h, w]`, reproducible from `seed`.
pub fn uniform_noise(seed: u64, w: usize, h: usize, device: &Device) -> Tensor<4> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let data: Vec<f32> = (0..3 * w * h)
        .map(|_| rng.random_range(-20.0f32..20.0))
        .collect();
    Tensor::from_data(TensorData::new(data, [1, 3, h, w]), device)
}

/// Clamps a pixel-space image to the valid range: 0..255 once the means are added back.
/// Resizes a `[N, C, H, W]` tensor to `w` x `h`, bilinearly (images, moments, averages
/// carried from one scale to the next).
pub fn resize_tensor(t: Tensor<4>, w: u32, h: u32) -> Tensor<4> {
    let [_, _, th, tw] = t.dims();
    if (tw, th) == (w as usize, h as usize) {
        return t;
    }
    interpolate(
        t,
        InterpolateOptions::new(InterpolateMode::Bilinear)
            .with_output_size([h as usize, w as usize]),
    )
}

/// Per channel, the range `[lo, hi]` of pixel values in pixel space (0..255 less the
/// channel's mean).
pub fn pixel_range() -> ([f32; 3], [f32; 3]) {
    (MEANS.map(|m| -m), MEANS.map(|m| 255.0 - m))
}

pub fn clamp_pixels(x: Tensor<4>) -> Tensor<4> {
    clamp_channels(x, pixel_range())
}

/// `x` (`[1, 3, H, W]`) clamped to `[lo[c], hi[c]]` per channel; NaN stays NaN (burn's
/// `max_pair` and `min_pair`), so that a blown-up step shows as a NaN cost.
pub fn clamp_channels(x: Tensor<4>, (lo, hi): ([f32; 3], [f32; 3])) -> Tensor<4> {
    let device = x.device();
    let lo =
        Tensor::<1>::from_data(TensorData::new(lo.to_vec(), [3]), &device).reshape([1, 3, 1, 1]);
    let hi =
        Tensor::<1>::from_data(TensorData::new(hi.to_vec(), [3]), &device).reshape([1, 3, 1, 1]);
    let dims = x.dims();
    x.max_pair(lo.expand(dims)).min_pair(hi.expand(dims))
}

/// Lines cut off each side of an image by [`trim_border`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Border {
    pub top: u32,
    pub bottom: u32,
    pub left: u32,
    pub right: u32,
}

/// The largest standard deviation of luminance (0..255) along a line that still counts
/// as a border: a frame or a mat is flat to within JPEG noise; a painted or
/// photographed edge, even a dark sky's, varies more (the demo images: 6 and up).
const FLAT_LINE: f64 = 4.0;

/// `img` without the flat lines along its edges: the frame or mat around a photographed
/// painting (The Starry Night of the demo has an 8-pixel black one), and 1% of the side
/// more where there was one. At most a quarter of each side goes. Gram matching copies a
/// frame's long straight edges into the picture as rectangles, so style images are
/// trimmed when a preset asks (`trim_style: true`).
pub fn trim_border(img: &RgbImage) -> (RgbImage, Border) {
    let (w, h) = (img.width(), img.height());
    let lum = |x: u32, y: u32| {
        let p = img.get_pixel(x, y).0;
        0.299 * p[0] as f64 + 0.587 * p[1] as f64 + 0.114 * p[2] as f64
    };
    let flat = |values: &mut dyn Iterator<Item = f64>| {
        let (mut n, mut sum, mut sq) = (0.0, 0.0, 0.0);
        for v in values {
            (n, sum, sq) = (n + 1.0, sum + v, sq + v * v);
        }
        n > 0.0 && (sq / n - (sum / n).powi(2)).max(0.0).sqrt() < FLAT_LINE
    };
    let mut b = Border::default();
    // Rows first, then columns over the rows left, then rows again over the columns
    // left: each side's lines are judged without the other sides' frame.
    for _ in 0..2 {
        let (x0, x1) = (b.left, w - b.right);
        let row = |y: u32| flat(&mut (x0..x1).map(|x| lum(x, y)));
        while b.top < h / 4 && row(b.top) {
            b.top += 1;
        }
        while b.bottom < h / 4 && row(h - 1 - b.bottom) {
            b.bottom += 1;
        }
        let (y0, y1) = (b.top, h - b.bottom);
        let column = |x: u32| flat(&mut (y0..y1).map(|y| lum(x, y)));
        while b.left < w / 4 && column(b.left) {
            b.left += 1;
        }
        while b.right < w / 4 && column(w - 1 - b.right) {
            b.right += 1;
        }
    }
    // Inside a frame lies the canvas's own edge: a light, not quite straight stripe
    // that the frame's flatness test misses (The Starry Night's is 6-8 pixels). Cut 1%
    // of the side more wherever a frame was found (measured in bench/quality.py: the
    // frame alone leaves half of the rectangles).
    let margin = |found: u32, side: u32| match found {
        0 => 0,
        n => (n + side.div_ceil(100)).min(side / 4),
    };
    b = Border {
        top: margin(b.top, h),
        bottom: margin(b.bottom, h),
        left: margin(b.left, w),
        right: margin(b.right, w),
    };
    let (cw, ch) = (w - b.left - b.right, h - b.top - b.bottom);
    let cropped = image::imageops::crop_imm(img, b.left, b.top, cw, ch).to_image();
    (cropped, b)
}

#[cfg(test)]
mod jpeg_tests {
    use super::jpeg_is_whole;

    #[test]
    fn a_cut_jpeg_is_told_from_a_whole_one() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/presets/images/starry_night.jpg"
        );
        let whole = std::fs::read(path).expect("the demo JPEG");
        assert!(jpeg_is_whole(&whole));
        let mut padded = whole.clone();
        padded.extend_from_slice(&[0; 64]);
        assert!(
            jpeg_is_whole(&padded),
            "camera padding after the end marker"
        );
        for keep in [whole.len() / 2, whole.len() - 2, 600] {
            assert!(!jpeg_is_whole(&whole[..keep]), "cut at {keep} bytes");
        }
    }
}

#[cfg(test)]
mod trim_tests {
    use super::*;

    #[test]
    fn a_black_frame_is_cut_and_a_picture_kept() {
        // A 40x30 checkerboard inside a 3-pixel black frame (5 at the bottom).
        let img = RgbImage::from_fn(46, 38, |x, y| {
            let inside = (3..43).contains(&x) && (3..33).contains(&y);
            let v = if inside && (x / 4 + y / 4) % 2 == 0 {
                200
            } else {
                40
            };
            image::Rgb(if inside { [v, v, v] } else { [0, 0, 0] })
        });
        let (cut, b) = trim_border(&img);
        // The frame and 1% of the side (one pixel here) more.
        let want = Border {
            top: 4,
            bottom: 6,
            left: 4,
            right: 4,
        };
        assert_eq!(b, want);
        assert_eq!(cut.dimensions(), (38, 28));
        let (again, none) = trim_border(&cut);
        assert_eq!((again.dimensions(), none), ((38, 28), Border::default()));
    }

    #[test]
    fn a_flat_image_loses_at_most_a_quarter_a_side() {
        let img = RgbImage::from_pixel(20, 16, image::Rgb([9, 9, 9]));
        let (cut, _) = trim_border(&img);
        assert!(
            cut.width() >= 10 && cut.height() >= 8,
            "{:?}",
            cut.dimensions()
        );
    }
}
