//! Choosing where a run computes: the CPU, a GPU through CUDA (cuDNN and cuBLAS), or a
//! GPU through burn-wgpu (Vulkan, Metal, DX12).
//!
//! burn 0.22 dispatches on a runtime `Device`, so the CPU and wgpu are values of one type
//! and a run can move between them; the CUDA path keeps its tensors on the host side in
//! burn-flex and runs the network on the card (see `crate::network`). We always pick the
//! device explicitly: with wgpu compiled in, burn's default device would be wgpu even on
//! a box with only a software adapter.

#[cfg(feature = "cuda")]
pub mod cuda_libs;
#[cfg(feature = "cuda")]
pub mod cuda_memory;
#[cfg(feature = "cuda")]
mod cudarc_lookup;
pub mod report;

use anyhow::{Result, bail};
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

/// What the preset or `--backend` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// The CPU (easel's Winograd convolutions).
    Cpu,
    /// The best GPU there is: CUDA on NVIDIA, else wgpu on a hardware adapter.
    Gpu,
    /// NVIDIA's cuDNN and cuBLAS.
    Cuda,
    /// burn-wgpu: Vulkan, Metal or DX12 (AMD, Intel, Apple GPUs).
    Wgpu,
    /// CUDA, else wgpu on a hardware adapter, else the CPU.
    #[default]
    Auto,
}

impl std::str::FromStr for BackendChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        <Self as clap::ValueEnum>::from_str(s, false)
            .map_err(|_| format!("unknown backend `{s}`: use cpu, gpu, cuda, wgpu or auto"))
    }
}

/// Arithmetic on the CUDA path: strict fp32, or TF32 on tensor cores for the
/// convolutions and Gram products (PyTorch's default for convolutions).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    Fp32,
    Tf32,
}

/// How the CUDA path picks each convolution's algorithm (network/cuda/search.rs).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum ConvSearch {
    /// Measured from a megapixel up, heuristic below ([`ConvSearch::at`]).
    #[default]
    Auto,
    /// cuDNN's heuristics: no time spent choosing.
    Heuristic,
    /// Every algorithm timed on the card once per layer and image size.
    Measured,
}

impl ConvSearch {
    /// The images from which `auto` measures: a megapixel.
    pub const AUTO_MEASURES_FROM: usize = 1 << 20;

    /// What this search is for an image of `pixels`. `auto` measures from a megapixel
    /// up: PyTorch's strict-FP32 iteration on an H200 ran 1.4x (1024x1024) to 1.6x
    /// (2048x2048) faster with its algorithms measured, and no faster at 400x300, where
    /// the search's fraction of a second would be a run's whole gain lost.
    pub fn at(self, pixels: usize) -> ConvSearch {
        match self {
            ConvSearch::Auto if pixels >= Self::AUTO_MEASURES_FROM => ConvSearch::Measured,
            ConvSearch::Auto => ConvSearch::Heuristic,
            other => other,
        }
    }

    /// What a run on `kind` says before an image of `w` x `h` first runs, where cuDNN's
    /// algorithms are timed then: the pause that follows is the search, not a hang. (The
    /// network says whether an earlier run on the card kept them.)
    pub fn notice(self, kind: BackendKind, (w, h): (usize, usize)) -> Option<String> {
        let measured = kind == BackendKind::Cuda && self.at(w * h) == ConvSearch::Measured;
        measured.then(|| {
            let why = match self {
                ConvSearch::Auto => "conv_search: auto measures from a megapixel",
                _ => "conv_search: measured",
            };
            format!("timing cuDNN's algorithms for {w}x{h} ({why}; `heuristic` skips this)")
        })
    }
}

/// What a run asks of the CUDA path: its arithmetic, and how it picks cuDNN's
/// algorithms. The other paths ignore both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CudaSettings {
    pub precision: Precision,
    pub search: ConvSearch,
}

impl BackendChoice {
    /// The kind this choice always resolves to; `None` for `gpu` and `auto`.
    pub fn kind(self) -> Option<BackendKind> {
        match self {
            BackendChoice::Cpu => Some(BackendKind::Cpu),
            BackendChoice::Cuda => Some(BackendKind::Cuda),
            BackendChoice::Wgpu => Some(BackendKind::Wgpu),
            BackendChoice::Gpu | BackendChoice::Auto => None,
        }
    }
}

/// The compute paths a backend can be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Cpu,
    Cuda,
    Wgpu,
}

impl BackendKind {
    /// As written in `losses.jsonl` and shown in the header.
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Cpu => "cpu",
            BackendKind::Cuda => "cuda",
            BackendKind::Wgpu => "wgpu",
        }
    }

    pub fn is_gpu(self) -> bool {
        self != BackendKind::Cpu
    }
}

/// A device together with the name we show for it.
#[derive(Debug, Clone)]
pub struct Backend {
    /// Where the run's burn tensors live (burn-flex for the CPU and for CUDA).
    pub device: Device,
    pub kind: BackendKind,
    /// What the user sees: the adapter or the CPU backend's name, and for `auto` why.
    pub description: String,
}

impl Backend {
    pub fn cpu() -> Self {
        Backend {
            device: Device::flex(),
            kind: BackendKind::Cpu,
            description: "cpu (burn-flex)".into(),
        }
    }

    /// Resolves a choice to a backend. `auto` falls back to the CPU when no usable GPU
    /// exists and says why; `gpu`, `cuda` and `wgpu` without one are errors that say what
    /// was found.
    pub fn resolve(choice: BackendChoice) -> Result<Self> {
        let backend = Self::resolve_quietly(choice);
        match &backend {
            Ok(b) => tracing::info!("backend {choice:?}: {}", b.description),
            Err(e) => tracing::info!("backend {choice:?} unavailable: {e:#}"),
        }
        backend
    }

    fn resolve_quietly(choice: BackendChoice) -> Result<Self> {
        match choice {
            BackendChoice::Cpu => Ok(Self::cpu()),
            BackendChoice::Cuda => Self::cuda(),
            BackendChoice::Wgpu => Self::wgpu(),
            BackendChoice::Gpu => Self::best_gpu(),
            BackendChoice::Auto => Ok(Self::best_gpu().unwrap_or_else(|e| {
                let mut cpu = Self::cpu();
                cpu.description = format!("{} (auto: {e:#})", cpu.description);
                cpu
            })),
        }
    }

    /// CUDA where it loads, else wgpu; the error gives both reasons.
    fn best_gpu() -> Result<Self> {
        let cuda = match Self::cuda() {
            Ok(b) => return Ok(b),
            Err(e) => e,
        };
        match Self::wgpu() {
            Ok(mut b) => {
                b.description = format!(
                    "{} (CUDA not used: {})",
                    b.description,
                    first_sentence(&cuda)
                );
                Ok(b)
            }
            Err(wgpu) => bail!(
                "no usable GPU. CUDA: {}. wgpu: {}",
                first_sentence(&cuda),
                first_sentence(&wgpu)
            ),
        }
    }

    /// The backends this machine can run, in the order `b` cycles through them.
    pub fn usable() -> Vec<BackendChoice> {
        let mut all = vec![BackendChoice::Cpu];
        if Self::cuda().is_ok() {
            all.push(BackendChoice::Cuda);
        }
        if Self::wgpu().is_ok() {
            all.push(BackendChoice::Wgpu);
        }
        all
    }

    /// The CUDA backend on the first NVIDIA GPU (`CUDA_VISIBLE_DEVICES` picks another).
    #[cfg(feature = "cuda")]
    pub fn cuda() -> Result<Self> {
        let info = cuda_device()?;
        Ok(Backend {
            device: Device::flex(),
            kind: BackendKind::Cuda,
            description: format!(
                "cuda ({}, {:.1} of {:.1} GiB free, cuDNN {}, {})",
                info.name,
                gib(info.free),
                gib(info.total),
                info.cudnn_version,
                info.versions
            ),
        })
    }

    /// The CUDA backend. This build has none compiled in.
    #[cfg(not(feature = "cuda"))]
    pub fn cuda() -> Result<Self> {
        bail!(
            "no CUDA backend: this easel binary was built without the `cuda` feature. Use `--backend cpu`, `wgpu`, or `auto`"
        )
    }

    /// The wgpu backend: the first adapter that is a real GPU. Software adapters
    /// (Mesa's lavapipe, WARP) report themselves as CPU-kind and are used only with
    /// `EASEL_ALLOW_SOFTWARE_GPU=1` (tests and demos on machines without a GPU).
    #[cfg(feature = "gpu")]
    pub fn wgpu() -> Result<Self> {
        use burn::tensor::DeviceType;
        let allow_software = std::env::var("EASEL_ALLOW_SOFTWARE_GPU").is_ok_and(|v| v == "1");
        let found: Vec<Device> = Device::enumerate(DeviceType::Wgpu).into_iter().collect();
        let is_software = |d: &Device| format!("{d:?}").contains("Cpu");
        match found.iter().find(|d| allow_software || !is_software(d)) {
            Some(device) => Ok(Backend {
                device: device.clone(),
                kind: BackendKind::Wgpu,
                description: format!(
                    "wgpu ({} adapter{})",
                    adapter_kind(device),
                    if is_software(device) {
                        ", software"
                    } else {
                        ""
                    }
                ),
            }),
            None => {
                let list: Vec<String> = found
                    .iter()
                    .map(|d| {
                        let kind = adapter_kind(d);
                        match is_software(d) {
                            true => {
                                format!("a software adapter ({kind}: Mesa's lavapipe or the like)")
                            }
                            false => format!("a {kind} adapter"),
                        }
                    })
                    .collect();
                bail!(
                    "no usable wgpu adapter: wgpu found {}. Use `--backend cpu` or `auto`; set EASEL_ALLOW_SOFTWARE_GPU=1 to use a software adapter (very slow)",
                    if list.is_empty() {
                        "no adapter".to_string()
                    } else {
                        list.join(", ")
                    }
                )
            }
        }
    }

    /// The wgpu backend. This build has none compiled in.
    #[cfg(not(feature = "gpu"))]
    pub fn wgpu() -> Result<Self> {
        bail!(
            "no wgpu backend: this easel binary was built without the `gpu` feature. Use `--backend cpu`, `cuda`, or `auto`"
        )
    }
}

/// Bytes in GiB, for messages.
pub fn gib(b: u64) -> f64 {
    b as f64 / (1u64 << 30) as f64
}

/// The first sentence of an error, for the one-line reasons `auto` and `gpu` give.
fn first_sentence(e: &anyhow::Error) -> String {
    let text = format!("{e:#}");
    match text.find(". ") {
        Some(i) => text[..i].to_string(),
        None => text.trim_end_matches('.').to_string(),
    }
}

/// The NVIDIA card CUDA would run on.
#[cfg(feature = "cuda")]
pub struct CudaDevice {
    pub name: String,
    pub free: u64,
    pub total: u64,
    pub cudnn_version: String,
    /// The driver's CUDA, cuBLAS and nvrtc versions.
    pub versions: String,
}

/// Loads the libraries (an error names the missing one) and asks the first device for
/// its name and memory.
#[cfg(feature = "cuda")]
pub fn cuda_device() -> Result<CudaDevice> {
    use anyhow::Context;
    cuda_libs::load()?;
    let ctx = cudarc::driver::CudaContext::new(0)
        .map_err(|e| anyhow::anyhow!("{e:?}"))
        .context("cannot use CUDA: the driver loaded but found no usable NVIDIA GPU. To fix: `nvidia-smi` lists the cards the driver sees; CUDA_VISIBLE_DEVICES may hide them")?;
    let name = ctx.name().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let capability = ctx
        .compute_capability()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    check_capability(&name, capability)?;
    let (free, total) = ctx.mem_get_info().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    // What an earlier CUDA network of this process freed is free for the next.
    let free = (free as u64 + cuda_memory::cached_bytes(&ctx)).min(total as u64);
    let v = cudarc::cudnn::result::get_version();
    // Which CUDA this cuDNN was built for: a CUDA 12 build (PyTorch's cu12 wheels) can
    // run beside CUDA 13's cuBLAS, but is the first suspect where a convolution fails.
    // SAFETY: cuDNN is loaded (cuda_libs::load); the call reads a constant.
    let built_for = unsafe { cudarc::cudnn::sys::cudnnGetCudartVersion() };
    Ok(CudaDevice {
        name,
        free,
        total: total as u64,
        cudnn_version: format!(
            "{}.{}.{} for CUDA {}.{}",
            v / 10000,
            (v / 100) % 100,
            v % 100,
            built_for / 1000,
            (built_for % 1000) / 10
        ),
        versions: library_versions(),
    })
}

/// The driver's CUDA version, cuBLAS's and nvrtc's, as "driver CUDA 13.0, cuBLAS
/// 13.0.2, nvrtc 13.0" (for the header and benchmarks); a part that cannot be read is
/// left out.
#[cfg(feature = "cuda")]
fn library_versions() -> String {
    use cudarc::cublas::sys::{cublasGetProperty, libraryPropertyType};
    let mut parts = Vec::new();
    let mut driver = 0;
    // SAFETY: the driver library is loaded (cuda_libs::load); it writes one int.
    if unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut driver) }
        .result()
        .is_ok()
    {
        parts.push(format!(
            "driver CUDA {}.{}",
            driver / 1000,
            (driver % 1000) / 10
        ));
    }
    let property = |p: libraryPropertyType| {
        let mut v = 0;
        // SAFETY: cuBLAS is loaded; it writes one int.
        let status = unsafe { cublasGetProperty(p, &mut v) };
        (status == cudarc::cublas::sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS).then_some(v)
    };
    let cublas = [
        libraryPropertyType::MAJOR_VERSION,
        libraryPropertyType::MINOR_VERSION,
        libraryPropertyType::PATCH_LEVEL,
    ]
    .map(property);
    if let [Some(a), Some(b), Some(c)] = cublas {
        parts.push(format!("cuBLAS {a}.{b}.{c}"));
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: nvrtc is loaded; it writes two ints.
    if unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) }
        .result()
        .is_ok()
    {
        parts.push(format!("nvrtc {major}.{minor}"));
    }
    parts.join(", ")
}

/// The oldest compute capability CUDA 13 builds for: Turing.
pub const OLDEST_CUDA_CAPABILITY: (i32, i32) = (7, 5);

/// Refuses a card older than CUDA 13 supports, naming it and what runs on it instead.
pub fn check_capability(name: &str, (major, minor): (i32, i32)) -> Result<()> {
    let (oldest_major, oldest_minor) = OLDEST_CUDA_CAPABILITY;
    if (major, minor) < OLDEST_CUDA_CAPABILITY {
        bail!(
            "cannot use CUDA: {name} has compute capability {major}.{minor}, and CUDA 13, which easel's CUDA path is built on, supports {oldest_major}.{oldest_minor} (Turing) and newer. `--backend wgpu` runs on this card"
        );
    }
    Ok(())
}

/// Keeps Mesa's device-select Vulkan layer from asking Wayland for the default GPU
/// where no Wayland session can answer: no `XDG_RUNTIME_DIR`, as over ssh without a
/// login session, in Slurm jobs and in containers. There libwayland prints "error:
/// XDG_RUNTIME_DIR is invalid or not set in the environment." each time wgpu lists
/// adapters, which reads as easel's own error. The layer's manifest names
/// `NODEVICE_SELECT=1` as its off switch; a value the user set is kept, and so is the
/// layer where the user picks a GPU through it (`MESA_VK_DEVICE_SELECT`, `DRI_PRIME`).
///
/// # Safety
/// It changes the environment: call it before any other thread starts.
pub unsafe fn quiet_vulkan_device_select() {
    let set = |name: &str| std::env::var_os(name).is_some();
    if !set("XDG_RUNTIME_DIR")
        && !set("NODEVICE_SELECT")
        && !set("MESA_VK_DEVICE_SELECT")
        && !set("DRI_PRIME")
    {
        // SAFETY: the caller's promise: no other thread reads the environment yet.
        unsafe { std::env::set_var("NODEVICE_SELECT", "1") };
    }
}

/// The adapter kind wgpu reports for a device (DiscreteGpu, IntegratedGpu, Cpu, ...).
#[cfg(feature = "gpu")]
fn adapter_kind(device: &Device) -> String {
    let text = format!("{device:?}");
    text.split("kind: ")
        .nth(1)
        .and_then(|rest| rest.split([',', ' ', '}', '(']).next())
        .unwrap_or("unknown")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cuda_run_says_when_it_times_cudnns_algorithms() {
        let cuda = BackendKind::Cuda;
        let big = ConvSearch::Auto.notice(cuda, (1024, 1024));
        assert!(
            big.as_deref()
                .is_some_and(|n| n.contains("1024x1024") && n.contains("auto")),
            "{big:?}"
        );
        assert_eq!(ConvSearch::Auto.notice(cuda, (400, 300)), None);
        let asked = ConvSearch::Measured.notice(cuda, (400, 300));
        assert!(asked.is_some_and(|n| n.contains("conv_search: measured")));
        assert_eq!(ConvSearch::Heuristic.notice(cuda, (4096, 4096)), None);
        for kind in [BackendKind::Cpu, BackendKind::Wgpu] {
            assert_eq!(ConvSearch::Measured.notice(kind, (4096, 4096)), None);
        }
    }
}
