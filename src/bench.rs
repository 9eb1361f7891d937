//! `easel bench`: seconds per iteration on the real network, and peak memory.

use crate::backend::Backend;
use crate::image as img;
use crate::loss::{self, Targets};
use crate::optim::{Optimizer, OptimizerSpec};
use crate::preset::Preset;
use crate::weights;
use anyhow::{Result, anyhow};
use std::path::Path;
use std::time::Instant;

/// Peak resident memory of this process so far, in MiB (Linux; `None` elsewhere).
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn parse_size(s: &str) -> Result<(u32, u32)> {
    let (w, h) = s
        .split_once('x')
        .ok_or_else(|| anyhow!("size `{s}`: write WIDTHxHEIGHT, e.g. 400x300"))?;
    Ok((w.trim().parse()?, h.trim().parse()?))
}

/// Times `iters` iterations (after one warm-up) at each size with the default preset's
/// settings on chelsea.png and starry_night.jpg.
pub fn run(
    weights_path: &Path,
    sizes: &[String],
    iters: usize,
    backend: Backend,
    optimizer: &str,
) -> Result<()> {
    let preset_path = Path::new("presets/default.yaml");
    let preset = Preset::load(preset_path, &[])?;
    let spec = match optimizer {
        "adam" => OptimizerSpec::adam(2.0),
        "lbfgs" => OptimizerSpec::lbfgs(1.0, 100),
        other => return Err(anyhow!("unknown optimizer `{other}`: use adam or lbfgs")),
    };
    let device = &backend.device;
    let vgg = weights::load(weights_path, device)?.with_pooling(preset.pooling);
    let content = img::load_rgb(&preset.content)?;
    let style = img::load_rgb(&preset.style.images()[0].0)?;
    let cost = preset.cost_weights();
    println!(
        "easel bench: {} on {}, {iters} timed iterations per size after 1 warm-up",
        optimizer, backend.description
    );
    println!(
        "{:>10} {:>12} {:>14}",
        "size", "s/iteration", "peak RSS MiB"
    );
    for s in sizes {
        let (w, h) = parse_size(s)?;
        let c = img::to_pixel_space(&img::resize(&content, w, h), device);
        let st = img::to_pixel_space(&img::resize(&style, w, h), device);
        let targets = Targets::compute(&vgg, c.clone(), &[(st, 1.0)], &cost);
        let mut x = img::uniform_noise(0, w as usize, h as usize, device) * 0.6 + c * 0.4;
        let mut opt = Optimizer::new(&spec);
        let mut eval = |x: &burn::tensor::Tensor<4>| loss::evaluate(&vgg, x, &targets, &cost);
        let mut timed = 0.0;
        for i in 0..=iters {
            let t = Instant::now();
            let (next, _) = opt.step(spec.lr(), x, &mut eval)?;
            // Reading the image back makes sure all of the step's work is done.
            let _ = next.clone().sum().into_scalar::<f32>();
            x = next;
            if i > 0 {
                timed += t.elapsed().as_secs_f64();
            }
        }
        let per = timed / iters.max(1) as f64;
        let rss = peak_rss_mib()
            .map(|m| format!("{m:.0}"))
            .unwrap_or_else(|| "n/a".into());
        println!("{:>10} {:>12.3} {:>14}", s, per, rss);
    }
    Ok(())
}
