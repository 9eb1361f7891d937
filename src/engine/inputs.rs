//! The fixed images of a run: decoded once, then made ready for each scale (resized,
//! colour-handled, in pixel space), and the way the optimised image becomes a picture.

use crate::color::{self, PreserveColors};
use crate::image as img;
use crate::loss::regions::RegionMask;
use crate::mask::Regions;
use crate::preset::{Init, Preset};
use anyhow::Result;
use burn::tensor::{Device, Tensor};
use image::RgbImage;

/// The source images at full resolution.
pub struct Sources {
    content: RgbImage,
    styles: Vec<(RgbImage, f64)>,
    /// With `regions`: the mask, checked, and the regions.
    regions: Option<(RgbImage, Regions)>,
    colors: PreserveColors,
    style_scale: Option<f64>,
}

/// What one scale optimises against, on one device.
pub struct Inputs {
    pub content: Tensor<4>,
    pub styles: Vec<(Tensor<4>, f64)>,
    /// With `regions`: per region its mask at this scale (`[H][W]`, 1 inside) and the
    /// index of its style in `styles` (`None`: no style).
    pub regions: Vec<RegionMask>,
    /// The content at this scale, for luminance-only output.
    content_rgb: RgbImage,
    colors: PreserveColors,
}

impl Sources {
    /// What the run should say about its inputs before it starts (a mask's empty
    /// regions or stretched shape).
    pub fn notices(&self) -> Vec<String> {
        match &self.regions {
            Some((mask, regions)) => regions.mask_notices(mask, self.content.dimensions()),
            None => Vec::new(),
        }
    }

    pub fn load(preset: &Preset) -> Result<Sources> {
        let content = img::load_rgb(&preset.content)?;
        let styles = preset
            .style
            .images()
            .into_iter()
            .map(|(path, blend)| {
                let style = img::load_rgb(&path)?;
                if !preset.trim_style {
                    return Ok((style, blend));
                }
                let (trimmed, b) = img::trim_border(&style);
                if b != img::Border::default() {
                    tracing::info!(
                        "trimmed {path:?}: top {}, bottom {}, left {}, right {} pixels of border",
                        b.top,
                        b.bottom,
                        b.left,
                        b.right
                    );
                }
                Ok((trimmed, blend))
            })
            .collect::<Result<_>>()?;
        let regions = match &preset.regions {
            Some(r) => {
                let mask = img::load_rgb(&r.mask)?;
                r.check_mask(&mask, &r.mask)?;
                Some((mask, r.clone()))
            }
            None => None,
        };
        Ok(Sources {
            content,
            styles,
            regions,
            colors: preset.preserve_colors,
            style_scale: preset.style_scale,
        })
    }

    /// The output size the preset's `size` gives for this content.
    pub fn output_size(&self, preset: &Preset) -> (u32, u32) {
        preset
            .size
            .resolve(self.content.width(), self.content.height())
    }

    /// The size a style image is used at for an output of `w` x `h`: the output's size,
    /// or with `style_scale` its own aspect with the long side scaled from the output's.
    fn style_size(&self, style: &RgbImage, w: u32, h: u32) -> (u32, u32) {
        match self.style_scale {
            None => (w, h),
            Some(s) => {
                let long = (w.max(h) as f64 * s).max(16.0);
                let f = long / style.width().max(style.height()) as f64;
                (
                    ((style.width() as f64 * f).round() as u32).max(16),
                    ((style.height() as f64 * f).round() as u32).max(16),
                )
            }
        }
    }

    pub fn at(&self, w: u32, h: u32, device: &Device) -> Inputs {
        let content_rgb = img::resize(&self.content, w, h);
        let styles = self
            .styles
            .iter()
            .map(|(s, blend)| {
                let (sw, sh) = self.style_size(s, w, h);
                let s = img::resize(s, sw, sh);
                let s = match self.colors {
                    PreserveColors::None => s,
                    PreserveColors::Luminance => color::matched_luminance(&s, &content_rgb),
                    PreserveColors::Histogram => color::match_histogram(&s, &content_rgb),
                };
                (img::to_pixel_space(&s, device), *blend)
            })
            .collect();
        let content_for_net = match self.colors {
            PreserveColors::Luminance => color::luminance(&content_rgb),
            _ => content_rgb.clone(),
        };
        let regions = match &self.regions {
            Some((mask, r)) => r
                .masks(mask, w, h)
                .into_iter()
                .zip(r.list.iter().map(|(_, k)| *k))
                .collect(),
            None => Vec::new(),
        };
        Inputs {
            content: img::to_pixel_space(&content_for_net, device),
            styles,
            regions,
            content_rgb,
            colors: self.colors,
        }
    }
}

impl Inputs {
    pub fn to_device(&self, device: &Device) -> Inputs {
        Inputs {
            content: self.content.clone().to_device(device),
            styles: self
                .styles
                .iter()
                .map(|(t, w)| (t.clone().to_device(device), *w))
                .collect(),
            regions: self.regions.clone(),
            content_rgb: self.content_rgb.clone(),
            colors: self.colors,
        }
    }

    /// The optimised image (pixel space) as the picture the user gets.
    pub fn render(&self, x: &Tensor<4>) -> Result<RgbImage> {
        let generated = img::tensor_to_rgb(x)?;
        Ok(match self.colors {
            PreserveColors::Luminance
                if generated.dimensions() == self.content_rgb.dimensions() =>
            {
                color::recombine(&generated, &self.content_rgb)
            }
            _ => generated,
        })
    }

    /// The initial image of a new run.
    pub fn initial(&self, preset: &Preset, device: &Device) -> Result<Tensor<4>> {
        let [_, _, h, w] = self.content.dims();
        Ok(match &preset.init {
            Init::Noise { noise_ratio } => {
                img::uniform_noise(preset.seed, w, h, device) * *noise_ratio
                    + self.content.clone() * (1.0 - noise_ratio)
            }
            Init::Content => self.content.clone(),
            Init::Style => {
                let s = img::tensor_to_rgb(&self.styles[0].0)?;
                img::to_pixel_space(&img::resize(&s, w as u32, h as u32), device)
            }
            Init::File { path } => {
                let f = img::resize(&img::load_rgb(path)?, w as u32, h as u32);
                img::to_pixel_space(&f, device)
            }
        })
    }
}
