//! The kernels' reductions across threads, run on the CPU with a CUDA block's threads.
//!
//! Here the source is compiled without `EASEL_ON_CPU`, so `block_add` and `block_max`
//! are the card's own: warp shuffles, shared memory, `__syncthreads` and atomics. The
//! prelude gives each of them its CUDA meaning: a launch runs its blocks one after
//! another, each as `blockDim` OS threads; `__shared__` variables are statics (one
//! block at a time uses them); `__syncthreads` is a barrier of the block's threads and
//! a shuffle one of the warp's 32; atomics hold a lock. Launches from tests running in
//! parallel take turns. Each test launches with the
//! launchers' own configurations (`kernels::grid`, `kernels::rows`), and with a small
//! grid that makes the loops stride, and checks the sums against the host's.
//!
//! A missing barrier is a race, and threads here run at the OS's pace: such a bug shows
//! only by chance. A wrong index, offset or count in a reduction shows every time.

use super::{F32m, F32p, built, kernel, random, relative, symbol};
use crate::network::cuda::kernels::{grid, rows};
use cudarc::driver::LaunchConfig;
use libloading::Library;
use std::ffi::c_void;
use std::sync::OnceLock;

/// CUDA's threads, barriers, shuffles and atomics in C++20.
const PRELUDE: &str = r#"
#include <math.h>
#include <string.h>
#include <algorithm>
#include <barrier>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>
using std::max;
static unsigned __float_as_uint(float f) { unsigned u; memcpy(&u, &f, 4); return u; }
struct easel_dim3 { unsigned x, y, z; };
static thread_local easel_dim3 threadIdx;
static easel_dim3 blockIdx, blockDim, gridDim;
static std::barrier<>* easel_block;
static std::vector<std::unique_ptr<std::barrier<>>> easel_warps;
static std::mutex easel_atomics;
#define __global__
#define __device__ static
#define __shared__ static
#define __syncthreads() easel_block->arrive_and_wait()
// Lane + o beyond the warp reads the caller's own value, as on the card.
template <class T> static T __shfl_down_sync(unsigned, T v, unsigned o) {
    static T slots[1024];
    unsigned t = threadIdx.x;
    slots[t] = v;
    easel_warps[t >> 5]->arrive_and_wait();
    T r = (t & 31u) + o < 32u ? slots[t + o] : v;
    easel_warps[t >> 5]->arrive_and_wait();
    return r;
}
static double atomicAdd(double* p, double v) {
    std::lock_guard<std::mutex> hold(easel_atomics);
    double old = *p; *p = old + v; return old;
}
static unsigned atomicMax(unsigned* p, unsigned v) {
    std::lock_guard<std::mutex> hold(easel_atomics);
    unsigned old = *p; if (v > old) *p = v; return old;
}
// Runs body(ctx) as `grid` blocks of `block` threads; 1 where `block` is not a whole
// number of warps up to 1024, as the card would refuse or misbehave. One launch at a
// time (the tests run in parallel): the block's state above is global.
extern "C" int easel_launch(unsigned grid, unsigned block, void (*body)(void*), void* ctx) {
    if (block == 0 || block > 1024 || block % 32 != 0) return 1;
    static std::mutex one_launch;
    std::lock_guard<std::mutex> hold(one_launch);
    gridDim = {grid, 1, 1};
    blockDim = {block, 1, 1};
    for (unsigned b = 0; b < grid; ++b) {
        blockIdx = {b, 0, 0};
        std::barrier<> all(block);
        easel_block = &all;
        easel_warps.clear();
        for (unsigned w = 0; w < block / 32; ++w) easel_warps.push_back(std::make_unique<std::barrier<>>(32));
        std::vector<std::thread> threads;
        for (unsigned t = 0; t < block; ++t)
            threads.emplace_back([=] { threadIdx = {t, 0, 0}; body(ctx); });
        for (auto& t : threads) t.join();
    }
    return 0;
}
"#;

fn threaded() -> &'static Library {
    static LIB: OnceLock<Library> = OnceLock::new();
    LIB.get_or_init(|| built(PRELUDE, &["-pthread"]))
}

/// How a test runs a kernel: as the other tests do, one block of one thread with
/// `block_add`'s stand-in; or as the card does, with a launch's threads.
#[derive(Debug, Clone, Copy)]
enum Launch {
    OneThread,
    Threads(LaunchConfig),
}

impl Launch {
    /// The launchers' configuration (`kernels::grid` or `kernels::rows`) and 3 blocks of
    /// 64 threads, which makes each thread stride over several elements or rows.
    fn threads(real: LaunchConfig) -> [Launch; 2] {
        let small = LaunchConfig {
            grid_dim: (3, 1, 1),
            block_dim: (64, 1, 1),
            shared_mem_bytes: 0,
        };
        [Launch::Threads(real), Launch::Threads(small)]
    }

    /// The kernel `name` of this launch's build, with the C signature `F`.
    fn kernel<F: Copy>(&self, name: &str) -> F {
        match self {
            Launch::OneThread => kernel(name),
            Launch::Threads(_) => symbol(threaded(), name),
        }
    }

    /// Runs `body`, which calls a kernel of this launch's build, on every thread of the
    /// launch, and returns when all are done.
    fn run(&self, body: &(dyn Fn() + Sync)) {
        let Launch::Threads(cfg) = self else {
            return body();
        };
        extern "C" fn call(ctx: *mut c_void) {
            // SAFETY: `ctx` is the `&&dyn Fn()` below, alive until easel_launch returns.
            let body = unsafe { &*(ctx as *const &(dyn Fn() + Sync)) };
            body();
        }
        type Body = extern "C" fn(*mut c_void);
        let run: unsafe extern "C" fn(u32, u32, Body, *mut c_void) -> i32 =
            symbol(threaded(), "easel_launch");
        let ctx = &body as *const &(dyn Fn() + Sync) as *mut c_void;
        // SAFETY: easel_launch calls `call` with `ctx` on its threads and joins them.
        let rc = unsafe { run(cfg.grid_dim.0, cfg.block_dim.0, call, ctx) };
        assert_eq!(rc, 0, "easel_launch refused a block of {}", cfg.block_dim.0);
    }
}

/// A buffer's address, which every thread of a launch is given, as a kernel's
/// arguments are on the card.
#[derive(Clone, Copy)]
struct Ptr<T>(*mut T);

// SAFETY: the kernels keep their threads' writes apart or make them atomic, as they
// must on the card; the tests keep the buffers alive until the launch returns.
unsafe impl<T> Send for Ptr<T> {}
unsafe impl<T> Sync for Ptr<T> {}

impl<T> Ptr<T> {
    /// An input's address: the kernels only read through it.
    fn of(v: &[T]) -> Ptr<T> {
        Ptr(v.as_ptr() as *mut T)
    }

    /// An output's address: the kernels write through it until the launch returns.
    fn of_mut(v: &mut [T]) -> Ptr<T> {
        Ptr(v.as_mut_ptr())
    }

    fn get(self) -> *mut T {
        self.0
    }
}

impl std::fmt::Display for Launch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Launch::OneThread => write!(f, "one thread"),
            Launch::Threads(c) => write!(f, "{} blocks of {}", c.grid_dim.0, c.block_dim.0),
        }
    }
}

/// `dot(a, b)` under `launch`.
fn dot(launch: Launch, a: &[f32], b: &[f32]) -> f64 {
    let dot: unsafe extern "C" fn(F32p, F32p, u32, *mut f64) = launch.kernel("dot");
    let mut out = 0.0f64;
    let (pa, pb, po, n) = (
        Ptr::of(a),
        Ptr::of(b),
        Ptr(&mut out as *mut f64),
        a.len() as u32,
    );
    // SAFETY: the signature is the source's; the kernel adds to `out` atomically.
    launch.run(&|| unsafe { dot(pa.get(), pb.get(), n, po.get()) });
    out
}

/// `abs_stats(a)` under `launch`: the sum of |a| and the bits of the largest.
fn abs_stats(launch: Launch, a: &[f32]) -> (f64, u32) {
    let abs_stats: unsafe extern "C" fn(F32p, u32, *mut f64, *mut u32) = launch.kernel("abs_stats");
    let (mut sum, mut max) = (0.0f64, 0u32);
    let (pa, n) = (Ptr::of(a), a.len() as u32);
    let (ps, pm) = (Ptr(&mut sum as *mut f64), Ptr(&mut max as *mut u32));
    // SAFETY: as in `dot`.
    launch.run(&|| unsafe { abs_stats(pa.get(), n, ps.get(), pm.get()) });
    (sum, max)
}

#[test]
fn dot_and_abs_stats_add_up_across_threads_and_blocks() {
    // Less than a warp, a few blocks, and more than the small grid's 192 threads.
    for n in [7usize, 700, 5003] {
        let a = random(n, 1);
        let squares: f64 = a.iter().map(|&x| x as f64 * x as f64).sum();
        let abs_sum: f64 = a.iter().map(|x| x.abs() as f64).sum();
        let largest = a.iter().map(|x| x.abs().to_bits()).max().unwrap_or(0);
        let mut with_nan = random(n, 2);
        with_nan[n / 2] = f32::NAN;
        for launch in Launch::threads(grid(n)) {
            let at = format!("n = {n}, {launch}");
            let got = dot(launch, &a, &a);
            assert!(
                relative(got, squares) <= 1e-12,
                "{at}: dot {got} against {squares}"
            );
            let (sum, max) = abs_stats(launch, &a);
            assert!(
                relative(sum, abs_sum) <= 1e-12,
                "{at}: sum |a| {sum} against {abs_sum}"
            );
            assert_eq!(max, largest, "{at}: the bits of the largest |a|");
            // A NaN anywhere makes the dot product NaN and wins the maximum.
            let got = dot(launch, &a, &with_nan);
            assert!(got.is_nan(), "{at}: a dot product with a NaN gave {got}");
            let (_, max) = abs_stats(launch, &with_nan);
            let max = f32::from_bits(max);
            assert!(max.is_nan(), "{at}: the largest |a| with a NaN is {max}");
        }
    }
}

#[test]
fn row_sums_add_each_row_across_a_blocks_threads() {
    // More rows than the small grid's 3 blocks: a block takes row after row, and
    // `block_add`'s shared memory must be read before the next row writes it.
    let (c, n) = (7, 1000);
    let a = random(c * n, 5);
    let want: Vec<f64> = a
        .chunks(n)
        .map(|row| row.iter().map(|&x| x as f64).sum())
        .collect();
    for launch in Launch::threads(rows(c)) {
        let row_sums: unsafe extern "C" fn(F32p, *mut f64, u32, u32) = launch.kernel("row_sums");
        let mut sums = vec![0f64; c];
        let (pa, ps) = (Ptr::of(&a), Ptr::of_mut(&mut sums));
        // SAFETY: a holds c rows of n; sums c zeros the kernel adds to atomically.
        launch.run(&|| unsafe { row_sums(pa.get(), ps.get(), c as u32, n as u32) });
        for (r, (got, want)) in sums.iter().zip(&want).enumerate() {
            assert!(
                relative(*got, *want) <= 1e-12,
                "{launch}: row {r}: {got} against {want}"
            );
        }
    }
}

/// Runs `kernel` under one thread, then under each of `threads`: each run's outputs
/// must be the one thread's bit for bit, and its costs (slot 1 of two) the same sums to
/// 1e-12, slot 0 untouched.
fn same_as_one_thread(
    threads: [Launch; 2],
    kernel: &dyn Fn(Launch) -> (Vec<f32>, [f64; 2]),
    what: &str,
) {
    let (want, want_costs) = kernel(Launch::OneThread);
    for launch in threads {
        let (got, costs) = kernel(launch);
        assert!(
            got == want,
            "{what} under {launch}: the outputs differ from one thread's"
        );
        assert_eq!(costs[0], 0.0, "{what} under {launch}: slot 0 was written");
        let e = relative(costs[1], want_costs[1]);
        assert!(
            e <= 1e-12,
            "{what} under {launch}: {costs:?} against {want_costs:?}"
        );
    }
}

#[test]
fn the_costs_kernels_sum_across_threads_as_one_thread_does() {
    let (c, h, w) = (6, 17, 23);
    let n = c * h * w;
    let (a, t, g0) = (random(n, 60), random(n, 61), random(n, 62));
    let content = |launch: Launch| {
        let content: unsafe extern "C" fn(F32p, F32p, F32m, u32, f32, *mut f64, u32) =
            launch.kernel("content");
        let (mut g, mut costs) = (g0.clone(), [0f64; 2]);
        let (pg, pc) = (Ptr::of_mut(&mut g), Ptr::of_mut(&mut costs));
        let (pa, pt) = (Ptr::of(&a), Ptr::of(&t));
        // SAFETY: a, t and g hold n floats; slot 1 is within costs.
        launch
            .run(&|| unsafe { content(pa.get(), pt.get(), pg.get(), n as u32, 0.25, pc.get(), 1) });
        (g, costs)
    };
    same_as_one_thread(Launch::threads(grid(n)), &content, "content");

    // More Gram entries than the small grid's threads.
    let k = 37;
    let (gram, target) = (random(k * k, 63), random(k * k, 64));
    let style = |launch: Launch| {
        let style: unsafe extern "C" fn(F32p, F32p, F32m, u32, f32, f32, *mut f64, u32) =
            launch.kernel("style");
        let (mut sym, mut costs) = (vec![f32::NAN; k * k], [0f64; 2]);
        let (ps, pc) = (Ptr::of_mut(&mut sym), Ptr::of_mut(&mut costs));
        let (pg, pt) = (Ptr::of(&gram), Ptr::of(&target));
        // SAFETY: gram, target and sym hold k * k floats; slot 1 is within costs.
        launch.run(&|| unsafe {
            style(
                pg.get(),
                pt.get(),
                ps.get(),
                k as u32,
                3.0,
                0.5,
                pc.get(),
                1,
            )
        });
        (sym, costs)
    };
    same_as_one_thread(Launch::threads(grid(k * k)), &style, "style");

    let plane = h * w;
    let (x, g1) = (random(3 * plane, 65), random(3 * plane, 66));
    let finish = |launch: Launch| {
        let finish: unsafe extern "C" fn(
            F32m,
            F32p,
            u32,
            u32,
            f32,
            f32,
            f32,
            i32,
            f32,
            *mut f64,
            u32,
        ) = launch.kernel("finish");
        let (mut g, mut costs) = (g1.clone(), [0f64; 2]);
        let (pg, pc, px) = (Ptr::of_mut(&mut g), Ptr::of_mut(&mut costs), Ptr::of(&x));
        let (hh, ww) = (h as u32, w as u32);
        // SAFETY: g and x hold 3 h w floats; slot 1 is within costs.
        launch.run(&|| unsafe {
            finish(
                pg.get(),
                px.get(),
                hh,
                ww,
                0.5,
                2.0,
                3.0,
                1,
                0.3,
                pc.get(),
                1,
            )
        });
        (g, costs)
    };
    same_as_one_thread(Launch::threads(grid(3 * plane)), &finish, "finish with TV");
}
