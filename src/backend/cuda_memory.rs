//! The CUDA driver's memory pool, which cudarc's stream-ordered allocations
//! (`cuMemAllocAsync`) come from: freed buffers are kept in it across synchronisations,
//! the card's free memory counts them, and they go back to the driver when a CUDA
//! network is dropped or moves to another image size.
//!
//! Why: the pool's release threshold is 0 by default, so at every synchronisation the
//! driver hands freed memory back to the system, and the next allocation maps it again.
//! The network's own buffers come from its pools (`network::cuda`) and are made once,
//! but L-BFGS makes image-sized vectors in every operation and waits for a scalar after
//! most (`network::cuda_vectors`): at 2048x2048, hundreds of 50 MB mappings an
//! iteration. PyTorch's caching allocator keeps freed memory for the same reason.

use anyhow::{Context, Result};
use cudarc::driver::CudaContext;
use cudarc::driver::result::{device, mem_pool};
use cudarc::driver::sys::{CUmemPool_attribute, CUmemoryPool};

/// The device's default pool, where the context allocates stream-ordered.
fn default_pool(ctx: &CudaContext) -> Option<CUmemoryPool> {
    if !ctx.has_async_alloc() {
        return None;
    }
    // SAFETY: the device is the context's own.
    unsafe { device::get_default_mem_pool(ctx.cu_device()) }.ok()
}

/// Keeps freed memory in the pool: no release threshold.
pub fn keep_freed_memory(ctx: &CudaContext) -> Result<()> {
    let Some(pool) = default_pool(ctx) else {
        return Ok(());
    };
    let mut threshold = u64::MAX;
    let attr = CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD;
    // SAFETY: the pool is the device's; the attribute takes a u64.
    unsafe { mem_pool::set_attribute(pool, attr, (&mut threshold as *mut u64).cast()) }
        .context("setting the CUDA memory pool's release threshold")
}

/// Bytes the pool holds for this process that no buffer uses: free for the run, though
/// the driver counts them as taken.
pub fn cached_bytes(ctx: &CudaContext) -> u64 {
    let Some(pool) = default_pool(ctx) else {
        return 0;
    };
    let read = |attr: CUmemPool_attribute| {
        let mut value = 0u64;
        // SAFETY: the pool is the device's; these attributes are u64.
        unsafe { mem_pool::get_attribute(pool, attr, (&mut value as *mut u64).cast()) }
            .map(|()| value)
            .unwrap_or(0)
    };
    let reserved = read(CUmemPool_attribute::CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT);
    let used = read(CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_CURRENT);
    reserved.saturating_sub(used)
}

/// Hands the memory the pool keeps unused back to the driver, once the context's work is
/// done: when a CUDA network is dropped (a move to another backend), so that wgpu on
/// the same card, or another process, can have it.
pub fn release_freed_memory(ctx: &CudaContext) -> Result<()> {
    let Some(pool) = default_pool(ctx) else {
        return Ok(());
    };
    ctx.bind_to_thread().context("binding the CUDA context")?;
    ctx.synchronize()
        .context("waiting for the CUDA device before releasing memory")?;
    // SAFETY: the pool is the device's; every free queued on it has completed.
    unsafe { mem_pool::trim_to(pool, 0) }.context("releasing the CUDA memory pool")
}
