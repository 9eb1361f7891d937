//! Helpers shared by the integration tests.
#![allow(dead_code)]

use burn::tensor::{Device, Tensor, TensorData};
use easel::loss::CostWeights;
use easel::vgg::Layer;
use easel::weights::{self, HostTensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

pub mod tmux;

static FETCH: Mutex<()> = Mutex::new(());

/// The real VGG-19 weights, fetched through easel's own fetch code on first use. A test
/// that needs them fails (never skips) when they cannot be had.
pub fn real_weights() -> PathBuf {
    let _guard = FETCH.lock().unwrap_or_else(|e| e.into_inner());
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("weights");
    weights::ensure(&dir)
        .expect("cannot fetch the real VGG-19 weights with `easel weights fetch`'s code")
}

pub struct Fixture {
    pub tensors: HashMap<String, HostTensor>,
    pub json: serde_json::Value,
}

/// The repository: where the tests were built, or `EASEL_REPO_ROOT` (the GPU machine
/// runs the test binaries from a copy of the repository elsewhere).
pub fn repo_root() -> PathBuf {
    std::env::var_os("EASEL_REPO_ROOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
}

pub fn fixture(case: &str) -> Fixture {
    let dir = repo_root().join("tests/fixtures");
    let (tensors, _) =
        weights::read_safetensors(&dir.join(format!("{case}.safetensors"))).expect("fixture");
    let text = std::fs::read_to_string(dir.join(format!("{case}.json"))).expect("fixture json");
    Fixture {
        tensors,
        json: serde_json::from_str(&text).expect("fixture json parses"),
    }
}

impl Fixture {
    pub fn host(&self, name: &str) -> &HostTensor {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("fixture has no tensor {name}"))
    }
    pub fn tensor<const D: usize>(&self, name: &str, device: &Device) -> Tensor<D> {
        let t = self.host(name);
        Tensor::from_data(TensorData::new(t.data.clone(), t.shape.clone()), device)
    }
    pub fn f64(&self, key: &str) -> f64 {
        self.json[key]
            .as_f64()
            .unwrap_or_else(|| panic!("fixture json has no number {key}"))
    }
    pub fn list(&self, key: &str) -> Vec<f64> {
        self.json[key]
            .as_array()
            .unwrap_or_else(|| panic!("no list {key}"))
            .iter()
            .filter_map(|v| v.as_f64())
            .collect()
    }
}

pub fn values<const D: usize>(t: &Tensor<D>) -> Vec<f32> {
    t.to_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .expect("f32 values")
}

/// `||a - b|| / ||b||`.
pub fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "sizes differ");
    let num: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
        .sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt()
}

/// The relative difference of `a` from `b`; two zeros do not differ.
pub fn rel(a: f64, b: f64) -> f64 {
    if a == b {
        return 0.0;
    }
    (a - b).abs() / b.abs()
}

fn splitmix64(z: u64) -> u64 {
    let mut z = z.wrapping_add(0x9E3779B97F4A7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
    z ^ (z >> 31)
}

/// The random network of `make_fixtures.py`: VGG-19's structure, weights from splitmix64.
pub fn random_network_tensors() -> HashMap<String, HostTensor> {
    let mut out = HashMap::new();
    let mut cin = 3usize;
    for (i, &cout) in easel::vgg::CHANNELS.iter().enumerate() {
        let std = (2.0 / (9.0 * cin as f64)).sqrt();
        let n = cout * cin * 9;
        let w: Vec<f32> = (0..n as u64)
            .map(|k| {
                let u = splitmix64(((i as u64) << 40) | k) as f64 / 2f64.powi(64);
                ((std * 3f64.sqrt()) * (2.0 * u - 1.0)) as f32
            })
            .collect();
        let b: Vec<f32> = (0..cout as u64)
            .map(|k| {
                let u = splitmix64(((i as u64) << 40) | (1 << 39) | k) as f64 / 2f64.powi(64);
                (0.01 * (2.0 * u - 1.0)) as f32
            })
            .collect();
        out.insert(
            format!("conv{i}.weight"),
            HostTensor::new(vec![cout, cin, 3, 3], w),
        );
        out.insert(format!("conv{i}.bias"), HostTensor::new(vec![cout], b));
        cin = cout;
    }
    out.insert("input.scale".into(), HostTensor::new(vec![3], vec![1.0; 3]));
    out.insert("input.shift".into(), HostTensor::new(vec![3], vec![0.0; 3]));
    out
}

/// `easel` (the binary under test) run in `cwd` with the real weights.
pub fn easel_command(cwd: &Path) -> std::process::Command {
    let weights = real_weights();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_easel"));
    command.current_dir(cwd).env(
        "EASEL_WEIGHTS_DIR",
        weights.parent().expect("weights folder"),
    );
    command
}

/// Runs `easel ARGS` in `cwd` to the end.
pub fn easel(args: &[&str], cwd: &Path) -> std::process::Output {
    easel_command(cwd).args(args).output().expect("easel runs")
}

/// A scratch folder holding the named demo images and `p.yaml` with `preset`.
pub fn scratch(images: &[&str], preset: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("presets/images");
    for f in images {
        std::fs::copy(from.join(f), dir.path().join(f)).expect("copy a demo image");
    }
    std::fs::write(dir.path().join("p.yaml"), preset).expect("write the preset");
    dir
}

/// The run directories under `out` (not the hidden staging folders of runs that were
/// killed while they were being created).
pub fn run_dirs(out: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(out)
        .map(|r| {
            r.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    !p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with('.'))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The records of a run's `losses.jsonl` (none when it does not exist yet); a line that
/// is not JSON (torn) fails the test.
pub fn records(run: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(run.join("losses.jsonl")).unwrap_or_default();
    text.lines()
        .map(|l| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("torn line in losses.jsonl: {l:?}: {e}"))
        })
        .collect()
}

/// Two runs' records have the same iterations and the same J to 1e-5 relative.
pub fn assert_same_trajectory(a: &[serde_json::Value], b: &[serde_json::Value], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: every iteration once");
    for (x, y) in a.iter().zip(b) {
        assert_eq!(x["iter"], y["iter"]);
        let (jx, jy) = (x["J"].as_f64().expect("J"), y["J"].as_f64().expect("J"));
        assert!(
            (jx - jy).abs() <= 1e-5 * jx,
            "{what}: iteration {}: {jx} vs {jy}",
            x["iter"]
        );
    }
}

/// The seed's cost weights: alpha 10, beta 40, content at conv4_2, five style layers at
/// 0.2, no TV.
pub fn seed_weights() -> CostWeights {
    let layer = |n: &str| Layer::parse(n).expect("layer");
    CostWeights {
        alpha: 10.0,
        beta: 40.0,
        content_layer: layer("conv4_2"),
        style_layers: ["conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1"]
            .iter()
            .map(|n| (layer(n), 0.2))
            .collect(),
        tv_weight: 0.0,
        style_loss: easel::loss::StyleLoss::Gram,
        region_weights: Vec::new(),
    }
}

/// The network on a backend's compute path: on the CPU, `conv` picks Winograd or
/// burn's direct convolution.
pub fn on(
    vgg: easel::vgg::Vgg19,
    backend: &easel::backend::Backend,
    conv: easel::network::ConvChoice,
) -> easel::network::Network {
    easel::network::Network::new(vgg, backend, conv, Default::default())
        .expect("the network on this backend")
}

/// The network on the CPU's Winograd path, as runs use it.
pub fn on_cpu(vgg: easel::vgg::Vgg19) -> easel::network::Network {
    on(
        vgg,
        &easel::backend::Backend::cpu(),
        easel::network::ConvChoice::Winograd,
    )
}

/// J per iteration and the backend of each, for a run that is asked to switch backend
/// after the given iterations; a switch that cannot happen fails the test.
pub fn switching_trajectory(
    spec: easel::engine::RunSpec,
    switches: &[(u64, easel::backend::BackendChoice)],
) -> Vec<(f64, String)> {
    use easel::engine::{self, Command, Event};
    let mut handle = engine::spawn(spec);
    let mut out = Vec::new();
    loop {
        match handle
            .events
            .recv_timeout(std::time::Duration::from_secs(600))
            .expect("the engine keeps talking")
        {
            Event::Iteration(r) => {
                if let Some((_, to)) = switches.iter().find(|(after, _)| *after == r.iter) {
                    handle.send(Command::SwitchBackend(*to));
                }
                out.push((r.j, r.backend));
            }
            Event::Notice(n) if n.contains("cannot switch") || n.contains("staying on") => {
                panic!("{n}")
            }
            Event::Failed(e) => panic!("{e}"),
            Event::Finished { .. } => break,
            _ => {}
        }
    }
    handle.join();
    out
}

/// Two evaluations' costs agree to `tol`, layer by layer.
pub fn assert_same_costs(
    got: &easel::loss::Costs,
    want: &easel::loss::Costs,
    tol: f64,
    what: &str,
) {
    for (name, a, b) in [
        ("J", got.total, want.total),
        ("J_content", got.content, want.content),
        ("J_style", got.style, want.style),
        ("TV", got.tv, want.tv),
    ] {
        assert!(rel(a, b) <= tol, "{what}: {name} {a} vs {b}");
    }
    for ((l, a), (_, b)) in got.style_layers.iter().zip(&want.style_layers) {
        assert!(rel(*a, *b) <= tol, "{what}: J_style[{l}] {a} vs {b}");
    }
}

/// The temporary files of atomic writes in a run directory.
pub fn temp_files(run: &Path) -> Vec<std::ffi::OsString> {
    std::fs::read_dir(run)
        .expect("the run directory")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().contains(".tmp-"))
        .collect()
}

/// Runs `easel ARGS` in `cwd` under a resource limit set by util-linux's prlimit,
/// e.g. `--as=3000000000`.
pub fn easel_limited(limit: &str, args: &[&str], cwd: &Path) -> std::process::Output {
    let weights = real_weights();
    std::process::Command::new("prlimit")
        .arg(limit)
        .arg(env!("CARGO_BIN_EXE_easel"))
        .args(args)
        .current_dir(cwd)
        .env(
            "EASEL_WEIGHTS_DIR",
            weights.parent().expect("weights folder"),
        )
        .output()
        .expect("prlimit (util-linux) runs easel")
}

/// A demo photograph from presets/images at `w` x `h`, in pixel space.
pub fn photo(name: &str, w: u32, h: u32, device: &Device) -> Tensor<4> {
    let path = repo_root().join("presets/images").join(name);
    let img = easel::image::load_rgb(&path).expect("a demo image");
    easel::image::to_pixel_space(&easel::image::resize(&img, w, h), device)
}

/// `spec`'s iterations as runs take them, on `net`'s resident state
/// (`easel::network::resident`: Adam's moments in the path's buffers, L-BFGS's image
/// among its vectors), against the optimiser's tensor steps on `reference` followed by
/// the engine's own clamp and EMA: `steps` steps from noise beyond the pixel range, at
/// `w` x `h` (Adam needs a learning rate of ~20 for the clamp to bite). Costs agree to `tol` at every step, and the image,
/// the average and Adam's moments to `tol` at the end. Then a rollback returns to the
/// state before the last update exactly.
pub fn check_resident(
    (net, reference): (&easel::network::Network, &easel::network::Network),
    spec: &easel::optim::OptimizerSpec,
    (w, h): (usize, usize),
    steps: u64,
    tol: f64,
) {
    use easel::network::resident::Resident;
    use easel::optim::{AfterStep, Optimizer};
    let device = Device::flex();
    let weights = CostWeights {
        tv_weight: 0.5,
        ..seed_weights()
    };
    let (content, style) = (
        photo("chelsea.png", w as u32, h as u32, &device),
        photo("starry_night.jpg", w as u32, h as u32, &device),
    );
    // Noise over the whole pixel range and past it, so that the clamp bites.
    let x0 = easel::image::uniform_noise(7, w, h, &device) * 7.0;
    let (lr, decay) = (spec.lr(), 0.9);
    let what = format!("resident {:?}", spec.kind);
    let targets = |n: &easel::network::Network| {
        n.targets(content.clone(), &[(style.clone(), 1.0)], &weights)
            .expect("targets")
    };
    let (want_targets, got_targets) = (targets(reference), targets(net));

    let mut want_opt = Optimizer::new(spec);
    let mut ema = easel::engine::Ema::start(&x0);
    let mut x = x0.clone();
    let mut want_costs = Vec::new();
    for _ in 0..steps {
        let mut eval = |x: &Tensor<4>| reference.evaluate(x, &want_targets, &weights);
        let (next, costs) = want_opt.step(lr, x, &mut eval).expect("a tensor step");
        x = easel::image::clamp_pixels(next);
        ema.update(&x, decay);
        want_costs.push(costs);
    }

    let mut opt = Optimizer::new(spec);
    let zeros = x0.zeros_like();
    let mut resident = Resident::new(net, (&x0, Some(&zeros)), &opt).expect("the resident state");
    let after = AfterStep::new(true, Some(decay));
    let mut around = |evaluate: &mut dyn FnMut() -> anyhow::Result<easel::loss::Costs>| evaluate();
    let mut step = |resident: &mut Resident, opt: &mut Optimizer| {
        let on = (net, &got_targets, &weights);
        let costs = resident
            .evaluate(on, (opt, lr), &mut around)
            .expect("a resident evaluation");
        resident
            .update((opt, lr), after)
            .expect("a resident update");
        costs
    };
    for (t, want) in (1..=steps).zip(&want_costs) {
        let got = step(&mut resident, &mut opt);
        assert_same_costs(&got, want, tol, &format!("{what}, step {t}"));
    }
    let got = resident.store(&device).expect("the resident state back");
    let mut compared = vec![
        ("image", &got.x, &x),
        ("EMA", got.avg.as_ref().expect("avg"), &ema.avg),
    ];
    if let Optimizer::Adam(adam) = &want_opt {
        let (m, v) = (adam.m.as_ref().expect("m"), adam.v.as_ref().expect("v"));
        compared.push(("first moment", got.m.as_ref().expect("m"), m));
        compared.push(("second moment", got.v.as_ref().expect("v"), v));
    }
    for (name, a, b) in compared {
        let e = rel_err(&values(a), &values(b));
        assert!(
            e <= tol,
            "{what} after {steps} steps: the {name} differs by {e:e}"
        );
    }
    let clamped = values(&got.x)
        .iter()
        .filter(|v| **v <= -123.0 || **v >= 151.0)
        .count();
    assert!(clamped > 0, "the test image never reached the clamp");

    step(&mut resident, &mut opt);
    resident.roll_back().expect("a rollback");
    let back = resident
        .store(&device)
        .expect("the state after the rollback");
    for (name, a, b) in [
        ("image", Some(&back.x), Some(&got.x)),
        ("EMA", back.avg.as_ref(), got.avg.as_ref()),
        ("first moment", back.m.as_ref(), got.m.as_ref()),
    ] {
        assert_eq!(
            a.map(values),
            b.map(values),
            "{what}: a rollback returns to the {name} before the update"
        );
    }
}

/// The fixture's regions in its order: red (starry, weight 1), blue (hubble, weight 2),
/// black (no style).
pub fn fixture_regions(fx: &Fixture) -> (Vec<easel::loss::regions::RegionMask>, CostWeights) {
    let regions = vec![
        (fx.host("mask.red").data.clone(), Some(0)),
        (fx.host("mask.blue").data.clone(), Some(1)),
        (fx.host("mask.black").data.clone(), None),
    ];
    let weights = CostWeights {
        region_weights: vec![1.0, 2.0, 0.0],
        ..seed_weights()
    };
    (regions, weights)
}
