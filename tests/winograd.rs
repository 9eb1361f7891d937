//! The CPU's Winograd path against burn's own convolution (the plain path), to 1e-4:
//! one convolution forward and its input gradient at awkward sizes, then the whole cost
//! and gradient with the real weights, for both poolings.

mod common;

use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Tensor, TensorData};
use common::*;
use easel::loss::CostWeights;
use easel::network::ConvChoice;
use easel::vgg::Pooling;
use easel::vgg::winograd::{Epilogue, WinogradKernel, conv3x3};

fn noise(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

fn tensor<const D: usize>(v: &[f32], shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(v.to_vec(), shape), device)
}

/// One convolution with bias and ReLU, then its input gradient for a random upstream
/// gradient, each against burn's autodiff of `relu(conv2d(x))`.
fn check_conv(c: usize, k: usize, h: usize, w: usize) {
    let device = Device::flex();
    let x = noise(c * h * w, 1 + c as u64, 1.0);
    let weight = noise(k * c * 9, 2 + k as u64, (2.0 / (9.0 * c as f32)).sqrt());
    let bias = noise(k, 3, 0.1);
    let up = noise(k * h * w, 4, 1.0);

    let xa = tensor(&x, [1, c, h, w], &device).autodiff().require_grad();
    let y = conv2d(
        xa.clone(),
        tensor(&weight, [k, c, 3, 3], &device),
        Some(tensor(&bias, [k], &device)),
        ConvOptions::new([1, 1], [1, 1], [1, 1], 1),
    );
    let y = burn::tensor::activation::relu(y);
    let want_y = values(&y.clone().inner());
    let grads = (y * tensor(&up, [1, k, h, w], &device).autodiff())
        .sum()
        .backward();
    let want_g = values(&xa.grad(&grads).expect("input gradient"));

    let epilogue = Epilogue {
        bias: Some(&bias),
        relu: true,
    };
    let got_y = conv3x3(
        &x,
        None,
        h,
        w,
        &WinogradKernel::new(&weight, k, c),
        epilogue,
    );
    let e = rel_err(&got_y, &want_y);
    eprintln!("{c}->{k} at {h}x{w}: forward {e:.1e}");
    assert!(e <= 1e-4, "{c}->{k} at {h}x{w}: forward differs by {e:e}");

    let back = WinogradKernel::input_gradient(&weight, k, c);
    let none = Epilogue {
        bias: None,
        relu: false,
    };
    let got_g = conv3x3(&up, Some(&got_y), h, w, &back, none);
    let e = rel_err(&got_g, &want_g);
    eprintln!("{c}->{k} at {h}x{w}: input gradient {e:.1e}");
    assert!(
        e <= 1e-4,
        "{c}->{k} at {h}x{w}: input gradient differs by {e:e}"
    );
}

#[test]
fn one_convolution_matches_burn_at_odd_sizes() {
    // Sizes that are not multiples of the 4x4 tile, one smaller than a tile, and the
    // channel counts of VGG-19's first layer and of its deep layers.
    check_conv(3, 64, 37, 50);
    check_conv(64, 64, 13, 7);
    check_conv(64, 128, 3, 2);
    check_conv(256, 512, 9, 12);
    check_conv(512, 512, 1, 1);
}

/// The whole cost and its gradient with the real weights, Winograd against burn.
fn check_network(pooling: Pooling) {
    let device = Device::flex();
    let (h, w) = (45, 62);
    let image = |seed: u64| tensor(&noise(3 * h * w, seed, 1.0), [1, 3, h, w], &device) * 100.0;
    let (content, style, x) = (image(10), image(11), image(12));
    let weights = CostWeights {
        tv_weight: 0.5,
        style_loss: easel::loss::StyleLoss::Gram,
        ..seed_weights()
    };
    let vgg = easel::weights::load(&real_weights(), &device)
        .expect("real weights")
        .with_pooling(pooling);
    let cpu = easel::backend::Backend::cpu();
    let winograd = on(vgg.clone(), &cpu, ConvChoice::Winograd);
    assert!(
        winograd.winograd().is_some(),
        "the CPU runs the Winograd path"
    );
    let plain = on(vgg, &cpu, ConvChoice::Direct);
    assert!(plain.winograd().is_none());

    let run = |net: &easel::network::Network| {
        let targets = net
            .targets(content.clone(), &[(style.clone(), 1.0)], &weights)
            .expect("targets");
        net.evaluate(&x, &targets, &weights).expect("evaluate")
    };
    let (want, want_g) = run(&plain);
    let (got, got_g) = run(&winograd);
    assert_same_costs(
        &got,
        &want,
        1e-4,
        &format!("{pooling:?}, Winograd against burn"),
    );
    let e = rel_err(&values(&got_g), &values(&want_g));
    eprintln!(
        "{pooling:?}: J {:.1e}, gradient {e:.1e}",
        rel(got.total, want.total)
    );
    assert!(
        e <= 1e-4,
        "{pooling:?}: gradient differs from burn's by {e:e}"
    );
}

#[test]
fn cost_and_gradient_match_burn_with_average_pooling() {
    check_network(Pooling::Avg);
}

#[test]
fn cost_and_gradient_match_burn_with_max_pooling() {
    check_network(Pooling::Max);
}
