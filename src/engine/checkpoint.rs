//! What `easel resume` needs to continue a run exactly: the image as floats, the
//! optimiser state, the iteration and the elapsed time, in one safetensors file written
//! atomically (tensors, plus the scalars as JSON metadata). The settings with their
//! change history live beside it in `preset.yaml`; the only randomness (the initial
//! noise) is spent before iteration 0, so the iteration is all the RNG state there is.

use crate::optim::vector::Vector;
use crate::optim::{Adam, Lbfgs, LbfgsState, Optimizer};
use crate::tensor_file::{self, HostTensor};
use anyhow::{Context, Result, anyhow};
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Scalars {
    iter: u64,
    #[serde(default)]
    ema_count: Option<u64>,
    elapsed_s: f64,
    /// None while no J has been seen (JSON has no infinity).
    best_j: Option<f64>,
    optimizer: OptimizerScalars,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum OptimizerScalars {
    Adam {
        t: u64,
        beta1: f64,
        beta2: f64,
        eps: f64,
    },
    Lbfgs {
        history: usize,
        ro: Vec<f64>,
        h_diag: f64,
        t: f64,
        n_iter: u64,
        pairs: usize,
        converged: bool,
    },
}

/// An exponential moving average of the image (crowsonkb's iterate averaging).
#[derive(Debug, Clone)]
pub struct Ema {
    pub avg: Tensor<4>,
    /// Updates so far, for the bias correction.
    pub count: u64,
}

impl Ema {
    pub fn start(x: &Tensor<4>) -> Ema {
        Ema {
            avg: x.zeros_like(),
            count: 0,
        }
    }

    pub fn update(&mut self, x: &Tensor<4>, decay: f64) {
        self.avg = self.avg.clone() * decay + x.clone() * (1.0 - decay);
        self.count += 1;
    }

    /// The bias-corrected average: `avg / (1 - decay^count)`.
    pub fn value(&self, decay: f64) -> Option<Tensor<4>> {
        (self.count > 0)
            .then(|| self.avg.clone() / (1.0 - decay.powi(self.count.min(i32::MAX as u64) as i32)))
    }
}

/// Where a run is between two iterations: what a rollback or a resume restores.
#[derive(Debug, Clone)]
pub struct Point {
    /// The next iteration to run.
    pub iter: u64,
    pub x: Tensor<4>,
    pub optimizer: Optimizer,
    pub ema: Option<Ema>,
}

/// The state of a run between two iterations, as written to disk.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub point: Point,
    pub elapsed_s: f64,
    /// The lowest J seen so far (for divergence detection).
    pub best_j: f64,
}

/// An L-BFGS vector on the host, copied back from a card where it is on one.
fn host_vector(v: &Vector) -> Result<HostTensor> {
    match v {
        Vector::Host(t) => Ok(host(t)),
        Vector::Device(d) => {
            let data = d.download()?;
            Ok(HostTensor::new(vec![data.len()], data))
        }
    }
}

fn host<const D: usize>(t: &Tensor<D>) -> HostTensor {
    let data = t.to_data().convert::<f32>();
    HostTensor::new(
        data.shape().to_vec(),
        data.try_to_vec::<f32>().unwrap_or_default(),
    )
}

/// Every tensor has the shape its name says: the image `[1, 3, H, W]`, Adam's moments
/// and the average like it, L-BFGS's vectors flat over its pixels.
fn check_shapes(tensors: &tensor_file::Tensors) -> Result<()> {
    let x = tensors
        .get("x")
        .ok_or_else(|| anyhow!("it holds no image"))?;
    let ok = matches!(x.shape[..], [1, 3, h, w] if h > 0 && w > 0);
    anyhow::ensure!(ok, "the image has shape {:?}, not [1, 3, H, W]", x.shape);
    let flat = [x.data.len()];
    for (name, t) in tensors {
        let want: &[usize] = if name.starts_with("lbfgs.") {
            &flat
        } else {
            &x.shape
        };
        anyhow::ensure!(
            t.shape == want,
            "{name} has shape {:?}, not {want:?}",
            t.shape
        );
    }
    Ok(())
}

fn device_tensor<const D: usize>(t: &HostTensor, device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(t.data.clone(), t.shape.clone()), device)
}

/// The optimiser from its scalars and the tensors named after them; `None` where one
/// is missing.
fn optimizer_from(
    scalars: OptimizerScalars,
    tensors: &tensor_file::Tensors,
    device: &Device,
) -> Option<Optimizer> {
    let tensor = |name: &str| tensors.get(name).map(|h| device_tensor::<4>(h, device));
    let flat = |name: &str| {
        tensors
            .get(name)
            .map(|h| Vector::Host(device_tensor::<1>(h, device)))
    };
    Some(match scalars {
        OptimizerScalars::Adam {
            t,
            beta1,
            beta2,
            eps,
        } => Optimizer::Adam(Adam {
            beta1,
            beta2,
            eps,
            t,
            m: tensor("adam.m"),
            v: tensor("adam.v"),
        }),
        OptimizerScalars::Lbfgs {
            history,
            ro,
            h_diag,
            t,
            n_iter,
            pairs,
            converged,
        } => {
            let mut l = Lbfgs::new(history);
            l.state = LbfgsState {
                old_dirs: (0..pairs)
                    .map(|i| flat(&format!("lbfgs.y.{i}")))
                    .collect::<Option<_>>()?,
                old_stps: (0..pairs)
                    .map(|i| flat(&format!("lbfgs.s.{i}")))
                    .collect::<Option<_>>()?,
                ro,
                h_diag,
                d: flat("lbfgs.d"),
                t,
                prev_flat_grad: flat("lbfgs.prev_grad"),
                n_iter,
                converged,
            };
            Optimizer::Lbfgs(l)
        }
    })
}

impl Checkpoint {
    pub fn save(&self, path: &Path) -> Result<()> {
        let mut tensors: HashMap<String, HostTensor> = HashMap::new();
        let point = &self.point;
        tensors.insert("x".into(), host(&point.x));
        if let Some(ema) = &point.ema {
            tensors.insert("ema".into(), host(&ema.avg));
        }
        let optimizer = match &point.optimizer {
            Optimizer::Adam(a) => {
                if let (Some(m), Some(v)) = (&a.m, &a.v) {
                    tensors.insert("adam.m".into(), host(m));
                    tensors.insert("adam.v".into(), host(v));
                }
                OptimizerScalars::Adam {
                    t: a.t,
                    beta1: a.beta1,
                    beta2: a.beta2,
                    eps: a.eps,
                }
            }
            Optimizer::Lbfgs(l) => {
                let st = &l.state;
                for (i, (y, s)) in st.old_dirs.iter().zip(&st.old_stps).enumerate() {
                    tensors.insert(format!("lbfgs.y.{i}"), host_vector(y)?);
                    tensors.insert(format!("lbfgs.s.{i}"), host_vector(s)?);
                }
                if let Some(d) = &st.d {
                    tensors.insert("lbfgs.d".into(), host_vector(d)?);
                }
                if let Some(g) = &st.prev_flat_grad {
                    tensors.insert("lbfgs.prev_grad".into(), host_vector(g)?);
                }
                OptimizerScalars::Lbfgs {
                    history: l.history,
                    ro: st.ro.clone(),
                    h_diag: st.h_diag,
                    t: st.t,
                    n_iter: st.n_iter,
                    pairs: st.old_dirs.len(),
                    converged: st.converged,
                }
            }
        };
        let scalars = Scalars {
            iter: point.iter,
            ema_count: point.ema.as_ref().map(|e| e.count),
            elapsed_s: self.elapsed_s,
            best_j: self.best_j.is_finite().then_some(self.best_j),
            optimizer,
        };
        tensor_file::write(
            path,
            &tensors,
            HashMap::from([("easel".to_string(), serde_json::to_string(&scalars)?)]),
        )
    }

    pub fn load(path: &Path, device: &Device) -> Result<Checkpoint> {
        let (tensors, meta) = tensor_file::read(
            path,
            "checkpoint",
            "resume from an earlier copy of the run, or start the run again",
        )?;
        let broken = || {
            anyhow!(
                "checkpoint {} is incomplete; resume from an earlier copy or start the run again",
                path.display()
            )
        };
        let scalars: Scalars = serde_json::from_str(meta.get("easel").ok_or_else(broken)?)
            .with_context(|| format!("checkpoint {} has unreadable metadata", path.display()))?;
        check_shapes(&tensors).map_err(|e| {
            anyhow!(
                "checkpoint {} is not one easel wrote ({e}); resume from an earlier copy or start the run again",
                path.display()
            )
        })?;
        let get = |name: &str| tensors.get(name).ok_or_else(broken);
        let x = device_tensor::<4>(get("x")?, device);
        let optimizer = optimizer_from(scalars.optimizer, &tensors, device).ok_or_else(broken)?;
        let ema = match (scalars.ema_count, tensors.get("ema")) {
            (Some(count), Some(avg)) => Some(Ema {
                avg: device_tensor(avg, device),
                count,
            }),
            _ => None,
        };
        Ok(Checkpoint {
            point: Point {
                iter: scalars.iter,
                x,
                optimizer,
                ema,
            },
            elapsed_s: scalars.elapsed_s,
            best_j: scalars.best_j.unwrap_or(f64::INFINITY),
        })
    }
}
