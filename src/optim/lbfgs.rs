//! L-BFGS with a strong-Wolfe line search, on [`Vector`]s where the network computes.

use super::vector::{History, HostOps, Vector, VectorOps};
use super::{Evaluator, Step};
use crate::loss::Costs;
use anyhow::{Result, bail};
use burn::tensor::{Device, Tensor};

/// Evaluates a flattened image: its cost and the gradient of the total cost.
pub type VectorEvaluator<'a> = dyn FnMut(&Vector) -> Result<(Costs, Vector)> + 'a;

/// L-BFGS as in PyTorch's `torch.optim.LBFGS` with `line_search_fn="strong_wolfe"`; one
/// [`Lbfgs::step`] is one outer iteration (PyTorch's `max_iter=1`), its history carried
/// over from step to step.
#[derive(Debug, Clone)]
pub struct Lbfgs {
    pub history: usize,
    pub tolerance_grad: f64,
    pub tolerance_change: f64,
    pub state: LbfgsState,
}

/// What L-BFGS carries between iterations.
#[derive(Debug, Clone, Default)]
pub struct LbfgsState {
    /// Gradient differences `y` and steps `s`, oldest first.
    pub old_dirs: Vec<Vector>,
    pub old_stps: Vec<Vector>,
    pub ro: Vec<f64>,
    pub h_diag: f64,
    pub d: Option<Vector>,
    pub t: f64,
    pub prev_flat_grad: Option<Vector>,
    pub n_iter: u64,
    /// Whether the last iteration converged (no further progress possible).
    pub converged: bool,
}

impl Lbfgs {
    pub fn new(history: usize) -> Self {
        Lbfgs {
            history,
            tolerance_grad: 1e-7,
            tolerance_change: 1e-9,
            state: LbfgsState::default(),
        }
    }

    /// Drops the history (after a divergence, or a change of the cost).
    pub fn reset(&mut self) {
        self.state = LbfgsState::default();
    }

    /// One outer iteration from the flattened image `x`, a vector where `ops` work: its
    /// cost, and the next image, also there (the image itself where L-BFGS has
    /// converged).
    pub fn step(
        &mut self,
        lr: f64,
        x: &Vector,
        eval: &mut VectorEvaluator,
        ops: &dyn VectorOps,
    ) -> Result<(Vector, Costs)> {
        self.state.adopt(ops)?;
        let x = ops.adopt(x)?;
        let (costs, flat_grad) = eval(&x)?;
        let loss = costs.total;
        if ops.abs_max(&flat_grad)? <= self.tolerance_grad {
            self.state.converged = true;
            return Ok((x, costs));
        }
        let d = self.direction(&flat_grad, ops)?;
        let st = &mut self.state;
        st.prev_flat_grad = Some(flat_grad.clone());
        let t0 = if st.n_iter == 1 {
            (1.0f64).min(1.0 / ops.abs_sum(&flat_grad)?) * lr
        } else {
            lr
        };
        let gtd = ops.dot(&flat_grad, &d)?;
        if gtd > -self.tolerance_change {
            st.d = Some(d);
            st.t = t0;
            st.converged = true;
            return Ok((x, costs));
        }
        let mut at = |t: f64| -> Result<(f64, Vector)> {
            let xt = ops.add_scaled(&x, t, &d)?;
            let (c, g) = eval(&xt)?;
            Ok((c.total, g))
        };
        let line = Line {
            d: &d,
            f: loss,
            gtd,
        };
        let t = strong_wolfe(&mut at, t0, line, self.tolerance_change, ops)?;
        let next = ops.add_scaled(&x, t, &d)?;
        let st = &mut self.state;
        st.d = Some(d);
        st.t = t;
        Ok((next, costs))
    }

    /// [`Lbfgs::step`] on an image tensor, its vectors the host's tensors.
    pub fn step_tensor(&mut self, lr: f64, x: Tensor<4>, eval: &mut Evaluator) -> Step {
        let (dims, device) = (x.dims(), x.device());
        let n: usize = dims.iter().product();
        let ops = HostOps {
            device: device.clone(),
        };
        let mut on_vectors = |v: &Vector| -> Result<(Costs, Vector)> {
            let (costs, g) = eval(&v.to_host(&device)?.reshape(dims))?;
            Ok((costs, Vector::Host(g.reshape([n]))))
        };
        let (next, costs) = self.step(lr, &Vector::Host(x.reshape([n])), &mut on_vectors, &ops)?;
        Ok((next.to_host(&device)?.reshape(dims), costs))
    }

    /// The search direction from the gradient and the history (the two-loop recursion),
    /// after taking the last step into the history.
    fn direction(&mut self, flat_grad: &Vector, ops: &dyn VectorOps) -> Result<Vector> {
        let st = &mut self.state;
        st.n_iter += 1;
        let (Some(prev), Some(last_d), false) = (&st.prev_flat_grad, &st.d, st.n_iter == 1) else {
            st.old_dirs.clear();
            st.old_stps.clear();
            st.ro.clear();
            st.h_diag = 1.0;
            return ops.scaled(flat_grad, -1.0);
        };
        let y = ops.sub(flat_grad, prev)?;
        let s = ops.scaled(last_d, st.t)?;
        let ys = ops.dot(&y, &s)?;
        if ys > 1e-10 {
            if st.old_dirs.len() == self.history {
                st.old_dirs.remove(0);
                st.old_stps.remove(0);
                st.ro.remove(0);
            }
            st.h_diag = ys / ops.dot(&y, &y)?;
            st.old_dirs.push(y);
            st.old_stps.push(s);
            st.ro.push(1.0 / ys);
        }
        let history = History {
            s: &st.old_stps,
            y: &st.old_dirs,
            ro: &st.ro,
        };
        ops.two_loop(flat_grad, history, st.h_diag)
    }

    pub(super) fn move_to(&mut self, device: &Device) {
        let st = &mut self.state;
        let mv = |v: &mut Vector| {
            if let Vector::Host(t) = v {
                *t = t.clone().to_device(device);
            }
        };
        st.old_dirs.iter_mut().for_each(mv);
        st.old_stps.iter_mut().for_each(mv);
        st.d.iter_mut().for_each(mv);
        st.prev_flat_grad.iter_mut().for_each(mv);
    }
}

impl LbfgsState {
    /// Brings every vector to where `ops` work (after a change of backend, or a resume).
    fn adopt(&mut self, ops: &dyn VectorOps) -> Result<()> {
        let vectors = self.old_dirs.iter_mut().chain(&mut self.old_stps);
        for v in vectors.chain(&mut self.d).chain(&mut self.prev_flat_grad) {
            *v = ops.adopt(v)?;
        }
        Ok(())
    }
}

/// The minimiser of the cubic through two points with their slopes, within bounds.
fn cubic_interpolate(
    x1: f64,
    f1: f64,
    g1: f64,
    x2: f64,
    f2: f64,
    g2: f64,
    bounds: Option<(f64, f64)>,
) -> f64 {
    let (lo, hi) = bounds.unwrap_or(if x1 <= x2 { (x1, x2) } else { (x2, x1) });
    let d1 = g1 + g2 - 3.0 * (f1 - f2) / (x1 - x2);
    let d2_square = d1 * d1 - g1 * g2;
    if d2_square >= 0.0 {
        let d2 = d2_square.sqrt();
        let min_pos = if x1 <= x2 {
            x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2.0 * d2))
        } else {
            x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2.0 * d2))
        };
        min_pos.max(lo).min(hi)
    } else {
        (lo + hi) / 2.0
    }
}

/// A point of the line search: step, cost, gradient, directional derivative.
#[derive(Clone)]
struct Probe {
    t: f64,
    f: f64,
    gtd: f64,
}

/// The line searched: the direction `d`, and at its start the cost `f` and the
/// directional derivative `gtd`.
struct Line<'a> {
    d: &'a Vector,
    f: f64,
    gtd: f64,
}

/// Strong-Wolfe line search (Nocedal & Wright, Algorithms 3.5 and 3.6), as PyTorch has it.
/// Returns the accepted step.
fn strong_wolfe(
    at: &mut dyn FnMut(f64) -> Result<(f64, Vector)>,
    t_init: f64,
    Line { d, f, gtd }: Line,
    tolerance_change: f64,
    ops: &dyn VectorOps,
) -> Result<f64> {
    const C1: f64 = 1e-4;
    const C2: f64 = 0.9;
    const MAX_LS: usize = 25;
    let d_norm = ops.abs_max(d)?;
    let mut t = t_init;
    let (f_new, g_new) = at(t)?;
    let mut new = Probe {
        t,
        f: f_new,
        gtd: ops.dot(&g_new, d)?,
    };
    let mut prev = Probe { t: 0.0, f, gtd };
    let mut ls_iter = 0;
    let mut done = false;
    let mut bracket: Vec<Probe> = Vec::new();
    while ls_iter < MAX_LS {
        if new.f > f + C1 * new.t * gtd || (ls_iter > 1 && new.f >= prev.f) {
            bracket = vec![prev.clone(), new.clone()];
            break;
        }
        if new.gtd.abs() <= -C2 * gtd {
            bracket = vec![new.clone()];
            done = true;
            break;
        }
        if new.gtd >= 0.0 {
            bracket = vec![prev.clone(), new.clone()];
            break;
        }
        let min_step = new.t + 0.01 * (new.t - prev.t);
        let max_step = new.t * 10.0;
        t = cubic_interpolate(
            prev.t,
            prev.f,
            prev.gtd,
            new.t,
            new.f,
            new.gtd,
            Some((min_step, max_step)),
        );
        prev = new;
        let (f_new, g_new) = at(t)?;
        new = Probe {
            t,
            f: f_new,
            gtd: ops.dot(&g_new, d)?,
        };
        ls_iter += 1;
    }
    if ls_iter == MAX_LS {
        bracket = vec![Probe { t: 0.0, f, gtd }, new];
    }
    if !bracket.iter().all(|p| p.f.is_finite()) {
        bail!("the line search met a non-finite cost");
    }
    // Zoom phase: shrink the bracket until the strong Wolfe conditions hold.
    let mut insuf_progress = false;
    let order = |b: &[Probe]| {
        if b[0].f <= b[b.len() - 1].f {
            (0, 1)
        } else {
            (1, 0)
        }
    };
    let (mut low, mut high) = if bracket.len() == 2 {
        order(&bracket)
    } else {
        (0, 0)
    };
    while !done && ls_iter < MAX_LS && bracket.len() == 2 {
        if (bracket[1].t - bracket[0].t).abs() * d_norm < tolerance_change {
            break;
        }
        let (b0, b1) = (&bracket[0], &bracket[1]);
        t = cubic_interpolate(b0.t, b0.f, b0.gtd, b1.t, b1.f, b1.gtd, None);
        let bmax = b0.t.max(b1.t);
        let bmin = b0.t.min(b1.t);
        let eps = 0.1 * (bmax - bmin);
        if (bmax - t).min(t - bmin) < eps {
            if insuf_progress || t >= bmax || t <= bmin {
                t = if (t - bmax).abs() < (t - bmin).abs() {
                    bmax - eps
                } else {
                    bmin + eps
                };
                insuf_progress = false;
            } else {
                insuf_progress = true;
            }
        } else {
            insuf_progress = false;
        }
        let (f_new, g_new) = at(t)?;
        let probe = Probe {
            t,
            f: f_new,
            gtd: ops.dot(&g_new, d)?,
        };
        ls_iter += 1;
        if probe.f > f + C1 * t * gtd || probe.f >= bracket[low].f {
            bracket[high] = probe;
            (low, high) = order(&bracket);
        } else {
            if probe.gtd.abs() <= -C2 * gtd {
                done = true;
            } else if probe.gtd * (bracket[high].t - bracket[low].t) >= 0.0 {
                bracket[high] = bracket[low].clone();
            }
            bracket[low] = probe;
        }
    }
    Ok(bracket.swap_remove(low).t)
}
