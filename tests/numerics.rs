//! easel's numbers against PyTorch's (fixtures made by tests/fixtures/make_fixtures.py):
//! activations, Grams, costs, the gradient, and the Adam and L-BFGS trajectories, for a
//! random network with VGG-19's structure and for the real weights.

mod common;

use burn::tensor::{Device, Tensor};
use common::*;
use easel::loss::gram;
use easel::network::{ConvChoice, Network};
use easel::optim::{Optimizer, OptimizerSpec};
use easel::vgg::{Layer, Padding, Vgg19};
use std::path::Path;

fn network(case: &str, device: &Device) -> Vgg19 {
    match case {
        "random" => {
            easel::weights::vgg_from_tensors(&random_network_tensors(), device, Path::new("random"))
                .expect("random net")
        }
        "replicate" => easel::weights::load(&real_weights(), device)
            .expect("real weights load")
            .with_padding(Padding::Replicate),
        _ => easel::weights::load(&real_weights(), device).expect("real weights load"),
    }
}

/// The seed's cost, or for the "w2" case the same with the W2 style cost.
fn case_weights(case: &str) -> easel::loss::CostWeights {
    let mut weights = seed_weights();
    if case == "w2" {
        weights.style_loss = easel::loss::StyleLoss::W2;
    }
    weights
}

fn check_case(case: &str) {
    let device = Device::flex();
    let fx = fixture(case);
    let vgg = network(case, &device);
    let net = on_cpu(vgg.clone());
    check_values(case, &fx, &net);
    let weights = case_weights(case);
    let content: Tensor<4> = fx.tensor("content", &device);
    let style: Tensor<4> = fx.tensor("style", &device);
    let x0: Tensor<4> = fx.tensor("x0", &device);
    let targets = net
        .targets(content, &[(style, 1.0)], &weights)
        .expect("targets");

    // Trajectories to 1e-3.
    let trajectory = |net: &Network, spec: OptimizerSpec, steps: usize| -> Vec<f64> {
        let mut opt = Optimizer::new(&spec);
        let mut x = x0.clone();
        let mut js = Vec::new();
        let mut eval = |x: &Tensor<4>| net.evaluate(x, &targets, &weights);
        for _ in 0..steps {
            let (next, c) = opt.step(spec.lr(), x, &mut eval).expect("step");
            js.push(c.total);
            x = next;
        }
        js.push(eval(&x).expect("evaluate").0.total);
        js
    };
    let adam = trajectory(&net, OptimizerSpec::adam(2.0), 5);
    for (k, (got, want)) in adam.iter().zip(fx.list("adam_J")).enumerate() {
        assert!(
            rel(*got, want) <= 1e-3,
            "{case}: Adam J at step {k}: {got} vs PyTorch {want}"
        );
    }
    // PyTorch's LBFGS(max_iter=1, line_search_fn="strong_wolfe", max_eval=26): one
    // outer iteration per step, a line search of up to 25 evaluations.
    //
    // The first search starts at t = 1/|g|_1 (about 3e-6 here), where J moves by 1e-6 of
    // itself and the cubic interpolation is ill-conditioned. On the random network a 1e-8
    // relative difference in J (the convolutions' summation order, which even varies from
    // run to run with the thread count) moves the second probe from 1.8e-5 to its 10x
    // bound, so the searches take different branches there (1e-3..1e-2 apart) and only
    // the real network, well-conditioned at that step, is compared.
    //
    // The same holds, more mildly, on the real network for the convolution algorithm:
    // the Winograd path's gradient is 1.2e-6 from PyTorch's (burn's direct convolution:
    // 2.4e-7), and that moves the first search to another acceptable step (J after the
    // first iteration 7.899e9 against 7.876e9). So this L-BFGS check runs on burn's direct
    // convolution; tests/winograd.rs holds the Winograd path to it.
    //
    // With replicate padding the first search is as touchy (PyTorch's lands at 9.13e9,
    // ours at 7.88e9, both accepted by the strong Wolfe conditions), so that case checks
    // burn's values and gradient only: the optimiser does not know about padding.
    if case != "random" {
        let direct = on(vgg, &easel::backend::Backend::cpu(), ConvChoice::Direct);
        check_values(case, &fx, &direct);
    }
    if case == "real" {
        let direct = on(
            network(case, &device),
            &easel::backend::Backend::cpu(),
            ConvChoice::Direct,
        );
        let lbfgs = trajectory(&direct, OptimizerSpec::lbfgs(1.0, 100), 3);
        for (k, (got, want)) in lbfgs.iter().zip(fx.list("lbfgs_maxeval26_J")).enumerate() {
            assert!(
                rel(*got, want) <= 1e-3,
                "{case}: L-BFGS J at iteration {k}: {got} vs PyTorch {want}"
            );
        }
    }
}

/// Activations and Grams (1e-4), costs (1e-4) and the gradient (1e-3) of `net` at the
/// fixture's `x0` against PyTorch's.
fn check_values(case: &str, fx: &Fixture, net: &Network) {
    let device = Device::flex();
    let weights = case_weights(case);
    let content: Tensor<4> = fx.tensor("content", &device);
    let style: Tensor<4> = fx.tensor("style", &device);
    let x0: Tensor<4> = fx.tensor("x0", &device);
    let case = format!("{case} ({} path)", net.path_name());
    // Forward values: activations and Grams to 1e-4.
    let taps = net
        .features(x0.clone(), Layer::parse("conv5_1").expect("layer"))
        .expect("features");
    for name in ["conv1_1", "conv2_1", "conv3_1", "conv4_2", "conv5_1"] {
        let l = Layer::parse(name).expect("layer");
        let e = rel_err(&values(&taps[l.0]), &fx.host(&format!("act.{name}")).data);
        assert!(
            e <= 1e-4,
            "{case}: activation {name} differs from PyTorch by {e:e}"
        );
    }
    let style_taps = net
        .features(style.clone(), Layer::parse("conv5_1").expect("layer"))
        .expect("features");
    for (l, _) in &weights.style_layers {
        let g = gram(style_taps[l.0].clone());
        let e = rel_err(&values(&g), &fx.host(&format!("gram.{l}")).data);
        assert!(e <= 1e-4, "{case}: Gram {l} differs from PyTorch by {e:e}");
    }

    // Costs to 1e-4, gradient to 1e-3.
    let targets = net
        .targets(content, &[(style, 1.0)], &weights)
        .expect("targets");
    let (costs, grad) = net.evaluate(&x0, &targets, &weights).expect("evaluate");
    assert!(
        rel(costs.content, fx.f64("J_content")) <= 1e-4,
        "{case}: J_content {} vs {}",
        costs.content,
        fx.f64("J_content")
    );
    for (l, j) in &costs.style_layers {
        let want = fx.json["J_style_layers"][l.name()]
            .as_f64()
            .expect("layer cost");
        assert!(rel(*j, want) <= 1e-4, "{case}: J_style[{l}] {j} vs {want}");
    }
    assert!(
        rel(costs.style, fx.f64("J_style")) <= 1e-4,
        "{case}: J_style {} vs {}",
        costs.style,
        fx.f64("J_style")
    );
    assert!(
        rel(costs.total, fx.f64("J")) <= 1e-4,
        "{case}: J {} vs {}",
        costs.total,
        fx.f64("J")
    );
    let e = rel_err(&values(&grad), &fx.host("grad").data);
    assert!(e <= 1e-3, "{case}: gradient differs from PyTorch by {e:e}");
}

#[test]
fn random_network_matches_pytorch() {
    check_case("random");
}

#[test]
fn real_network_matches_pytorch() {
    check_case("real");
}

/// Replicate padding at conv1_1 (`padding: replicate`) on the Winograd path and on
/// burn's: activations, costs, gradient and Adam against PyTorch's `F.pad`.
#[test]
fn replicate_padding_matches_pytorch() {
    check_case("replicate");
}

/// `style_loss: w2` on the Winograd path and on burn's: the per-layer W2 costs (1e-4),
/// the gradient through the matrix square roots and the Gram and mean adjoints (1e-3) and
/// five Adam steps (1e-3) against PyTorch's autograd (make_fixtures.py, "W2").
#[test]
fn w2_style_loss_matches_pytorch() {
    check_case("w2");
}

/// With the real weights, 30 Adam iterations of the default preset at 64x64 lower J as
/// they do in PyTorch (make_fixtures.py: J0/J30 = 4.3 there; not tenfold at lr 2.0).
#[test]
fn real_network_lowers_cost_at_64px() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let device = Device::flex();
    let net = on_cpu(network("real", &device));
    let preset = easel::preset::Preset::load(
        &root.join("presets/default.yaml"),
        &["size={width: 64, height: 64}".into()],
    )
    .expect("preset");
    let weights = preset.cost_weights();
    let load = |p: &Path| {
        easel::image::to_pixel_space(
            &easel::image::resize(&easel::image::load_rgb(p).expect("image"), 64, 64),
            &device,
        )
    };
    let content = load(&preset.content);
    let style = load(&preset.style.images()[0].0);
    let targets = net
        .targets(content.clone(), &[(style, 1.0)], &weights)
        .expect("targets");
    let mut x = easel::image::uniform_noise(0, 64, 64, &device) * 0.6 + content * 0.4;
    let mut opt = Optimizer::new(&preset.settings.optimizer);
    let mut eval = |x: &Tensor<4>| net.evaluate(x, &targets, &weights);
    let mut j0 = 0.0;
    for i in 0..30 {
        let (next, c) = opt.step(2.0, x, &mut eval).expect("step");
        if i == 0 {
            j0 = c.total;
        }
        x = next;
    }
    let j30 = eval(&x).expect("evaluate").0.total;
    let pytorch = fixture("real").f64("adam64_ratio");
    assert!(
        j0 / j30 >= 4.0,
        "J fell only {:.2}x in 30 Adam iterations (PyTorch: {pytorch:.2}x)",
        j0 / j30
    );
}
