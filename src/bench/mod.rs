//! `easel bench`: seconds per iteration on the real network, where the time goes, peak
//! memory, and the wall time coarse to fine saves.

mod layers;

use crate::backend::{Backend, BackendKind, ConvSearch, CudaSettings, Precision};
use crate::engine::memory::Fit;
use crate::engine::{self, Destination, Event, RunSpec};
use crate::image as img;
use crate::loss::Costs;
use crate::network::tiles::{TileChoice, TileMode, TileSize};
use crate::network::{ConvChoice, Network};
use crate::optim::{AfterStep, Optimizer, OptimizerSpec};
use crate::preset::Preset;
use crate::vgg::{Layer, Padding, Vgg19};
use crate::weights;
use anyhow::{Result, anyhow, bail};
use burn::tensor::Tensor;
use std::path::Path;
use std::time::{Duration, Instant};

/// The settings benchmarks measure: the default preset's, from the easel folder.
fn default_preset(overrides: &[String]) -> Result<Preset> {
    Preset::load(&crate::builtin::default_preset()?, overrides)
}

/// A folder for the benchmark's runs, removed however the benchmark ends.
struct Scratch(std::path::PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `(iteration, J, elapsed s)` of a run, stopped once J reaches `stop_at.1` at or
/// after iteration `stop_at.0`.
fn trajectory(spec: RunSpec, stop_at: Option<(u64, f64)>) -> Result<Vec<Point>> {
    let mut handle = engine::spawn(spec);
    let mut points = Vec::new();
    loop {
        match handle.events.recv_timeout(Duration::from_secs(3600)) {
            Ok(Event::Iteration(r)) => {
                points.push((r.iter, r.j, r.elapsed_s));
                if stop_at.is_some_and(|(from, t)| r.iter >= from && r.j <= t) {
                    handle.send(engine::Command::Stop);
                }
            }
            Ok(Event::Failed(e)) => bail!("{e}"),
            Ok(Event::Finished { .. }) | Err(_) => break,
            Ok(_) => {}
        }
    }
    handle.join();
    Ok(points)
}

/// Peak resident memory of this process so far, in MiB (Linux; `None` elsewhere).
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// `WIDTHxHEIGHT`, each side in the range a run allows (16..8192).
pub fn parse_size(s: &str) -> Result<(u32, u32)> {
    let bad =
        || anyhow!("--sizes {s}: write WIDTHxHEIGHT with sides of 16..8192 pixels, e.g. 400x300");
    let (w, h) = s.split_once('x').ok_or_else(bad)?;
    let side = |v: &str| {
        v.trim()
            .parse::<u32>()
            .ok()
            .filter(|v| (16..=8192).contains(v))
    };
    match (side(w), side(h)) {
        (Some(w), Some(h)) => Ok((w, h)),
        _ => Err(bad()),
    }
}

/// Memory in use on the device, in MiB: burn's pool on wgpu, the card's used memory
/// (all processes) on CUDA.
fn device_mib(backend: &Backend) -> Option<f64> {
    match backend.kind {
        BackendKind::Cpu => None,
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => crate::backend::cuda_device()
            .ok()
            .map(|d| (d.total - d.free) as f64 / (1u64 << 20) as f64),
        _ => backend
            .device
            .memory_pool_usage()
            .map(|u| u.bytes_reserved as f64 / (1u64 << 20) as f64),
    }
}

/// Blocks until the device has finished the queued work.
fn sync(t: &Tensor<4>) {
    let _ = t.clone().sum().into_scalar::<f32>();
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchOptimizer {
    Adam,
    Lbfgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchConv {
    Winograd,
    Direct,
    Both,
}

impl BenchConv {
    fn choices(self) -> Vec<ConvChoice> {
        match self {
            BenchConv::Winograd => vec![ConvChoice::Winograd],
            BenchConv::Direct => vec![ConvChoice::Direct],
            BenchConv::Both => vec![ConvChoice::Winograd, ConvChoice::Direct],
        }
    }
}

/// The first convolution's padding to time: the preset's own, the other, or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchPadding {
    Zero,
    Replicate,
    Both,
}

impl BenchPadding {
    fn choices(self) -> Vec<Padding> {
        match self {
            BenchPadding::Zero => vec![Padding::Zero],
            BenchPadding::Replicate => vec![Padding::Replicate],
            BenchPadding::Both => vec![Padding::Zero, Padding::Replicate],
        }
    }
}

pub struct BenchOptions<'a> {
    pub sizes: &'a [String],
    pub iters: usize,
    pub optimizer: BenchOptimizer,
    /// Also time the forward pass alone (the rest is the backward pass and the costs).
    pub profile: bool,
    pub conv: BenchConv,
    pub padding: BenchPadding,
    pub precision: Precision,
    /// How the CUDA path picks cuDNN's algorithms; each is timed.
    pub conv_search: &'a [ConvSearch],
    /// Also time the Winograd path in tiles of this side.
    pub tile: Option<usize>,
}

/// Times `iters` iterations (after warm-up) at each size with the default preset's
/// settings on chelsea.png and starry_night.jpg.
pub fn run(weights_path: &Path, backend: Backend, opts: &BenchOptions) -> Result<()> {
    // A trailing or doubled comma (`--sizes 400x300,`) leaves an empty item: no size.
    let sizes: Vec<(u32, u32)> = opts
        .sizes
        .iter()
        .filter(|s| !s.trim().is_empty())
        .map(|s| parse_size(s))
        .collect::<Result<_>>()?;
    if sizes.is_empty() {
        bail!("--sizes gives no size; write WIDTHxHEIGHT, e.g. --sizes 400x300,512x512");
    }
    let preset = default_preset(&[])?;
    let spec = match opts.optimizer {
        BenchOptimizer::Adam => OptimizerSpec::adam(2.0),
        BenchOptimizer::Lbfgs => OptimizerSpec::lbfgs(1.0, 100),
    };
    let vgg = weights::load(weights_path, &backend.device)?.with_pooling(preset.pooling);
    let networks = networks(&vgg, &backend, opts)?;
    let content = img::load_rgb(&preset.content)?;
    let style = img::load_rgb(&preset.style.images()[0].0)?;
    let cost = preset.cost_weights();
    println!(
        "easel bench: {} on {}, {} timed iteration{} per size after warm-up",
        match opts.optimizer {
            BenchOptimizer::Adam => "Adam",
            BenchOptimizer::Lbfgs => "L-BFGS (history 100)",
        },
        backend.description,
        opts.iters,
        if opts.iters == 1 { "" } else { "s" }
    );
    print!(
        "{:>10} {:>18} {:>12} {:>8} {:>14}",
        "size", "conv", "s/iteration", "first s", "peak RSS MiB"
    );
    if backend.kind.is_gpu() {
        print!(" {:>14}", "GPU MiB");
    }
    if opts.profile {
        print!(" {:>10} {:>10} {:>10}", "forward s", "backward s", "step s");
    }
    println!();
    for (s, &(w, h)) in opts.sizes.iter().zip(&sizes) {
        // The same limits as a run's: refused here rather than killed mid-measurement.
        engine::memory::check_device_memory(&backend, (w as usize, h as usize), &spec)?;
        let mut baseline = None;
        for (conv, network) in &networks {
            let tile = match network.tile() {
                Some(size) => TileChoice::Size(TileSize { size }),
                None => TileChoice::Mode(TileMode::Off),
            };
            let fit = Fit::choose(
                backend.kind,
                (w as usize, h as usize),
                tile,
                &spec,
                cost.deepest(),
            );
            if let Err(e) = fit.check() {
                println!("{s:>10} {conv:>18} skipped: {e:#}");
                continue;
            }
            if let Some(tiles) = fit.describe(cost.deepest()) {
                println!("{s:>10} {conv:>18} {tiles}");
            }
            let timing =
                time_iterations(network, &content, &style, &cost, &spec, w, h, opts.iters)?;
            let (per, in_network) = (timing.per, timing.in_network);
            let rss = mib(peak_rss_mib());
            print!(
                "{s:>10} {conv:>18} {per:>12.3} {:>8.2} {rss:>14}",
                timing.first
            );
            if backend.kind.is_gpu() {
                print!(" {:>14}", mib(device_mib(&backend)));
            }
            if opts.profile {
                let c = img::to_pixel_space(&img::resize(&content, w, h), &network.device());
                let deepest = Layer::CONV5_1;
                let t = Instant::now();
                for _ in 0..opts.iters {
                    network.forward_pass(c.clone(), deepest)?;
                }
                let fwd = t.elapsed().as_secs_f64() / opts.iters.max(1) as f64;
                // What the optimiser does outside the network: on a GPU path, the host's
                // share of an iteration.
                print!(
                    " {fwd:>10.3} {:>10.3} {:>10.3}",
                    in_network - fwd,
                    per - in_network
                );
            }
            match baseline {
                None => baseline = Some(per),
                Some(f) => print!("  ({:.2}x the first)", per / f),
            }
            if opts.profile {
                let size = (w as usize, h as usize);
                layers::print(network, size, preset.pooling, opts.iters)?;
            }
            println!();
        }
    }
    Ok(())
}

/// The networks to time at each size, labelled: every choice of convolution, padding,
/// cuDNN search and tiles the options ask for that the backend has.
fn networks(vgg: &Vgg19, backend: &Backend, opts: &BenchOptions) -> Result<Vec<(String, Network)>> {
    let (convs, searches) = match backend.kind {
        // Only the CPU has a choice of convolution, only CUDA of cuDNN's algorithms.
        BackendKind::Cpu => (opts.conv.choices(), &[ConvSearch::Auto][..]),
        BackendKind::Cuda => (vec![ConvChoice::Winograd], opts.conv_search),
        BackendKind::Wgpu => (vec![ConvChoice::Winograd], &[ConvSearch::Auto][..]),
    };
    let mut networks = Vec::new();
    for conv in convs {
        for padding in opts.padding.choices() {
            for &search in searches {
                let vgg = vgg.clone().with_padding(padding);
                let cuda = CudaSettings {
                    precision: opts.precision,
                    search,
                };
                let network = Network::new(vgg, backend, conv, cuda)?;
                let mut label = network.path_name().to_string();
                if padding == Padding::Replicate {
                    label.push_str("+replicate");
                }
                match search {
                    ConvSearch::Auto => {}
                    ConvSearch::Heuristic => label.push_str("+heuristic"),
                    ConvSearch::Measured => label.push_str("+measured"),
                }
                let tiled = (opts.tile.zip(network.winograd())).map(|(size, _)| {
                    let mut tiled = network.clone();
                    tiled.set_tile(Some(size));
                    (format!("{label}+tiles {size}"), tiled)
                });
                networks.push((label, network));
                networks.extend(tiled);
            }
        }
    }
    Ok(networks)
}

fn mib(m: Option<f64>) -> String {
    m.map(|m| format!("{m:.0}")).unwrap_or_else(|| "n/a".into())
}

/// What one size's iterations took, in seconds.
struct Timing {
    /// Per optimiser step, after the warm-up.
    per: f64,
    /// Of which in the network's evaluations.
    in_network: f64,
    /// From the start to the end of the first step: the targets, the first use of each
    /// size (on CUDA, cuDNN's algorithm search where no earlier run on the card kept
    /// it) and the warm-up.
    first: f64,
}

impl Timing {
    /// From the seconds of `iters` timed steps, and of those in the network.
    fn of((timed, in_network): (f64, f64), iters: usize, first: f64) -> Timing {
        let per = |s: f64| s / iters.max(1) as f64;
        Timing {
            per: per(timed),
            in_network: per(in_network),
            first,
        }
    }
}

/// Seconds per optimiser step at `w` x `h`, over `iters` steps after one warm-up, and
/// the seconds of it spent in the network's evaluations.
#[allow(clippy::too_many_arguments)]
fn time_iterations(
    network: &Network,
    content: &image::RgbImage,
    style: &image::RgbImage,
    cost: &crate::loss::CostWeights,
    spec: &OptimizerSpec,
    w: u32,
    h: u32,
    iters: usize,
) -> Result<Timing> {
    let started = Instant::now();
    let device = &network.device();
    let c = img::to_pixel_space(&img::resize(content, w, h), device);
    let st = img::to_pixel_space(&img::resize(style, w, h), device);
    let targets = network.targets(c.clone(), &[(st, 1.0)], cost)?;
    let x = img::uniform_noise(0, w as usize, h as usize, device) * 0.6 + c * 0.4;
    let mut opt = Optimizer::new(spec);
    if matches!(opt, Optimizer::Lbfgs(_)) || network.keeps_adam_state() {
        let state = (x, opt, spec.lr());
        return time_resident(network, (&targets, cost), state, (iters, started));
    }
    let mut x = x;
    let in_network = std::cell::Cell::new(0.0);
    let mut eval = |x: &Tensor<4>| {
        let t = Instant::now();
        let out = network.evaluate(x, &targets, cost);
        if let Ok((_, g)) = &out {
            sync(g);
        }
        in_network.set(in_network.get() + t.elapsed().as_secs_f64());
        out
    };
    let (mut timed, mut timed_in_network, mut first) = (0.0, 0.0, 0.0);
    for i in 0..=iters {
        let before = in_network.get();
        let t = Instant::now();
        let (next, _) = opt.step(spec.lr(), x, &mut eval)?;
        sync(&next);
        x = next;
        if i > 0 {
            timed += t.elapsed().as_secs_f64();
            timed_in_network += in_network.get() - before;
        } else {
            first = started.elapsed().as_secs_f64();
        }
    }
    Ok(Timing::of((timed, timed_in_network), iters, first))
}

/// [`time_iterations`] where the network keeps the state, as runs do: Adam on the paths
/// that keep its moments, and L-BFGS.
fn time_resident(
    network: &Network,
    (targets, cost): (&crate::loss::Targets, &crate::loss::CostWeights),
    (x, mut optimizer, lr): (Tensor<4>, Optimizer, f64),
    (iters, started): (usize, Instant),
) -> Result<Timing> {
    use crate::network::resident::Resident;
    let mut resident = Resident::new(network, (&x, None), &optimizer)?;
    let in_network = std::cell::Cell::new(0.0);
    let mut around = |evaluate: &mut dyn FnMut() -> Result<Costs>| {
        let t = Instant::now();
        let out = evaluate();
        in_network.set(in_network.get() + t.elapsed().as_secs_f64());
        out
    };
    let (mut timed, mut timed_in_network, mut first) = (0.0, 0.0, 0.0);
    // Two warm-ups: the second iteration is the first to write the second set of
    // buffers (on the host, its first touch of fresh pages costs ~0.4 s at 2048x2048).
    for i in 0..iters + 2 {
        let (t, before) = (Instant::now(), in_network.get());
        // An evaluation waits for the costs, so it also waits for the last update.
        resident.evaluate((network, targets, cost), (&mut optimizer, lr), &mut around)?;
        resident.update((&mut optimizer, lr), AfterStep::default())?;
        if i > 1 {
            timed += t.elapsed().as_secs_f64();
            timed_in_network += in_network.get() - before;
        } else if i == 0 {
            first = started.elapsed().as_secs_f64();
        }
    }
    Ok(Timing::of((timed, timed_in_network), iters, first))
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
    let scratch = Scratch(std::env::temp_dir().join(format!("easel-bench-{}", std::process::id())));
    let out = &scratch.0;
    let run = |extra: &[&str], target: Option<f64>| -> Result<(Vec<Point>, usize)> {
        let mut o = base.clone();
        o.extend(extra.iter().map(|s| s.to_string()));
        let preset = default_preset(&o)?;
        let last_stage_start =
            engine::schedule::stages(preset.scales.as_ref(), w, h, preset.iterations)
                .iter()
                .rev()
                .nth(1)
                .map(|s| s.end)
                .unwrap_or(0);
        let spec = RunSpec {
            preset,
            destination: Destination::New(out.clone()),
            weights: weights_path.to_path_buf(),
            backend: backend.clone(),
            preview_every_s: 0.0,
        };
        let stop_at = target.map(|t| (last_stage_start, t));
        Ok((trajectory(spec, stop_at)?, last_stage_start as usize))
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
    Ok(())
}
