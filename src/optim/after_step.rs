//! What follows each accepted step, whichever the optimiser: the clamp of the image to
//! the pixel range, and the EMA's update (docs/design.md §1).

/// The clamp and the EMA's update after a step, as the float32 constants that the
/// resident state applies: Adam's fused update (host buffers, the card's `adam`
/// kernel) and L-BFGS's image (`network::lbfgs_image`). They round as the engine's own
/// `clamp_pixels` and `Ema::update` on tensors, which take the same values.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct AfterStep {
    /// Per channel, the pixel range `[lo, hi]` the image is clamped to, where `clamp` is on.
    pub clamp: Option<([f32; 3], [f32; 3])>,
    /// The EMA's decay and `1 - decay`, where `ema` is on. The complement is taken in
    /// float64, as burn's `tensor * (1.0 - decay)` takes it.
    pub ema: Option<(f32, f32)>,
}

impl AfterStep {
    /// `clamp`: clamp to the pixel range; `ema`: the EMA's decay, where it is on.
    pub fn new(clamp: bool, ema: Option<f64>) -> AfterStep {
        AfterStep {
            clamp: clamp.then(crate::image::pixel_range),
            ema: ema.map(|decay| (decay as f32, (1.0 - decay) as f32)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clamp_is_the_pixel_range() {
        let (lo, hi) = crate::image::pixel_range();
        assert_eq!(AfterStep::new(true, None).clamp, Some((lo, hi)));
        assert_eq!(lo[0], -123.68f32);
        assert_eq!(hi[2], 255.0 - 103.939f32);
        assert_eq!(AfterStep::new(false, None), AfterStep::default());
    }

    #[test]
    fn the_emas_complement_is_taken_in_float64() {
        let (decay, keep) = AfterStep::new(false, Some(0.999)).ema.expect("ema");
        assert_eq!(decay, 0.999f32);
        assert_eq!(keep, (1.0f64 - 0.999) as f32);
        assert_ne!(keep, 1.0f32 - 0.999f32);
    }
}
