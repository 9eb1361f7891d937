//! The CUDA path (cuDNN and cuBLAS) against the CPU's Winograd path on the same weights,
//! and what CUDA does on a machine that cannot run it.
//!
//! The tests marked `ignore` need an NVIDIA GPU; `scripts/gpu-tests.sh` runs them there
//! (it builds this test binary, which the GPU machine runs with `--ignored`). The others
//! run everywhere, CI included.
#![cfg(feature = "cuda")]

mod common;

use burn::tensor::{Device, Tensor};
use common::*;
use easel::backend::cuda_libs::{self, LIBRARIES};
use easel::backend::{
    Backend, BackendChoice, BackendKind, ConvSearch, CudaSettings, Precision, check_capability,
};
use easel::engine::{Destination, RunSpec};
use easel::loss::{CostWeights, StyleLoss};
use easel::network::resident::Resident;
use easel::network::{ConvChoice, Network};
use easel::optim::vector::Vector;
use easel::optim::{AfterStep, Optimizer, OptimizerSpec};
use easel::preset::Preset;
use easel::vgg::{Padding, Pooling};
use std::path::{Path, PathBuf};

/// The weights both paths use: `EASEL_GPU_TEST_WEIGHTS` (a safetensors file, e.g. the
/// float16 copy the GPU machine gets) or the real ones.
fn weights_file() -> PathBuf {
    std::env::var_os("EASEL_GPU_TEST_WEIGHTS")
        .map(PathBuf::from)
        .unwrap_or_else(real_weights)
}

fn cuda() -> Backend {
    Backend::resolve(BackendChoice::Cuda).expect("the CUDA backend on this machine")
}

fn networks_padded(pooling: Pooling, padding: Padding) -> (Network, Network) {
    let vgg = easel::weights::load(&weights_file(), &Device::flex())
        .expect("weights")
        .with_pooling(pooling)
        .with_padding(padding);
    (on(vgg.clone(), &cuda(), ConvChoice::Winograd), on_cpu(vgg))
}

fn image(seed: u64, h: usize, w: usize) -> Tensor<4> {
    easel::image::uniform_noise(seed, w, h, &Device::flex()) * 0.5 + 64.0
}

/// The costs of image 3 with content image 1 and style image 2, and the gradient.
fn costs_and_gradient(
    net: &Network,
    (h, w): (usize, usize),
    weights: &CostWeights,
) -> (easel::loss::Costs, Tensor<4>) {
    let targets = net
        .targets(image(1, h, w), &[(image(2, h, w), 1.0)], weights)
        .expect("targets");
    net.evaluate(&image(3, h, w), &targets, weights)
        .expect("evaluate")
}

/// J over five steps of `spec` from image 3 (content 1, style 2) at 96x128, as runs take
/// them (the network's resident state: Adam's moments, L-BFGS's image and history on
/// the card for CUDA), and the optimiser after them.
fn five_steps(net: &Network, spec: &OptimizerSpec) -> (Vec<f64>, Optimizer) {
    let (h, w) = (96, 128);
    let weights = seed_weights();
    let targets = net
        .targets(image(1, h, w), &[(image(2, h, w), 1.0)], &weights)
        .expect("targets");
    let mut around = |evaluate: &mut dyn FnMut() -> anyhow::Result<easel::loss::Costs>| evaluate();
    let mut opt = Optimizer::new(spec);
    let mut resident =
        Resident::new(net, (&image(3, h, w), None), &opt).expect("the resident state");
    let mut js = Vec::new();
    for _ in 0..5 {
        let on = (net, &targets, &weights);
        let c = resident
            .evaluate(on, (&mut opt, spec.lr()), &mut around)
            .expect("step");
        resident
            .update((&mut opt, spec.lr()), AfterStep::default())
            .expect("update");
        js.push(c.total);
    }
    (js, opt)
}

/// Costs to 1e-4 and the gradient to 1e-3, CUDA against the CPU, at one size.
fn check_costs_and_gradient(
    h: usize,
    w: usize,
    pooling: Pooling,
    padding: Padding,
    style_loss: StyleLoss,
) {
    let (gpu, cpu) = networks_padded(pooling, padding);
    let weights = CostWeights {
        tv_weight: 0.5,
        style_loss,
        ..seed_weights()
    };
    let (want, want_g) = costs_and_gradient(&cpu, (h, w), &weights);
    let (got, got_g) = costs_and_gradient(&gpu, (h, w), &weights);
    let at = format!(
        "{w}x{h}, {pooling:?} pooling, {padding:?} padding, {style_loss:?} style, CUDA against the CPU"
    );
    assert_same_costs(&got, &want, 1e-4, &at);
    let e = rel_err(&values(&got_g), &values(&want_g));
    assert!(
        e <= 1e-3,
        "{at}: CUDA gradient differs from the CPU's by {e:e}"
    );
}

/// Layer by layer, so that a failure names the first layer that goes wrong.
#[test]
#[ignore = "needs an NVIDIA GPU with cuDNN 9 and cuBLAS 13: run by scripts/gpu-tests.sh"]
fn cuda_features_match_the_cpu_layer_by_layer() {
    // Replicate padding is held to PyTorch on the CPU (tests/numerics.rs), and so here
    // to the CPU: this machine's weights may be a float16 copy the fixture was not made
    // with.
    let cases = [
        (Pooling::Avg, Padding::Zero),
        (Pooling::Max, Padding::Zero),
        (Pooling::Avg, Padding::Replicate),
    ];
    for (pooling, padding) in cases {
        let (gpu, cpu) = networks_padded(pooling, padding);
        let x = image(4, 45, 62);
        let deepest = easel::vgg::Layer(15);
        let got = gpu.features(x.clone(), deepest).expect("CUDA features");
        let want = cpu.features(x, deepest).expect("CPU features");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            let what = format!("{pooling:?} pooling, {padding:?} padding");
            assert_eq!(g.dims(), w.dims(), "{what}: the shape of layer {i}");
            let e = rel_err(&values(g), &values(w));
            let l = easel::vgg::Layer(i);
            assert!(e <= 1e-4, "{what}: {l} differs from the CPU's by {e:e}");
        }
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU with cuDNN 9 and cuBLAS 13: run by scripts/gpu-tests.sh"]
fn cuda_costs_and_gradient_match_the_cpu() {
    for (h, w) in [(40, 48), (300, 400), (37, 50)] {
        for pooling in [Pooling::Avg, Pooling::Max] {
            check_costs_and_gradient(h, w, pooling, Padding::Zero, StyleLoss::Gram);
        }
        check_costs_and_gradient(h, w, Pooling::Avg, Padding::Replicate, StyleLoss::Gram);
    }
}

/// The costs (TV on) and gradient at 400x300: CUDA with `settings`, then the CPU.
fn cuda_and_cpu_at_400x300(settings: CudaSettings) -> [(easel::loss::Costs, Tensor<4>); 2] {
    let vgg = easel::weights::load(&weights_file(), &Device::flex()).expect("weights");
    let gpu = Network::new(vgg.clone(), &cuda(), ConvChoice::Winograd, settings)
        .unwrap_or_else(|e| panic!("the CUDA network with {settings:?}: {e:#}"));
    let weights = CostWeights {
        tv_weight: 0.5,
        ..seed_weights()
    };
    [gpu, on_cpu(vgg)].map(|net| costs_and_gradient(&net, (300, 400), &weights))
}

/// `precision: tf32` against the CPU at 400x300: prints its error (the README quotes it)
/// and holds it to what TF32's 10-bit mantissa allows through 13 layers.
#[test]
#[ignore = "needs an NVIDIA GPU with cuDNN 9 and cuBLAS 13: run by scripts/gpu-tests.sh"]
fn tf32_stays_within_a_percent_of_the_cpu() {
    let settings = CudaSettings {
        precision: Precision::Tf32,
        ..Default::default()
    };
    let [(got, got_g), (want, want_g)] = cuda_and_cpu_at_400x300(settings);
    let errors = [
        ("J", rel(got.total, want.total)),
        ("J_content", rel(got.content, want.content)),
        ("J_style", rel(got.style, want.style)),
        ("gradient", rel_err(&values(&got_g), &values(&want_g))),
    ];
    println!("tf32 against the CPU at 400x300: {errors:?}");
    for (name, e) in errors {
        assert!(e <= 1e-2, "tf32: {name} differs from the CPU's by {e:e}");
    }
}

/// `conv_search: measured` runs whichever algorithms cuDNN timed fastest, which sum in
/// other orders than the heuristics' picks: the same tolerances hold, at a size where
/// cuDNN has several algorithms to choose from.
#[test]
#[ignore = "needs an NVIDIA GPU with cuDNN 9 and cuBLAS 13: run by scripts/gpu-tests.sh"]
fn measured_algorithms_match_the_cpu() {
    let settings = CudaSettings {
        search: ConvSearch::Measured,
        ..Default::default()
    };
    let [(got, got_g), (want, want_g)] = cuda_and_cpu_at_400x300(settings);
    let at = "400x300, measured algorithms, CUDA against the CPU";
    assert_same_costs(&got, &want, 1e-4, at);
    let e = rel_err(&values(&got_g), &values(&want_g));
    assert!(e <= 1e-3, "{at}: the gradient differs by {e:e}");
}

#[test]
#[ignore = "needs an NVIDIA GPU with cuDNN 9 and cuBLAS 13: run by scripts/gpu-tests.sh"]
fn regions_on_cuda_match_the_cpu() {
    // The regions fixture's masks and images (three regions: weight 1, weight 2, none).
    let (gpu, cpu) = networks_padded(Pooling::Avg, Padding::Zero);
    let device = Device::flex();
    let fx = fixture("regions");
    let (regions, weights) = fixture_regions(&fx);
    let weights = CostWeights {
        tv_weight: 0.5,
        ..weights
    };
    let styles = vec![
        (fx.tensor::<4>("style", &device), 1.0),
        (fx.tensor::<4>("style2", &device), 1.0),
    ];
    let x: Tensor<4> = fx.tensor("x0", &device);
    let run = |net: &Network| {
        let content = fx.tensor("content", &device);
        let targets = net
            .targets_with_regions(content, &styles, &regions, &weights)
            .expect("targets");
        net.evaluate(&x, &targets, &weights).expect("evaluate")
    };
    let (want, want_g) = run(&cpu);
    let (got, got_g) = run(&gpu);
    assert_same_costs(&got, &want, 1e-4, "regions, CUDA against the CPU");
    assert_eq!(got.regions.len(), 3, "every region's cost");
    for (r, (a, b)) in got.regions.iter().zip(&want.regions).enumerate() {
        assert!(rel(*a, *b) <= 1e-4, "region {r}: CUDA {a} vs CPU {b}");
    }
    let e = rel_err(&values(&got_g), &values(&want_g));
    assert!(
        e <= 1e-3,
        "regions: CUDA gradient differs from the CPU's by {e:e}"
    );
}

#[test]
#[ignore = "needs an NVIDIA GPU with cuDNN 9 and cuBLAS 13: run by scripts/gpu-tests.sh"]
fn w2_on_cuda_matches_the_cpu() {
    // The host computes W2 from the card's Grams and row sums; the card takes the
    // adjoints back through the network.
    for (h, w) in [(40, 48), (300, 400)] {
        check_costs_and_gradient(h, w, Pooling::Avg, Padding::Zero, StyleLoss::W2);
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU with cuDNN 9 and cuBLAS 13: run by scripts/gpu-tests.sh"]
fn adam_on_the_card_matches_tensor_adam_on_the_cpu_with_clamp_ema_and_rollback() {
    for padding in [Padding::Zero, Padding::Replicate] {
        let (gpu, cpu) = networks_padded(Pooling::Avg, padding);
        assert!(gpu.keeps_adam_state(), "the CUDA path keeps Adam's state");
        // 400x300 as the default preset; the image reaches the clamp.
        check_resident(
            (&gpu, &cpu),
            &OptimizerSpec::adam(20.0),
            (400, 300),
            5,
            1e-3,
        );
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU with cuDNN 9 and cuBLAS 13: run by scripts/gpu-tests.sh"]
fn five_adam_steps_on_cuda_match_the_cpu() {
    let (gpu, cpu) = networks_padded(Pooling::Avg, Padding::Zero);
    let spec = OptimizerSpec::adam(2.0);
    let (a, b) = (five_steps(&gpu, &spec).0, five_steps(&cpu, &spec).0);
    for (k, (g, c)) in a.iter().zip(&b).enumerate() {
        assert!(rel(*g, *c) <= 1e-3, "Adam step {k}: CUDA J {g} vs CPU {c}");
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU with cuDNN 9 and cuBLAS 13: run by scripts/gpu-tests.sh"]
fn five_lbfgs_steps_with_the_history_on_the_card_match_the_cpu() {
    let (gpu, cpu) = networks_padded(Pooling::Avg, Padding::Zero);
    let spec = OptimizerSpec::lbfgs(1.0, 3);
    let ((a, on_card), (b, on_host)) = (five_steps(&gpu, &spec), five_steps(&cpu, &spec));
    for (k, (g, c)) in a.iter().zip(&b).enumerate() {
        assert!(
            rel(*g, *c) <= 1e-3,
            "L-BFGS step {k}: CUDA J {g} vs CPU {c}"
        );
    }
    let history = |opt: &Optimizer| match opt {
        Optimizer::Lbfgs(l) => l.state.old_dirs.clone(),
        Optimizer::Adam(_) => panic!("L-BFGS"),
    };
    let (card, host) = (history(&on_card), history(&on_host));
    assert!(
        !card.is_empty() && card.len() == host.len(),
        "the histories fill alike"
    );
    assert!(
        card.iter().all(|v| matches!(v, Vector::Device(_))),
        "CUDA keeps L-BFGS's history on the card"
    );
    assert!(
        host.iter().all(|v| matches!(v, Vector::Host(_))),
        "the CPU keeps it as tensors"
    );
}

#[test]
#[ignore = "needs an NVIDIA GPU with cuDNN 9 and cuBLAS 13: run by scripts/gpu-tests.sh"]
fn lbfgs_with_its_image_on_the_card_matches_tensor_lbfgs_on_the_cpu() {
    // The clamp and the EMA run on the card (`clamp_planes`, the vector kernels).
    let (gpu, cpu) = networks_padded(Pooling::Avg, Padding::Zero);
    check_resident(
        (&gpu, &cpu),
        &OptimizerSpec::lbfgs(1.0, 3),
        (128, 96),
        5,
        1e-3,
    );
}

fn run_spec(out: &Path, backend: Backend, destination: Option<PathBuf>) -> RunSpec {
    let o: Vec<String> = [
        "size={width: 64, height: 48}",
        "save_every=0",
        "iterations=9",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let preset = Preset::load(&repo_root().join("presets/quick.yaml"), &o).expect("preset");
    RunSpec {
        preset,
        destination: match destination {
            Some(dir) => {
                Destination::Resume(easel::run_dir::RunDir::open(&dir).expect("the run directory"))
            }
            None => Destination::New(out.to_path_buf()),
        },
        weights: weights_file(),
        backend,
        preview_every_s: 0.0,
    }
}

fn assert_same_js(a: &[(f64, String)], b: &[(f64, String)], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: as many iterations");
    for (k, ((x, _), (y, _))) in a.iter().zip(b).enumerate() {
        assert!(
            rel(*x, *y) <= 1e-3,
            "{what}: J at iteration {k}: {x} vs {y}"
        );
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU with cuDNN 9 and cuBLAS 13: run by scripts/gpu-tests.sh"]
fn a_run_switched_cuda_cpu_cuda_matches_an_all_cpu_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plain = switching_trajectory(run_spec(dir.path(), Backend::cpu(), None), &[]);
    let switched = switching_trajectory(
        run_spec(dir.path(), cuda(), None),
        &[(2, BackendChoice::Cpu), (5, BackendChoice::Cuda)],
    );
    assert_same_js(&switched, &plain, "cuda -> cpu -> cuda against cpu");
    let kinds: Vec<&str> = switched.iter().map(|(_, b)| b.as_str()).collect();
    assert!(
        kinds.contains(&"cpu") && kinds.first() == Some(&"cuda"),
        "{kinds:?}"
    );
    assert_eq!(
        kinds.last(),
        Some(&"cuda"),
        "and the run came back: {kinds:?}"
    );
}

#[test]
#[ignore = "needs an NVIDIA GPU with cuDNN 9 and cuBLAS 13: run by scripts/gpu-tests.sh"]
fn a_cuda_run_resumes_on_the_cpu() {
    let dir = tempfile::tempdir().expect("tempdir");
    let plain = switching_trajectory(run_spec(dir.path(), Backend::cpu(), None), &[]);
    // A CUDA run stopped after iteration 4, resumed on the CPU to the end.
    let mut spec = run_spec(dir.path(), cuda(), None);
    spec.preset.iterations = 5;
    let first = switching_trajectory(spec, &[]);
    let run_dir = run_dirs(dir.path())
        .into_iter()
        .max()
        .expect("the CUDA run's directory");
    let rest = switching_trajectory(run_spec(dir.path(), Backend::cpu(), Some(run_dir)), &[]);
    let joined: Vec<(f64, String)> = first.into_iter().chain(rest).collect();
    assert_same_js(&joined, &plain, "cuda then resumed on cpu against cpu");
}

#[test]
fn a_missing_library_is_named_with_the_fix() {
    let empty = tempfile::tempdir().expect("tempdir");
    let err = cuda_libs::load_from(&[Some(empty.path().to_path_buf())])
        .expect_err("nothing loads from an empty folder");
    let text = format!("{err:#}");
    assert!(text.contains("libcuda.so.1"), "{text}");
    assert!(text.contains(&empty.path().display().to_string()), "{text}");
    assert!(text.contains("EASEL_CUDA_LIB_DIR"), "{text}");
    assert!(!text.contains('\n'), "one paragraph: {text}");
}

#[test]
fn every_library_has_a_fix_that_names_where_to_get_it() {
    for lib in &LIBRARIES {
        let text = cuda_libs::missing_message(lib, &[None]);
        assert!(text.contains(lib.names[0]), "{text}");
        assert!(text.contains("the system's library path"), "{text}");
    }
    let cudnn = cuda_libs::missing_message(&LIBRARIES[4], &[None]);
    assert!(
        cudnn.contains("nvidia-cudnn") && cudnn.contains("libcudnn9"),
        "{cudnn}"
    );
}

#[test]
fn a_card_older_than_cuda_13_supports_is_refused_with_what_runs_on_it() {
    let err = check_capability("Tesla V100-SXM2-16GB", (7, 0)).expect_err("Volta is 7.0");
    let text = format!("{err:#}");
    assert!(
        text.contains("Tesla V100") && text.contains("7.0"),
        "{text}"
    );
    assert!(
        text.contains("7.5") && text.contains("--backend wgpu"),
        "{text}"
    );
    for card in [(7, 5), (8, 0), (9, 0), (12, 0)] {
        check_capability("a supported card", card).expect("CUDA 13 runs on it");
    }
}

#[test]
fn a_file_that_is_not_a_library_is_not_taken_for_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("libcuda.so.1"), b"not an ELF file").expect("write");
    let err = cuda_libs::load_from(&[Some(dir.path().to_path_buf())])
        .expect_err("a text file is not libcuda");
    assert!(format!("{err:#}").contains("libcuda.so.1"), "{err:#}");
}

/// On this machine: CUDA either resolves to a card, or says which library is missing;
/// `auto` never fails, and says why it is not on CUDA when it is not.
#[test]
fn cuda_resolves_or_says_why_and_auto_falls_back() {
    match Backend::resolve(BackendChoice::Cuda) {
        Ok(b) => assert_eq!(b.kind, BackendKind::Cuda),
        Err(e) => {
            let text = format!("{e:#}");
            assert!(
                text.contains("cannot use CUDA") && text.contains(".so"),
                "the error names the library: {text}"
            );
        }
    }
    let auto = Backend::resolve(BackendChoice::Auto).expect("auto always resolves");
    if auto.kind != BackendKind::Cuda {
        assert!(
            auto.description.contains("CUDA"),
            "auto says why it is not on CUDA: {}",
            auto.description
        );
    }
}
