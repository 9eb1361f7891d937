//! Float32 tensors on the host and the safetensors files that hold them: the weights
//! (`crate::weights`) and the checkpoints (`crate::engine::checkpoint`) both use it.

use crate::atomic;
use anyhow::{Context, Result, anyhow, bail};
use std::collections::HashMap;
use std::path::Path;

/// A tensor on the host: its shape and its values in row-major order.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        HostTensor { shape, data }
    }
}

/// Tensors by name, as a safetensors file holds them.
pub type Tensors = HashMap<String, HostTensor>;

/// Writes tensors as safetensors, atomically, with the given metadata.
pub fn write(path: &Path, tensors: &Tensors, meta: HashMap<String, String>) -> Result<()> {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(k, t)| {
            let view = safetensors::tensor::TensorView::new(
                safetensors::Dtype::F32,
                t.shape.clone(),
                bytemuck::cast_slice(&t.data),
            )
            .map_err(|e| anyhow!("tensor {k}: {e}"))?;
            Ok((k.clone(), view))
        })
        .collect::<Result<_>>()?;
    let bytes = safetensors::serialize(views, Some(meta)).map_err(|e| anyhow!("{e}"))?;
    atomic::write(path, &bytes)
}

/// Reads every tensor of a safetensors file (float32 only) and its metadata. `what`
/// names the file for the user ("weights file", "checkpoint"); `fix` says what to do
/// when it is damaged.
pub fn read(path: &Path, what: &str, fix: &str) -> Result<(Tensors, HashMap<String, String>)> {
    let bytes =
        std::fs::read(path).with_context(|| format!("cannot read {what} {}", path.display()))?;
    let damaged = |e: safetensors::SafeTensorError| {
        anyhow!(
            "{what} {} is damaged or truncated, or not a safetensors file ({e}); {fix}",
            path.display()
        )
    };
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(damaged)?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(damaged)?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != safetensors::Dtype::F32 {
            bail!(
                "tensor {name} in {what} {} is {:?}, easel reads float32 only",
                path.display(),
                view.dtype()
            );
        }
        let t = HostTensor::new(
            view.shape().to_vec(),
            bytemuck::pod_collect_to_vec(view.data()),
        );
        out.insert(name.clone(), t);
    }
    Ok((out, meta.metadata().clone().unwrap_or_default()))
}
