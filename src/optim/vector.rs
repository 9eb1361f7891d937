//! The vectors L-BFGS works on (the flattened image, gradients, steps and its history),
//! kept where the network computes: burn tensors on the host, or buffers on a card
//! (network/cuda_vectors.rs), so that the two-loop recursion and the line search run
//! beside the network and only scalars cross to the host.

use anyhow::Result;
use burn::tensor::{Device, Tensor};
use std::any::Any;
use std::fmt::Debug;
use std::sync::Arc;

/// A flat float32 vector, on the host or on a device. Never changed once made, so a
/// clone (a rollback point, a checkpoint's copy) shares it.
#[derive(Debug, Clone)]
// A run holds a few hundred vectors at most: boxing the tensor would buy nothing.
#[allow(clippy::large_enum_variant)]
pub enum Vector {
    Host(Tensor<1>),
    Device(Arc<dyn DeviceVector>),
}

/// A vector in a device's memory, made by that device's [`VectorOps`].
pub trait DeviceVector: Debug + Send + Sync {
    /// A copy on the host.
    fn download(&self) -> Result<Vec<f32>>;
    /// For the device's own operations to find their type again.
    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync>;
}

impl Vector {
    /// The vector as a host tensor on `device`, copied back where it is on a card.
    pub fn to_host(&self, device: &Device) -> Result<Tensor<1>> {
        match self {
            Vector::Host(t) => Ok(t.clone().to_device(device)),
            Vector::Device(d) => {
                let data = d.download()?;
                let n = data.len();
                Ok(Tensor::from_data(
                    burn::tensor::TensorData::new(data, [n]),
                    device,
                ))
            }
        }
    }
}

/// L-BFGS's history, oldest first: the steps `s`, the gradient differences `y`, and
/// `ro = 1 / (y . s)`.
#[derive(Clone, Copy)]
pub struct History<'a> {
    pub s: &'a [Vector],
    pub y: &'a [Vector],
    pub ro: &'a [f64],
}

/// The arithmetic L-BFGS needs, where its vectors are. Each result is a new vector, in
/// float32 with PyTorch's order of operations; the scalars are float64.
pub trait VectorOps {
    /// `x` placed where these operations work.
    fn place(&self, x: Tensor<1>) -> Result<Vector>;
    /// `v` itself where it is already where these operations work, else a copy there.
    fn adopt(&self, v: &Vector) -> Result<Vector>;
    /// `v` as a host tensor on `device`.
    fn to_host(&self, v: &Vector, device: &Device) -> Result<Tensor<1>> {
        v.to_host(device)
    }
    fn dot(&self, a: &Vector, b: &Vector) -> Result<f64>;
    /// `max |a_i|` (NaN where any element is NaN).
    fn abs_max(&self, a: &Vector) -> Result<f64>;
    /// `sum |a_i|`.
    fn abs_sum(&self, a: &Vector) -> Result<f64>;
    /// `y + x * a`.
    fn add_scaled(&self, y: &Vector, a: f64, x: &Vector) -> Result<Vector>;
    /// `x * a`.
    fn scaled(&self, x: &Vector, a: f64) -> Result<Vector>;
    /// `a - b`.
    fn sub(&self, a: &Vector, b: &Vector) -> Result<Vector> {
        self.add_scaled(a, -1.0, b)
    }
    /// L-BFGS's two-loop recursion (Nocedal & Wright, Algorithm 7.4) in PyTorch's order
    /// of operations: the direction `-H g` from the gradient `g`, the `history` and the
    /// initial scaling `h_diag`. Here each dot product comes back to the host; a card
    /// keeps them there (`network::cuda_vectors`), so that the recursion waits for none.
    fn two_loop(&self, g: &Vector, history: History, h_diag: f64) -> Result<Vector> {
        two_loop_with_host_scalars(self, g, history, h_diag)
    }
    /// The flattened image `x` (`[3][H][W]`) clamped to `[lo[c], hi[c]]` per channel;
    /// NaN stays NaN, as in [`crate::image::clamp_channels`].
    fn clamp(&self, x: &Vector, range: ([f32; 3], [f32; 3])) -> Result<Vector>;
}

/// [`VectorOps::two_loop`] on `ops`' vectors, with each dot product back on the host.
pub fn two_loop_with_host_scalars<O: VectorOps + ?Sized>(
    ops: &O,
    g: &Vector,
    History { s, y, ro }: History,
    h_diag: f64,
) -> Result<Vector> {
    let mut al = vec![0.0; s.len()];
    let mut q = ops.scaled(g, -1.0)?;
    for i in (0..s.len()).rev() {
        al[i] = ops.dot(&s[i], &q)? * ro[i];
        q = ops.add_scaled(&q, -al[i], &y[i])?;
    }
    let mut r = ops.scaled(&q, h_diag)?;
    for (i, a) in al.iter().enumerate() {
        let be_i = ops.dot(&y[i], &r)? * ro[i];
        r = ops.add_scaled(&r, a - be_i, &s[i])?;
    }
    Ok(r)
}

/// The host's operations, on burn tensors of `device`.
pub struct HostOps {
    pub device: Device,
}

impl HostOps {
    fn tensor(&self, v: &Vector) -> Result<Tensor<1>> {
        v.to_host(&self.device)
    }
}

fn scalar(t: Tensor<1>) -> f64 {
    t.into_scalar::<f32>() as f64
}

impl VectorOps for HostOps {
    fn place(&self, x: Tensor<1>) -> Result<Vector> {
        Ok(Vector::Host(x))
    }
    fn adopt(&self, v: &Vector) -> Result<Vector> {
        Ok(Vector::Host(self.tensor(v)?))
    }
    fn dot(&self, a: &Vector, b: &Vector) -> Result<f64> {
        Ok(scalar((self.tensor(a)? * self.tensor(b)?).sum()))
    }
    fn abs_max(&self, a: &Vector) -> Result<f64> {
        Ok(scalar(self.tensor(a)?.abs().max()))
    }
    fn abs_sum(&self, a: &Vector) -> Result<f64> {
        Ok(scalar(self.tensor(a)?.abs().sum()))
    }
    fn add_scaled(&self, y: &Vector, a: f64, x: &Vector) -> Result<Vector> {
        Ok(Vector::Host(self.tensor(y)? + self.tensor(x)? * a))
    }
    fn scaled(&self, x: &Vector, a: f64) -> Result<Vector> {
        Ok(Vector::Host(self.tensor(x)? * a))
    }
    fn sub(&self, a: &Vector, b: &Vector) -> Result<Vector> {
        Ok(Vector::Host(self.tensor(a)? - self.tensor(b)?))
    }
    fn clamp(&self, x: &Vector, range: ([f32; 3], [f32; 3])) -> Result<Vector> {
        let x = self.tensor(x)?;
        let n = x.dims()[0];
        anyhow::ensure!(n % 3 == 0, "an image of {n} floats is not 3 planes");
        let planes = x.reshape([1, 3, n / 3, 1]);
        Ok(Vector::Host(
            crate::image::clamp_channels(planes, range).reshape([n]),
        ))
    }
}
