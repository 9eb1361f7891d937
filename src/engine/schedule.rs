//! Coarse to fine: the sizes a run optimises at and the iterations each gets.
//!
//! Sizes grow by sqrt(2) from `min_side` (the long side of the first scale) to the
//! target, at most `steps` of them; each scale starts from the upsampled result of the
//! last (crowsonkb/style-transfer-pytorch does the same).

pub use crate::preset::Scales;

/// One scale: its size and the iteration it ends at (exclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stage {
    pub width: u32,
    pub height: u32,
    pub end: u64,
}

/// The stages of a run at `width` x `height` for `total` iterations.
pub fn stages(scales: Option<&Scales>, width: u32, height: u32, total: u64) -> Vec<Stage> {
    let Some(s) = scales else {
        return vec![Stage {
            width,
            height,
            end: total,
        }];
    };
    let long = width.max(height) as f64;
    let mut sizes: Vec<(u32, u32)> = (0..s.steps.max(1))
        .rev()
        .map(|k| {
            let f = std::f64::consts::SQRT_2.powi(-(k as i32));
            (
                ((width as f64 * f).round() as u32).max(16),
                ((height as f64 * f).round() as u32).max(16),
            )
        })
        .filter(|(w, h)| (*w.max(h) as f64) >= (s.min_side as f64).min(long) - 0.5)
        .collect();
    sizes.dedup();
    let n = sizes.len() as u64;
    // Given per-scale iterations fix the boundaries whatever the total (so a resumed run
    // that goes on longer keeps them); otherwise the total is shared equally.
    let per = s.iterations.unwrap_or(total / n);
    sizes
        .iter()
        .enumerate()
        .map(|(k, (w, h))| Stage {
            width: *w,
            height: *h,
            end: if k as u64 == n - 1 {
                total.max(per * k as u64)
            } else {
                per * (k as u64 + 1)
            },
        })
        .collect()
}

/// The stage an iteration belongs to.
pub fn stage_of(stages: &[Stage], iter: u64) -> usize {
    stages
        .iter()
        .position(|s| iter < s.end)
        .unwrap_or(stages.len().saturating_sub(1))
}
