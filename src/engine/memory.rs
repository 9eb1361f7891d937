//! Whether a run fits: in the machine's memory (the CPU path's buffers and the
//! optimiser's state) and, on CUDA, in the card's. Checked before a run starts, so
//! that a run that cannot fit is refused with the size that would. On the CPU, a run
//! too large for memory is computed in tiles (`tile: auto`, [`Fit::choose`]).

use crate::backend::{Backend, BackendKind, gib};
use crate::network::tiles::{ALIGN, MIN_TILE, TileChoice, TileMode, TilePlan, TileSize};
use crate::optim::{OptimizerKind, OptimizerSpec};
use crate::vgg::Layer;
use anyhow::{Result, bail};

/// The network and runtime (~400 MB) and the Winograd kernels of the CPU path
/// (~400 MB to conv5_1).
const RUNTIME_BYTES: u64 = 800 * 1024 * 1024;

/// The activations and gradients one evaluation holds, per pixel it computes (3.6 KB
/// measured on burn-flex at 512x512).
const ACTIVATION_BYTES: u64 = 4000;

/// What a tiled run holds per pixel of the whole image besides the optimiser's state:
/// the image, its gradient and their copies (and the optimiser's temporaries), the
/// content image and the style images at the output's size, and the content target
/// (conv4_2: 32 bytes a pixel). Measured: ~215 at 2048x1536 in tiles of 1024.
const TILED_IMAGE_BYTES: u64 = 240;

/// The activations and gradients of one tile, per pixel of its crop (2.7 KB measured at
/// 1216x1216; the pool of buffers is emptied between passes).
const TILE_ACTIVATION_BYTES: u64 = 3000;

/// The optimiser's state (L-BFGS: `history` pairs of image-sized vectors).
fn state_bytes(pixels: u64, optimizer: &OptimizerSpec) -> u64 {
    let image = pixels * 3 * 4;
    match optimizer.kind {
        OptimizerKind::Adam => 3 * image,
        OptimizerKind::Lbfgs => (2 * optimizer.history as u64 + 4) * image,
    }
}

/// What a run adds where the network keeps the state (`network::resident`). Adam,
/// untiled: two sets of the image, both moments and the EMA, and the gradient (runs in
/// tiles keep tensor Adam). L-BFGS, tiled or not (`network::lbfgs_image`): the image and
/// the EMA now and before the last step, and the step's next image. The engine's own
/// tensors stay beside them.
fn resident_bytes(pixels: u64, optimizer: &OptimizerSpec, tiled: bool) -> u64 {
    let image = pixels * 3 * 4;
    match optimizer.kind {
        OptimizerKind::Adam if tiled => 0,
        OptimizerKind::Adam => 9 * image,
        OptimizerKind::Lbfgs => 5 * image,
    }
}

/// Bytes a run of `pixels` output pixels needs on the CPU, untiled.
pub fn memory_estimate(pixels: u64, optimizer: &OptimizerSpec) -> u64 {
    RUNTIME_BYTES
        + pixels * ACTIVATION_BYTES
        + state_bytes(pixels, optimizer)
        + resident_bytes(pixels, optimizer, false)
}

/// Bytes a run of `pixels` output pixels needs in tiles whose largest crop (the tile
/// with its gradient halo) is `crop` pixels.
pub fn tiled_memory_estimate(pixels: u64, crop: u64, optimizer: &OptimizerSpec) -> u64 {
    RUNTIME_BYTES
        + pixels * TILED_IMAGE_BYTES
        + crop * TILE_ACTIVATION_BYTES
        + state_bytes(pixels, optimizer)
        + resident_bytes(pixels, optimizer, true)
}

/// The tile sides `tile: auto` tries, largest (least halo) first.
const AUTO_TILES: [usize; 6] = [2048, 1536, 1024, 768, 512, 256];

/// What a run at one size holds in memory, and how it computes.
pub struct Fit {
    pub backend: BackendKind,
    pub width: usize,
    pub height: usize,
    /// The tile side, where the image is computed in tiles.
    pub tile: Option<usize>,
    pub need: u64,
}

impl Fit {
    /// How a `width` x `height` run computes on `backend` with the preset's `tile`:
    /// `auto` tiles on the CPU only where the untiled run would not fit in the memory
    /// available, in the largest tiles that do.
    pub fn choose(
        backend: BackendKind,
        (width, height): (usize, usize),
        choice: TileChoice,
        optimizer: &OptimizerSpec,
        deepest: Layer,
    ) -> Fit {
        let pixels = (width * height) as u64;
        let untiled = Fit {
            backend,
            width,
            height,
            tile: None,
            need: memory_estimate(pixels, optimizer),
        };
        // In tiles of `size`, where they cut the image at all.
        let tiled = |size: usize| {
            let plan = TilePlan::new(height, width, size, deepest);
            plan.is_tiled().then(|| Fit {
                backend,
                width,
                height,
                tile: Some(size),
                need: tiled_memory_estimate(pixels, plan.largest_crop() as u64, optimizer),
            })
        };
        match choice {
            TileChoice::Size(TileSize { size }) => tiled(size).unwrap_or(untiled),
            TileChoice::Mode(TileMode::Off) => untiled,
            TileChoice::Mode(TileMode::Auto) => {
                let have = available_memory().unwrap_or(u64::MAX);
                if backend != BackendKind::Cpu || untiled.need <= have {
                    return untiled;
                }
                // The largest tiles that fit; else the smallest, which [`Fit::check`]
                // refuses with what they would need.
                let mut last = None;
                for fit in AUTO_TILES.iter().filter_map(|&s| tiled(s)) {
                    if fit.need <= have {
                        return fit;
                    }
                    last = Some(fit);
                }
                last.unwrap_or(untiled)
            }
        }
    }

    /// Refuses a run that cannot fit in memory, saying how much it would need.
    pub fn check(&self) -> Result<()> {
        let Fit {
            backend,
            width,
            height,
            tile,
            need,
        } = *self;
        if let Some(have) = available_memory()
            && need > have
        {
            let how = match tile {
                Some(size) => format!("in tiles of {size} pixels "),
                None => String::new(),
            };
            bail!(
                "a {width}x{height} run with this optimiser needs about {:.1} GiB of memory {how}and {:.1} GiB is available; lower `size` (or L-BFGS's `history`){}",
                gib(need),
                gib(have),
                match tile {
                    Some(size) if size > MIN_TILE => format!(
                        ", or give smaller tiles (`tile: {{size: {}}}`)",
                        (size / 2).max(MIN_TILE) / ALIGN * ALIGN
                    ),
                    Some(_) => String::new(),
                    None if backend != BackendKind::Cpu =>
                        ", or run it on the CPU (`--backend cpu`), which computes it in tiles"
                            .into(),
                    None => ", or compute it in tiles (`tile: auto`)".into(),
                }
            );
        }
        Ok(())
    }

    /// What the tiles cost, for the run's notices: their count and the pixels each pass
    /// computes as a multiple of the image's.
    pub fn describe(&self, deepest: Layer) -> Option<String> {
        let size = self.tile?;
        let plan = TilePlan::new(self.height, self.width, size, deepest);
        Some(format!(
            "{}x{} in {} tiles of {size} pixels (halos of {} and {} pixels: each iteration computes {:.2}x the image's pixels forward for the Grams, then {:.2}x forward and back for the gradient)",
            self.width,
            self.height,
            plan.interiors.len(),
            plan.reads_halo,
            plan.gradient_halo,
            plan.overhead(plan.reads_halo),
            plan.overhead(plan.gradient_halo)
        ))
    }
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

/// Bytes of card memory a CUDA run needs per output pixel: the activations of every
/// layer the forward pass keeps (~290 floats), the gradients flowing back, cuDNN's
/// workspace and Adam's resident state (108 bytes); with L-BFGS, its history and the
/// line search's vectors as well, which stay on the card (`network::cuda_vectors`).
fn cuda_bytes_per_pixel(optimizer: &OptimizerSpec) -> u64 {
    let lbfgs = match optimizer.kind {
        OptimizerKind::Adam => 0,
        // The history, the step's own vectors, what the rollback points still hold of
        // pairs the history has dropped, and the image and the EMA now and before the
        // last step with the step's next image (`network::lbfgs_image`).
        OptimizerKind::Lbfgs => (2 * optimizer.history as u64 + 19) * 3 * 4,
    };
    3 * 1024 + lbfgs
}

/// Bytes of card memory a CUDA run of `pixels` output pixels needs: the context, cuDNN,
/// cuBLAS and the weights (~1 GiB) and `cuda_bytes_per_pixel` per pixel. An estimate, until
/// measured on a card (docs/design.md, "Memory").
pub fn cuda_memory_estimate(pixels: u64, optimizer: &OptimizerSpec) -> u64 {
    (1u64 << 30) + pixels * cuda_bytes_per_pixel(optimizer)
}

/// Refuses a CUDA run whose estimate exceeds the card's free memory, naming the size
/// that fits at the same aspect ratio.
#[cfg(feature = "cuda")]
pub fn check_device_memory(
    backend: &Backend,
    (width, height): (usize, usize),
    optimizer: &OptimizerSpec,
) -> Result<()> {
    if backend.kind != BackendKind::Cuda {
        return Ok(());
    }
    let free = crate::backend::cuda_device()?.free;
    let need = cuda_memory_estimate((width * height) as u64, optimizer);
    if need <= free {
        return Ok(());
    }
    let fits = free.saturating_sub(1u64 << 30) / cuda_bytes_per_pixel(optimizer);
    let scale = (fits as f64 / (width * height) as f64).sqrt();
    bail!(
        "a {width}x{height} run needs about {:.1} GiB on the GPU and {:.1} GiB is free; about {}x{} fits (set `size`{}), or use `--backend cpu`",
        gib(need),
        gib(free),
        (width as f64 * scale) as usize,
        (height as f64 * scale) as usize,
        match optimizer.kind {
            OptimizerKind::Lbfgs => ", or lower L-BFGS's `history`",
            OptimizerKind::Adam => "",
        }
    )
}

/// Without CUDA compiled in there is no card to check.
#[cfg(not(feature = "cuda"))]
pub fn check_device_memory(
    _backend: &Backend,
    _size: (usize, usize),
    _optimizer: &OptimizerSpec,
) -> Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::cuda_memory_estimate;
    use crate::optim::OptimizerSpec;

    #[test]
    fn the_card_estimate_adds_lbfgs_history_to_the_network_and_adams_state() {
        let pixels = 1024 * 1024;
        let gib = 1u64 << 30;
        // 1 GiB, and 3 KB a pixel for the activations, gradients, workspace and Adam.
        let adam = cuda_memory_estimate(pixels, &OptimizerSpec::adam(2.0));
        assert_eq!(adam, gib + pixels * 3072);
        // History 100: 219 image-sized vectors of 3 floats a pixel, 2628 B a pixel more.
        let lbfgs = cuda_memory_estimate(pixels, &OptimizerSpec::lbfgs(1.0, 100));
        assert_eq!(lbfgs, gib + pixels * (3072 + 2628));
        let short = cuda_memory_estimate(pixels, &OptimizerSpec::lbfgs(1.0, 5));
        assert_eq!(short, gib + pixels * (3072 + 29 * 12));
    }
}
