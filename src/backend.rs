//! Choosing the burn `Device` a run computes on.
//!
//! burn 0.22 dispatches on a runtime `Device`, so the CPU and GPU backends are values of
//! one type and a run can move between them. We always pick the device explicitly:
//! with wgpu compiled in, burn's default device would be wgpu even on a box with only a
//! software adapter.

use anyhow::{Result, bail};
use burn::tensor::Device;
use serde::{Deserialize, Serialize};

/// What the preset or `--backend` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    Cpu,
    Gpu,
    #[default]
    Auto,
}

impl std::str::FromStr for BackendChoice {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cpu" => Ok(Self::Cpu),
            "gpu" => Ok(Self::Gpu),
            "auto" => Ok(Self::Auto),
            other => Err(format!("unknown backend `{other}`: use cpu, gpu or auto")),
        }
    }
}

/// A device together with the name we show for it.
#[derive(Debug, Clone)]
pub struct Backend {
    pub device: Device,
    /// `cpu` or `gpu`, as written in `losses.jsonl`.
    pub kind: &'static str,
    /// What the user sees: the adapter or the CPU backend's name.
    pub description: String,
}

impl Backend {
    pub fn cpu() -> Self {
        Backend {
            device: Device::flex(),
            kind: "cpu",
            description: "cpu (burn-flex)".into(),
        }
    }

    /// Resolves a choice to a device. `auto` falls back to the CPU when no usable GPU
    /// exists; `gpu` without one is an error that says what was found.
    pub fn resolve(choice: BackendChoice) -> Result<Self> {
        match choice {
            BackendChoice::Cpu => Ok(Self::cpu()),
            BackendChoice::Auto => Ok(Self::gpu().unwrap_or_else(|_| Self::cpu())),
            BackendChoice::Gpu => Self::gpu(),
        }
    }

    /// The GPU backend: the first wgpu adapter that is a real GPU. Software adapters
    /// (Mesa's lavapipe, WARP) report themselves as CPU-kind and are used only with
    /// `EASEL_ALLOW_SOFTWARE_GPU=1` (tests and demos on machines without a GPU).
    #[cfg(feature = "gpu")]
    pub fn gpu() -> Result<Self> {
        use burn::tensor::DeviceType;
        let allow_software = std::env::var("EASEL_ALLOW_SOFTWARE_GPU").is_ok_and(|v| v == "1");
        let found: Vec<Device> = Device::enumerate(DeviceType::Wgpu).into_iter().collect();
        let is_software = |d: &Device| format!("{d:?}").contains("Cpu");
        match found.iter().find(|d| allow_software || !is_software(d)) {
            Some(device) => Ok(Backend {
                device: device.clone(),
                kind: "gpu",
                description: format!(
                    "gpu (wgpu, {} adapter{})",
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
                    .map(|d| format!("{d:?}{}", if is_software(d) { " (software)" } else { "" }))
                    .collect();
                bail!(
                    "no usable GPU: wgpu found {}. Use `--backend cpu` or `auto`; set EASEL_ALLOW_SOFTWARE_GPU=1 to use a software adapter (very slow)",
                    if list.is_empty() {
                        "no adapter".to_string()
                    } else {
                        list.join(", ")
                    }
                )
            }
        }
    }

    /// The GPU backend. This build has none compiled in.
    #[cfg(not(feature = "gpu"))]
    pub fn gpu() -> Result<Self> {
        bail!(
            "no GPU backend: this easel binary was built without GPU support, so \
             `backend: gpu` cannot be honoured. Use `--backend cpu` (or `backend: cpu` in the \
             preset), or `backend: auto` to use a GPU only where one is usable."
        )
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

/// Bytes a run of `pixels` output pixels needs, measured on burn-flex: the network and
/// runtime (~400 MB), the Winograd kernels of the CPU path (~400 MB to conv5_1), ~4 KB
/// per pixel for the activations and gradients an iteration holds (3.6 KB measured),
/// and the optimiser's state (L-BFGS: `history` pairs of image-sized vectors).
pub fn memory_estimate(pixels: u64, optimizer: &crate::optim::OptimizerSpec) -> u64 {
    let image = pixels * 3 * 4;
    let state = match optimizer.kind {
        crate::optim::OptimizerKind::Adam => 3 * image,
        crate::optim::OptimizerKind::Lbfgs => (2 * optimizer.history as u64 + 4) * image,
    };
    800 * 1024 * 1024 + pixels * 4000 + state
}

/// Memory the system can give this process now (Linux: MemAvailable), if known.
pub fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Refuses a run that cannot fit in memory, saying how much it would need.
pub fn check_memory(
    width: usize,
    height: usize,
    optimizer: &crate::optim::OptimizerSpec,
) -> Result<()> {
    let need = memory_estimate((width * height) as u64, optimizer);
    if let Some(have) = available_memory()
        && need > have
    {
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        bail!(
            "a {width}x{height} run with this optimiser needs about {:.1} GiB of memory, and {:.1} GiB is available; lower `size` (or L-BFGS's `history`)",
            gib(need),
            gib(have)
        );
    }
    Ok(())
}
