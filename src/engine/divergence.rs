//! The divergence guard: a run whose cost blows up (NaN, or far above its best) goes back
//! to its last sound state with half the learning rate, and pauses after three
//! rollbacks in a row.

use super::Point;
use crate::loss::{CostWeights, Costs};

/// J rising more than this factor over its best counts as divergence.
const DIVERGENCE_FACTOR: f64 = 100.0;
/// Below this share of J, a weighted term counts as absent.
const ABSENT_SHARE: f64 = 1e-6;
/// Rollbacks in a row after which the run pauses.
pub const MAX_ROLLBACKS: u32 = 3;

pub struct DivergenceGuard {
    /// The lowest J since the cost last changed.
    best_j: f64,
    /// The last state whose cost was sound: where a divergence rolls back to.
    good: Option<Point>,
    rollbacks_in_a_row: u32,
    /// The iteration of the last divergence: the streak of rollbacks ends only once
    /// the run gets past it.
    diverged_at: u64,
}

impl DivergenceGuard {
    pub fn new(best_j: f64) -> Self {
        DivergenceGuard {
            best_j,
            good: None,
            rollbacks_in_a_row: 0,
            diverged_at: 0,
        }
    }

    /// The best J so far (kept in checkpoints).
    pub fn best_j(&self) -> f64 {
        self.best_j
    }

    /// The cost itself changed (a weight, the content layer): the best J no longer
    /// compares.
    pub fn cost_changed(&mut self) {
        self.best_j = f64::INFINITY;
    }

    /// The state moved where a rollback cannot follow (another device or scale).
    pub fn state_moved(&mut self) {
        self.good = None;
    }

    /// The user resumed a run the guard paused.
    pub fn resumed(&mut self) {
        self.rollbacks_in_a_row = 0;
    }

    /// Whether a step that cost `costs` is sound.
    pub fn accepts(&self, costs: &Costs) -> bool {
        costs.is_finite() && costs.total <= DIVERGENCE_FACTOR * self.best_j
    }

    /// A sound step from `from`, whose cost was `costs` under `weights`.
    pub fn passed(&mut self, from: Point, costs: &Costs, weights: &CostWeights) {
        if from.iter > self.diverged_at {
            self.rollbacks_in_a_row = 0;
        }
        self.good = Some(from);
        if is_yardstick(costs, weights) {
            self.best_j = self.best_j.min(costs.total);
        }
    }

    /// The state to go back to after a divergence at iteration `at`, with whether the
    /// run should now pause; `None` where there is no sound state yet.
    pub fn roll_back(&mut self, at: u64) -> Option<(Point, bool)> {
        let good = self.good.clone()?;
        self.rollbacks_in_a_row += 1;
        self.diverged_at = at;
        Some((good, self.rollbacks_in_a_row >= MAX_ROLLBACKS))
    }
}

/// Whether a J can be the yardstick later ones are held to: not where the style term
/// it weighs is (all but) absent. At the usual weights the style term dwarfs the rest
/// of J, from noise or from the content image (whose J is the style term alone, the
/// run's natural scale). A run that starts at the style image (`init: style`) has
/// J_style 0 there, and its first steps rightly rise far above that J: held to it,
/// they would count as divergence and quarter the learning rate.
fn is_yardstick(costs: &Costs, weights: &CostWeights) -> bool {
    let style = costs.total - weights.alpha * costs.content - weights.tv_weight * costs.tv;
    let style_weight = weights.beta + weights.region_weights.iter().sum::<f64>();
    style_weight == 0.0 || style > ABSENT_SHARE * costs.total
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::optim::{Optimizer, OptimizerSpec};
    use crate::vgg::Layer;
    use burn::tensor::{Device, Tensor};

    fn point(iter: u64) -> Point {
        Point {
            iter,
            x: Tensor::zeros([1, 3, 2, 2], &Device::flex()),
            optimizer: Optimizer::new(&OptimizerSpec::default()),
            ema: None,
        }
    }

    fn weights() -> CostWeights {
        CostWeights {
            alpha: 10.0,
            beta: 1e4,
            content_layer: Layer::parse("conv4_2").expect("layer"),
            style_layers: vec![(Layer::parse("conv1_1").expect("layer"), 1.0)],
            tv_weight: 1.0,
            style_loss: crate::loss::StyleLoss::Gram,
            region_weights: Vec::new(),
        }
    }

    fn costs(content: f64, style: f64, tv: f64) -> Costs {
        let w = weights();
        Costs {
            total: w.alpha * content + w.beta * style + w.tv_weight * tv,
            content,
            style,
            style_layers: Vec::new(),
            tv,
            regions: Vec::new(),
        }
    }

    #[test]
    fn a_start_at_the_style_image_is_no_yardstick() {
        let mut guard = DivergenceGuard::new(f64::INFINITY);
        // init: style: J_style is 0, J is the content term alone.
        guard.passed(point(0), &costs(3.3e4, 0.0, 5.0), &weights());
        let rise = costs(3.0e4, 1e4, 5.0);
        assert!(rise.total > 100.0 * 3.3e5);
        assert!(guard.accepts(&rise), "the first steps from the style rise");
        guard.passed(point(1), &rise, &weights());
        assert_eq!(guard.best_j(), rise.total);
        assert!(
            !guard.accepts(&costs(3.0e4, 1e7, 5.0)),
            "then J is held to it"
        );
    }

    #[test]
    fn a_blow_up_from_noise_or_the_content_image_is_caught() {
        // From noise every term is there; from the content image J_content is 0.
        for start in [costs(3.3e4, 1e3, 5.0), costs(0.0, 1e3, 5.0)] {
            let mut guard = DivergenceGuard::new(f64::INFINITY);
            guard.passed(point(0), &start, &weights());
            assert_eq!(guard.best_j(), start.total);
            assert!(!guard.accepts(&costs(3.3e4, 1e6, 5.0)));
            assert!(!guard.accepts(&costs(f64::NAN, 1.0, 5.0)));
        }
        // Without a style weight (a content-only run), every J is a yardstick.
        let content_only = CostWeights {
            beta: 0.0,
            ..weights()
        };
        let mut guard = DivergenceGuard::new(f64::INFINITY);
        let c = Costs {
            total: 10.0 * 3.3e4 + 5.0,
            ..costs(3.3e4, 0.0, 5.0)
        };
        guard.passed(point(0), &c, &content_only);
        assert_eq!(guard.best_j(), c.total);
    }
}
