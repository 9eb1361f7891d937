//! The network seam: an image's VGG-19 features, and the gradient of the costs with
//! respect to the image, one implementation per compute path.
//!
//! - [`Path::Burn`]: burn's own convolutions on the tensors' device, differentiated by
//!   burn's autodiff tape (wgpu; on the CPU, burn-flex's im2col as `--conv direct`);
//! - [`Path::Winograd`]: the CPU's Winograd kernels (`crate::vgg::cpu`), forward and
//!   backward outside the tape ([`winograd`]);
//! - `Path::Cuda`: cuDNN and cuBLAS on an NVIDIA card ([`cuda`], [`cuda_path`]).
//!
//! The path is picked in one place, [`Network::new`], from the backend. Above this
//! module, the losses speak only of activations, Grams and costs; below it, `crate::vgg`
//! holds the weights and the CPU's kernels.

mod burn_path;
#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(feature = "cuda")]
mod cuda_path;
#[cfg(feature = "cuda")]
mod cuda_vectors;
pub mod lbfgs_image;
pub mod resident;
mod tiled;
pub mod tiles;
mod winograd;

pub use tiled::{Pass, ProgressSink, TileProgress};

use crate::backend::{Backend, BackendKind, CudaSettings};
use crate::loss::regions::{RegionMask, RegionTarget};
use crate::loss::{CostWeights, Costs, StyleReads, Targets};
use crate::optim::vector::{HostOps, Vector, VectorOps};
use crate::vgg::cpu::CpuVgg;
use crate::vgg::{Layer, Pooling, Vgg19};
use anyhow::Result;
use burn::tensor::{Device, Tensor, TensorData};
use std::sync::Arc;

/// The CPU's convolution: easel's Winograd kernels, or burn's direct (im2col) ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ConvChoice {
    #[default]
    Winograd,
    Direct,
}

#[derive(Clone)]
enum Path {
    Burn,
    Winograd(Arc<CpuVgg>),
    #[cfg(feature = "cuda")]
    Cuda(Arc<cuda_path::CudaPath>),
}

/// VGG-19 on one compute path.
#[derive(Clone)]
pub struct Network {
    vgg: Vgg19,
    path: Path,
    conv: ConvChoice,
    cuda: CudaSettings,
    /// The tile side where images are computed in tiles (the Winograd path only).
    tile: Option<usize>,
    progress: Option<ProgressSink>,
}

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Network({})", self.path_name())
    }
}

impl Network {
    /// The network on `backend`'s compute path. `conv` matters on the CPU only, `cuda`
    /// on CUDA only.
    pub fn new(
        vgg: Vgg19,
        backend: &Backend,
        conv: ConvChoice,
        cuda: CudaSettings,
    ) -> Result<Network> {
        let vgg = vgg.to_device(&backend.device);
        let path = match (backend.kind, conv) {
            (BackendKind::Cpu, ConvChoice::Winograd) => {
                Path::Winograd(Arc::new(CpuVgg::new(&vgg.host_weights()?, vgg.padding)))
            }
            (BackendKind::Cpu, ConvChoice::Direct) | (BackendKind::Wgpu, _) => Path::Burn,
            #[cfg(feature = "cuda")]
            (BackendKind::Cuda, _) => Path::Cuda(Arc::new(cuda_path::CudaPath::new(
                &vgg.host_weights()?,
                vgg.padding,
                cuda,
            )?)),
            #[cfg(not(feature = "cuda"))]
            (BackendKind::Cuda, _) => anyhow::bail!("this easel was built without CUDA"),
        };
        let network = Network {
            vgg,
            path,
            conv,
            cuda,
            tile: None,
            progress: None,
        };
        tracing::debug!("network on the {} path", network.path_name());
        Ok(network)
    }

    /// The same network on another backend.
    pub fn to_backend(&self, backend: &Backend) -> Result<Network> {
        let mut moved = Network::new(self.vgg.clone(), backend, self.conv, self.cuda)?;
        moved.tile = self.tile;
        moved.progress = self.progress.clone();
        Ok(moved)
    }

    /// Computes images larger than `tile` x `tile` in tiles (`None`: never). Only the
    /// Winograd path tiles; [`Network::check`] refuses tiles on the others.
    pub fn set_tile(&mut self, tile: Option<usize>) {
        self.tile = tile;
    }

    pub fn tile(&self) -> Option<usize> {
        self.tile
    }

    /// Where a tiled evaluation reports each tile done.
    pub fn set_progress(&mut self, sink: Option<ProgressSink>) {
        self.progress = sink;
    }

    /// The tiled Winograd path for an `h` x `w` image as deep as `deepest`, where this
    /// network tiles and the image is larger than one tile.
    fn tiled(&self, h: usize, w: usize, deepest: Layer) -> Option<tiled::Tiled<'_>> {
        let (Path::Winograd(cpu), Some(size)) = (&self.path, self.tile) else {
            return None;
        };
        let plan = tiles::TilePlan::new(h, w, size, deepest);
        plan.is_tiled().then(|| tiled::Tiled {
            cpu,
            pooling: self.pooling(),
            plan,
            progress: self.progress.as_ref(),
        })
    }

    /// Refuses a cost this path cannot compute, before a run starts.
    pub fn check(&self, weights: &CostWeights) -> Result<()> {
        if !weights.region_weights.is_empty() && self.tile.is_some() {
            anyhow::bail!(
                "regions are not computed in tiles yet; lower `size` so that the run fits untiled, or set `tile: off`"
            );
        }
        if self.tile.is_some() && !matches!(self.path, Path::Winograd(_)) {
            anyhow::bail!(
                "tiles are computed on the CPU's Winograd path only, not on the {} path; run with --backend cpu, or set `tile: off` and a `size` that fits",
                self.path_name()
            );
        }
        Ok(())
    }

    /// Whether Adam's iterations keep the image and the moments with this path
    /// ([`resident`]): on the card for CUDA, in host buffers for Winograd. burn's paths
    /// keep them in burn's tensors, which live on their device already; so does a run
    /// in tiles, whose memory the extra sets of buffers would cost (~100 B a pixel,
    /// 10 GB at 50 MP) where the step is a rounding error of its time.
    pub fn keeps_adam_state(&self) -> bool {
        match self.path {
            Path::Burn => false,
            Path::Winograd(_) => self.tile.is_none(),
            #[cfg(feature = "cuda")]
            Path::Cuda(_) => true,
        }
    }

    /// Where L-BFGS's vectors live on this path, with the path's evaluation of them: on
    /// the card for CUDA ([`cuda_vectors`]), else the run's tensors on their device.
    pub fn lbfgs_vectors(&self) -> Box<dyn PathVectors> {
        match &self.path {
            #[cfg(feature = "cuda")]
            Path::Cuda(cuda) => Box::new(cuda_vectors::CardOps {
                path: cuda.clone(),
                pooling: self.pooling(),
            }),
            _ => Box::new(TensorVectors {
                network: self.clone(),
                ops: HostOps {
                    device: self.device(),
                },
            }),
        }
    }

    /// Which kernels run: `winograd`, `burn` or `cuda`.
    pub fn path_name(&self) -> &'static str {
        match self.path {
            Path::Burn => "burn",
            Path::Winograd(_) => "winograd",
            #[cfg(feature = "cuda")]
            Path::Cuda(_) => "cuda",
        }
    }

    pub fn pooling(&self) -> Pooling {
        self.vgg.pooling
    }

    /// Where the run's tensors live.
    pub fn device(&self) -> Device {
        self.vgg.device()
    }

    /// The Winograd kernels, where they run (for the per-layer profile).
    pub fn winograd(&self) -> Option<&CpuVgg> {
        match &self.path {
            Path::Winograd(cpu) => Some(cpu),
            _ => None,
        }
    }

    /// Whether the first evaluations of images of these sizes (`(w, h)`) to `deepest`
    /// will time cuDNN's algorithms first (the CUDA path with `conv_search` measuring a
    /// size that neither this run nor an earlier one on the card has timed).
    #[cfg_attr(not(feature = "cuda"), allow(unused_variables))]
    pub fn times_algorithms(&self, sizes: &[(usize, usize)], deepest: Layer) -> bool {
        match &self.path {
            #[cfg(feature = "cuda")]
            Path::Cuda(path) => sizes
                .iter()
                .any(|&(w, h)| path.vgg().times_algorithms(h, w, deepest)),
            _ => false,
        }
    }

    /// The card's network, where this is the CUDA path (for the per-layer profile).
    #[cfg(feature = "cuda")]
    pub fn cuda(&self) -> Option<&cuda::CudaVgg> {
        match &self.path {
            Path::Cuda(path) => Some(path.vgg()),
            _ => None,
        }
    }

    /// Every layer's activation from `conv1_1` to `deepest` for `x` (`[1, 3, H, W]`,
    /// pixel space), as tensors on the network's device.
    pub fn features(&self, x: Tensor<4>, deepest: Layer) -> Result<Vec<Tensor<4>>> {
        match &self.path {
            Path::Burn => Ok(self.vgg.forward(x, deepest)),
            Path::Winograd(cpu) => winograd::features(cpu, &x, deepest, self.pooling()),
            #[cfg(feature = "cuda")]
            Path::Cuda(cuda) => cuda.features(&x, deepest, self.pooling()),
        }
    }

    /// The forward pass to `deepest`, waited for, keeping nothing: what
    /// `easel bench --profile` times (on CUDA, without copying every activation back).
    pub fn forward_pass(&self, x: Tensor<4>, deepest: Layer) -> Result<()> {
        match &self.path {
            #[cfg(feature = "cuda")]
            Path::Cuda(cuda) => cuda.forward_pass(&x, deepest, self.pooling()),
            _ => {
                let taps = self.features(x, deepest)?;
                // Reading one value back waits for a device's queued work.
                if let Some(t) = taps.last() {
                    let _ = t.clone().sum().into_scalar::<f32>();
                }
                Ok(())
            }
        }
    }

    /// The targets of a run: the content activation and the blended style Grams.
    pub fn targets(
        &self,
        content: Tensor<4>,
        styles: &[(Tensor<4>, f64)],
        weights: &CostWeights,
    ) -> Result<Targets> {
        self.targets_with_regions(content, styles, &[], weights)
    }

    /// The targets with `regions`: per region its mask (`[H][W]` at the content's size)
    /// and the index of its style in `styles`, or none.
    pub fn targets_with_regions(
        &self,
        content: Tensor<4>,
        styles: &[(Tensor<4>, f64)],
        regions: &[RegionMask],
        weights: &CostWeights,
    ) -> Result<Targets> {
        let [_, _, h, w] = content.dims();
        let device = content.device();
        let content_act = self.activation(content, weights.content_layer)?;
        let mut reads = Vec::new();
        for (image, blend) in styles {
            let [_, _, hs, ws] = image.dims();
            let read = match self.tiled(hs, ws, weights.deepest()) {
                Some(tiled) => tiled.style_reads(image, weights)?,
                None => {
                    let deepest = weights.style_layers.iter().map(|(l, _)| *l).max();
                    let taps = self.features(image.clone(), deepest.unwrap_or(Layer(0)))?;
                    StyleReads::of_taps(&taps, weights, hs * ws)
                }
            };
            reads.push((read, *blend));
        }
        let targets = Targets::from_reads(content_act, h * w, &reads, weights)?;
        if regions.is_empty() {
            return Ok(targets);
        }
        let layers: Vec<Layer> = weights.style_layers.iter().map(|(l, _)| *l).collect();
        let guided = regions
            .iter()
            .map(|(mask, style)| {
                let grams = style.and_then(|k| reads.get(k)).map(|(r, _)| &r.grams[..]);
                RegionTarget::new(mask, (h, w), &layers, grams, &device)
            })
            .collect();
        Ok(targets.with_regions(guided))
    }

    /// The activation of `content` at `layer` (a new content layer mid-run).
    pub fn activation(&self, content: Tensor<4>, layer: Layer) -> Result<Tensor<4>> {
        let [_, _, h, w] = content.dims();
        match self.tiled(h, w, layer) {
            Some(tiled) => tiled.activation(&content, layer),
            None => Ok(self.features(content, layer)?.swap_remove(layer.0)),
        }
    }

    /// The cost of `x` and the gradient of the total cost with respect to its pixels.
    pub fn evaluate(
        &self,
        x: &Tensor<4>,
        targets: &Targets,
        weights: &CostWeights,
    ) -> Result<(Costs, Tensor<4>)> {
        let [_, _, h, w] = x.dims();
        if let Some(tiled) = self.tiled(h, w, weights.deepest()) {
            return tiled.evaluate(x, targets, weights);
        }
        match &self.path {
            Path::Burn => burn_path::evaluate(&self.vgg, x, targets, weights),
            Path::Winograd(cpu) => winograd::evaluate(cpu, self.pooling(), x, targets, weights),
            #[cfg(feature = "cuda")]
            Path::Cuda(cuda) => cuda.evaluate(x, targets, weights, self.pooling()),
        }
    }
}

/// Wraps one evaluation of the network in a step (fault injection, timing): calls it,
/// with whatever goes around it.
pub type Evaluation<'a> = dyn FnMut(&mut dyn FnMut() -> Result<Costs>) -> Result<Costs> + 'a;

/// Where a compute path keeps L-BFGS's vectors: their arithmetic, and the path's
/// evaluation of a flattened image among them.
pub trait PathVectors {
    fn ops(&self) -> &dyn VectorOps;
    /// The costs of the flattened `[3][h][w]` image `x` and the gradient, both kept
    /// where the path keeps its vectors.
    fn evaluate(
        &self,
        x: &Vector,
        size: (usize, usize),
        targets: &Targets,
        weights: &CostWeights,
    ) -> Result<(Costs, Vector)>;
}

/// L-BFGS's vectors as the run's tensors, evaluated through [`Network::evaluate`] (burn's
/// paths, and the CPU's Winograd kernels in tiles or whole).
struct TensorVectors {
    network: Network,
    ops: HostOps,
}

impl PathVectors for TensorVectors {
    fn ops(&self) -> &dyn VectorOps {
        &self.ops
    }
    fn evaluate(
        &self,
        x: &Vector,
        (h, w): (usize, usize),
        targets: &Targets,
        weights: &CostWeights,
    ) -> Result<(Costs, Vector)> {
        let x = self.ops.to_host(x, &self.ops.device)?.reshape([1, 3, h, w]);
        let (costs, g) = self.network.evaluate(&x, targets, weights)?;
        Ok((costs, Vector::Host(g.reshape([3 * h * w]))))
    }
}

/// Adds `g` to the gradient at tap `layer` (the taps of one backward pass).
pub(crate) fn add_tap(taps: &mut [Option<Vec<f32>>], layer: usize, g: Vec<f32>) {
    match &mut taps[layer] {
        Some(acc) => acc.iter_mut().zip(&g).for_each(|(a, b)| *a += b),
        slot => *slot = Some(g),
    }
}

/// A tensor's floats on the host.
pub(crate) fn floats(data: TensorData, what: &str) -> Result<Vec<f32>> {
    data.try_into_vec_as::<f32>()
        .map_err(|e| anyhow::anyhow!("reading {what} back: {e:?}"))
}

/// The image as floats with its height and width; only a batch of one is supported.
pub(crate) fn image_floats(x: &Tensor<4>) -> Result<(Vec<f32>, usize, usize)> {
    let [n, _, h, w] = x.dims();
    anyhow::ensure!(n == 1, "the network takes one image at a time, not {n}");
    Ok((floats(x.to_data(), "the image")?, h, w))
}
