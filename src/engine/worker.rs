//! The engine's worker thread: prepares a run, then alternates between taking commands
//! and taking optimiser steps until the run finishes or is stopped.

use super::{Checkpoint, Command, Destination, Event, RunSpec, RunState, Setting};
use crate::backend::Backend;
use crate::image as img;
use crate::loss::{self, CostWeights, Targets};
use crate::optim::Optimizer;
use crate::preset::{Change, Init, Preset};
use crate::run_dir::{self, Record, RunDir};
use crate::vgg::{Layer, Vgg19};
use crate::weights;
use anyhow::{Result, anyhow, bail};
use burn::tensor::Tensor;
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::time::Instant;

/// J rising more than this factor over its best counts as divergence.
const DIVERGENCE_FACTOR: f64 = 100.0;
/// Rollbacks in a row after which the run pauses.
const MAX_ROLLBACKS: u32 = 3;

pub(super) fn run(spec: RunSpec, rx: Receiver<Command>, tx: Sender<Event>) {
    let _ = tx.send(Event::State(RunState::Preparing));
    let result = Worker::prepare(spec, tx.clone()).and_then(|w| w.run(rx));
    if let Err(e) = result {
        let _ = tx.send(Event::State(RunState::Failed));
        let _ = tx.send(Event::Failed(format!("{e:#}")));
    }
}

/// The inputs of a run on one device: the images in pixel space.
struct Inputs {
    content: Tensor<4>,
    styles: Vec<(Tensor<4>, f64)>,
}

struct Worker {
    preset: Preset,
    weights: CostWeights,
    run_dir: RunDir,
    backend: Backend,
    vgg: Vgg19,
    inputs: Inputs,
    targets: Targets,
    x: Tensor<4>,
    optimizer: Optimizer,
    iter: u64,
    elapsed_s: f64,
    best_j: f64,
    state: RunState,
    stop: bool,
    tx: Sender<Event>,
    /// The last state whose cost was sound: where a divergence rolls back to.
    good: Option<(u64, Tensor<4>, Optimizer)>,
    rollbacks_in_a_row: u32,
    /// The iteration of the last divergence: the streak of rollbacks ends only once
    /// the run gets past it.
    diverged_at: u64,
    last_preview: Instant,
    preview_every_s: f64,
}

/// Loads and resizes the content and style images; returns them with the output size.
fn load_inputs(
    preset: &Preset,
    backend: &Backend,
) -> Result<(Inputs, image::RgbImage, usize, usize)> {
    let content_rgb = img::load_rgb(&preset.content)?;
    let (w, h) = preset
        .size
        .resolve(content_rgb.width(), content_rgb.height());
    crate::backend::check_memory(w as usize, h as usize, &preset.optimizer)?;
    let content_rgb = img::resize(&content_rgb, w, h);
    let device = &backend.device;
    let mut styles = Vec::new();
    for (path, blend) in preset.style.images() {
        let s = img::resize(&img::load_rgb(&path)?, w, h);
        styles.push((img::to_pixel_space(&s, device), blend));
    }
    let content = img::to_pixel_space(&content_rgb, device);
    Ok((
        Inputs { content, styles },
        content_rgb,
        w as usize,
        h as usize,
    ))
}

fn initial_image(
    preset: &Preset,
    inputs: &Inputs,
    backend: &Backend,
    w: usize,
    h: usize,
) -> Result<Tensor<4>> {
    Ok(match &preset.init {
        Init::Noise { noise_ratio } => {
            img::uniform_noise(preset.seed, w, h, &backend.device) * *noise_ratio
                + inputs.content.clone() * (1.0 - noise_ratio)
        }
        Init::Content => inputs.content.clone(),
        Init::Style => inputs.styles[0].0.clone(),
        Init::File { path } => {
            let f = img::resize(&img::load_rgb(path)?, w as u32, h as u32);
            img::to_pixel_space(&f, &backend.device)
        }
    })
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
        let vgg = weights::load(&weights_path, &backend.device)?.with_pooling(preset.pooling);
        let (inputs, _, w, h) = load_inputs(&preset, &backend)?;
        let cost_weights = preset.cost_weights();
        let targets = Targets::compute(&vgg, inputs.content.clone(), &inputs.styles, &cost_weights);
        let (run_dir, x, optimizer, iter, elapsed_s, best_j, history) = if let Destination::Resume(
            run_dir,
        ) = destination
        {
            let cp = Checkpoint::load(&run_dir.file(run_dir::CHECKPOINT), &backend.device)?;
            let [_, _, ch, cw] = cp.x.dims();
            if (cw, ch) != (w, h) {
                bail!(
                    "checkpoint in {} is {cw}x{ch} but the preset asks for {w}x{h}; keep `size` as it was",
                    run_dir.path.display()
                );
            }
            let history = run_dir.truncate_records(cp.iter)?;
            (
                run_dir,
                cp.x,
                cp.optimizer,
                cp.iter,
                cp.elapsed_s,
                cp.best_j,
                history,
            )
        } else {
            let x = initial_image(&preset, &inputs, &backend, w, h)?;
            let Destination::New(base) = destination else {
                unreachable!("resume is handled above")
            };
            let run_dir = RunDir::create(&base, &preset.name)?;
            (
                run_dir,
                x,
                Optimizer::new(&preset.optimizer),
                0,
                0.0,
                f64::INFINITY,
                Vec::new(),
            )
        };
        run_dir.write_preset(&preset)?;
        if iter == 0 {
            // A checkpoint from the start, so any run directory can be resumed.
            Checkpoint {
                iter,
                elapsed_s,
                best_j,
                x: x.clone(),
                optimizer: optimizer.clone(),
            }
            .save(&run_dir.file(run_dir::CHECKPOINT))?;
        }
        let _ = tx.send(Event::Started {
            run_dir: run_dir.path.clone(),
            backend: backend.description.clone(),
            width: w,
            height: h,
            start_iter: iter,
            preset: Box::new(preset.clone()),
            history,
        });
        Ok(Worker {
            weights: cost_weights,
            preset,
            run_dir,
            backend,
            vgg,
            inputs,
            targets,
            x,
            optimizer,
            iter,
            elapsed_s,
            best_j,
            state: RunState::Running,
            stop: false,
            tx,
            good: None,
            rollbacks_in_a_row: 0,
            diverged_at: 0,
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
            if self.iter >= self.preset.iterations {
                break RunState::Finished;
            }
            self.step()?;
        };
        self.finish(end)
    }

    fn apply(&mut self, command: Command) {
        match command {
            Command::Pause if self.state == RunState::Running => self.set_state(RunState::Paused),
            Command::Resume if self.state == RunState::Paused => {
                self.rollbacks_in_a_row = 0;
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
        let key = setting.key();
        if !value.is_finite() || value < 0.0 || (setting == Setting::LearningRate && value == 0.0) {
            bail!(
                "{key} = {value} is not allowed: give a finite value >= 0 (> 0 for the learning rate)"
            );
        }
        match setting {
            Setting::Alpha => self.preset.alpha = value,
            Setting::Beta => self.preset.beta = value,
            Setting::StyleLayer(l) => {
                let lambda = self
                    .preset
                    .style_layers
                    .get_mut(l.name())
                    .ok_or_else(|| anyhow!("{l} is not a style layer of this run"))?;
                *lambda = value;
            }
            Setting::LearningRate => self.preset.optimizer.set_lr(value),
            Setting::TvWeight => self.preset.tv_weight = value,
        }
        self.weights = self.preset.cost_weights();
        if setting != Setting::LearningRate {
            // The cost itself changed: old curvature pairs and the best J no longer apply.
            self.optimizer.cost_changed();
            self.best_j = f64::INFINITY;
        }
        self.record_change(key, serde_yaml_ng::Value::from(value))
    }

    /// Records a change in `preset.yaml` and tells the front ends.
    fn record_change(&mut self, key: String, value: serde_yaml_ng::Value) -> Result<()> {
        let text = serde_yaml_ng::to_string(&value)
            .unwrap_or_default()
            .trim()
            .to_string();
        self.preset.changes.push(Change {
            iter: self.iter,
            key: key.clone(),
            value,
        });
        self.run_dir.write_preset(&self.preset)?;
        self.emit(Event::Changed {
            iter: self.iter,
            key,
            value: text,
            settings: Box::new(self.preset.clone()),
        });
        Ok(())
    }

    /// Writes the current settings as a new preset (without the run's change history).
    fn save_preset(&mut self, path: &std::path::Path, name: &str) -> Result<()> {
        let mut preset = self.preset.clone();
        preset.name = name.to_string();
        preset.changes.clear();
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
            preset.relativize_paths(&std::path::absolute(dir)?);
        }
        preset.save(path)?;
        self.emit(Event::Saved(path.to_path_buf()));
        Ok(())
    }

    fn set_content_layer(&mut self, layer: Layer) {
        self.preset.content_layer = layer.name().to_string();
        self.weights = self.preset.cost_weights();
        let taps = self.vgg.forward(self.inputs.content.clone(), layer);
        self.targets.content_layer = layer;
        self.targets.content = taps[layer.0].clone();
        self.optimizer.cost_changed();
        self.best_j = f64::INFINITY;
        let value = serde_yaml_ng::Value::String(layer.name().into());
        if let Err(e) = self.record_change("content_layer".into(), value) {
            self.emit(Event::Notice(format!("{e:#}")));
        }
    }

    /// Moves everything the run holds to another device, between two iterations.
    fn switch_backend(&mut self, backend: Backend) {
        let device = &backend.device;
        self.vgg = self.vgg.to_device(device);
        self.targets = self.targets.to_device(device);
        self.inputs = Inputs {
            content: self.inputs.content.clone().to_device(device),
            styles: self
                .inputs
                .styles
                .iter()
                .map(|(t, w)| (t.clone().to_device(device), *w))
                .collect(),
        };
        self.x = self.x.clone().to_device(device);
        self.optimizer.move_to(device);
        self.good = None;
        self.emit(Event::BackendChanged {
            iter: self.iter,
            backend: backend.description.clone(),
        });
        self.backend = backend;
    }

    fn step(&mut self) -> Result<()> {
        let started = Instant::now();
        let candidate = (self.iter, self.x.clone(), self.optimizer.clone());
        let lr = self.preset.optimizer.lr();
        let result = {
            let (vgg, targets, weights) = (&self.vgg, &self.targets, &self.weights);
            let mut eval = |x: &Tensor<4>| loss::evaluate(vgg, x, targets, weights);
            self.optimizer.step(lr, self.x.clone(), &mut eval)
        };
        let elapsed_before = self.elapsed_s;
        self.elapsed_s += started.elapsed().as_secs_f64();
        let (next, costs) = match result {
            Ok((next, costs))
                if costs.is_finite() && costs.total <= DIVERGENCE_FACTOR * self.best_j =>
            {
                (next, costs)
            }
            Ok((_, costs)) => return self.roll_back(&format!("J = {:e}", costs.total)),
            Err(e) => return self.roll_back(&format!("{e:#}")),
        };
        self.good = Some(candidate);
        if self.iter > self.diverged_at {
            self.rollbacks_in_a_row = 0;
        }
        self.best_j = self.best_j.min(costs.total);
        let record = Record {
            iter: self.iter,
            j: costs.total,
            j_content: costs.content,
            j_style: costs.style,
            style: costs
                .style_layers
                .iter()
                .map(|(l, j)| (l.name().to_string(), *j))
                .collect(),
            elapsed_s: elapsed_before,
            backend: self.backend.kind.to_string(),
        };
        self.run_dir.append_record(&record)?;
        self.emit(Event::Iteration(record));
        self.x = next;
        self.iter += 1;
        if self.preset.save_every > 0 && self.iter.is_multiple_of(self.preset.save_every) {
            self.save_snapshot()?;
        } else if self.preview_every_s > 0.0
            && self.last_preview.elapsed().as_secs_f64() >= self.preview_every_s
        {
            self.send_preview();
        }
        Ok(())
    }

    /// Goes back to the last sound state with half the learning rate.
    fn roll_back(&mut self, reason: &str) -> Result<()> {
        let at = self.iter;
        let Some((iter, x, optimizer)) = self.good.clone() else {
            bail!(
                "the run diverged at iteration {at} ({reason}) with no earlier sound state to return to; lower the learning rate or the weights"
            );
        };
        self.rollbacks_in_a_row += 1;
        self.diverged_at = at;
        self.iter = iter;
        self.x = x;
        self.optimizer = optimizer;
        self.optimizer.cost_changed();
        let lr = self.preset.optimizer.lr() / 2.0;
        self.preset.optimizer.set_lr(lr);
        self.run_dir.truncate_records(iter)?;
        self.record_change("optimizer.lr".into(), serde_yaml_ng::Value::from(lr))?;
        self.emit(Event::Notice(format!(
            "diverged at iteration {at} ({reason}): rolled back to iteration {iter} and halved the learning rate to {lr}"
        )));
        if self.rollbacks_in_a_row >= MAX_ROLLBACKS {
            self.emit(Event::Notice(format!(
                "paused: {MAX_ROLLBACKS} rollbacks in a row. The cost keeps blowing up; lower the style/content weights or the learning rate, then resume"
            )));
            self.set_state(RunState::Paused);
        }
        Ok(())
    }

    fn checkpoint(&self) -> Checkpoint {
        Checkpoint {
            iter: self.iter,
            elapsed_s: self.elapsed_s,
            best_j: self.best_j,
            x: self.x.clone(),
            optimizer: self.optimizer.clone(),
        }
    }

    fn save_snapshot(&mut self) -> Result<()> {
        let image = img::tensor_to_rgb(&self.x)?;
        let path = self.run_dir.snapshot_path(self.iter);
        img::save(&image, &path)?;
        self.checkpoint()
            .save(&self.run_dir.file(run_dir::CHECKPOINT))?;
        self.emit(Event::Saved(path));
        self.last_preview = Instant::now();
        self.emit(Event::Preview {
            iter: self.iter,
            image,
        });
        Ok(())
    }

    fn send_preview(&mut self) {
        self.last_preview = Instant::now();
        match img::tensor_to_rgb(&self.x) {
            Ok(image) => self.emit(Event::Preview {
                iter: self.iter,
                image,
            }),
            Err(e) => self.emit(Event::Notice(format!("cannot make a preview: {e:#}"))),
        }
    }

    /// Writes the final image, the checkpoint and the settings.
    fn finish(mut self, end: RunState) -> Result<()> {
        let image = img::tensor_to_rgb(&self.x)?;
        let final_image = self.run_dir.file(run_dir::FINAL);
        img::save(&image, &final_image)?;
        self.checkpoint()
            .save(&self.run_dir.file(run_dir::CHECKPOINT))?;
        self.run_dir.write_preset(&self.preset)?;
        self.emit(Event::Preview {
            iter: self.iter,
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
