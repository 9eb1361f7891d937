//! Spatial control by region: guided Grams against PyTorch (make_fixtures.py,
//! "Regions"), one region over the whole image equal to the unguided cost, a region
//! without a style that keeps its content, and the preset's errors. Real weights.

mod common;

use burn::tensor::{Device, Tensor};
use common::*;
use easel::loss::CostWeights;
use easel::network::{ConvChoice, Network};
use easel::optim::{Optimizer, OptimizerSpec};

/// The fixture's regions in its order: red (starry, weight 1), blue (hubble, weight 2),
/// black (no style).
fn fixture_regions(fx: &Fixture) -> (Vec<(Vec<f32>, Option<usize>)>, CostWeights) {
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

fn check_against_pytorch(net: &Network) {
    let device = Device::flex();
    let fx = fixture("regions");
    let (regions, weights) = fixture_regions(&fx);
    let content: Tensor<4> = fx.tensor("content", &device);
    let styles = vec![
        (fx.tensor::<4>("style", &device), 1.0),
        (fx.tensor::<4>("style2", &device), 1.0),
    ];
    let x0: Tensor<4> = fx.tensor("x0", &device);
    let what = format!("regions ({} path)", net.path_name());
    let targets = net
        .targets_with_regions(content, &styles, &regions, &weights)
        .expect("targets");
    let (costs, grad) = net.evaluate(&x0, &targets, &weights).expect("evaluate");
    for (l, j) in &costs.style_layers {
        let want = fx.json["J_style_layers"][l.name()]
            .as_f64()
            .expect("layer cost");
        assert!(rel(*j, want) <= 1e-4, "{what}: J_style[{l}] {j} vs {want}");
    }
    for (name, got) in ["red", "blue", "black"].iter().zip(&costs.regions) {
        let want = fx.json["regions_J"][name].as_f64().expect("region cost");
        assert!(
            rel(*got, want) <= 1e-4,
            "{what}: region {name}: {got} vs {want}"
        );
    }
    assert!(
        rel(costs.total, fx.f64("J")) <= 1e-4,
        "{what}: J {} vs {}",
        costs.total,
        fx.f64("J")
    );
    let e = rel_err(&values(&grad), &fx.host("grad").data);
    eprintln!(
        "{what}: J {:.1e}, gradient {e:.1e}",
        rel(costs.total, fx.f64("J"))
    );
    assert!(
        e <= 1e-3,
        "{what}: the gradient differs from PyTorch by {e:e}"
    );

    let mut eval = |x: &Tensor<4>| net.evaluate(x, &targets, &weights);
    let mut opt = Optimizer::new(&OptimizerSpec::adam(2.0));
    let mut x = x0;
    for (k, want) in fx.list("adam_J").into_iter().take(5).enumerate() {
        let (next, c) = opt.step(2.0, x, &mut eval).expect("step");
        assert!(
            rel(c.total, want) <= 1e-3,
            "{what}: Adam J at step {k}: {} vs PyTorch {want}",
            c.total
        );
        x = next;
    }
}

/// Guided Grams, their costs per layer and per region, the gradient and five Adam
/// steps, on the Winograd path (hand-written adjoint) and burn's (autodiff).
#[test]
fn guided_grams_match_pytorch() {
    let device = Device::flex();
    let vgg = easel::weights::load(&real_weights(), &device).expect("real weights");
    check_against_pytorch(&on_cpu(vgg.clone()));
    check_against_pytorch(&on(
        vgg,
        &easel::backend::Backend::cpu(),
        ConvChoice::Direct,
    ));
}

fn photo(name: &str, w: u32, h: u32, device: &Device) -> Tensor<4> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("presets/images")
        .join(name);
    let img = easel::image::load_rgb(&path).expect("a demo image");
    easel::image::to_pixel_space(&easel::image::resize(&img, w, h), device)
}

/// One region over the whole image, weight 1, is the paper's unguided cost.
#[test]
fn one_region_over_the_image_is_the_unguided_cost() {
    let device = Device::flex();
    let (w, h) = (96, 80);
    let net = on_cpu(easel::weights::load(&real_weights(), &device).expect("weights"));
    let content = photo("chelsea.png", w, h, &device);
    let style = photo("starry_night.jpg", w, h, &device);
    let x = photo("coffee.png", w, h, &device);
    let plain = seed_weights();
    let guided = CostWeights {
        region_weights: vec![1.0],
        ..seed_weights()
    };
    let styles = [(style, 1.0)];
    let everywhere = vec![(vec![1.0; (w * h) as usize], Some(0))];
    let t_plain = net
        .targets(content.clone(), &styles, &plain)
        .expect("targets");
    let t_guided = net
        .targets_with_regions(content, &styles, &everywhere, &guided)
        .expect("targets");
    let (want, want_g) = net.evaluate(&x, &t_plain, &plain).expect("plain");
    let (got, got_g) = net.evaluate(&x, &t_guided, &guided).expect("guided");
    assert_same_costs(&got, &want, 1e-6, "one region everywhere");
    let e = rel_err(&values(&got_g), &values(&want_g));
    assert!(e <= 1e-6, "the gradient differs by {e:e}");
}

/// A region without a style: its J_style is 0, and far enough inside it (beyond the
/// network's reach from the styled region) the style cost moves no pixel: the gradient
/// there is the content cost's alone, bit for bit. On burn's direct convolution, where
/// an output reads its 3x3 window only; Winograd's transforms mix a whole 6x6 tile, so
/// there the zeros beyond the reach come out as rounding noise (1e-6 relative).
#[test]
fn a_region_without_a_style_keeps_its_content() {
    let device = Device::flex();
    let (w, h) = (320usize, 128usize);
    let net = on(
        easel::weights::load(&real_weights(), &device).expect("weights"),
        &easel::backend::Backend::cpu(),
        ConvChoice::Direct,
    );
    let content = photo("chelsea.png", w as u32, h as u32, &device);
    let style = photo("starry_night.jpg", w as u32, h as u32, &device);
    let x = photo("coffee.png", w as u32, h as u32, &device);
    // Left 96 columns styled, the rest without a style.
    let styled: Vec<f32> = (0..w * h)
        .map(|i| if i % w < 96 { 1.0 } else { 0.0 })
        .collect();
    let plain: Vec<f32> = styled.iter().map(|v| 1.0 - v).collect();
    let regions = vec![(styled, Some(0)), (plain, None)];
    let with_style = CostWeights {
        region_weights: vec![1.0, 0.0],
        ..seed_weights()
    };
    let without = CostWeights {
        beta: 0.0,
        ..with_style.clone()
    };
    let targets = net
        .targets_with_regions(content, &[(style, 1.0)], &regions, &with_style)
        .expect("targets");
    let (costs, g_style) = net.evaluate(&x, &targets, &with_style).expect("evaluate");
    let (_, g_content) = net.evaluate(&x, &targets, &without).expect("evaluate");
    assert!(costs.regions[0] > 0.0, "the styled region has a style cost");
    assert_eq!(costs.regions[1], 0.0, "the region without a style has none");
    let (a, b) = (values(&g_style), values(&g_content));
    // conv5_1 reaches 80 pixels; its pooled mask is fractional up to 16 more.
    let far = 96 + 80 + 16;
    let mut moved_near = false;
    for c in 0..3 {
        for y in 0..h {
            for xx in 0..w {
                let i = (c * h + y) * w + xx;
                if xx >= far {
                    assert_eq!(
                        a[i], b[i],
                        "pixel ({xx}, {y}) inside the region without a style moved by the style cost"
                    );
                } else if xx >= 96 && a[i] != b[i] {
                    moved_near = true;
                }
            }
        }
    }
    assert!(
        moved_near,
        "near the styled region the style cost reaches over the edge (the test would not see a leak)"
    );
}
