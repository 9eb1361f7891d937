//! The divergence guard: a run whose cost blows up (NaN, or far above its best) goes back
//! to its last sound state with half the learning rate, and pauses after three
//! rollbacks in a row.

use super::Point;
use crate::loss::Costs;

/// J rising more than this factor over its best counts as divergence.
const DIVERGENCE_FACTOR: f64 = 100.0;
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

    /// A sound step from `from`, whose cost was `j`.
    pub fn passed(&mut self, from: Point, j: f64) {
        if from.iter > self.diverged_at {
            self.rollbacks_in_a_row = 0;
        }
        self.good = Some(from);
        self.best_j = self.best_j.min(j);
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
