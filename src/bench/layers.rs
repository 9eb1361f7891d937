//! `easel bench --profile`'s table per layer: where a path's time goes, layer by layer,
//! on the paths that run their own convolutions (the CPU's Winograd kernels, cuDNN).

use crate::network::Network;
use crate::vgg::cpu::{CpuVgg, pool, unpool};
use crate::vgg::{BLOCK_ENDS, Layer, Pooling};
use anyhow::Result;
use std::time::Instant;

/// Prints the table for `network`'s path at `w` x `h`, as far as conv5_1; nothing on
/// paths without one (burn's).
pub(super) fn print(
    network: &Network,
    (w, h): (usize, usize),
    pooling: Pooling,
    iters: usize,
) -> Result<()> {
    if let Some(cpu) = network.winograd() {
        println!();
        winograd(cpu, w, h, pooling, iters);
    }
    #[cfg(feature = "cuda")]
    if let Some(card) = network.cuda() {
        println!();
        cudnn(&card.layer_timings((h, w), Layer::CONV5_1, iters)?);
    }
    Ok(())
}

/// The CUDA path's convolutions as the card timed them, with the algorithms cuDNN ran:
/// TFLOP/s against the card's peak says which layers fall short.
#[cfg(feature = "cuda")]
fn cudnn(layers: &[crate::network::cuda::LayerTiming]) {
    println!(
        "    {:>8} {:>16} {:>8} {:>8} {:>8} {:>8} {:>8}  cuDNN fwd / bwd",
        "layer", "C->K at HxW", "GFLOP", "fwd ms", "bwd ms", "fwd TF/s", "bwd TF/s",
    );
    for l in layers {
        let flop = l.gflop() / 1e3;
        println!(
            "    {:>8} {:>16} {:>8.2} {:>8.3} {:>8.3} {:>8.1} {:>8.1}  {} / {}",
            l.layer.name(),
            format!("{}->{} {}x{}", l.c, l.k, l.h, l.w),
            l.gflop(),
            l.forward_ms,
            l.backward_ms,
            flop / (l.forward_ms / 1e3),
            flop / (l.backward_ms / 1e3),
            l.algorithms.0,
            l.algorithms.1,
        );
    }
    let total =
        |f: fn(&crate::network::cuda::LayerTiming) -> f64| layers.iter().map(f).sum::<f64>();
    println!(
        "    {:>8} {:>16} {:>8.2} {:>8.3} {:>8.3}",
        "total",
        "",
        total(|l| l.gflop()),
        total(|l| l.forward_ms),
        total(|l| l.backward_ms),
    );
}

/// Where the Winograd path's time goes: each convolution forward and backward (to its
/// input), and the pooling, at `w` x `h`, as far as conv5_1.
fn winograd(cpu: &CpuVgg, w: usize, h: usize, pooling: Pooling, iters: usize) {
    use crate::vgg::winograd::{Epilogue, conv3x3};
    let time = |f: &mut dyn FnMut()| {
        f();
        let t = Instant::now();
        for _ in 0..iters.max(1) {
            f();
        }
        t.elapsed().as_secs_f64() / iters.max(1) as f64
    };
    println!(
        "    {:>8} {:>16} {:>8} {:>10} {:>10} {:>10} {:>10}",
        "layer", "C->K at HxW", "GFLOP", "fwd ms", "bwd ms", "fwd GF/s", "pool ms"
    );
    let (mut hh, mut ww) = (h, w);
    let (mut total_f, mut total_b, mut total_p) = (0.0, 0.0, 0.0);
    for i in 0..=Layer::CONV5_1.0 {
        let (fwd, bwd, bias) = cpu.layer(Layer(i));
        let (c, k) = (fwd.c, fwd.k);
        let x: Vec<f32> = (0..c * hh * ww).map(|j| (j % 7) as f32 - 3.0).collect();
        let g: Vec<f32> = (0..k * hh * ww).map(|j| (j % 5) as f32 - 2.0).collect();
        let on = Epilogue {
            bias: Some(bias),
            relu: true,
        };
        let off = Epilogue {
            bias: None,
            relu: false,
        };
        let y = conv3x3(&x, None, hh, ww, fwd, on);
        let tf = time(&mut || drop(conv3x3(&x, None, hh, ww, fwd, on)));
        let tb = time(&mut || drop(conv3x3(&g, Some(&y), hh, ww, bwd, off)));
        let gflop = 2.0 * (c * k * 9 * hh * ww) as f64 / 1e9;
        let mut tp = 0.0;
        if BLOCK_ENDS.contains(&i) {
            let p = pool(&y, k, hh, ww, pooling);
            tp = time(&mut || drop(pool(&y, k, hh, ww, pooling)))
                + time(&mut || drop(unpool(&p, &y, k, hh, ww, pooling)));
        }
        println!(
            "    {:>8} {:>16} {gflop:>8.2} {:>10.1} {:>10.1} {:>10.0} {:>10.1}",
            Layer(i).name(),
            format!("{c}->{k} {hh}x{ww}"),
            tf * 1e3,
            tb * 1e3,
            gflop / tf,
            tp * 1e3
        );
        total_f += tf;
        total_b += tb;
        total_p += tp;
        if BLOCK_ENDS.contains(&i) {
            (hh, ww) = (hh / 2, ww / 2);
        }
    }
    println!(
        "    {:>8} {:>16} {:>8} {:>10.1} {:>10.1} {:>10} {:>10.1}",
        "total",
        "",
        "",
        total_f * 1e3,
        total_b * 1e3,
        "",
        total_p * 1e3
    );
}
