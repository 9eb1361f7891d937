//! The kernels of [`super::kernels`] compiled as C++ and run on the CPU as a single
//! thread, against the CPU path's own functions and the costs' definitions.
//!
//! What this covers without a card: every kernel's index arithmetic (pooling windows,
//! odd sizes, padding borders, transposes, channel of an index) and its float32
//! operations in their order. Contraction to FMA is off here as nvrtc is told, and
//! nvrtc's default division and square root are IEEE's, so element-wise results are
//! the card's bit for bit. The reductions across a block's threads (`block_add`,
//! `block_max`) run in [`threads`], with a block's threads as OS threads. What it does
//! not cover is the launch wrappers' arguments, which the GPU tests (tests/cuda.rs)
//! cover.
//!
//! The tests: [`network`] (pooling, padding, normalisation, masks), [`costs`] (the costs'
//! kernels and Adam's step), [`threads`] (the sums across threads and blocks) and
//! [`lbfgs`] (L-BFGS run on vectors these kernels compute, against L-BFGS on the host's
//! tensors: the device side of `optim::vector`, adoption and downloads for a
//! checkpoint, with the card's arithmetic).

use super::kernels::SOURCE;
use crate::loss::{self, Costs};
use crate::network::resident::AdamUpdate;
use crate::optim::vector::{
    DeviceVector, History, HostOps, Vector, VectorOps, two_loop_with_host_scalars,
};
use crate::optim::{AfterStep, Optimizer, OptimizerSpec};
use crate::vgg::cpu::{self, Activation};
use crate::vgg::{Pooling, padding};
use burn::tensor::{Device, Tensor, TensorData};
use libloading::Library;
use rand::{RngExt, SeedableRng};
use std::any::Any;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, OnceLock};

/// What CUDA provides that C++ does not: one block of one thread.
const PRELUDE: &str = r#"
#include <math.h>
#include <string.h>
static unsigned __float_as_uint(float f) { unsigned u; memcpy(&u, &f, 4); return u; }
struct easel_dim3 { unsigned x, y, z; };
static const easel_dim3 blockIdx = {0, 0, 0}, threadIdx = {0, 0, 0};
static const easel_dim3 blockDim = {1, 1, 1}, gridDim = {1, 1, 1};
#define __global__
#define __device__ static
#define __syncthreads() ((void)0)
"#;

/// The kernels as a shared library, built once per test process with the system's C++
/// compiler (`CXX`, else `c++`).
fn library() -> &'static Library {
    static LIB: OnceLock<Library> = OnceLock::new();
    LIB.get_or_init(|| built(PRELUDE, &["-DEASEL_ON_CPU"]))
}

/// The kernels after `prelude`, compiled with `flags` into a library, or a panic that
/// says what is missing.
fn built(prelude: &str, flags: &[&str]) -> Library {
    build(prelude, flags).unwrap_or_else(|e| {
        panic!("running the CUDA kernels on the CPU needs a C++20 compiler (`c++`, or set CXX; Debian: apt install g++): {e}")
    })
}

fn build(prelude: &str, flags: &[&str]) -> Result<Library, String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?.keep();
    let source = dir.join("easel_kernels.cpp");
    std::fs::write(&source, format!("{prelude}{SOURCE}")).map_err(|e| e.to_string())?;
    let lib = dir.join("libeasel_kernels.so");
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    let out = Command::new(&cxx)
        .args(["-std=c++20", "-O2", "-ffp-contract=off", "-fPIC", "-shared"])
        .args(flags)
        .arg(&source)
        .arg("-o")
        .arg(&lib)
        .output()
        .map_err(|e| format!("{cxx}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cxx} failed on {}: {}",
            source.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    open(&lib)
}

fn open(lib: &Path) -> Result<Library, String> {
    // SAFETY: the library is the kernels just compiled; loading it runs only the
    // threaded build's static constructors (its mutexes and vector), which touch nothing
    // outside it.
    unsafe { Library::new(lib) }.map_err(|e| e.to_string())
}

/// The kernel `name` with the C signature `F`, which must match the source's.
fn kernel<F: Copy>(name: &str) -> F {
    symbol(library(), name)
}

/// The function `name` in `lib` with the C signature `F`, which must match the source's.
fn symbol<F: Copy>(lib: &Library, name: &str) -> F {
    // SAFETY: each caller names `F` as the function's C signature in the source.
    let symbol = unsafe { lib.get::<F>(name.as_bytes()) };
    *symbol.unwrap_or_else(|e| panic!("kernel {name}: {e}"))
}

type F32p = *const f32;
type F32m = *mut f32;

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn host_tensor<const D: usize>(data: &[f32], shape: [usize; D]) -> Tensor<D> {
    Tensor::from_data(TensorData::new(data.to_vec(), shape), &Device::flex())
}

fn scalar(t: Tensor<1>) -> f64 {
    t.into_scalar::<f32>() as f64
}

fn assert_close(got: &[f32], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs() / w.abs().max(1.0);
        assert!(err <= tol, "{what} at {i}: {g} against {w}");
    }
}

fn relative(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(f64::MIN_POSITIVE)
}

mod costs;
mod lbfgs;
mod network;
mod threads;
