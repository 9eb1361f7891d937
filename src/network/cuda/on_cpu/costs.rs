//! The costs' kernels and Adam's step.

use super::*;

#[rustfmt::skip]
type AdamKernel = unsafe extern "C" fn(
    F32p, F32p, F32p, F32p, F32p, F32m, F32m, F32m, F32m, u32, f32, f32, f32, f32, f32, f32,
    f32, i32, f32, f32, f32, f32, f32, f32, i32, f32, f32,
);

/// The kernel's Adam step on `[3][plane]`, as `Kernels::adam` passes `update`.
fn adam_on_cpu(update: &AdamUpdate, now: &[Vec<f32>; 4], g: &[f32]) -> [Vec<f32>; 4] {
    let adam: AdamKernel = kernel("adam");
    let n = g.len();
    let mut next: [Vec<f32>; 4] = std::array::from_fn(|_| vec![f32::NAN; n]);
    let (clamp, (lo, hi)) = update
        .after
        .clamp
        .map_or((0, ([0.0; 3], [0.0; 3])), |r| (1, r));
    let (ema, (decay, keep)) = update.after.ema.map_or((0, (0.0, 0.0)), |d| (1, d));
    let [x2, m2, v2, avg2] = &mut next;
    // SAFETY: every buffer holds 3 * plane floats.
    unsafe {
        adam(
            now[0].as_ptr(),
            now[1].as_ptr(),
            now[2].as_ptr(),
            now[3].as_ptr(),
            g.as_ptr(),
            x2.as_mut_ptr(),
            m2.as_mut_ptr(),
            v2.as_mut_ptr(),
            avg2.as_mut_ptr(),
            (n / 3) as u32,
            update.beta1,
            update.beta2,
            update.keep1,
            update.keep2,
            update.eps,
            update.step,
            update.sqrt_bc2,
            clamp,
            lo[0],
            lo[1],
            lo[2],
            hi[0],
            hi[1],
            hi[2],
            ema,
            decay,
            keep,
        )
    };
    next
}

#[test]
fn adams_step_is_the_hosts_bit_for_bit_with_clamp_ema_and_nan() {
    let plane = 40;
    let n = 3 * plane;
    let mut now: [Vec<f32>; 4] = std::array::from_fn(|k| random(n, 10 + k as u64));
    now[2].iter_mut().for_each(|v| *v = v.abs() * 1e-3);
    let mut g = random(n, 20);
    g[7] = f32::NAN;
    let base = AdamUpdate::new(
        &crate::optim::Adam::default(),
        3,
        0.05,
        AfterStep::default(),
    );
    let range = ([-0.9f32, -0.2, -0.5], [0.1f32, 0.8, 0.3]);
    for (clamp, ema) in [(None, None), (Some(range), Some((0.99f32, 0.01f32)))] {
        let update = AdamUpdate {
            after: AfterStep { clamp, ema },
            ..base
        };
        let got = adam_on_cpu(&update, &now, &g);
        let mut want: [Vec<f32>; 4] = std::array::from_fn(|_| vec![0.0; n]);
        for c in 0..3 {
            let span = c * plane..(c + 1) * plane;
            let [x, m, v, avg] = &now;
            let [x2, m2, v2, avg2] = &mut want;
            update.apply(
                c,
                [
                    &x[span.clone()],
                    &m[span.clone()],
                    &v[span.clone()],
                    &avg[span.clone()],
                ],
                &g[span.clone()],
                [
                    &mut x2[span.clone()],
                    &mut m2[span.clone()],
                    &mut v2[span.clone()],
                    &mut avg2[span.clone()],
                ],
            );
        }
        for (k, name) in ["x", "m", "v", "avg"].iter().enumerate() {
            let same =
                |(a, b): (&f32, &f32)| a.to_bits() == b.to_bits() || a.is_nan() && b.is_nan();
            assert!(
                got[k].iter().zip(&want[k]).all(same),
                "{name} with clamp {clamp:?} and ema {ema:?}"
            );
        }
        assert!(
            got[0][7].is_nan(),
            "a NaN gradient stays NaN through the clamp"
        );
    }
}

#[test]
fn the_content_cost_and_its_gradient_follow_the_definition() {
    let content: unsafe extern "C" fn(F32p, F32p, F32m, u32, f32, *mut f64, u32) =
        kernel("content");
    let (c, h, w) = (4, 5, 6);
    let n = c * h * w;
    let (a, t, g0) = (random(n, 30), random(n, 31), random(n, 32));
    let alpha = 3.0;
    let coef = (alpha * 2.0 / (4.0 * n as f64)) as f32;
    let mut g = g0.clone();
    let mut costs = [0f64; 3];
    // SAFETY: a, t and g hold n floats; slot 1 is within costs.
    unsafe {
        let out = costs.as_mut_ptr();
        content(
            a.as_ptr(),
            t.as_ptr(),
            g.as_mut_ptr(),
            n as u32,
            coef,
            out,
            1,
        )
    };
    let want = scalar(loss::content_cost(
        host_tensor(&t, [1, c, h, w]),
        host_tensor(&a, [1, c, h, w]),
    ));
    assert!(
        relative(costs[1] / (4.0 * n as f64), want) < 1e-6,
        "{costs:?} {want}"
    );
    assert_eq!((costs[0], costs[2]), (0.0, 0.0), "other slots untouched");
    // alpha dJ/da = alpha 2 (a - t) / 4CHW.
    let grad: Vec<f64> = (0..n)
        .map(|i| g0[i] as f64 + alpha * 2.0 * (a[i] - t[i]) as f64 / (4.0 * n as f64))
        .collect();
    assert_close(&g, &grad, 1e-6, "content gradient");
}

#[test]
fn the_style_cost_and_its_symmetrised_gradient_follow_the_definition() {
    let style: unsafe extern "C" fn(F32p, F32p, F32m, u32, f32, f32, *mut f64, u32) =
        kernel("style");
    let (c, h, w) = (5, 3, 4);
    // Not symmetric, so that a transposed index shows.
    let (gram, target) = (random(c * c, 40), random(c * c, 41));
    let norm = 2.0 * (c * h * w) as f64;
    let (beta, lambda) = (7.0, 0.25);
    let coef = 2.0 * beta * lambda / norm;
    let mut sym = vec![f32::NAN; c * c];
    let mut costs = [0f64; 4];
    // SAFETY: gram, target and sym hold c * c floats; slot 3 is within costs.
    unsafe {
        let out = costs.as_mut_ptr();
        let (g, t, s) = (gram.as_ptr(), target.as_ptr(), sym.as_mut_ptr());
        style(g, t, s, c as u32, norm as f32, coef as f32, out, 3)
    };
    let want = scalar(loss::style_cost_of_gram(
        host_tensor(&target, [c, c]),
        host_tensor(&gram, [c, c]),
        [c, h, w],
    ));
    assert!(relative(costs[3], want) < 1e-5, "{costs:?} {want}");
    // beta lambda dJ/dG = -2 beta lambda (G_S - G) / norm^2, plus its transpose.
    let d = |i: usize| -coef * (target[i] - gram[i]) as f64 / norm;
    let want: Vec<f64> = (0..c * c).map(|i| d(i) + d((i % c) * c + i / c)).collect();
    assert_close(&sym, &want, 1e-6, "dG + dG^T");
}

#[test]
fn the_last_step_scales_by_channel_and_adds_the_total_variations_gradient() {
    let finish: unsafe extern "C" fn(F32m, F32p, u32, u32, f32, f32, f32, i32, f32, *mut f64, u32) =
        kernel("finish");
    let (h, w) = (4, 5);
    let n = 3 * h * w;
    let (x, g0) = (random(n, 50), random(n, 51));
    let scale = [0.5f32, 2.0, 3.0];
    let tv_weight = 0.3f32;
    let run = |tv: i32| {
        let (mut g, mut costs) = (g0.clone(), [0f64; 2]);
        // SAFETY: g and x hold 3 h w floats; slot 1 is within costs.
        unsafe {
            let [s0, s1, s2] = scale;
            let (gp, out) = (g.as_mut_ptr(), costs.as_mut_ptr());
            finish(
                gp,
                x.as_ptr(),
                h as u32,
                w as u32,
                s0,
                s1,
                s2,
                tv,
                tv_weight,
                out,
                1,
            )
        };
        (g, costs)
    };
    let (g, costs) = run(0);
    let scaled: Vec<f32> = (0..n).map(|i| g0[i] * scale[i / (h * w)]).collect();
    assert_eq!((g, costs), (scaled, [0.0; 2]), "without TV: the scale only");

    let (g, costs) = run(1);
    let want = scalar(loss::tv_cost(host_tensor(&x, [1, 3, h, w])));
    assert!(relative(costs[1], want) < 1e-6, "{costs:?} {want}");
    // The TV gradient pair by pair: each neighbour pair (p, q) adds 2 (x_p - x_q) to p.
    let mut tv = vec![0f64; n];
    let mut pair = |p: usize, q: usize| {
        let d = (x[q] - x[p]) as f64;
        tv[p] -= 2.0 * d;
        tv[q] += 2.0 * d;
    };
    for c in 0..3 {
        for y in 0..h {
            for xx in 0..w {
                let p = (c * h + y) * w + xx;
                if y + 1 < h {
                    pair(p, p + w);
                }
                if xx + 1 < w {
                    pair(p, p + 1);
                }
            }
        }
    }
    let want: Vec<f64> = (0..n)
        .map(|i| (g0[i] * scale[i / (h * w)]) as f64 + tv_weight as f64 * tv[i])
        .collect();
    assert_close(&g, &want, 1e-5, "TV gradient");
}
