//! One iteration of the worker: the optimiser's step (on the network's resident state or
//! on the engine's tensors), the divergence guard's verdict, the record, and a rollback
//! where the step blew up.

use super::{MAX_ROLLBACKS, Worker, panic_message};
use crate::engine::{Event, RunState};
use crate::image as img;
use crate::loss::Costs;
use crate::network::resident::Resident;
use crate::optim::{AfterStep, Optimizer};
use crate::run_dir::Record;
use anyhow::{Result, bail};
use burn::tensor::Tensor;
use std::time::Instant;

/// Where tests make the compute path fail (a lost device, a bug): the fail point
/// `network-evaluate` panics, or returns its text as an error.
fn injected_fault() -> Result<()> {
    fail::fail_point!("network-evaluate", |e: Option<String>| Err(
        anyhow::anyhow!("{}", e.unwrap_or_default())
    ));
    Ok(())
}

impl Worker {
    /// One iteration: a new scale first where one starts here, then the optimiser's step,
    /// the guard's verdict on its costs (a rollback where they blew up), the record, and
    /// a snapshot or a preview when one is due.
    pub(super) fn step(&mut self) -> Result<()> {
        if self.point.iter >= self.stages[self.stage].end && self.stage + 1 < self.stages.len() {
            self.next_stage()?;
        }
        let started = Instant::now();
        let candidate = self.point.clone();
        let lr = self.preset.settings.optimizer.lr();
        let stepped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if self.keeps_state() {
                return self.resident_costs(lr).map(|costs| (None, costs));
            }
            let (network, targets, weights) = (&self.network, &self.targets, &self.weights);
            let mut eval = |x: &Tensor<4>| {
                injected_fault()?;
                network.evaluate(x, targets, weights)
            };
            let point = &mut self.point;
            let (next, costs) = point.optimizer.step(lr, point.x.clone(), &mut eval)?;
            Ok((Some(next), costs))
        }));
        let result = match stepped {
            Ok(result) => result,
            Err(panic) => {
                // The optimiser may be half-updated: go back to where the step began.
                self.point = candidate;
                bail!(
                    "the {} path stopped on an internal error at iteration {} ({}); the run's checkpoint resumes it, on another backend with `easel resume RUN_DIR --backend cpu`",
                    self.network.path_name(),
                    self.point.iter,
                    panic_message(&panic)
                );
            }
        };
        let elapsed_before = self.elapsed_s;
        let (next, costs) = match result {
            Ok((next, costs)) if self.guard.accepts(&costs) => (next, costs),
            rejected => {
                self.elapsed_s += started.elapsed().as_secs_f64();
                let reason = match rejected {
                    Ok((_, costs)) => format!("J = {:e}", costs.total),
                    Err(e) => format!("{e:#}"),
                };
                return self.roll_back(&reason);
            }
        };
        self.guard.passed(candidate, &costs, &self.weights);
        // The record first: where it cannot be written, the state has not moved on, and
        // the checkpoint the failure saves is still the one the records end at.
        let record = self.record(&costs, elapsed_before, false);
        self.run_dir.append_record(&record)?;
        match next {
            Some(next) => self.take_host_step(next),
            None => self.take_resident_step(lr)?,
        }
        self.elapsed_s += started.elapsed().as_secs_f64();
        self.emit(Event::Iteration(record));
        self.point.iter += 1;
        if self.preset.save_every > 0 && self.point.iter.is_multiple_of(self.preset.save_every) {
            self.save_snapshot()?;
        } else if self.preview_every_s > 0.0
            && self.last_preview.elapsed().as_secs_f64() >= self.preview_every_s
        {
            self.send_preview();
        }
        Ok(())
    }

    /// Whether this step goes through the network's resident state: Adam on a path that
    /// keeps it, and L-BFGS always (its image stays among its vectors).
    fn keeps_state(&self) -> bool {
        match self.point.optimizer {
            Optimizer::Adam(_) => self.network.keeps_adam_state(),
            Optimizer::Lbfgs(_) => true,
        }
    }

    /// The costs of the resident image, taking the state over first where the network
    /// does not hold it yet. L-BFGS takes its whole step here (the line search), and
    /// keeps the next image for [`Worker::take_resident_step`].
    fn resident_costs(&mut self, lr: f64) -> Result<Costs> {
        if self.resident.is_none() {
            let image = (&self.point.x, self.point.ema.as_ref().map(|e| &e.avg));
            let taken = Resident::new(&self.network, image, &self.point.optimizer)?;
            self.resident = Some(taken);
        }
        let Some(resident) = self.resident.as_mut() else {
            unreachable!("taken over above")
        };
        let mut around = |evaluate: &mut dyn FnMut() -> Result<Costs>| {
            injected_fault()?;
            evaluate()
        };
        resident.evaluate(
            (&self.network, &self.targets, &self.weights),
            (&mut self.point.optimizer, lr),
            &mut around,
        )
    }

    /// Takes the step the resident state evaluated (Adam's update, or L-BFGS's next
    /// image), then the clamp and the EMA; the point's scalars follow.
    fn take_resident_step(&mut self, lr: f64) -> Result<()> {
        let ema = self.point.ema.is_some().then_some(self.preset.ema);
        let Some(resident) = self.resident.as_mut() else {
            bail!("an update of the network's state without it")
        };
        let after = AfterStep::new(self.preset.clamp, ema);
        resident.update((&mut self.point.optimizer, lr), after)?;
        if let Some(ema) = &mut self.point.ema {
            ema.count += 1;
        }
        self.stale = true;
        Ok(())
    }

    /// The next image of a step the engine took on its own tensors.
    fn take_host_step(&mut self, next: Tensor<4>) {
        self.point.x = if self.preset.clamp {
            img::clamp_pixels(next)
        } else {
            next
        };
        if let Some(ema) = &mut self.point.ema {
            ema.update(&self.point.x, self.preset.ema);
        }
    }

    /// Brings the point's tensors up to the resident state.
    pub(super) fn settle(&mut self) -> Result<()> {
        if !self.stale {
            return Ok(());
        }
        let Some(resident) = &self.resident else {
            bail!(
                "the run's image was lost with its compute path; resume the run from its last checkpoint"
            )
        };
        let state = resident.store(&self.backend.device)?;
        self.point.x = state.x;
        if let Optimizer::Adam(adam) = &mut self.point.optimizer {
            (adam.m, adam.v) = (state.m, state.v);
        }
        if let (Some(ema), Some(avg)) = (&mut self.point.ema, state.avg) {
            ema.avg = avg;
        }
        self.stale = false;
        Ok(())
    }

    /// Takes the state back from the network, which will not keep it (another scale,
    /// another backend).
    pub(super) fn leave_resident(&mut self) -> Result<()> {
        self.settle()?;
        self.resident = None;
        Ok(())
    }

    pub(super) fn record(&self, costs: &Costs, elapsed_s: f64, is_final: bool) -> Record {
        Record {
            iter: self.point.iter,
            j: costs.total,
            j_content: costs.content,
            j_style: costs.style,
            style: costs
                .style_layers
                .iter()
                .map(|(l, j)| (l.name().to_string(), *j))
                .collect(),
            elapsed_s,
            backend: self.backend.kind.name().to_string(),
            is_final,
        }
    }

    /// Goes back to the last sound state with half the learning rate.
    fn roll_back(&mut self, reason: &str) -> Result<()> {
        let at = self.point.iter;
        let Some((good, pause)) = self.guard.roll_back(at) else {
            bail!(
                "the run diverged at iteration {at} ({reason}) with no earlier sound state to return to; lower the learning rate or the weights"
            );
        };
        let iter = good.iter;
        // The network's state goes back first: where it cannot, nothing of it may be
        // saved (`settle` then fails, and the checkpoint on disk stays the last sound one).
        if let Some(resident) = &mut self.resident {
            if let Err(e) = resident.roll_back() {
                self.resident = None;
                self.stale = true;
                return Err(e);
            }
            // The good point's tensors are those of whenever it last settled.
            self.stale = true;
        }
        self.point = good;
        self.point.optimizer.cost_changed();
        let lr = self.preset.settings.optimizer.lr() / 2.0;
        self.preset.settings.optimizer.set_lr(lr);
        self.run_dir.truncate_records(iter)?;
        // The why before the change it makes.
        let notice = format!(
            "diverged at iteration {at} ({reason}): rolled back to iteration {iter} and halved the learning rate to {lr}"
        );
        tracing::info!("{notice}");
        self.emit(Event::Notice(notice));
        self.record_change("optimizer.lr".into(), yaml_serde::Value::from(lr))?;
        if pause {
            self.emit(Event::Notice(format!(
                "paused: {MAX_ROLLBACKS} rollbacks in a row. The cost keeps blowing up; lower the style/content weights or the learning rate, then resume"
            )));
            self.set_state(RunState::Paused);
        }
        Ok(())
    }
}
