//! `easel bench`: seconds per iteration on the real network, where the time goes, peak
//! memory, and the wall time coarse to fine saves.

use crate::backend::Backend;
use crate::engine::{self, Destination, Event, RunSpec};
use crate::image as img;
use crate::loss::{self, Targets};
use crate::optim::{Optimizer, OptimizerSpec};
use crate::preset::Preset;
use crate::vgg::Layer;
use crate::weights;
use anyhow::{Result, anyhow, bail};
use burn::tensor::Tensor;
use std::path::Path;
use std::time::{Duration, Instant};

/// Peak resident memory of this process so far, in MiB (Linux; `None` elsewhere).
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

pub fn parse_size(s: &str) -> Result<(u32, u32)> {
    let (w, h) = s
        .split_once('x')
        .ok_or_else(|| anyhow!("size `{s}`: write WIDTHxHEIGHT, e.g. 400x300"))?;
    Ok((w.trim().parse()?, h.trim().parse()?))
}

/// Memory in use on the device (GPU backends), in MiB.
fn device_mib(backend: &Backend) -> Option<f64> {
    backend
        .device
        .memory_pool_usage()
        .map(|u| u.bytes_reserved as f64 / (1u64 << 20) as f64)
}

/// Blocks until the device has finished the queued work.
fn sync(t: &Tensor<4>) {
    let _ = t.clone().sum().into_scalar::<f32>();
}

pub struct BenchOptions<'a> {
    pub sizes: &'a [String],
    pub iters: usize,
    pub optimizer: &'a str,
    /// Also time the forward pass alone (the rest is the backward pass and the costs).
    pub profile: bool,
}

/// Times `iters` iterations (after one warm-up) at each size with the default preset's
/// settings on chelsea.png and starry_night.jpg.
pub fn run(weights_path: &Path, backend: Backend, opts: &BenchOptions) -> Result<()> {
    let preset = Preset::load(Path::new("presets/default.yaml"), &[])?;
    let spec = match opts.optimizer {
        "adam" => OptimizerSpec::adam(2.0),
        "lbfgs" => OptimizerSpec::lbfgs(1.0, 100),
        other => bail!("unknown optimizer `{other}`: use adam or lbfgs"),
    };
    let device = &backend.device;
    let vgg = weights::load(weights_path, device)?.with_pooling(preset.pooling);
    let content = img::load_rgb(&preset.content)?;
    let style = img::load_rgb(&preset.style.images()[0].0)?;
    let cost = preset.cost_weights();
    println!(
        "easel bench: {} on {}, {} timed iterations per size after 1 warm-up",
        opts.optimizer, backend.description, opts.iters
    );
    print!(
        "{:>10} {:>12} {:>14}",
        "size", "s/iteration", "peak RSS MiB"
    );
    if backend.kind == "gpu" {
        print!(" {:>14}", "GPU MiB");
    }
    if opts.profile {
        print!(" {:>12} {:>12}", "forward s", "backward+ s");
    }
    println!();
    for s in opts.sizes {
        let (w, h) = parse_size(s)?;
        let c = img::to_pixel_space(&img::resize(&content, w, h), device);
        let st = img::to_pixel_space(&img::resize(&style, w, h), device);
        let targets = Targets::compute(&vgg, c.clone(), &[(st, 1.0)], &cost);
        let mut x = img::uniform_noise(0, w as usize, h as usize, device) * 0.6 + c * 0.4;
        let mut opt = Optimizer::new(&spec);
        let mut eval = |x: &Tensor<4>| loss::evaluate(&vgg, x, &targets, &cost);
        let mut timed = 0.0;
        for i in 0..=opts.iters {
            let t = Instant::now();
            let (next, _) = opt.step(spec.lr(), x, &mut eval)?;
            sync(&next);
            x = next;
            if i > 0 {
                timed += t.elapsed().as_secs_f64();
            }
        }
        let per = timed / opts.iters.max(1) as f64;
        let rss = peak_rss_mib()
            .map(|m| format!("{m:.0}"))
            .unwrap_or_else(|| "n/a".into());
        print!("{s:>10} {per:>12.3} {rss:>14}");
        if backend.kind == "gpu" {
            print!(
                " {:>14}",
                device_mib(&backend)
                    .map(|m| format!("{m:.0}"))
                    .unwrap_or_else(|| "n/a".into())
            );
        }
        if opts.profile {
            let deepest = Layer::parse("conv5_1").unwrap_or(Layer(12));
            let t = Instant::now();
            for _ in 0..opts.iters {
                let taps = vgg.forward(x.clone(), deepest);
                sync(&taps[deepest.0]);
            }
            let fwd = t.elapsed().as_secs_f64() / opts.iters.max(1) as f64;
            print!(" {fwd:>12.3} {:>12.3}", per - fwd);
        }
        println!();
    }
    Ok(())
}

/// (iteration, J, elapsed seconds) of one record.
type Point = (u64, f64, f64);

/// Wall time for coarse to fine to reach the J that a plain single-scale Adam run
/// reaches after `iterations`, at `w` x `h`.
pub fn time_to_target(
    weights_path: &Path,
    backend: Backend,
    w: u32,
    h: u32,
    iterations: u64,
) -> Result<()> {
    let base: Vec<String> = vec![
        format!("size={{width: {w}, height: {h}}}"),
        format!("iterations={iterations}"),
        "save_every=0".into(),
    ];
    let out = std::env::temp_dir().join(format!("easel-bench-{}", std::process::id()));
    let run = |extra: &[&str], target: Option<f64>| -> Result<(Vec<Point>, usize)> {
        let mut o = base.clone();
        o.extend(extra.iter().map(|s| s.to_string()));
        let preset = Preset::load(Path::new("presets/default.yaml"), &o)?;
        let last_stage_start =
            engine::schedule::stages(preset.scales.as_ref(), w, h, preset.iterations)
                .iter()
                .rev()
                .nth(1)
                .map(|s| s.end)
                .unwrap_or(0);
        let mut handle = engine::spawn(RunSpec {
            preset,
            destination: Destination::New(out.clone()),
            weights: weights_path.to_path_buf(),
            backend: backend.clone(),
            preview_every_s: 0.0,
        });
        let mut points = Vec::new();
        loop {
            match handle.events.recv_timeout(Duration::from_secs(3600)) {
                Ok(Event::Iteration(r)) => {
                    points.push((r.iter, r.j, r.elapsed_s));
                    if let Some(t) = target
                        && r.iter >= last_stage_start
                        && r.j <= t
                    {
                        handle.send(engine::Command::Stop);
                    }
                }
                Ok(Event::Failed(e)) => bail!("{e}"),
                Ok(Event::Finished { .. }) | Err(_) => break,
                Ok(_) => {}
            }
        }
        handle.join();
        Ok((points, last_stage_start as usize))
    };
    println!(
        "easel bench --time-to-target: {w}x{h} on {}",
        backend.description
    );
    let (plain, _) = run(&[], None)?;
    let &(_, target, plain_time) = plain
        .last()
        .ok_or_else(|| anyhow!("the plain run made no iterations"))?;
    println!("plain Adam, {iterations} iterations: J {target:.4e} after {plain_time:.1} s");
    let scales = format!("scales={{min_side: {}, steps: 5}}", (w.max(h) / 4).max(64));
    let (c2f, start) = run(
        &[&scales, &format!("iterations={}", iterations * 2)],
        Some(target),
    )?;
    match c2f
        .iter()
        .find(|(i, j, _)| *i as usize >= start && *j <= target)
    {
        Some((i, j, t)) => println!(
            "coarse to fine ({scales}): J {j:.4e} at iteration {i} after {t:.1} s: {:.2}x the plain run's time",
            t / plain_time
        ),
        None => println!(
            "coarse to fine ({scales}) did not reach J {target:.4e} within {} iterations",
            iterations * 2
        ),
    }
    let _ = std::fs::remove_dir_all(&out);
    Ok(())
}
