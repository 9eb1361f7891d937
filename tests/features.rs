//! The features beyond the seed: scale schedule, iterate averaging, blended styles,
//! colour preservation, clamping, the content init of coarse to fine, and a full run
//! using them all (with a resume across a scale change).

mod common;

use burn::tensor::{Device, Tensor, TensorData};
use easel::color;
use easel::engine::Ema;
use easel::engine::schedule::{Scales, Stage, stages};
use easel::loss::gram;
use easel::vgg::Layer;
use std::path::{Path, PathBuf};

#[test]
fn scales_grow_by_sqrt2_to_the_target() {
    let s = Scales {
        min_side: 128,
        steps: 5,
        iterations: None,
    };
    let got = stages(Some(&s), 512, 512, 200);
    let sides: Vec<u32> = got.iter().map(|s| s.width).collect();
    assert_eq!(sides, vec![128, 181, 256, 362, 512]);
    assert_eq!(
        got.iter().map(|s| s.end).collect::<Vec<_>>(),
        vec![40, 80, 120, 160, 200]
    );
    let per = Scales {
        iterations: Some(30),
        ..s.clone()
    };
    assert_eq!(
        stages(Some(&per), 512, 512, 200)
            .iter()
            .map(|s| s.end)
            .collect::<Vec<_>>(),
        vec![30, 60, 90, 120, 200]
    );
    // Scales below min_side are dropped; a 400x300 target keeps its aspect.
    let few = stages(
        Some(&Scales {
            min_side: 256,
            steps: 5,
            iterations: None,
        }),
        400,
        300,
        90,
    );
    assert_eq!(
        few,
        vec![
            Stage {
                width: 283,
                height: 212,
                end: 45
            },
            Stage {
                width: 400,
                height: 300,
                end: 90
            }
        ]
    );
    assert_eq!(
        stages(None, 400, 300, 200),
        vec![Stage {
            width: 400,
            height: 300,
            end: 200
        }]
    );
}

/// Coarse to fine carries Adam's moments to the finer scale scaled by the pixel ratio r
/// (m by r, v by r^2). The per-pixel gradient at the finer scale is r times the coarse
/// one, so the first step there must be the step Adam would have taken at the coarse
/// scale: the same size, not damped by a second moment from larger gradients.
#[test]
fn adam_moments_carry_to_a_finer_scale_scaled_by_the_pixel_ratio() {
    use easel::optim::Adam;
    let device = Device::flex();
    let field = |w: usize, h: usize, scale: f32| {
        // A smooth field, so that resizing it bilinearly changes nothing but its size.
        let v: Vec<f32> = (0..3 * w * h)
            .map(|i| {
                let (x, y) = ((i % w) as f32 / w as f32, ((i / w) % h) as f32 / h as f32);
                scale * (1.0 + 0.5 * x + 0.25 * y)
            })
            .collect();
        Tensor::<4>::from_data(TensorData::new(v, [1, 3, h, w]), &device)
    };
    let step = |adam: &mut Adam, x: Tensor<4>, g: Tensor<4>| {
        let mut eval = |_: &Tensor<4>| {
            let costs = easel::loss::Costs {
                total: 1.0,
                content: 0.0,
                style: 0.0,
                style_layers: vec![],
                tv: 0.0,
                regions: vec![],
            };
            Ok((costs, g.clone()))
        };
        let (next, _) = adam.step(1.0, x.clone(), &mut eval).expect("step");
        common::values(&(x - next))
    };
    let (w, h) = (32, 24);
    let mut coarse = Adam::default();
    for _ in 0..20 {
        step(&mut coarse, field(w, h, 0.0), field(w, h, 1.0));
    }
    let mut fine = coarse.clone();
    // What Adam does at the coarse scale on the same gradient once more...
    let want = step(&mut coarse.clone(), field(w, h, 0.0), field(w, h, 1.0));
    // ...is what it does at twice the size, where the gradient per pixel is a quarter.
    fine.carry_to(2 * w as u32, 2 * h as u32);
    let m = fine.m.as_ref().expect("first moment");
    assert_eq!(
        m.dims(),
        [1, 3, 2 * h, 2 * w],
        "moments resized to the new scale"
    );
    let got = step(
        &mut fine,
        field(2 * w, 2 * h, 0.0),
        field(2 * w, 2 * h, 0.25),
    );
    let mean = |v: &[f32]| v.iter().map(|x| *x as f64).sum::<f64>() / v.len() as f64;
    let (got, want) = (mean(&got), mean(&want));
    assert!(
        (got - want).abs() <= 1e-3 * want.abs(),
        "first step at the finer scale {got} differs from the coarse scale's {want}"
    );
    // Without the scaling, the step shrinks (to 0.94 here, and further over the next
    // steps as the new, smaller gradients enter v's average): the test can tell.
    let mut unscaled = coarse.clone();
    unscaled.m = unscaled
        .m
        .map(|m| easel::image::resize_tensor(m, 2 * w as u32, 2 * h as u32));
    unscaled.v = unscaled
        .v
        .map(|v| easel::image::resize_tensor(v, 2 * w as u32, 2 * h as u32));
    let damped = mean(&step(
        &mut unscaled,
        field(2 * w, 2 * h, 0.0),
        field(2 * w, 2 * h, 0.25),
    ));
    assert!(
        damped < 0.95 * want,
        "unscaled moments give {damped}, not smaller than {want}"
    );
}

#[test]
fn ema_is_bias_corrected() {
    let device = Device::flex();
    let x = Tensor::<4>::from_data(
        TensorData::new(vec![1.0f32, -2.0, 3.0, 4.0], [1, 1, 2, 2]),
        &device,
    );
    let mut ema = Ema::start(&x);
    for _ in 0..3 {
        ema.update(&x, 0.99);
    }
    // The average of a constant is that constant once corrected, not 3% of it.
    let v = common::values(&ema.value(0.99).expect("value"));
    for (a, b) in v.iter().zip([1.0f32, -2.0, 3.0, 4.0]) {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }
    let y = x.clone() * 3.0;
    let mut ema = Ema::start(&x);
    ema.update(&x, 0.5);
    ema.update(&y, 0.5);
    // (0.5*0.5*x + 0.5*3x) / (1 - 0.25) = (0.25 + 1.5)/0.75 x
    let v = common::values(&ema.value(0.5).expect("value"));
    assert!((v[0] - 1.75 / 0.75).abs() < 1e-5, "{}", v[0]);
}

#[test]
fn blended_styles_mix_grams_by_weight() {
    let device = Device::flex();
    let vgg = easel::weights::vgg_from_tensors(
        &common::random_network_tensors(),
        &device,
        Path::new("random"),
    )
    .expect("net");
    let fx = common::fixture("random");
    let content: Tensor<4> = fx.tensor("content", &device);
    let a: Tensor<4> = fx.tensor("style", &device);
    let b: Tensor<4> = fx.tensor("x0", &device);
    let preset = easel::preset::Preset::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("presets/quick.yaml"),
        &[],
    )
    .expect("preset");
    let weights = preset.cost_weights();
    let net = common::on_cpu(vgg);
    let blended = net
        .targets(content, &[(a.clone(), 1.0), (b.clone(), 3.0)], &weights)
        .expect("targets");
    let conv1_1 = Layer::parse("conv1_1").expect("layer");
    let ga = gram(net.activation(a, conv1_1).expect("features"));
    let gb = gram(net.activation(b, conv1_1).expect("features"));
    let want = common::values(&(ga * 0.25 + gb * 0.75));
    let got = common::values(&blended.grams[0].1);
    assert!(common::rel_err(&got, &want) < 1e-6);
}

#[test]
fn luminance_transfer_keeps_the_contents_chroma() {
    for (generated, content) in [
        ([200.0, 30.0, 90.0], [10.0, 120.0, 60.0]),
        ([12.0, 240.0, 5.0], [128.0, 128.0, 128.0]),
    ] {
        let out = color::recombine_px(generated, content);
        let (o, c, g) = (
            color::rgb_to_yiq(out),
            color::rgb_to_yiq(content),
            color::rgb_to_yiq(generated),
        );
        assert!(
            (o[1] - c[1]).abs() < 1e-3 && (o[2] - c[2]).abs() < 1e-3,
            "chroma {o:?} vs content {c:?}"
        );
        assert!(
            (o[0] - g[0]).abs() < 1e-3,
            "luminance {o:?} vs generated {g:?}"
        );
    }
}

#[test]
fn histogram_matching_gives_the_style_the_contents_colours() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let content = easel::image::resize(
        &easel::image::load_rgb(&root.join("presets/images/chelsea.png")).expect("img"),
        96,
        64,
    );
    let style = easel::image::resize(
        &easel::image::load_rgb(&root.join("presets/images/starry_night.jpg")).expect("img"),
        96,
        64,
    );
    let matched = color::match_histogram(&style, &content);
    let (mc, cc) = color::color_stats(&content);
    let (mm, cm) = color::color_stats(&matched);
    for c in 0..3 {
        assert!(
            (mc[c] - mm[c]).abs() < 2.0,
            "channel {c} mean {} vs {}",
            mm[c],
            mc[c]
        );
        for d in 0..3 {
            assert!(
                (cc[c][d] - cm[c][d]).abs() < 0.08 * cc[c][c].max(cc[d][d]),
                "cov[{c}][{d}] {} vs {}",
                cm[c][d],
                cc[c][d]
            );
        }
    }
}

#[test]
fn clamping_keeps_pixels_in_range() {
    let device = Device::flex();
    let x = Tensor::<4>::from_data(
        TensorData::new(vec![-500.0f32, 500.0, 0.0], [1, 3, 1, 1]),
        &device,
    );
    let v = common::values(&easel::image::clamp_pixels(x));
    assert_eq!(v, vec![-123.68, 255.0 - 116.779, 0.0]);
}

#[test]
fn a_run_with_every_feature_finishes_and_resumes_across_scales() {
    let preset = "name: all\ncontent: chelsea.png\nstyle: [{image: starry_night.jpg, weight: 2}, {image: coffee.png, weight: 1}]\n\
        size: {width: 64, height: 48}\niterations: 8\nsave_every: 3\nbackend: cpu\nscales: {min_side: 32, steps: 2, iterations: 4}\n\
        ema: 0.9\nstyle_scale: 1.5\npreserve_colors: luminance\nclamp: true\ntv_weight: 0.01\n\
        trim_style: true\npadding: replicate\n";
    let dir = common::scratch(&["chelsea.png", "starry_night.jpg", "coffee.png"], preset);
    let ok = |o: &std::process::Output| {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr))
    };
    ok(&common::easel(
        &["run", "p.yaml", "--ui", "plain", "--out", "a"],
        dir.path(),
    ));
    ok(&common::easel(
        &[
            "run",
            "p.yaml",
            "--ui",
            "plain",
            "--out",
            "b",
            "--set",
            "iterations=3",
        ],
        dir.path(),
    ));
    let only = |d: &str| -> PathBuf {
        std::fs::read_dir(dir.path().join(d))
            .expect("dir")
            .next()
            .expect("run")
            .expect("entry")
            .path()
    };
    let (a, b) = (only("a"), only("b"));
    // b stopped at iteration 3, inside the first scale (0..4); resuming crosses to the second.
    ok(&common::easel(
        &[
            "resume",
            b.to_str().expect("utf-8"),
            "--ui",
            "plain",
            "--set",
            "iterations=8",
        ],
        dir.path(),
    ));
    let img = image::open(a.join("final.png")).expect("final.png");
    assert_eq!((img.width(), img.height()), (64, 48));
    let (ja, jb) = (common::records(&a), common::records(&b));
    assert_eq!(ja.len(), 9, "eight iterations and the final image's record");
    common::assert_same_trajectory(&ja, &jb, "resumed across scales");
}

/// Coarse to fine starts from the content where the preset names no `init`; a named one
/// is kept, and without `scales` the seed's noise stays the default.
#[test]
fn coarse_to_fine_starts_from_the_content_unless_told_otherwise() {
    use easel::preset::{Init, Preset};
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("presets/p.yaml");
    let init = |extra: &str| {
        let text = format!(
            "name: t\ncontent: images/chelsea.png\nstyle: images/starry_night.jpg\n{extra}"
        );
        Preset::parse(&text, &path, &[])
            .expect("the preset parses")
            .init
    };
    let noise = Init::Noise { noise_ratio: 0.6 };
    assert_eq!(init("scales: {min_side: 64}\n"), Init::Content);
    assert_eq!(init(""), noise);
    assert_eq!(init("scales: {min_side: 64}\ninit: {kind: noise}\n"), noise);
}
