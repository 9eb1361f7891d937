//! L-BFGS's vector arithmetic on the card (the kernels `dot`, `abs_stats`, `add_scaled`,
//! `add_scaled_dots`, `scale` and `clamp_planes`): each result is a new buffer, each
//! scalar one small copy back, except within the two-loop recursion, whose scalars stay
//! on the card.

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
        self.kernels.dot(s, a, b, (&mut out, 0))?;
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

    /// L-BFGS's two-loop recursion (`VectorOps::two_loop`) with its scalars on the card:
    /// each dot product goes into a slot of one buffer and the next update reads it
    /// there, so that the recursion queues its 4k launches and waits for none. The
    /// history: steps `s`, gradient differences `y`, `ro = 1 / (y . s)`, oldest first.
    pub fn two_loop(
        &self,
        g: &CudaSlice<f32>,
        (s, y, ro): (&[&CudaSlice<f32>], &[&CudaSlice<f32>], &[f64]),
        h_diag: f32,
    ) -> Result<CudaSlice<f32>> {
        let k = s.len();
        ensure!(
            y.len() == k && ro.len() == k,
            "a history of {k} steps, {} gradient differences and {} ro",
            y.len(),
            ro.len()
        );
        self.bind()?;
        let st = &self.stream;
        // Slot i: s_i . q of the first loop; slot k + i: y_i . r of the second.
        let mut dots = st
            .alloc_zeros::<f64>(2 * k.max(1))
            .context("allocating the two-loop recursion's dot products")?;
        let mut q = self.vector_scaled(g, -1.0)?;
        for i in (0..k).rev() {
            self.kernels.dot(st, s[i], &q, (&mut dots, i))?;
            let mut next = self.alloc(q.len())?;
            let from = (&dots, i, None, ro[i]);
            self.kernels
                .add_scaled_dots(st, (&q, y[i]), from, &mut next)?;
            q = next;
        }
        let mut r = self.vector_scaled(&q, h_diag)?;
        for i in 0..k {
            self.kernels.dot(st, y[i], &r, (&mut dots, k + i))?;
            let mut next = self.alloc(r.len())?;
            let from = (&dots, i, Some(k + i), ro[i]);
            self.kernels
                .add_scaled_dots(st, (&r, s[i]), from, &mut next)?;
            r = next;
        }
        Ok(r)
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
