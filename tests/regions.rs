//! Spatial control by region: guided Grams against PyTorch (make_fixtures.py,
//! "Regions"), one region over the whole image equal to the unguided cost, a region
//! without a style that keeps its content, and the preset's errors. Real weights.

mod common;

use burn::tensor::{Device, Tensor};
use common::*;
use easel::loss::CostWeights;
use easel::network::{ConvChoice, Network};
use easel::optim::{Optimizer, OptimizerSpec};

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

/// A region without a style: its J_style is 0, and the style cost moves none of its
/// pixels (the styled region's masks hold only positions whose receptive field lies
/// inside it): the gradient there is the content cost's alone, bit for bit. On burn's
/// direct convolution, where an output reads its 3x3 window only; Winograd's transforms
/// mix a whole 6x6 tile, so there the zeros come out as rounding noise (1e-6 relative)
/// next to the styled region.
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
    let mut moved_styled = false;
    for c in 0..3 {
        for y in 0..h {
            for xx in 0..w {
                let i = (c * h + y) * w + xx;
                if xx >= 96 {
                    assert_eq!(
                        a[i], b[i],
                        "pixel ({xx}, {y}) in the region without a style moved by the style cost"
                    );
                } else if a[i] != b[i] {
                    moved_styled = true;
                }
            }
        }
    }
    assert!(
        moved_styled,
        "the style cost moves no pixel of the styled region"
    );
}

/// A scratch folder with the demo images, a mask and a preset using it.
fn scratch_with_mask(regions: &str, mask: &image::RgbImage) -> tempfile::TempDir {
    let preset = format!(
        "name: regions\ncontent: chelsea.png\nsize: {{width: 64, height: 48}}\niterations: 3\nsave_every: 2\nbackend: cpu\ninit: {{kind: content}}\n{regions}"
    );
    let dir = common::scratch(
        &["chelsea.png", "starry_night.jpg", "hubble_deep_field.jpg"],
        &preset,
    );
    mask.save(dir.path().join("mask.png"))
        .expect("write the mask");
    dir
}

/// Left half red, right half blue, with a black square in the middle.
fn three_colour_mask() -> image::RgbImage {
    image::RgbImage::from_fn(90, 60, |x, y| {
        if (30..60).contains(&x) && (15..45).contains(&y) {
            image::Rgb([0, 0, 0])
        } else if x < 45 {
            image::Rgb([255, 0, 0])
        } else {
            image::Rgb([0, 0, 255])
        }
    })
}

const REGIONS: &str = "regions:\n  mask: mask.png\n  styles:\n    \"#ff0000\": starry_night.jpg\n    \"#0000ff\": {image: hubble_deep_field.jpg, weight: 2}\n    \"#000000\": none\n";

fn run(dir: &std::path::Path, more: &[&str]) -> std::process::Output {
    let mut args = vec!["run", "p.yaml", "--ui", "plain", "--out", "out"];
    args.extend_from_slice(more);
    easel(&args, dir)
}

/// Through the binary: a run with regions finishes, its preset.yaml keeps the regions
/// (and the mask's sum is recorded with the inputs), and it resumes.
#[test]
fn a_run_with_regions_finishes_and_resumes() {
    let dir = scratch_with_mask(REGIONS, &three_colour_mask());
    let o = run(dir.path(), &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let run_dir = run_dirs(&dir.path().join("out")).pop().expect("the run");
    let preset = std::fs::read_to_string(run_dir.join("preset.yaml")).expect("preset.yaml");
    assert!(
        preset.contains("regions:") && preset.contains("'#0000ff'"),
        "{preset}"
    );
    assert!(!preset.contains("\nstyle:"), "{preset}");
    let sums = std::fs::read_to_string(run_dir.join("inputs.sha256")).expect("sums");
    assert!(sums.contains("mask.png"), "{sums}");
    let path = run_dir.to_str().expect("utf-8");
    let o = easel(
        &["resume", path, "--ui", "plain", "--set", "iterations=5"],
        dir.path(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(records(&run_dir).last().expect("records")["iter"], 5);
}

/// A mask that leaves a listed colour without a pixel, or has another shape than the
/// content, is run, and the run says so first.
#[test]
fn a_mask_with_an_empty_region_or_another_shape_is_told() {
    let red = image::RgbImage::from_pixel(40, 40, image::Rgb([255, 0, 0]));
    let dir = scratch_with_mask(REGIONS, &red);
    let o = run(dir.path(), &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    for needle in [
        "no pixel has the colour #0000ff",
        "no pixel has the colour #000000",
        "is 40x40 and the content image 451x300",
    ] {
        assert!(err.contains(needle), "no {needle:?} in {err}");
    }
    let dir = scratch_with_mask(REGIONS, &three_colour_mask());
    let err = String::from_utf8_lossy(&run(dir.path(), &[]).stderr).into_owned();
    assert!(
        !err.contains("mask"),
        "a mask that fits says nothing: {err}"
    );
}

/// A mask colour no region lists is named; so are a bad colour, both `style` and
/// `regions`, and regions with W2.
#[test]
fn bad_regions_are_refused_with_the_colour_or_key() {
    let mut mask = three_colour_mask();
    mask.put_pixel(0, 0, image::Rgb([0, 255, 0]));
    let dir = scratch_with_mask(REGIONS, &mask);
    let o = run(dir.path(), &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("mask.png") && err.contains("#00ff00") && err.contains("1 pixels"),
        "{err}"
    );
    for (extra, needles) in [
        (
            "regions:\n  mask: mask.png\n  styles: {red: starry_night.jpg}\n",
            &["regions.styles.red", "#rrggbb"][..],
        ),
        (
            &format!("style: starry_night.jpg\n{REGIONS}")[..],
            &["regions", "not both"][..],
        ),
        (
            &format!("style_loss: w2\n{REGIONS}")[..],
            &["style_loss", "regions"][..],
        ),
        (
            "regions:\n  mask: mask.png\n  styles: {\"#ff0000\": none}\n",
            &["regions.styles", "no region a style"][..],
        ),
    ] {
        let dir = scratch_with_mask(extra, &three_colour_mask());
        let o = run(dir.path(), &[]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{extra}: accepted");
        for n in needles {
            assert!(err.contains(n), "{extra}: {n:?} not in {err}");
        }
        assert!(
            run_dirs(&dir.path().join("out")).is_empty(),
            "{extra}: output left"
        );
    }
}

/// A region's weight changed mid-run takes effect between two iterations (J_style moves
/// with it) and is kept in the run's preset.yaml.
#[test]
fn a_region_weight_changes_mid_run() {
    use easel::engine::{self, Command, Destination, Event, RunSpec, Setting};
    let dir = scratch_with_mask(REGIONS, &three_colour_mask());
    let o: Vec<String> = vec!["iterations=6".into(), "save_every=0".into()];
    let preset = easel::preset::Preset::load(&dir.path().join("p.yaml"), &o).expect("preset");
    let mut handle = engine::spawn(RunSpec {
        preset,
        destination: Destination::New(dir.path().join("out")),
        weights: real_weights(),
        backend: easel::backend::Backend::cpu(),
        preview_every_s: 0.0,
    });
    let blue = [0, 0, 255];
    let mut styles = Vec::new();
    let mut run_dir = None;
    loop {
        match handle
            .events
            .recv_timeout(std::time::Duration::from_secs(300))
            .expect("the engine keeps talking")
        {
            Event::Started(s) => run_dir = Some(s.run_dir.clone()),
            Event::Iteration(r) => {
                if r.iter == 2 {
                    handle.send(Command::Set(Setting::RegionWeight(blue), 20.0));
                }
                styles.push(r.j_style);
            }
            Event::Changed { key, .. } => assert_eq!(key, "regions.styles.#0000ff.weight"),
            Event::Failed(e) => panic!("{e}"),
            Event::Finished { .. } => break,
            _ => {}
        }
    }
    handle.join();
    // Commands are taken between iterations: the change lands one or two records on.
    let last = styles.last().copied().unwrap_or_default();
    assert!(
        last > 3.0 * styles[2],
        "J_style did not follow the blue region's weight: {styles:?}"
    );
    let run_dir = run_dir.expect("started");
    let saved =
        easel::preset::Preset::load(&run_dir.join("preset.yaml"), &[]).expect("preset.yaml");
    assert_eq!(saved.settings.get(Setting::RegionWeight(blue)), Some(20.0));
}

/// The host's side of regions on a GPU path (`loss::guided_adjoints`, which the CUDA
/// path feeds with the card's guided Grams): from guided Grams computed here, the same
/// costs per layer and per region as the Winograd path's evaluation, and each guided
/// Gram's gradient `beta lambda_l w_r (G - T) / (2 C^2 n^2)`.
#[test]
fn guided_adjoints_give_the_costs_and_the_gram_gradients() {
    let device = Device::flex();
    let net = on_cpu(easel::weights::load(&real_weights(), &device).expect("weights"));
    let fx = fixture("regions");
    let (regions, weights) = fixture_regions(&fx);
    let styles = vec![
        (fx.tensor::<4>("style", &device), 1.0),
        (fx.tensor::<4>("style2", &device), 1.0),
    ];
    let content: Tensor<4> = fx.tensor("content", &device);
    let targets = net
        .targets_with_regions(content, &styles, &regions, &weights)
        .expect("targets");
    let x: Tensor<4> = fx.tensor("x0", &device);
    let (want, _) = net.evaluate(&x, &targets, &weights).expect("evaluate");
    let taps = net.features(x, weights.deepest()).expect("features");
    let grams: Vec<Vec<Vec<f32>>> = targets
        .regions
        .iter()
        .map(|region| match &region.grams {
            None => Vec::new(),
            Some(_) => weights
                .style_layers
                .iter()
                .zip(&region.masks)
                .map(|((l, _), m)| {
                    values(&easel::loss::regions::guided_gram(
                        taps[l.0].clone(),
                        &m.tensor,
                    ))
                })
                .collect(),
        })
        .collect();
    let got = easel::loss::guided_adjoints(&grams, &targets, &weights, &device)
        .expect("the host's side of regions");
    for ((l, want), got) in want.style_layers.iter().zip(&got.style) {
        assert!(rel(*got, *want) <= 1e-5, "J_style[{l}]: {got} vs {want}");
    }
    assert_eq!(got.regions.len(), 3);
    for (r, (a, b)) in got.regions.iter().zip(&want.regions).enumerate() {
        assert!(rel(*a, *b) <= 1e-5, "region {r}: {a} vs {b}");
    }
    assert!(
        got.d_grams[2].is_empty(),
        "a region without a style has no gradient"
    );
    for (r, region) in targets.regions.iter().enumerate().take(2) {
        let style = region.grams.as_ref().expect("a styled region");
        for (k, ((_, lambda), m)) in weights.style_layers.iter().zip(&region.masks).enumerate() {
            let (g, t) = (&grams[r][k], values(&style[k]));
            let c = (g.len() as f64).sqrt();
            if m.mass <= 0.0 {
                // No position of the region is inside it at this layer: no cost there.
                let zero = got.d_grams[r][k].iter().all(|d| *d == 0.0);
                assert!(
                    zero,
                    "region {r}, style layer {k}: a gradient without positions"
                );
                continue;
            }
            let scale =
                weights.beta * lambda * weights.region_weights[r] / (2.0 * c * c * m.mass * m.mass);
            let closed: Vec<f32> = g
                .iter()
                .zip(&t)
                .map(|(g, t)| ((*g as f64 - *t as f64) * scale) as f32)
                .collect();
            let e = rel_err(&got.d_grams[r][k], &closed);
            assert!(e <= 1e-4, "region {r}, style layer {k}: dG off by {e:e}");
        }
    }
}
