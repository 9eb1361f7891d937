//! L-BFGS's vectors on the card ([`crate::optim::vector`]): the flattened image, the
//! gradients, the steps and the history stay there, the two-loop recursion and the line
//! search run there, and per evaluation only the costs and per vector operation only a
//! scalar come back.

use super::cuda_path::{CudaPath, costs_of};
use super::{PathVectors, floats};
use crate::loss::{CostWeights, Costs, Targets};
use crate::optim::vector::{DeviceVector, History, Vector, VectorOps};
use crate::vgg::Pooling;
use anyhow::Result;
use burn::tensor::Tensor;
use cudarc::driver::CudaSlice;
use std::any::Any;
use std::sync::Arc;

/// A vector in the card's memory.
pub struct CardVector {
    /// Declared first, so dropped first: freed while the path (and its context) lives.
    data: CudaSlice<f32>,
    path: Arc<CudaPath>,
}

impl std::fmt::Debug for CardVector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CardVector({} floats)", self.data.len())
    }
}

impl Drop for CardVector {
    fn drop(&mut self) {
        // The buffer is freed in the stream's order, which needs the context current.
        self.path.vgg().bind_for_drop();
    }
}

impl DeviceVector for CardVector {
    fn download(&self) -> Result<Vec<f32>> {
        self.path.vgg().download(&self.data)
    }
    fn into_any(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }
}

/// The card's vector arithmetic, for L-BFGS.
pub struct CardOps {
    pub path: Arc<CudaPath>,
    pub pooling: Pooling,
}

impl CardOps {
    fn wrap(&self, data: CudaSlice<f32>) -> Vector {
        Vector::Device(Arc::new(CardVector {
            path: self.path.clone(),
            data,
        }))
    }

    /// `v` on the card with this path: itself where it is, else a copy (uploaded from
    /// the host, or copied from the buffer of an earlier CUDA network of the run, which
    /// would otherwise be kept alive with all its memory by the history).
    fn card(&self, v: &Vector) -> Result<Arc<CardVector>> {
        let vgg = self.path.vgg();
        let data = match v {
            Vector::Device(d) => match d.clone().into_any().downcast::<CardVector>() {
                Ok(card) if Arc::ptr_eq(&card.path, &self.path) => return Ok(card),
                Ok(card) => vgg.duplicate(&card.data)?,
                Err(_) => vgg.upload(&d.download()?)?,
            },
            Vector::Host(t) => vgg.upload(&floats(t.to_data(), "a vector")?)?,
        };
        Ok(Arc::new(CardVector {
            path: self.path.clone(),
            data,
        }))
    }
}

impl PathVectors for CardOps {
    fn ops(&self) -> &dyn VectorOps {
        self
    }
    fn evaluate(
        &self,
        x: &Vector,
        (h, w): (usize, usize),
        targets: &Targets,
        weights: &CostWeights,
    ) -> Result<(Costs, Vector)> {
        let x = self.card(x)?;
        let vgg = self.path.vgg();
        let mut grad = vgg.alloc(3 * h * w)?;
        let parts = self.path.with_targets(targets, weights, |on_card, cost| {
            vgg.evaluate_on_card(&x.data, h, w, self.pooling, on_card, cost, &mut grad)
        })?;
        Ok((costs_of(parts, weights), self.wrap(grad)))
    }
}

impl VectorOps for CardOps {
    fn place(&self, x: Tensor<1>) -> Result<Vector> {
        self.adopt(&Vector::Host(x))
    }
    fn adopt(&self, v: &Vector) -> Result<Vector> {
        Ok(Vector::Device(self.card(v)?))
    }
    fn dot(&self, a: &Vector, b: &Vector) -> Result<f64> {
        self.path
            .vgg()
            .vector_dot(&self.card(a)?.data, &self.card(b)?.data)
    }
    fn abs_max(&self, a: &Vector) -> Result<f64> {
        Ok(self.path.vgg().vector_abs(&self.card(a)?.data)?.1)
    }
    fn abs_sum(&self, a: &Vector) -> Result<f64> {
        Ok(self.path.vgg().vector_abs(&self.card(a)?.data)?.0)
    }
    fn add_scaled(&self, y: &Vector, a: f64, x: &Vector) -> Result<Vector> {
        let (y, x) = (self.card(y)?, self.card(x)?);
        let out = self
            .path
            .vgg()
            .vector_add_scaled(&y.data, a as f32, &x.data)?;
        Ok(self.wrap(out))
    }
    fn scaled(&self, x: &Vector, a: f64) -> Result<Vector> {
        let out = self
            .path
            .vgg()
            .vector_scaled(&self.card(x)?.data, a as f32)?;
        Ok(self.wrap(out))
    }
    fn clamp(&self, x: &Vector, range: ([f32; 3], [f32; 3])) -> Result<Vector> {
        let out = self.path.vgg().vector_clamped(&self.card(x)?.data, range)?;
        Ok(self.wrap(out))
    }
    fn two_loop(&self, g: &Vector, history: History, h_diag: f64) -> Result<Vector> {
        let cards = |vs: &[Vector]| vs.iter().map(|v| self.card(v)).collect::<Result<Vec<_>>>();
        let (s, y, g) = (cards(history.s)?, cards(history.y)?, self.card(g)?);
        fn data(vs: &[Arc<CardVector>]) -> Vec<&CudaSlice<f32>> {
            vs.iter().map(|v| &v.data).collect()
        }
        let out =
            self.path
                .vgg()
                .two_loop(&g.data, (&data(&s), &data(&y), history.ro), h_diag as f32)?;
        Ok(self.wrap(out))
    }
}
