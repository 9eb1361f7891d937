//! L-BFGS on the kernels' vector arithmetic, against L-BFGS on the host.

use super::*;

/// A vector in "device" memory whose arithmetic is the card's kernels, run here.
#[derive(Debug)]
struct EmulatedVector(Vec<f32>);

impl DeviceVector for EmulatedVector {
    fn download(&self) -> anyhow::Result<Vec<f32>> {
        Ok(self.0.clone())
    }
    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }
}

/// [`VectorOps`] through the kernels `dot`, `abs_stats`, `add_scaled`, `scale` and
/// `clamp_planes`, as
/// `network::cuda_vectors::CardOps` calls them on a card.
struct EmulatedOps;

impl EmulatedOps {
    fn get(&self, v: &Vector) -> anyhow::Result<Arc<EmulatedVector>> {
        if let Vector::Device(d) = v
            && let Ok(e) = d.clone().into_any().downcast::<EmulatedVector>()
        {
            return Ok(e);
        }
        let host = v.to_host(&Device::flex())?;
        Ok(Arc::new(EmulatedVector(crate::network::floats(
            host.to_data(),
            "a vector",
        )?)))
    }
    fn wrap(v: Vec<f32>) -> Vector {
        Vector::Device(Arc::new(EmulatedVector(v)))
    }
    fn abs_stats(&self, a: &Vector) -> anyhow::Result<(f64, f64)> {
        let abs_stats: unsafe extern "C" fn(F32p, u32, *mut f64, *mut u32) = kernel("abs_stats");
        let a = self.get(a)?;
        let (mut sum, mut bits) = (0f64, 0u32);
        // SAFETY: a holds n floats; the outputs are one each.
        unsafe { abs_stats(a.0.as_ptr(), a.0.len() as u32, &mut sum, &mut bits) };
        Ok((sum, f32::from_bits(bits) as f64))
    }
}

impl VectorOps for EmulatedOps {
    fn place(&self, x: Tensor<1>) -> anyhow::Result<Vector> {
        self.adopt(&Vector::Host(x))
    }
    fn adopt(&self, v: &Vector) -> anyhow::Result<Vector> {
        Ok(Vector::Device(self.get(v)?))
    }
    fn dot(&self, a: &Vector, b: &Vector) -> anyhow::Result<f64> {
        let dot: unsafe extern "C" fn(F32p, F32p, u32, *mut f64) = kernel("dot");
        let (a, b) = (self.get(a)?, self.get(b)?);
        anyhow::ensure!(a.0.len() == b.0.len(), "lengths differ");
        let mut out = 0f64;
        // SAFETY: both hold n floats.
        unsafe { dot(a.0.as_ptr(), b.0.as_ptr(), a.0.len() as u32, &mut out) };
        Ok(out)
    }
    fn abs_max(&self, a: &Vector) -> anyhow::Result<f64> {
        Ok(self.abs_stats(a)?.1)
    }
    fn abs_sum(&self, a: &Vector) -> anyhow::Result<f64> {
        Ok(self.abs_stats(a)?.0)
    }
    fn add_scaled(&self, y: &Vector, a: f64, x: &Vector) -> anyhow::Result<Vector> {
        let add_scaled: unsafe extern "C" fn(F32p, F32p, f32, F32m, u32) = kernel("add_scaled");
        let (y, x) = (self.get(y)?, self.get(x)?);
        anyhow::ensure!(x.0.len() == y.0.len(), "lengths differ");
        let mut out = vec![f32::NAN; y.0.len()];
        let n = out.len() as u32;
        // SAFETY: all three hold n floats.
        unsafe { add_scaled(y.0.as_ptr(), x.0.as_ptr(), a as f32, out.as_mut_ptr(), n) };
        Ok(Self::wrap(out))
    }
    /// As `CudaVgg::two_loop`: each dot product into a slot, read there by
    /// `add_scaled_dots`.
    fn two_loop(&self, g: &Vector, history: History, h_diag: f64) -> anyhow::Result<Vector> {
        let dot: unsafe extern "C" fn(F32p, F32p, u32, *mut f64) = kernel("dot");
        #[rustfmt::skip]
        let add_scaled_dots: unsafe extern "C" fn(
            F32p, F32p, *const f64, u32, u32, i32, f64, F32m, u32,
        ) = kernel("add_scaled_dots");
        let k = history.s.len();
        let mut dots = vec![0f64; 2 * k.max(1)];
        // q + add * a, after the dot product of `with` and q into its slot (j, else i).
        let mut step =
            |q: &[f32], (with, add): (&[f32], &[f32]), (i, j): (usize, Option<usize>), ro: f64| {
                let (n, mut out) = (q.len() as u32, vec![f32::NAN; q.len()]);
                let (second, slot) = (i32::from(j.is_some()), j.unwrap_or(i));
                // SAFETY: q, with, add and out hold n floats; the slots are within dots.
                unsafe {
                    dot(with.as_ptr(), q.as_ptr(), n, dots.as_mut_ptr().add(slot));
                    let j = j.unwrap_or(0) as u32;
                    add_scaled_dots(
                        q.as_ptr(),
                        add.as_ptr(),
                        dots.as_ptr(),
                        i as u32,
                        j,
                        second,
                        ro,
                        out.as_mut_ptr(),
                        n,
                    );
                }
                out
            };
        let floats = |v: &Vector| Ok::<_, anyhow::Error>(self.get(v)?.0.clone());
        let mut q = floats(&self.scaled(g, -1.0)?)?;
        for i in (0..k).rev() {
            let (s, y) = (floats(&history.s[i])?, floats(&history.y[i])?);
            q = step(&q, (&s, &y), (i, None), history.ro[i]);
        }
        let mut r = floats(&self.scaled(&Self::wrap(q), h_diag)?)?;
        for i in 0..k {
            let (s, y) = (floats(&history.s[i])?, floats(&history.y[i])?);
            r = step(&r, (&y, &s), (i, Some(k + i)), history.ro[i]);
        }
        Ok(Self::wrap(r))
    }
    fn clamp(&self, x: &Vector, (lo, hi): ([f32; 3], [f32; 3])) -> anyhow::Result<Vector> {
        #[rustfmt::skip]
        let clamp_planes: unsafe extern "C" fn(
            F32p, F32m, u32, f32, f32, f32, f32, f32, f32,
        ) = kernel("clamp_planes");
        let x = self.get(x)?;
        anyhow::ensure!(x.0.len() % 3 == 0, "not 3 planes");
        let mut out = vec![f32::NAN; x.0.len()];
        let plane = (out.len() / 3) as u32;
        let [l0, l1, l2] = lo;
        let [h0, h1, h2] = hi;
        // SAFETY: both hold 3 * plane floats.
        unsafe {
            clamp_planes(
                x.0.as_ptr(),
                out.as_mut_ptr(),
                plane,
                l0,
                l1,
                l2,
                h0,
                h1,
                h2,
            )
        };
        Ok(Self::wrap(out))
    }
    fn scaled(&self, x: &Vector, a: f64) -> anyhow::Result<Vector> {
        let scale: unsafe extern "C" fn(F32p, f32, F32m, u32) = kernel("scale");
        let x = self.get(x)?;
        let mut out = vec![f32::NAN; x.0.len()];
        // SAFETY: both hold n floats.
        unsafe { scale(x.0.as_ptr(), a as f32, out.as_mut_ptr(), out.len() as u32) };
        Ok(Self::wrap(out))
    }
}

#[test]
fn the_vector_kernels_agree_with_the_hosts_tensors() {
    let host = HostOps {
        device: Device::flex(),
    };
    let (a, b) = (random(1000, 80), random(1000, 81));
    let on = |ops: &dyn VectorOps, v: &[f32]| ops.place(host_tensor(v, [v.len()])).expect("place");
    let floats = |v: anyhow::Result<Vector>| {
        let t = v.expect("op").to_host(&Device::flex()).expect("host");
        crate::network::floats(t.to_data(), "v").expect("floats")
    };
    let (ha, hb, ea, eb) = (
        on(&host, &a),
        on(&host, &b),
        on(&EmulatedOps, &a),
        on(&EmulatedOps, &b),
    );
    let e = &EmulatedOps;
    let close = |x: f64, y: f64| relative(x, y) < 1e-5;
    assert!(close(
        e.dot(&ea, &eb).expect("dot"),
        host.dot(&ha, &hb).expect("dot")
    ));
    assert!(close(
        e.abs_sum(&ea).expect("sum"),
        host.abs_sum(&ha).expect("sum")
    ));
    assert_eq!(
        e.abs_max(&ea).expect("max"),
        host.abs_max(&ha).expect("max")
    );
    // Element-wise operations are the same float32 operations: equal bit for bit.
    assert_eq!(
        floats(e.add_scaled(&ea, -0.3, &eb)),
        floats(host.add_scaled(&ha, -0.3, &hb))
    );
    assert_eq!(floats(e.scaled(&ea, 1.7)), floats(host.scaled(&ha, 1.7)));
    assert_eq!(floats(e.sub(&ea, &eb)), floats(host.sub(&ha, &hb)));
    // The clamp per channel: a range that cuts each plane, and NaN kept.
    let range = ([-0.5f32, -0.2, 0.0], [0.5f32, 0.2, 0.1]);
    let image = random(999, 82);
    let mut with_nan = image.clone();
    with_nan[10] = f32::NAN;
    let (hn, en) = (on(&host, &with_nan), on(e, &with_nan));
    let clamped = floats(e.clamp(&en, range));
    let same = |(x, y): (&f32, &f32)| x.to_bits() == y.to_bits() || x.is_nan() && y.is_nan();
    let want = floats(host.clamp(&hn, range));
    assert!(
        clamped.iter().zip(&want).all(same),
        "the clamp, bit for bit"
    );
    assert!(clamped[10].is_nan(), "NaN stays NaN through the clamp");
    assert_eq!(clamped[998], image[998].clamp(0.0, 0.1));
    // A mixed pair: the host vector is adopted.
    assert_eq!(floats(e.sub(&ea, &hb)), floats(host.sub(&ha, &hb)));
    // A NaN is the largest magnitude, as torch's max has it.
    let mut with_nan = a.clone();
    with_nan[500] = f32::NAN;
    assert!(e.abs_max(&on(e, &with_nan)).expect("max").is_nan());
}

#[test]
fn the_two_loop_recursion_with_its_scalars_on_the_card_is_the_hosts() {
    let n = 600;
    // Pairs as a convex cost makes them: y = (2 + k / 2) s plus a little noise, and
    // ro = 1 / (y . s) > 0, so that the recursion does not amplify rounding.
    let (mut s, mut y, mut ro) = (Vec::new(), Vec::new(), Vec::new());
    for k in 0..4u64 {
        let sk = random(n, 100 + k);
        let noise = random(n, 200 + k);
        let yk: Vec<f32> = sk
            .iter()
            .zip(&noise)
            .map(|(a, e)| a * (2.0 + k as f32 / 2.0) + 0.1 * e)
            .collect();
        let ys: f64 = yk.iter().zip(&sk).map(|(a, b)| (a * b) as f64).sum();
        ro.push(1.0 / ys);
        let place = |v: &[f32]| EmulatedOps.place(host_tensor(v, [n])).expect("place");
        s.push(place(&sk));
        y.push(place(&yk));
    }
    let g = EmulatedOps
        .place(host_tensor(&random(n, 99), [n]))
        .expect("place");
    let history = History {
        s: &s,
        y: &y,
        ro: &ro,
    };
    let floats = |v: anyhow::Result<Vector>| {
        let t = v.expect("two loop").to_host(&Device::flex()).expect("host");
        crate::network::floats(t.to_data(), "r").expect("floats")
    };
    let on_card = floats(EmulatedOps.two_loop(&g, history, 0.8));
    // The same kernels' products, read back one by one: equal to the last bit.
    let one_by_one = two_loop_with_host_scalars(&EmulatedOps, &g, history, 0.8);
    assert_eq!(on_card, floats(one_by_one));
    // The host's tensors sum the dot products otherwise: close.
    let host = HostOps {
        device: Device::flex(),
    };
    let want: Vec<f64> = floats(host.two_loop(&g, history, 0.8))
        .iter()
        .map(|&v| v as f64)
        .collect();
    assert_close(&on_card, &want, 1e-5, "the two-loop recursion");
    // Without a history it is -h_diag g.
    let none = History {
        s: &[],
        y: &[],
        ro: &[],
    };
    let g_floats = floats(Ok(g.clone()));
    let want: Vec<f32> = g_floats.iter().map(|v| (v * -1.0) * 0.8f32).collect();
    assert_eq!(floats(EmulatedOps.two_loop(&g, none, 0.8)), want);
}

/// A smooth cost of a `[1, 3, 4, 5]` image with a known gradient:
/// `sum_i w_i (x_i - t_i)^2 + 0.01 sum_i x_i^4`.
fn quartic(x: &Tensor<4>) -> anyhow::Result<(Costs, Tensor<4>)> {
    let v = crate::network::floats(x.to_data(), "x")?;
    let (t, w) = (random(v.len(), 90), random(v.len(), 91));
    let mut total = 0f64;
    let g: Vec<f32> = (0..v.len())
        .map(|i| {
            let (d, wi) = (v[i] - t[i], 1.5 + w[i]);
            total += (wi * d * d + 0.01 * v[i].powi(4)) as f64;
            2.0 * wi * d + 0.04 * v[i].powi(3)
        })
        .collect();
    let costs = Costs {
        total,
        content: total,
        style: 0.0,
        style_layers: Vec::new(),
        tv: 0.0,
        regions: Vec::new(),
    };
    Ok((
        costs,
        Tensor::from_data(TensorData::new(g, x.dims()), &x.device()),
    ))
}

#[test]
fn lbfgs_on_the_cards_vectors_follows_lbfgs_on_the_host() {
    let dims = [1, 3, 4, 5];
    let n: usize = dims.iter().product();
    let start = host_tensor(&random(n, 92), dims);
    let mut on_host = Optimizer::new(&OptimizerSpec::lbfgs(1.0, 3));
    let Optimizer::Lbfgs(mut on_card) = on_host.clone() else {
        panic!("L-BFGS")
    };
    let mut x_card = EmulatedOps
        .place(start.clone().reshape([n]))
        .expect("place");
    let mut x_host = start;
    let mut eval = |x: &Tensor<4>| quartic(x);
    let mut on_vectors = |v: &Vector| -> anyhow::Result<(Costs, Vector)> {
        let (costs, g) = quartic(&v.to_host(&Device::flex())?.reshape(dims))?;
        Ok((costs, EmulatedOps.place(g.reshape([n]))?))
    };
    // Five steps: the history of 3 fills and then drops its oldest pair.
    let mut first: Option<f64> = None;
    for step in 0..5 {
        let (next, want) = on_host.step(1.0, x_host, &mut eval).expect("host step");
        x_host = next;
        let (next, got) = on_card
            .step(1.0, &x_card, &mut on_vectors, &EmulatedOps)
            .expect("card step");
        x_card = next;
        assert!(
            relative(got.total, want.total) < 1e-4,
            "step {step}: {} {}",
            got.total,
            want.total
        );
        let first = *first.get_or_insert(got.total);
        if step == 4 {
            assert!(
                got.total < 0.5 * first,
                "L-BFGS descends: {} from {first}",
                got.total
            );
        }
    }
    assert!(
        matches!(x_card, Vector::Device(_)),
        "the image stays on the device"
    );
    let x_card = x_card
        .to_host(&Device::flex())
        .expect("download")
        .reshape(dims);
    let (a, b) = (floats_of(&x_card), floats_of(&x_host));
    let want: Vec<f64> = b.iter().map(|&v| v as f64).collect();
    assert_close(&a, &want, 1e-3, "the image after 5 steps");
    let l = &on_card;
    assert_eq!(l.state.old_dirs.len(), 3, "the history holds 3 pairs");
    assert!(
        l.state
            .old_dirs
            .iter()
            .all(|v| matches!(v, Vector::Device(_))),
        "the history stays on the device"
    );
    // What a checkpoint saves: the device's history copied back, the host's own.
    let Optimizer::Lbfgs(host) = &on_host else {
        panic!("L-BFGS")
    };
    for (card, host) in l.state.old_dirs.iter().zip(&host.state.old_dirs) {
        let as_floats = |v: &Vector| {
            let t = v.to_host(&Device::flex()).expect("download");
            crate::network::floats(t.to_data(), "y").expect("floats")
        };
        let want: Vec<f64> = as_floats(host).iter().map(|&v| v as f64).collect();
        assert_close(&as_floats(card), &want, 1e-3, "a history pair copied back");
    }
}

fn floats_of(t: &Tensor<4>) -> Vec<f32> {
    crate::network::floats(t.to_data(), "x").expect("floats")
}
