//! The engine's worker thread: prepares a run, then alternates between taking commands
//! and taking optimiser steps (`step.rs`) until the run finishes or is stopped.

mod step;

use super::divergence::{DivergenceGuard, MAX_ROLLBACKS};
use super::inputs::{Inputs, Sources};
use super::memory::Fit;
use super::schedule::{self, Stage};
use super::{
    Checkpoint, Command, Destination, Ema, Event, Point, RunSpec, RunState, Setting, Started,
};
use crate::backend::{Backend, BackendChoice, BackendKind};
use crate::image as img;
use crate::loss::{CostWeights, Targets};
use crate::network::resident::Resident;
use crate::network::{ConvChoice, Network};
use crate::optim::Optimizer;
use crate::preset::{Change, Preset};
use crate::run_dir::{self, Record, RunDir};
use crate::runs::RunStatus;
use crate::vgg::Layer;
use crate::weights;
use anyhow::{Result, anyhow, bail};
use burn::tensor::Tensor;
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::time::Instant;

pub(super) fn run(spec: RunSpec, rx: Receiver<Command>, tx: Sender<Event>) {
    let _ = tx.send(Event::State(RunState::Preparing));
    // A panic (a bug, a GPU library giving up) still ends as a failure the front end
    // reports, never as a silent thread death that leaves it waiting.
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Worker::prepare(spec, tx.clone()).and_then(|w| w.run(rx))
    }))
    .unwrap_or_else(|panic| {
        Err(anyhow!(
            "easel's engine stopped on an internal error ({}); the last checkpoint in the run directory resumes the run. Please report this",
            panic_message(&panic)
        ))
    });
    if let Err(e) = result {
        tracing::info!("the run failed: {e:#}");
        let _ = tx.send(Event::State(RunState::Failed));
        let _ = tx.send(Event::Failed(format!("{e:#}")));
    }
}

struct Worker {
    /// How each scale computes (in tiles or not) on the current backend.
    fits: Vec<Fit>,
    preset: Preset,
    weights: CostWeights,
    run_dir: RunDir,
    backend: Backend,
    network: Network,
    sources: Sources,
    /// The scales of the run (one without coarse to fine) and the current one.
    stages: Vec<Stage>,
    stage: usize,
    inputs: Inputs,
    targets: Targets,
    point: Point,
    /// Where the network keeps the image, the EMA and Adam's moments between iterations
    /// (see `network::resident`; L-BFGS's image, `network::lbfgs_image`); while it
    /// does, `point` holds the true iteration and scalars, and its tensors are behind
    /// unless `stale` is false.
    resident: Option<Resident>,
    stale: bool,
    elapsed_s: f64,
    state: RunState,
    stop: bool,
    tx: Sender<Event>,
    guard: DivergenceGuard,
    last_preview: Instant,
    preview_every_s: f64,
}

/// What a panic said, where it said something.
fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "no message".into())
}

/// The run directory and first checkpoint of a new run from its initial image `x`.
fn start(place: &Destination, preset: &Preset, x: Tensor<4>) -> Result<(RunDir, Checkpoint)> {
    let ema = (preset.ema > 0.0).then(|| Ema::start(&x));
    let start = Checkpoint {
        point: Point {
            iter: 0,
            x,
            optimizer: Optimizer::new(&preset.settings.optimizer),
            ema,
        },
        elapsed_s: 0.0,
        best_j: f64::INFINITY,
    };
    let fill = |dir: &std::path::Path| {
        preset.save(&dir.join(run_dir::PRESET))?;
        run_dir::write_inputs(dir, &preset.input_paths())?;
        start.save(&dir.join(run_dir::CHECKPOINT))
    };
    let run_dir = match place {
        Destination::At(dir) => RunDir::create_at(dir, fill)?,
        Destination::New(base) => RunDir::create(base, &preset.name, fill)?,
        Destination::Resume(_) => bail!("a resumed run has its run directory"),
    };
    Ok((run_dir, start))
}

/// How each scale computes on a backend of `kind`: in tiles where it must; refused
/// where the largest scale does not fit. Chosen once, before the run holds memory of its
/// own that the choice would count against it.
fn stage_fits(
    stages: &[Stage],
    kind: BackendKind,
    preset: &Preset,
    weights: &CostWeights,
) -> Result<Vec<Fit>> {
    let fits: Vec<Fit> = stages
        .iter()
        .map(|s| {
            Fit::choose(
                kind,
                (s.width as usize, s.height as usize),
                preset.tile,
                &preset.settings.optimizer,
                weights.deepest(),
            )
        })
        .collect();
    if let Some(largest) = fits.last() {
        largest.check()?;
    }
    Ok(fits)
}

/// What a scale says before its targets are computed: the tiles it computes in, and
/// whether cuDNN's algorithms are timed first (the pause that follows), for its size or
/// for its style images' sizes.
fn stage_notices(
    fit: &Fit,
    (weights, preset): (&CostWeights, &Preset),
    (network, inputs): (&Network, &Inputs),
) -> Vec<String> {
    let tiles = fit
        .describe(weights.deepest())
        .map(|t| format!("computing {t}"));
    let size = (fit.width, fit.height);
    let styles = inputs.styles.iter().map(|(t, _)| {
        let [_, _, h, w] = t.dims();
        (w, h)
    });
    let sizes: Vec<_> = std::iter::once(size).chain(styles).collect();
    let search = preset
        .conv_search
        .notice(fit.backend, size)
        .filter(|_| network.times_algorithms(&sizes, weights.deepest()));
    tiles.into_iter().chain(search).collect()
}

/// A stopped run's checkpoint and the records before it.
fn resume(
    mut run_dir: RunDir,
    preset: &Preset,
    backend: &Backend,
) -> Result<(RunDir, Checkpoint, Vec<Record>)> {
    let mut cp = Checkpoint::load(&run_dir.file(run_dir::CHECKPOINT), &backend.device)?;
    let history = run_dir.truncate_records(cp.point.iter)?;
    // Overrides given to `resume` (e.g. more iterations) are the run's now, in its
    // change log from the checkpoint's iteration on, as the workbench's changes are.
    let before = Preset::load(&run_dir.file(run_dir::PRESET), &[])?;
    let iter = cp.point.iter;
    let changes = before.changed_keys(preset)?.into_iter();
    run_dir.record_changes(
        preset,
        changes.map(|(key, value)| Change { iter, key, value }),
    )?;
    if before.cost_weights() != preset.cost_weights() {
        // As for a change in the workbench: the best J and old curvature pairs were of
        // another cost.
        cp.best_j = f64::INFINITY;
        cp.point.optimizer.cost_changed();
    }
    Ok((run_dir, cp, history))
}

impl Worker {
    fn prepare(spec: RunSpec, tx: Sender<Event>) -> Result<Worker> {
        let RunSpec {
            preset,
            destination,
            weights: weights_path,
            backend,
            preview_every_s,
        } = spec;
        let sources = Sources::load(&preset)?;
        let (w, h) = sources.output_size(&preset);
        let cost_weights = preset.cost_weights();
        let stages = schedule::stages(preset.scales.as_ref(), w, h, preset.iterations);
        let fits = stage_fits(&stages, backend.kind, &preset, &cost_weights)?;
        super::memory::check_device_memory(
            &backend,
            (w as usize, h as usize),
            &preset.settings.optimizer,
        )?;
        let vgg = weights::load(&weights_path, &backend.device)?
            .with_pooling(preset.pooling)
            .with_padding(preset.padding);
        let mut network =
            Network::new(vgg, &backend, ConvChoice::Winograd, preset.cuda_settings())?;
        // Refused before the run directory exists: tiles or a cost the path cannot do.
        network.set_tile(fits.iter().find_map(|f| f.tile));
        network.check(&cost_weights)?;
        let first = stages[0];
        let (run_dir, start, history) = match destination {
            Destination::Resume(run_dir) => resume(run_dir, &preset, &backend)?,
            place => {
                let inputs = sources.at(first.width, first.height, &backend.device);
                let x = inputs.initial(&preset, &backend.device)?;
                let (run_dir, start) = start(&place, &preset, x)?;
                (run_dir, start, Vec::new())
            }
        };
        let Checkpoint {
            point,
            elapsed_s,
            best_j,
        } = start;
        let stage = schedule::stage_of(&stages, point.iter);
        let Stage { width, height, .. } = stages[stage];
        let [_, _, ch, cw] = point.x.dims();
        if (cw, ch) != (width as usize, height as usize) {
            bail!(
                "checkpoint in {} is {cw}x{ch} but the settings ask for {width}x{height} at iteration {}; keep `size` and `scales` as they were",
                run_dir.path.display(),
                point.iter
            );
        }
        network.set_tile(fits[stage].tile);
        let progress = tx.clone();
        network.set_progress(Some(std::sync::Arc::new(move |p| {
            let _ = progress.send(Event::Tiles(p));
        })));
        let inputs = sources.at(width, height, &backend.device);
        let settings = (&cost_weights, &preset);
        for notice in stage_notices(&fits[stage], settings, (&network, &inputs)) {
            let _ = tx.send(Event::Notice(notice));
        }
        let targets = network.targets_with_regions(
            inputs.content.clone(),
            &inputs.styles,
            &inputs.regions,
            &cost_weights,
        )?;
        let _ = tx.send(Event::Started(Box::new(Started {
            run_dir: run_dir.path.clone(),
            backend: backend.description.clone(),
            width: w as usize,
            height: h as usize,
            start_iter: point.iter,
            preset: preset.clone(),
            history,
            changes: run_dir.changes().to_vec(),
        })));
        for notice in sources.notices() {
            let _ = tx.send(Event::Notice(notice));
        }
        for changed in run_dir.changed_inputs(&preset.input_paths()) {
            let _ = tx.send(Event::Notice(format!(
                "{} has changed since the run started (its sha256 differs); the run goes on with the file as it is now",
                changed.display()
            )));
        }
        Ok(Worker {
            fits,
            weights: cost_weights,
            preset,
            run_dir,
            backend,
            network,
            sources,
            stages,
            stage,
            inputs,
            targets,
            point,
            resident: None,
            stale: false,
            elapsed_s,
            state: RunState::Running,
            stop: false,
            tx,
            guard: DivergenceGuard::new(best_j),
            last_preview: Instant::now(),
            preview_every_s,
        })
    }

    fn emit(&self, event: Event) {
        let _ = self.tx.send(event);
    }

    fn run(mut self, rx: Receiver<Command>) -> Result<()> {
        self.emit(Event::State(RunState::Running));
        self.send_preview();
        let end = loop {
            // Tests make the engine itself fail here, outside any compute path, or slow
            // it down to stop a run part way.
            fail::fail_point!("engine-loop");
            // Commands are taken only here, between two iterations.
            loop {
                let command = if self.state == RunState::Paused {
                    match rx.recv() {
                        Ok(c) => c,
                        Err(_) => {
                            self.stop = true;
                            break;
                        }
                    }
                } else {
                    match rx.try_recv() {
                        Ok(c) => c,
                        Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                    }
                };
                self.apply(command);
                if self.stop {
                    break;
                }
            }
            if self.stop {
                break RunState::Stopped;
            }
            if self.point.iter >= self.preset.iterations {
                break RunState::Finished;
            }
            if let Err(e) = self.step() {
                // Keep the work: the checkpoint of the last sound state, where it can
                // still be read back.
                if let Ok(cp) = self.checkpoint() {
                    let _ = cp.save(&self.run_dir.file(run_dir::CHECKPOINT));
                }
                return Err(e);
            }
        };
        self.finish(end)
    }

    fn apply(&mut self, command: Command) {
        match command {
            Command::Pause if self.state == RunState::Running => self.set_state(RunState::Paused),
            Command::Resume if self.state == RunState::Paused => {
                self.guard.resumed();
                self.set_state(RunState::Running)
            }
            Command::Pause | Command::Resume => {}
            Command::Set(setting, value) => {
                if let Err(e) = self.set(setting, value) {
                    self.emit(Event::Notice(format!("{e:#}")));
                }
            }
            Command::SetContentLayer(layer) => self.set_content_layer(layer),
            Command::Snapshot => {
                if let Err(e) = self.save_snapshot() {
                    self.emit(Event::Notice(format!("cannot save a snapshot: {e:#}")));
                }
            }
            Command::Preview => self.send_preview(),
            Command::NextBackend => match self.next_backend() {
                Some(choice) => self.apply(Command::SwitchBackend(choice)),
                None => self.emit(Event::Notice(format!(
                    "no other backend is usable here: staying on {}",
                    self.backend.description
                ))),
            },
            Command::SwitchBackend(choice) => match Backend::resolve(choice) {
                Ok(b) => self.switch_backend(b),
                Err(e) => self.emit(Event::Notice(format!("cannot switch backend: {e:#}"))),
            },
            Command::SavePreset { path, name } => {
                if let Err(e) = self.save_preset(&path, &name) {
                    self.emit(Event::Notice(format!(
                        "cannot save preset {}: {e:#}",
                        path.display()
                    )));
                }
            }
            Command::Stop => self.stop = true,
        }
    }

    fn set_state(&mut self, state: RunState) {
        self.state = state;
        self.emit(Event::State(state));
    }

    /// Applies a setting from the next iteration on and records it in `preset.yaml`.
    fn set(&mut self, setting: Setting, value: f64) -> Result<()> {
        self.preset.settings.set(setting, value)?;
        self.weights = self.preset.cost_weights();
        if setting != Setting::LearningRate {
            // The cost itself changed: old curvature pairs and the best J no longer apply.
            self.point.optimizer.cost_changed();
            self.guard.cost_changed();
        }
        self.record_change(setting.key(), yaml_serde::Value::from(value))
    }

    /// Records a change in `preset.yaml` and tells the front ends.
    fn record_change(&mut self, key: String, value: yaml_serde::Value) -> Result<()> {
        let change = Change {
            iter: self.point.iter,
            key: key.clone(),
            value,
        };
        let text = change.value_text();
        self.run_dir.record_change(&self.preset, change)?;
        self.emit(Event::Changed {
            iter: self.point.iter,
            key,
            value: text,
            settings: Box::new(self.preset.settings.clone()),
        });
        Ok(())
    }

    /// Writes the current settings as a new preset (without the run's change history).
    fn save_preset(&mut self, path: &std::path::Path, name: &str) -> Result<()> {
        let mut preset = self.preset.clone();
        preset.name = name.to_string();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
            preset.relativize_paths(&std::path::absolute(dir)?);
        }
        preset.save(path)?;
        self.emit(Event::Saved(path.to_path_buf()));
        Ok(())
    }

    fn set_content_layer(&mut self, layer: Layer) {
        let content = match self.network.activation(self.inputs.content.clone(), layer) {
            Ok(a) => a,
            Err(e) => {
                self.emit(Event::Notice(format!(
                    "cannot change the content layer: {e:#}"
                )));
                return;
            }
        };
        self.preset.settings.content_layer = layer;
        self.weights = self.preset.cost_weights();
        self.targets = self.targets.clone().with_content(layer, content);
        self.point.optimizer.cost_changed();
        self.guard.cost_changed();
        let value = yaml_serde::Value::String(layer.name().into());
        if let Err(e) = self.record_change("content_layer".into(), value) {
            self.emit(Event::Notice(format!("{e:#}")));
        }
    }

    /// The usable backend after the current one, in the order cpu, cuda, wgpu.
    fn next_backend(&self) -> Option<BackendChoice> {
        let usable = Backend::usable();
        let here = usable
            .iter()
            .position(|c| c.kind() == Some(self.backend.kind))
            .unwrap_or(0);
        let next = usable[(here + 1) % usable.len()];
        (next.kind() != Some(self.backend.kind)).then_some(next)
    }

    /// Moves everything the run holds to another device, between two iterations.
    fn switch_backend(&mut self, backend: Backend) {
        let device = &backend.device;
        // The state comes back from the old path first; it keeps it until the move.
        let moved = self.settle().and_then(|()| {
            let fits = stage_fits(&self.stages, backend.kind, &self.preset, &self.weights)?;
            let mut n = self.network.to_backend(&backend)?;
            n.set_tile(fits[self.stage].tile);
            n.check(&self.weights).map(|()| (n, fits))
        });
        (self.network, self.fits) = match moved {
            Ok(moved) => moved,
            Err(e) => {
                self.emit(Event::Notice(format!(
                    "staying on {}: {e:#}",
                    self.backend.description
                )));
                return;
            }
        };
        self.resident = None;
        self.targets = self.targets.to_device(device);
        self.inputs = self.inputs.to_device(device);
        self.point.x = self.point.x.clone().to_device(device);
        self.point.optimizer.move_to(device);
        if let Some(ema) = &mut self.point.ema {
            ema.avg = ema.avg.clone().to_device(device);
        }
        self.guard.state_moved();
        self.emit(Event::BackendChanged {
            iter: self.point.iter,
            backend: backend.description.clone(),
        });
        self.backend = backend;
    }

    fn checkpoint(&mut self) -> Result<Checkpoint> {
        self.settle()?;
        Ok(Checkpoint {
            point: self.point.clone(),
            elapsed_s: self.elapsed_s,
            best_j: self.guard.best_j(),
        })
    }

    /// Moves to the next scale: the image, Adam's moments and the average are
    /// upsampled; L-BFGS starts a new history; the targets are computed at the new size.
    fn next_stage(&mut self) -> Result<()> {
        self.leave_resident()?;
        self.stage += 1;
        let Stage { width, height, .. } = self.stages[self.stage];
        self.point.x = img::resize_tensor(self.point.x.clone(), width, height);
        if let Some(ema) = &mut self.point.ema {
            ema.avg = img::resize_tensor(ema.avg.clone(), width, height);
        }
        match &mut self.point.optimizer {
            Optimizer::Adam(adam) => adam.carry_to(width, height),
            Optimizer::Lbfgs(l) => l.reset(),
        }
        self.inputs = self.sources.at(width, height, &self.backend.device);
        self.network.set_tile(self.fits[self.stage].tile);
        let settings = (&self.weights, &self.preset);
        for notice in stage_notices(
            &self.fits[self.stage],
            settings,
            (&self.network, &self.inputs),
        ) {
            self.emit(Event::Notice(notice));
        }
        self.targets = self.network.targets_with_regions(
            self.inputs.content.clone(),
            &self.inputs.styles,
            &self.inputs.regions,
            &self.weights,
        )?;
        self.guard.cost_changed();
        self.guard.state_moved();
        self.emit(Event::Notice(format!(
            "scale {}/{}: {width}x{height} from iteration {}",
            self.stage + 1,
            self.stages.len(),
            self.point.iter
        )));
        Ok(())
    }

    /// The image of the run as it stands: the averaged one where `ema` is on.
    fn current(&self) -> Tensor<4> {
        self.point
            .ema
            .as_ref()
            .and_then(|e| e.value(self.preset.ema))
            .unwrap_or_else(|| self.point.x.clone())
    }

    fn picture(&mut self) -> Result<image::RgbImage> {
        self.settle()?;
        self.inputs.render(&self.current())
    }

    /// Records the costs of the final image: one more evaluation, so that losses.jsonl
    /// ends with the J of the picture the run leaves.
    fn record_final(&mut self) -> Result<()> {
        self.settle()?;
        let (costs, _) = self
            .network
            .evaluate(&self.current(), &self.targets, &self.weights)?;
        if !costs.is_finite() {
            bail!("J = {:e}", costs.total);
        }
        let record = self.record(&costs, self.elapsed_s, true);
        self.run_dir.append_record(&record)?;
        self.emit(Event::Iteration(record));
        Ok(())
    }

    fn save_snapshot(&mut self) -> Result<()> {
        let image = self.picture()?;
        let path = self.run_dir.snapshot_path(self.point.iter);
        img::save(&image, &path)?;
        self.checkpoint()?
            .save(&self.run_dir.file(run_dir::CHECKPOINT))?;
        self.write_report(RunStatus::Running);
        self.emit(Event::Saved(path));
        self.last_preview = Instant::now();
        self.emit(Event::Preview {
            iter: self.point.iter,
            image,
        });
        Ok(())
    }

    /// Redraws losses.svg and report.html; the run goes on without them.
    fn write_report(&self, state: RunStatus) {
        if let Err(e) = crate::report::write(&self.run_dir.path, Some(state)) {
            self.emit(Event::Notice(format!("cannot write the report: {e:#}")));
        }
    }

    fn send_preview(&mut self) {
        self.last_preview = Instant::now();
        match self.picture() {
            Ok(image) => self.emit(Event::Preview {
                iter: self.point.iter,
                image,
            }),
            Err(e) => self.emit(Event::Notice(format!("cannot make a preview: {e:#}"))),
        }
    }

    /// Writes the final image, the checkpoint and the settings.
    fn finish(mut self, end: RunState) -> Result<()> {
        if let Err(e) = self.record_final() {
            self.emit(Event::Notice(format!(
                "cannot compute the final image's costs: {e:#}"
            )));
        }
        let image = self.picture()?;
        let final_image = self.run_dir.file(run_dir::FINAL);
        img::save(&image, &final_image)?;
        self.checkpoint()?
            .save(&self.run_dir.file(run_dir::CHECKPOINT))?;
        self.run_dir.write_preset(&self.preset)?;
        self.write_report(match end {
            RunState::Finished => RunStatus::Finished,
            _ => RunStatus::Stopped,
        });
        self.emit(Event::Preview {
            iter: self.point.iter,
            image,
        });
        self.state = end;
        self.emit(Event::State(end));
        self.emit(Event::Finished {
            final_image,
            state: end,
        });
        Ok(())
    }
}
