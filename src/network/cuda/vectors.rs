//! L-BFGS's vector arithmetic on the card (the kernels `dot`, `abs_stats`, `add_scaled`,
//! `scale` and `clamp_planes`): each result is a new buffer, each scalar one small copy back.

use super::CudaVgg;
use anyhow::{Context, Result, ensure};
use cudarc::driver::CudaSlice;

impl CudaVgg {
    /// `a . b`, summed in float64.
    pub fn vector_dot(&self, a: &CudaSlice<f32>, b: &CudaSlice<f32>) -> Result<f64> {
        ensure!(
            a.len() == b.len(),
            "vectors of {} and {} floats",
            a.len(),
            b.len()
        );
        self.bind()?;
        let s = &self.stream;
        let mut out = s
            .alloc_zeros::<f64>(1)
            .context("allocating a dot product")?;
        self.kernels.dot(s, a, b, &mut out)?;
        Ok(self.scalars(&out)?[0])
    }

    /// `(sum |a_i|, max |a_i|)`; the maximum is NaN where an element is.
    pub fn vector_abs(&self, a: &CudaSlice<f32>) -> Result<(f64, f64)> {
        self.bind()?;
        let s = &self.stream;
        let mut sum = s.alloc_zeros::<f64>(1).context("allocating a sum")?;
        let mut max_bits = s.alloc_zeros::<u32>(1).context("allocating a maximum")?;
        self.kernels.abs_stats(s, a, &mut sum, &mut max_bits)?;
        let bits = s.clone_dtoh(&max_bits).context("copying a maximum back")?;
        let sum = self.scalars(&sum)?[0];
        Ok((sum, f32::from_bits(bits[0]) as f64))
    }

    /// `y + x * a`, a new buffer.
    pub fn vector_add_scaled(
        &self,
        y: &CudaSlice<f32>,
        a: f32,
        x: &CudaSlice<f32>,
    ) -> Result<CudaSlice<f32>> {
        ensure!(
            x.len() == y.len(),
            "vectors of {} and {} floats",
            y.len(),
            x.len()
        );
        let mut out = self.alloc(y.len())?;
        self.kernels.add_scaled(&self.stream, y, x, a, &mut out)?;
        Ok(out)
    }

    /// `x * a`, a new buffer.
    pub fn vector_scaled(&self, x: &CudaSlice<f32>, a: f32) -> Result<CudaSlice<f32>> {
        let mut out = self.alloc(x.len())?;
        self.kernels.scale(&self.stream, x, a, &mut out)?;
        Ok(out)
    }

    /// `x` (`[3][plane]`) clamped to `[lo[c], hi[c]]` per channel, a new buffer.
    pub fn vector_clamped(
        &self,
        x: &CudaSlice<f32>,
        range: ([f32; 3], [f32; 3]),
    ) -> Result<CudaSlice<f32>> {
        let mut out = self.alloc(x.len())?;
        self.kernels
            .clamp_planes(&self.stream, x, range, &mut out)?;
        Ok(out)
    }

    /// Small float64 results on the host, waited for.
    fn scalars(&self, v: &CudaSlice<f64>) -> Result<Vec<f64>> {
        let host = self.stream.clone_dtoh(v).context("copying a scalar back")?;
        self.stream
            .synchronize()
            .context("waiting for the CUDA device")?;
        Ok(host)
    }
}
