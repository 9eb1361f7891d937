//! The network's kernels: pooling, padding, normalisation, bias and ReLU, row sums and
//! masks.

use super::*;

#[test]
fn pooling_and_its_gradient_match_the_cpu_path_at_odd_sizes_and_on_ties() {
    let pool: unsafe extern "C" fn(F32p, F32m, u32, u32, u32, i32) = kernel("pool");
    let unpool: unsafe extern "C" fn(F32p, F32p, F32m, u32, u32, u32, i32) = kernel("unpool");
    let (c, h, w) = (3, 7, 9);
    let mut x = random(c * h * w, 1);
    // A window of equal values: max pooling's gradient goes to the first of them.
    for i in [w + 2, w + 3, 2 * w + 2, 2 * w + 3] {
        x[i] = 0.5;
    }
    for pooling in [Pooling::Avg, Pooling::Max] {
        let max = i32::from(pooling == Pooling::Max);
        let want = cpu::pool(&x, c, h, w, pooling);
        let mut y = vec![f32::NAN; want.len()];
        // SAFETY: the buffers have the sizes the kernel indexes.
        unsafe {
            pool(
                x.as_ptr(),
                y.as_mut_ptr(),
                h as u32,
                w as u32,
                y.len() as u32,
                max,
            )
        };
        assert_eq!(y, want, "{pooling:?} pooling");
        let g = random(want.len(), 2);
        let want = cpu::unpool(&g, &x, c, h, w, pooling);
        let mut out = vec![f32::NAN; c * h * w];
        let n = out.len() as u32;
        // SAFETY: as above.
        unsafe {
            unpool(
                g.as_ptr(),
                x.as_ptr(),
                out.as_mut_ptr(),
                h as u32,
                w as u32,
                n,
                max,
            )
        };
        assert_eq!(out, want, "{pooling:?} pooling's gradient");
    }
}

#[test]
fn replicate_padding_and_its_fold_match_the_cpu_path() {
    let pad: unsafe extern "C" fn(F32p, F32m, u32, u32) = kernel("replicate_pad");
    let fold: unsafe extern "C" fn(F32p, F32m, u32, u32) = kernel("fold");
    for (h, w) in [(5, 4), (1, 3), (2, 1)] {
        let x = random(3 * h * w, 3);
        let want = padding::replicate(&x, 3, h, w);
        let mut y = vec![f32::NAN; want.len()];
        // SAFETY: y is [3][h+2][w+2], x [3][h][w].
        unsafe { pad(x.as_ptr(), y.as_mut_ptr(), h as u32, w as u32) };
        assert_eq!(y, want, "padding at {h}x{w}");
        let gp = random(want.len(), 4);
        let want: Vec<f64> = padding::fold(&gp, 3, h, w)
            .iter()
            .map(|&v| v as f64)
            .collect();
        let mut g = vec![f32::NAN; 3 * h * w];
        // SAFETY: as above.
        unsafe { fold(gp.as_ptr(), g.as_mut_ptr(), h as u32, w as u32) };
        assert_close(&g, &want, 1e-6, &format!("fold at {h}x{w}"));
    }
}

#[test]
fn row_sums_masks_and_their_adjoints_match_the_cpu_path() {
    let row_sums: unsafe extern "C" fn(F32p, *mut f64, u32, u32) = kernel("row_sums");
    let add_rows: unsafe extern "C" fn(F32m, F32p, u32, u32) = kernel("add_rows");
    let mask_planes: unsafe extern "C" fn(F32p, F32p, F32m, u32, u32) = kernel("mask_planes");
    let add_masked: unsafe extern "C" fn(F32m, F32p, F32p, u32, u32) = kernel("add_masked");
    let (c, h, w) = (3, 2, 4);
    let n = h * w;
    let act = Activation {
        data: random(c * n, 60),
        channels: c,
        height: h,
        width: w,
    };
    let (total, m, ds, g0) = (
        (c * n) as u32,
        random(n, 61),
        random(c, 62),
        random(c * n, 63),
    );
    let mut sums = vec![0f64; c];
    // SAFETY: the activation is [c][n], sums [c].
    unsafe { row_sums(act.data.as_ptr(), sums.as_mut_ptr(), c as u32, n as u32) };
    let sums: Vec<f32> = sums.iter().map(|&s| s as f32).collect();
    assert_eq!(sums, act.row_sums(), "row sums");

    let mut g = g0.clone();
    // SAFETY: g is [c][n], ds [c].
    unsafe { add_rows(g.as_mut_ptr(), ds.as_ptr(), n as u32, total) };
    let adjoint = act.row_sums_adjoint(&ds);
    let want: Vec<f32> = g0.iter().zip(&adjoint).map(|(a, b)| a + b).collect();
    assert_eq!(g, want, "the row sums' adjoint");

    let mut out = vec![f32::NAN; c * n];
    // SAFETY: the activation and out are [c][n], m [n].
    unsafe {
        mask_planes(
            act.data.as_ptr(),
            m.as_ptr(),
            out.as_mut_ptr(),
            n as u32,
            total,
        )
    };
    assert_eq!(out, act.masked(&m).data, "masked planes");

    let mut g = g0.clone();
    // SAFETY: as above.
    unsafe {
        add_masked(
            g.as_mut_ptr(),
            act.data.as_ptr(),
            m.as_ptr(),
            n as u32,
            total,
        )
    };
    let want: Vec<f32> = (0..c * n).map(|i| g0[i] + act.data[i] * m[i % n]).collect();
    assert_eq!(g, want, "the masked adjoint");
}

#[test]
fn normalisation_bias_and_relu_work_per_channel() {
    let normalize: unsafe extern "C" fn(F32p, F32m, u32, f32, f32, f32, f32, f32, f32) =
        kernel("normalize");
    let bias_relu: unsafe extern "C" fn(F32m, F32p, u32, u32) = kernel("bias_relu");
    let relu_mask: unsafe extern "C" fn(F32m, F32p, u32) = kernel("relu_mask");
    let plane = 6;
    let x = random(3 * plane, 70);
    let (s, t) = ([0.5f32, 2.0, 4.0], [0.1f32, -0.2, 0.3]);
    let mut y = vec![f32::NAN; 3 * plane];
    // SAFETY: x and y are [3][plane].
    unsafe {
        let p = y.as_mut_ptr();
        normalize(
            x.as_ptr(),
            p,
            plane as u32,
            s[0],
            s[1],
            s[2],
            t[0],
            t[1],
            t[2],
        )
    };
    let want: Vec<f32> = (0..3 * plane)
        .map(|i| x[i] * s[i / plane] + t[i / plane])
        .collect();
    assert_eq!(y, want, "normalisation");

    let bias = [0.3f32, -0.4, 0.0];
    let mut a = x.clone();
    // SAFETY: a is [3][plane], bias [3].
    unsafe {
        bias_relu(
            a.as_mut_ptr(),
            bias.as_ptr(),
            plane as u32,
            (3 * plane) as u32,
        )
    };
    let want: Vec<f32> = (0..3 * plane)
        .map(|i| (x[i] + bias[i / plane]).max(0.0))
        .collect();
    assert_eq!(a, want, "bias and ReLU");

    let g0 = random(3 * plane, 71);
    let mut g = g0.clone();
    // SAFETY: g and a are [3][plane].
    unsafe { relu_mask(g.as_mut_ptr(), a.as_ptr(), (3 * plane) as u32) };
    let want: Vec<f32> = (0..3 * plane)
        .map(|i| if a[i] > 0.0 { g0[i] } else { 0.0 })
        .collect();
    assert_eq!(g, want, "the ReLU's mask");
}
