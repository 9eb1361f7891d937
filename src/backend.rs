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

    /// The GPU backend. This build has none compiled in.
    pub fn gpu() -> Result<Self> {
        bail!(
            "no GPU backend: this easel binary was built without GPU support, so \
             `backend: gpu` cannot be honoured. Use `--backend cpu` (or `backend: cpu` in the \
             preset), or `backend: auto` to use a GPU only where one is usable."
        )
    }
}
