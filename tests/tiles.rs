//! Tiled rendering is exact: at sizes where both fit, the tiled Winograd path gives the
//! untiled one's costs (J, J_content, every J_style[l], TV) to 1e-4, its gradient to
//! 1e-4, and five Adam steps to 1e-3, with average and max pooling, TV, W2, and a size
//! the tile does not divide. Real weights, real photographs.
//!
//! The style costs differ only by the order the Grams are summed in (tile by tile in
//! float64, or at once in float32). Without them (content and TV) the tiled gradient is
//! the untiled one bit for bit: tiles start on multiples of 64, so every convolution
//! sees its Winograd tiles where the untiled one does, and a halo one step short of the
//! `2 r` it needs already shows (1.7e-7, along the tiles' edges).

mod common;

use burn::tensor::{Device, Tensor};
use common::*;
use easel::loss::{CostWeights, StyleLoss};
use easel::network::Network;
use easel::optim::{Optimizer, OptimizerSpec};
use easel::vgg::{Layer, Padding, Pooling};

fn networks(pooling: Pooling, tile: usize) -> (Network, Network) {
    networks_padded(pooling, Padding::Zero, tile)
}

fn networks_padded(pooling: Pooling, padding: Padding, tile: usize) -> (Network, Network) {
    let device = Device::flex();
    let vgg = easel::weights::load(&real_weights(), &device)
        .expect("real weights")
        .with_pooling(pooling)
        .with_padding(padding);
    let untiled = on_cpu(vgg);
    let mut tiled = untiled.clone();
    tiled.set_tile(Some(tile));
    (untiled, tiled)
}

/// The tiled path against the untiled one at `w` x `h`: targets, costs and gradient
/// of one image, and optionally five Adam steps from it.
fn check(pooling: Pooling, tile: usize, (w, h): (u32, u32), weights: &CostWeights, adam: bool) {
    let device = Device::flex();
    let (untiled, tiled) = networks(pooling, tile);
    let content = photo("chelsea.png", w, h, &device);
    let style = photo("starry_night.jpg", w, h, &device);
    let x = photo("coffee.png", w, h, &device);
    let what = format!("{pooling:?} {w}x{h} in {tile}-pixel tiles");
    let targets = |net: &Network| {
        net.targets(content.clone(), &[(style.clone(), 1.0)], weights)
            .expect("targets")
    };
    let (t_untiled, t_tiled) = (targets(&untiled), targets(&tiled));
    let e = rel_err(&values(&t_tiled.content), &values(&t_untiled.content));
    assert!(e <= 1e-5, "{what}: the content target differs by {e:e}");

    let (want, want_g) = untiled.evaluate(&x, &t_untiled, weights).expect("untiled");
    let (got, got_g) = tiled.evaluate(&x, &t_tiled, weights).expect("tiled");
    assert_same_costs(&got, &want, 1e-4, &what);
    let (got_g, want_g) = (values(&got_g), values(&want_g));
    let e = rel_err(&got_g, &want_g);
    eprintln!(
        "{what}: J {:.1e}, gradient {e:.1e}",
        rel(got.total, want.total)
    );
    assert!(e <= 1e-4, "{what}: the gradient differs by {e:e}");
    no_seams(&got_g, &want_g, &tiled, (w, h), &what);

    if adam {
        let steps = |net: &Network, targets| -> Vec<f64> {
            let mut eval = |x: &Tensor<4>| net.evaluate(x, targets, weights);
            let mut opt = Optimizer::new(&OptimizerSpec::adam(2.0));
            let mut x = x.clone();
            (0..5)
                .map(|_| {
                    let (next, c) = opt.step(2.0, x.clone(), &mut eval).expect("step");
                    x = next;
                    c.total
                })
                .collect()
        };
        let (a, b) = (steps(&tiled, &t_tiled), steps(&untiled, &t_untiled));
        for (k, (t, u)) in a.iter().zip(&b).enumerate() {
            assert!(rel(*t, *u) <= 1e-3, "{what}: Adam step {k}: J {t} vs {u}");
        }
    }
}

/// Where the tiled gradient differs from the untiled one, it does so no more along the
/// tiles' edges (16-pixel bands) than elsewhere: no seam.
fn no_seams(got: &[f32], want: &[f32], tiled: &Network, (w, h): (u32, u32), what: &str) {
    let (w, h) = (w as usize, h as usize);
    let plan =
        easel::network::tiles::TilePlan::new(h, w, tiled.tile().expect("tiled"), Layer::CONV5_1);
    let rows: Vec<usize> = plan
        .interiors
        .iter()
        .map(|t| t.y0)
        .filter(|&e| e > 0)
        .collect();
    let cols: Vec<usize> = plan
        .interiors
        .iter()
        .map(|t| t.x0)
        .filter(|&e| e > 0)
        .collect();
    let near = |v: usize, edges: &[usize]| edges.iter().any(|&e| v.abs_diff(e) < 16);
    let (mut band, mut rest) = ((Vec::new(), Vec::new()), (Vec::new(), Vec::new()));
    for c in 0..3 {
        for y in 0..h {
            for x in 0..w {
                let i = (c * h + y) * w + x;
                let edge = near(y, &rows) || near(x, &cols);
                let into = if edge { &mut band } else { &mut rest };
                into.0.push(got[i]);
                into.1.push(want[i]);
            }
        }
    }
    let (at_edges, elsewhere) = (rel_err(&band.0, &band.1), rel_err(&rest.0, &rest.1));
    eprintln!(
        "{what}: gradient difference along the edges {at_edges:.1e}, elsewhere {elsewhere:.1e}"
    );
    assert!(
        at_edges <= 2.0 * elsewhere + 1e-7,
        "{what}: a seam: the gradient differs by {at_edges:e} along the tiles' edges and {elsewhere:e} elsewhere"
    );
}

/// Content and TV only: the tiled gradient is the untiled one exactly.
fn check_exact(pooling: Pooling, padding: Padding, tile: usize, (w, h): (u32, u32)) {
    let device = Device::flex();
    let weights = CostWeights {
        beta: 0.0,
        tv_weight: 0.5,
        ..seed_weights()
    };
    let (untiled, tiled) = networks_padded(pooling, padding, tile);
    let content = photo("chelsea.png", w, h, &device);
    let style = photo("starry_night.jpg", w, h, &device);
    let x = photo("coffee.png", w, h, &device);
    let targets = untiled
        .targets(content, &[(style, 1.0)], &weights)
        .expect("targets");
    let (want, want_g) = untiled.evaluate(&x, &targets, &weights).expect("untiled");
    let (got, got_g) = tiled.evaluate(&x, &targets, &weights).expect("tiled");
    // J_content is summed tile by tile, in float64.
    assert!(
        rel(got.content, want.content) <= 1e-9,
        "J_content {} vs {}",
        got.content,
        want.content
    );
    assert_eq!(got.tv, want.tv, "TV");
    let diff = values(&got_g)
        .iter()
        .zip(values(&want_g))
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert_eq!(
        diff, 0.0,
        "{pooling:?} {w}x{h}: the tiled gradient differs by up to {diff:e}"
    );
}

#[test]
fn without_style_costs_the_tiled_gradient_is_the_untiled_one_bit_for_bit() {
    check_exact(Pooling::Avg, Padding::Zero, 256, (512, 512));
    check_exact(Pooling::Max, Padding::Zero, 128, (420, 300));
    // conv1_1 repeating the edge: the crops' own edges are inside their halos.
    check_exact(Pooling::Avg, Padding::Replicate, 128, (300, 260));
}

#[test]
fn tiles_match_the_untiled_path_with_average_pooling_and_tv() {
    let weights = CostWeights {
        tv_weight: 0.5,
        ..seed_weights()
    };
    check(Pooling::Avg, 256, (512, 512), &weights, true);
}

#[test]
fn tiles_match_the_untiled_path_with_max_pooling_at_a_size_tiles_do_not_divide() {
    let weights = CostWeights {
        tv_weight: 0.5,
        ..seed_weights()
    };
    check(Pooling::Max, 128, (420, 300), &weights, true);
}

#[test]
fn tiles_match_the_untiled_path_with_the_w2_style_loss() {
    let weights = CostWeights {
        style_loss: StyleLoss::W2,
        ..seed_weights()
    };
    check(Pooling::Avg, 128, (260, 200), &weights, false);
}
