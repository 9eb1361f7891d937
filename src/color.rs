//! Colour preservation (Gatys et al. 2017, "Controlling Perceptual Factors in Neural
//! Style Transfer"): transfer on luminance only, or match the style's colours to the
//! content's before the transfer.

// 3x3 matrix arithmetic reads best with explicit indices.
#![allow(clippy::needless_range_loop)]

use image::RgbImage;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PreserveColors {
    /// Plain transfer: the style's colours come along.
    #[default]
    None,
    /// Optimise on luminance only; the output takes the content's chroma (YIQ).
    Luminance,
    /// Recolour the style so its colour mean and covariance match the content's.
    Histogram,
}

/// RGB (0..255) to YIQ.
pub fn rgb_to_yiq([r, g, b]: [f32; 3]) -> [f32; 3] {
    [
        0.299 * r + 0.587 * g + 0.114 * b,
        0.595_716 * r - 0.274_453 * g - 0.321_263 * b,
        0.211_456 * r - 0.522_591 * g + 0.311_135 * b,
    ]
}

/// YIQ to RGB (0..255, not clipped).
pub fn yiq_to_rgb([y, i, q]: [f32; 3]) -> [f32; 3] {
    // The exact inverse of the matrix of `rgb_to_yiq`.
    [
        y + 0.956_295_7 * i + 0.621_024_4 * q,
        y - 0.272_122_1 * i - 0.647_380_6 * q,
        y - 1.106_989 * i + 1.704_615 * q,
    ]
}

fn px(p: &image::Rgb<u8>) -> [f32; 3] {
    [p[0] as f32, p[1] as f32, p[2] as f32]
}

fn to_u8(v: [f32; 3]) -> image::Rgb<u8> {
    image::Rgb(v.map(|c| c.clamp(0.0, 255.0).round() as u8))
}

/// The luminance of an image as a grey RGB image.
pub fn luminance(img: &RgbImage) -> RgbImage {
    RgbImage::from_fn(img.width(), img.height(), |x, y| {
        let l = rgb_to_yiq(px(img.get_pixel(x, y)))[0];
        to_u8([l, l, l])
    })
}

fn mean_std(values: impl Iterator<Item = f32> + Clone) -> (f32, f32) {
    let n = values.clone().count().max(1) as f32;
    let mean = values.clone().sum::<f32>() / n;
    let var = values.map(|v| (v - mean).powi(2)).sum::<f32>() / n;
    (mean, var.sqrt())
}

/// The style's luminance with its mean and spread matched to the content's, as grey RGB.
pub fn matched_luminance(style: &RgbImage, content: &RgbImage) -> RgbImage {
    let lum = |img: &RgbImage| {
        img.pixels()
            .map(|p| rgb_to_yiq(px(p))[0])
            .collect::<Vec<f32>>()
    };
    let (ls, lc) = (lum(style), lum(content));
    let (ms, ss) = mean_std(ls.iter().copied());
    let (mc, sc) = mean_std(lc.iter().copied());
    let scale = if ss > 0.0 { sc / ss } else { 1.0 };
    RgbImage::from_fn(style.width(), style.height(), |x, y| {
        let l = (ls[(y * style.width() + x) as usize] - ms) * scale + mc;
        to_u8([l, l, l])
    })
}

/// The generated luminance with the content's chroma: Y from `generated`, I and Q from
/// `content` (same size), as RGB floats before clipping.
pub fn recombine_px(generated: [f32; 3], content: [f32; 3]) -> [f32; 3] {
    let y = rgb_to_yiq(generated)[0];
    let [_, i, q] = rgb_to_yiq(content);
    yiq_to_rgb([y, i, q])
}

/// [`recombine_px`] over whole images.
pub fn recombine(generated: &RgbImage, content: &RgbImage) -> RgbImage {
    RgbImage::from_fn(generated.width(), generated.height(), |x, y| {
        to_u8(recombine_px(
            px(generated.get_pixel(x, y)),
            px(content.get_pixel(x, y)),
        ))
    })
}

type Mat3 = [[f64; 3]; 3];

fn mean_cov(img: &RgbImage) -> ([f64; 3], Mat3) {
    let n = (img.width() * img.height()).max(1) as f64;
    let mut mean = [0.0; 3];
    for p in img.pixels() {
        for c in 0..3 {
            mean[c] += p[c] as f64 / n;
        }
    }
    let mut cov = [[0.0; 3]; 3];
    for p in img.pixels() {
        let d: Vec<f64> = (0..3).map(|c| p[c] as f64 - mean[c]).collect();
        for i in 0..3 {
            for j in 0..3 {
                cov[i][j] += d[i] * d[j] / n;
            }
        }
    }
    // A little ridge keeps flat images (zero variance in a channel) invertible.
    for (i, row) in cov.iter_mut().enumerate() {
        row[i] += 1e-3;
    }
    (mean, cov)
}

/// Lower-triangular L with L L^T = a.
fn cholesky(a: &Mat3) -> Mat3 {
    let mut l = [[0.0; 3]; 3];
    for i in 0..3 {
        for j in 0..=i {
            let s: f64 = (0..j).map(|k| l[i][k] * l[j][k]).sum();
            l[i][j] = if i == j {
                (a[i][i] - s).max(1e-12).sqrt()
            } else {
                (a[i][j] - s) / l[j][j]
            };
        }
    }
    l
}

fn lower_inverse(l: &Mat3) -> Mat3 {
    let mut inv = [[0.0; 3]; 3];
    for i in 0..3 {
        inv[i][i] = 1.0 / l[i][i];
        for j in 0..i {
            let s: f64 = (j..i).map(|k| l[i][k] * inv[k][j]).sum();
            inv[i][j] = -s / l[i][i];
        }
    }
    inv
}

fn matmul(a: &Mat3, b: &Mat3) -> Mat3 {
    let mut m = [[0.0; 3]; 3];
    for i in 0..3 {
        for j in 0..3 {
            m[i][j] = (0..3).map(|k| a[i][k] * b[k][j]).sum();
        }
    }
    m
}

/// The style recoloured so that its colour mean and covariance equal the content's:
/// `x' = L_c L_s^-1 (x - mu_s) + mu_c` with Cholesky factors of the covariances.
pub fn match_histogram(style: &RgbImage, content: &RgbImage) -> RgbImage {
    let (ms, cs) = mean_cov(style);
    let (mc, cc) = mean_cov(content);
    let a = matmul(&cholesky(&cc), &lower_inverse(&cholesky(&cs)));
    RgbImage::from_fn(style.width(), style.height(), |x, y| {
        let p = style.get_pixel(x, y);
        let d: Vec<f64> = (0..3).map(|c| p[c] as f64 - ms[c]).collect();
        to_u8(std::array::from_fn(|i| {
            ((0..3).map(|k| a[i][k] * d[k]).sum::<f64>() + mc[i]) as f32
        }))
    })
}

/// Mean and covariance of an image's colours (for tests and reports).
pub fn color_stats(img: &RgbImage) -> ([f64; 3], [[f64; 3]; 3]) {
    mean_cov(img)
}
