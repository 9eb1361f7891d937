//! Whether a run fits: in the machine's memory (the CPU path's buffers and the
//! optimiser's state) and, on CUDA, in the card's. Checked before a run starts, so
//! that a run that cannot fit is refused with the size that would.

use crate::backend::Backend;
#[cfg(feature = "cuda")]
use crate::backend::BackendKind;
use crate::backend::gib;
use crate::optim::{OptimizerKind, OptimizerSpec};
use anyhow::{Result, bail};

/// Bytes a run of `pixels` output pixels needs, measured on burn-flex: the network and
/// runtime (~400 MB), the Winograd kernels of the CPU path (~400 MB to conv5_1), ~4 KB
/// per pixel for the activations and gradients an iteration holds (3.6 KB measured),
/// and the optimiser's state (L-BFGS: `history` pairs of image-sized vectors).
pub fn memory_estimate(pixels: u64, optimizer: &OptimizerSpec) -> u64 {
    let image = pixels * 3 * 4;
    let state = match optimizer.kind {
        OptimizerKind::Adam => 3 * image,
        OptimizerKind::Lbfgs => (2 * optimizer.history as u64 + 4) * image,
    };
    800 * 1024 * 1024 + pixels * 4000 + state
}

/// Memory the system can give this process now (Linux: MemAvailable, and no more than
/// its address-space limit leaves), if known.
pub fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let ram = kib_field(&info, "MemAvailable:")?;
    // Under an address-space limit (ulimit -v, prlimit --as) the process gets no more
    // than the limit less what it has mapped already, whatever the RAM.
    Some(match address_space_left() {
        Some(left) => ram.min(left),
        None => ram,
    })
}

/// A `Name:  N kB` field of a /proc file, in bytes.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(name))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// The address space this process may still map under its soft limit, if it has one.
fn address_space_left() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max address space"))?;
    let limit: u64 = line.split_whitespace().nth(3)?.parse().ok()?;
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let mapped = kib_field(&status, "VmSize:")?;
    Some(limit.saturating_sub(mapped))
}

/// Refuses a run that cannot fit in memory, saying how much it would need.
pub fn check_memory(width: usize, height: usize, optimizer: &OptimizerSpec) -> Result<()> {
    let need = memory_estimate((width * height) as u64, optimizer);
    if let Some(have) = available_memory()
        && need > have
    {
        bail!(
            "a {width}x{height} run with this optimiser needs about {:.1} GiB of memory, and {:.1} GiB is available; lower `size` (or L-BFGS's `history`)",
            gib(need),
            gib(have)
        );
    }
    Ok(())
}

/// Bytes of card memory a CUDA run of `pixels` output pixels needs: the context, cuDNN,
/// cuBLAS and the weights (~1 GiB), and per pixel the activations of every layer the
/// forward pass keeps (~290 floats), the gradients flowing back and cuDNN's workspace.
/// An estimate, until measured on a card (docs/design.md, "Memory").
pub fn cuda_memory_estimate(pixels: u64) -> u64 {
    (1u64 << 30) + pixels * 3 * 1024
}

/// Refuses a CUDA run whose estimate exceeds the card's free memory, naming the size
/// that fits at the same aspect ratio.
#[cfg(feature = "cuda")]
pub fn check_device_memory(backend: &Backend, width: usize, height: usize) -> Result<()> {
    if backend.kind != BackendKind::Cuda {
        return Ok(());
    }
    let free = crate::backend::cuda_device()?.free;
    let need = cuda_memory_estimate((width * height) as u64);
    if need <= free {
        return Ok(());
    }
    let fits = free.saturating_sub(1u64 << 30) / (3 * 1024);
    let scale = (fits as f64 / (width * height) as f64).sqrt();
    bail!(
        "a {width}x{height} run needs about {:.1} GiB on the GPU and {:.1} GiB is free; about {}x{} fits (set `size`), or use `--backend cpu`",
        gib(need),
        gib(free),
        (width as f64 * scale) as usize,
        (height as f64 * scale) as usize
    )
}

/// Without CUDA compiled in there is no card to check.
#[cfg(not(feature = "cuda"))]
pub fn check_device_memory(_backend: &Backend, _width: usize, _height: usize) -> Result<()> {
    Ok(())
}
