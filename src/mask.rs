//! The preset's `regions`: a mask image over the content whose colours name regions,
//! each with its own style or none (the cost is in `crate::loss::regions`).
//!
//! ```yaml
//! regions:
//!   mask: mask.png
//!   styles:
//!     "#ff0000": starry_night.jpg
//!     "#0000ff": {image: hubble.jpg, weight: 2}
//!     "#000000": none
//! ```

use crate::preset::StyleImage;
use crate::settings::{Rgb, colour_label};
use anyhow::{Result, bail};
use image::RgbImage;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};

/// `regions` as the preset file holds it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionsFile {
    pub mask: PathBuf,
    /// By colour as it appears in the mask, `#rrggbb`.
    pub styles: BTreeMap<String, RegionStyle>,
}

/// A region's style: an image, `none`, or `{image, weight}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    untagged,
    expecting = "an image path, `none`, or `{image: PATH, weight: W}`"
)]
pub enum RegionStyle {
    Image(PathBuf),
    Weighted(StyleImage),
}

/// What `none` is spelled as.
const NONE: &str = "none";

impl RegionStyle {
    /// The image and its weight, or `None` for a region without a style.
    pub fn image(&self) -> Option<(PathBuf, f64)> {
        match self {
            RegionStyle::Image(p) if p.as_os_str() == NONE => None,
            RegionStyle::Image(p) => Some((p.clone(), 1.0)),
            RegionStyle::Weighted(s) => Some((s.image.clone(), s.weight)),
        }
    }
}

/// `#rrggbb` (or `#rgb`) as a colour.
pub fn parse_colour(text: &str) -> Option<Rgb> {
    let hex = text.strip_prefix('#')?;
    let digit = |i: usize, n: usize| u8::from_str_radix(hex.get(i..i + n)?, 16).ok();
    match hex.len() {
        6 => Some([digit(0, 2)?, digit(2, 2)?, digit(4, 2)?]),
        3 => Some([digit(0, 1)? * 17, digit(1, 1)? * 17, digit(2, 1)? * 17]),
        _ => None,
    }
}

impl RegionsFile {
    /// The first problem: `(key, what is wrong and the fix)`.
    pub fn problem(&self) -> Option<(String, String)> {
        if self.styles.is_empty() {
            return Some((
                "regions.styles".into(),
                "is empty; give each colour of the mask a style, e.g. {\"#ff0000\": starry_night.jpg, \"#000000\": none}".into(),
            ));
        }
        for (colour, style) in &self.styles {
            let key = format!("regions.styles.{colour}");
            if parse_colour(colour).is_none() {
                return Some((
                    key,
                    format!(
                        "{colour:?} is not a colour; write it as in the mask, \"#rrggbb\" (quoted: YAML reads # as a comment)"
                    ),
                ));
            }
            if let Some((_, w)) = style.image()
                && !(w.is_finite() && w > 0.0)
            {
                return Some((
                    format!("{key}.weight"),
                    format!(
                        "{w} is not allowed; a region's style weight must be > 0 (or give the region `none`)"
                    ),
                ));
            }
        }
        if self.styles.values().all(|s| s.image().is_none()) {
            return Some((
                "regions.styles".into(),
                "gives no region a style; give at least one an image".into(),
            ));
        }
        None
    }
}

/// The regions of a run: the mask, and per region its colour and the index of its style
/// among the preset's style images (`None`: no style). Weights are settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Regions {
    pub mask: PathBuf,
    pub list: Vec<(Rgb, Option<usize>)>,
}

impl Regions {
    /// The typed regions, the distinct style images (in order) and each region's
    /// colour and weight, from a validated file.
    #[allow(clippy::type_complexity)]
    pub fn from_file(file: &RegionsFile) -> (Regions, Vec<StyleImage>, Vec<(Rgb, Option<f64>)>) {
        let mut images: Vec<StyleImage> = Vec::new();
        let mut list = Vec::new();
        let mut weights = Vec::new();
        for (colour, style) in &file.styles {
            let rgb = parse_colour(colour).unwrap_or_default();
            match style.image() {
                Some((image, weight)) => {
                    let k = match images.iter().position(|s| s.image == image) {
                        Some(k) => k,
                        None => {
                            images.push(StyleImage { image, weight: 1.0 });
                            images.len() - 1
                        }
                    };
                    list.push((rgb, Some(k)));
                    weights.push((rgb, Some(weight)));
                }
                None => {
                    list.push((rgb, None));
                    weights.push((rgb, None));
                }
            }
        }
        let regions = Regions {
            mask: file.mask.clone(),
            list,
        };
        (regions, images, weights)
    }

    /// The file form, with the style images and the weights as they now are.
    pub fn to_file(&self, images: &[PathBuf], weights: &[(Rgb, Option<f64>)]) -> RegionsFile {
        let styles = self
            .list
            .iter()
            .zip(weights)
            .map(|((rgb, k), (_, w))| {
                let style = match (k.and_then(|k| images.get(k)), w) {
                    (Some(image), Some(w)) if *w == 1.0 => RegionStyle::Image(image.clone()),
                    (Some(image), Some(w)) => RegionStyle::Weighted(StyleImage {
                        image: image.clone(),
                        weight: *w,
                    }),
                    _ => RegionStyle::Image(PathBuf::from(NONE)),
                };
                (colour_label(*rgb), style)
            })
            .collect();
        RegionsFile {
            mask: self.mask.clone(),
            styles,
        }
    }

    /// Each region's mask (`[H][W]`, 1 inside, 0 outside) of `mask` resized to `w` x `h`
    /// without blending colours.
    pub fn masks(&self, mask: &RgbImage, w: u32, h: u32) -> Vec<Vec<f32>> {
        let resized = image::imageops::resize(mask, w, h, image::imageops::FilterType::Nearest);
        self.list
            .iter()
            .map(|(rgb, _)| {
                resized
                    .pixels()
                    .map(|p| if p.0 == *rgb { 1.0 } else { 0.0 })
                    .collect()
            })
            .collect()
    }

    /// What a run should hear about a mask it accepts: a listed colour no pixel has (its
    /// style goes unused), and a shape other than the content's `(width, height)` (the
    /// mask is stretched over it).
    pub fn mask_notices(&self, mask: &RgbImage, content: (u32, u32)) -> Vec<String> {
        let path = self.mask.display();
        let present: HashSet<Rgb> = mask.pixels().map(|p| p.0).collect();
        let mut notices: Vec<String> = self
            .list
            .iter()
            .filter(|(rgb, _)| !present.contains(rgb))
            .map(|(rgb, _)| {
                format!(
                    "mask {path}: no pixel has the colour {} listed under `regions.styles`, so its region is empty; check the colour (a JPEG mask shifts colours)",
                    colour_label(*rgb)
                )
            })
            .collect();
        let ((mw, mh), (cw, ch)) = (mask.dimensions(), content);
        let stretch = (f64::from(mw) / f64::from(mh)) / (f64::from(cw) / f64::from(ch));
        if (stretch - 1.0).abs() > 0.01 {
            notices.push(format!(
                "mask {path} is {mw}x{mh} and the content image {cw}x{ch}: the mask is stretched to the content's shape"
            ));
        }
        notices
    }

    /// Refuses a mask with a colour no region lists, naming it.
    pub fn check_mask(&self, mask: &RgbImage, path: &Path) -> Result<()> {
        let mut unlisted: HashMap<Rgb, usize> = HashMap::new();
        for p in mask.pixels() {
            if !self.list.iter().any(|(rgb, _)| *rgb == p.0) {
                *unlisted.entry(p.0).or_default() += 1;
            }
        }
        let mut unlisted: Vec<(Rgb, usize)> = unlisted.into_iter().collect();
        unlisted.sort_by_key(|(rgb, n)| (std::cmp::Reverse(*n), *rgb));
        if let Some((rgb, n)) = unlisted.first() {
            bail!(
                "mask {}: the colour {} ({n} pixels{}) is not listed under `regions.styles`; add it with a style or `none`, or paint the mask with the listed colours only (no anti-aliasing, saved as PNG: JPEG shifts colours)",
                path.display(),
                colour_label(*rgb),
                match unlisted.len() {
                    1 => String::new(),
                    k => format!(", and {} other colours", k - 1),
                }
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_parse_as_the_preset_writes_them() {
        assert_eq!(parse_colour("#ff0080"), Some([255, 0, 128]));
        assert_eq!(parse_colour("#f08"), Some([255, 0, 136]));
        assert_eq!(parse_colour("ff0080"), None);
        assert_eq!(parse_colour("#ff00zz"), None);
        assert_eq!(colour_label([255, 0, 128]), "#ff0080");
    }
}
