//! Optimisers on one image tensor: Adam and L-BFGS with a strong-Wolfe line search.
//!
//! Both take the image and an evaluator that returns the cost of an image and its
//! gradient, and return the next image with the cost of the one they were given (the
//! record `losses.jsonl` keeps for that iteration). Their state is plain tensors, so it
//! can move between devices and be written to a checkpoint.

use crate::loss::Costs;
use anyhow::{Result, bail};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

/// An optimiser step's result: the next image and the cost of the one it was given.
pub type Step = Result<(Tensor<4>, Costs)>;

/// Evaluates an image: its cost and the gradient of the total cost.
pub type Evaluator<'a> = dyn FnMut(&Tensor<4>) -> Result<(Costs, Tensor<4>)> + 'a;

fn scalar(t: Tensor<1>) -> f64 {
    t.into_scalar::<f32>() as f64
}

fn dot(a: &Tensor<1>, b: &Tensor<1>) -> f64 {
    scalar((a.clone() * b.clone()).sum())
}

/// Adam (Kingma & Ba), in PyTorch's formulation.
#[derive(Debug, Clone)]
pub struct Adam {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Steps taken so far.
    pub t: u64,
    pub m: Option<Tensor<4>>,
    pub v: Option<Tensor<4>>,
}

impl Default for Adam {
    fn default() -> Self {
        Adam {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            t: 0,
            m: None,
            v: None,
        }
    }
}

impl Adam {
    pub fn step(&mut self, lr: f64, x: Tensor<4>, eval: &mut Evaluator) -> Step {
        let (costs, g) = eval(&x)?;
        self.t += 1;
        let m = match self.m.take() {
            Some(m) => m * self.beta1 + g.clone() * (1.0 - self.beta1),
            None => g.clone() * (1.0 - self.beta1),
        };
        let v = match self.v.take() {
            Some(v) => v * self.beta2 + g.square() * (1.0 - self.beta2),
            None => g.square() * (1.0 - self.beta2),
        };
        let bc1 = 1.0 - self.beta1.powi(self.t as i32);
        let bc2 = 1.0 - self.beta2.powi(self.t as i32);
        let denom = v.clone().sqrt() / bc2.sqrt() + self.eps;
        let next = x - m.clone() / denom * (lr / bc1);
        self.m = Some(m);
        self.v = Some(v);
        Ok((next, costs))
    }

    fn move_to(&mut self, device: &Device) {
        self.m = self.m.take().map(|t| t.to_device(device));
        self.v = self.v.take().map(|t| t.to_device(device));
    }

    /// Carries the moments to the next scale of a coarse-to-fine run, `width` x `height`.
    ///
    /// The costs are normalised per pixel, so each pixel's gradient shrinks in proportion
    /// to the pixel count. The moments are resized and scaled with it (`m` by the ratio
    /// `r` of the pixel counts, `v` by `r^2`), so that the step `m / sqrt(v)` carries on
    /// as it was; unscaled, the carried second moment would damp the first
    /// ~1/(1-beta2) steps of the finer scale.
    pub fn carry_to(&mut self, width: u32, height: u32) {
        let Some(m) = self.m.take() else { return };
        let [_, _, h, w] = m.dims();
        let r = (w * h) as f64 / (width as f64 * height as f64);
        self.m = Some(crate::image::resize_tensor(m, width, height) * r);
        self.v = self
            .v
            .take()
            .map(|v| crate::image::resize_tensor(v, width, height) * (r * r));
    }
}

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
    pub old_dirs: Vec<Tensor<1>>,
    pub old_stps: Vec<Tensor<1>>,
    pub ro: Vec<f64>,
    pub h_diag: f64,
    pub d: Option<Tensor<1>>,
    pub t: f64,
    pub prev_flat_grad: Option<Tensor<1>>,
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

    pub fn step(&mut self, lr: f64, x: Tensor<4>, eval: &mut Evaluator) -> Step {
        let dims = x.dims();
        let n: usize = dims.iter().product();
        let flat = |t: Tensor<4>| -> Tensor<1> { t.reshape([n]) };
        let (costs, g) = eval(&x)?;
        let loss = costs.total;
        let flat_grad = flat(g);
        if scalar(flat_grad.clone().abs().max()) <= self.tolerance_grad {
            self.state.converged = true;
            return Ok((x, costs));
        }
        let st = &mut self.state;
        st.n_iter += 1;
        let d = if st.n_iter == 1 || st.d.is_none() || st.prev_flat_grad.is_none() {
            st.old_dirs.clear();
            st.old_stps.clear();
            st.ro.clear();
            st.h_diag = 1.0;
            flat_grad.clone().neg()
        } else {
            let prev = st.prev_flat_grad.clone().expect("checked above");
            let y = flat_grad.clone() - prev;
            let s = st.d.clone().expect("checked above") * st.t;
            let ys = dot(&y, &s);
            if ys > 1e-10 {
                if st.old_dirs.len() == self.history {
                    st.old_dirs.remove(0);
                    st.old_stps.remove(0);
                    st.ro.remove(0);
                }
                st.h_diag = ys / dot(&y, &y);
                st.old_dirs.push(y);
                st.old_stps.push(s);
                st.ro.push(1.0 / ys);
            }
            let k = st.old_dirs.len();
            let mut al = vec![0.0; k];
            let mut q = flat_grad.clone().neg();
            for i in (0..k).rev() {
                al[i] = dot(&st.old_stps[i], &q) * st.ro[i];
                q = q - st.old_dirs[i].clone() * al[i];
            }
            let mut r = q * st.h_diag;
            for (i, a) in al.iter().enumerate() {
                let be_i = dot(&st.old_dirs[i], &r) * st.ro[i];
                r = r + st.old_stps[i].clone() * (a - be_i);
            }
            r
        };
        st.prev_flat_grad = Some(flat_grad.clone());
        let t0 = if st.n_iter == 1 {
            (1.0f64).min(1.0 / scalar(flat_grad.clone().abs().sum())) * lr
        } else {
            lr
        };
        let gtd = dot(&flat_grad, &d);
        if gtd > -self.tolerance_change {
            st.d = Some(d);
            st.t = t0;
            st.converged = true;
            return Ok((x, costs));
        }
        let x_flat = flat(x);
        let mut at = |t: f64| -> Result<(f64, Tensor<1>)> {
            let xt = (x_flat.clone() + d.clone() * t).reshape(dims);
            let (c, g) = eval(&xt)?;
            Ok((c.total, flat(g)))
        };
        let (_, _, t) = strong_wolfe(&mut at, t0, &d, loss, flat_grad, gtd, self.tolerance_change)?;
        let next = (x_flat + d.clone() * t).reshape(dims);
        let st = &mut self.state;
        st.d = Some(d);
        st.t = t;
        Ok((next, costs))
    }

    fn move_to(&mut self, device: &Device) {
        let st = &mut self.state;
        let mv = |v: &mut Vec<Tensor<1>>| {
            for t in v.iter_mut() {
                *t = t.clone().to_device(device);
            }
        };
        mv(&mut st.old_dirs);
        mv(&mut st.old_stps);
        st.d = st.d.take().map(|t| t.to_device(device));
        st.prev_flat_grad = st.prev_flat_grad.take().map(|t| t.to_device(device));
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
    g: Tensor<1>,
    gtd: f64,
}

/// Strong-Wolfe line search (Nocedal & Wright, Algorithms 3.5 and 3.6), as PyTorch has it.
/// Returns the accepted cost, gradient and step.
fn strong_wolfe(
    at: &mut dyn FnMut(f64) -> Result<(f64, Tensor<1>)>,
    t_init: f64,
    d: &Tensor<1>,
    f: f64,
    g: Tensor<1>,
    gtd: f64,
    tolerance_change: f64,
) -> Result<(f64, Tensor<1>, f64)> {
    const C1: f64 = 1e-4;
    const C2: f64 = 0.9;
    const MAX_LS: usize = 25;
    let d_norm = scalar(d.clone().abs().max());
    let mut t = t_init;
    let (f_new, g_new) = at(t)?;
    let mut new = Probe {
        t,
        f: f_new,
        gtd: dot(&g_new, d),
        g: g_new,
    };
    let mut prev = Probe {
        t: 0.0,
        f,
        g: g.clone(),
        gtd,
    };
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
            gtd: dot(&g_new, d),
            g: g_new,
        };
        ls_iter += 1;
    }
    if ls_iter == MAX_LS {
        bracket = vec![Probe { t: 0.0, f, g, gtd }, new];
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
            gtd: dot(&g_new, d),
            g: g_new,
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
    let best = bracket.swap_remove(low);
    Ok((best.f, best.g, best.t))
}

/// Which optimiser.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    #[default]
    Adam,
    Lbfgs,
}

/// The optimiser a preset asks for: `{kind: adam, lr: 2.0}` or `{kind: lbfgs, history: 100}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerSpec {
    #[serde(default)]
    pub kind: OptimizerKind,
    /// The learning rate (L-BFGS: the line search's initial step); the kind's default
    /// when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    /// L-BFGS history length (memory: history x 2 x pixels x 3 floats).
    #[serde(default = "default_history")]
    pub history: usize,
}

fn default_history() -> usize {
    100
}

impl Default for OptimizerSpec {
    fn default() -> Self {
        OptimizerSpec {
            kind: OptimizerKind::Adam,
            lr: None,
            history: default_history(),
        }
    }
}

impl OptimizerSpec {
    pub fn adam(lr: f64) -> Self {
        OptimizerSpec {
            kind: OptimizerKind::Adam,
            lr: Some(lr),
            history: default_history(),
        }
    }
    pub fn lbfgs(lr: f64, history: usize) -> Self {
        OptimizerSpec {
            kind: OptimizerKind::Lbfgs,
            lr: Some(lr),
            history,
        }
    }
    pub fn lr(&self) -> f64 {
        self.lr.unwrap_or(match self.kind {
            OptimizerKind::Adam => 2.0,
            OptimizerKind::Lbfgs => 1.0,
        })
    }
    pub fn set_lr(&mut self, value: f64) {
        self.lr = Some(value);
    }
}

/// A running optimiser.
#[derive(Debug, Clone)]
pub enum Optimizer {
    Adam(Adam),
    Lbfgs(Lbfgs),
}

impl Optimizer {
    pub fn new(spec: &OptimizerSpec) -> Self {
        match spec.kind {
            OptimizerKind::Adam => Optimizer::Adam(Adam::default()),
            OptimizerKind::Lbfgs => Optimizer::Lbfgs(Lbfgs::new(spec.history)),
        }
    }

    /// One iteration: returns the next image and the cost of `x`.
    pub fn step(&mut self, lr: f64, x: Tensor<4>, eval: &mut Evaluator) -> Step {
        match self {
            Optimizer::Adam(a) => a.step(lr, x, eval),
            Optimizer::Lbfgs(l) => l.step(lr, x, eval),
        }
    }

    /// Forgets curvature information that no longer fits the cost (L-BFGS only: Adam's
    /// moments adapt by themselves).
    pub fn cost_changed(&mut self) {
        if let Optimizer::Lbfgs(l) = self {
            l.reset();
        }
    }

    pub fn move_to(&mut self, device: &Device) {
        match self {
            Optimizer::Adam(a) => a.move_to(device),
            Optimizer::Lbfgs(l) => l.move_to(device),
        }
    }
}
