use anyhow::{Context, Result, bail};
use clap::Parser;
use easel::backend::{Backend, BackendChoice};
use easel::cli::{Cli, Cmd, RunArgs, SweepArgs, SweepCmd, Ui, WeightsCmd};
use easel::engine::{self, Destination, RunSpec, RunState};
use easel::frontend::{self, Mode};
use easel::preset::Preset;
use easel::run_dir::{self, RunDir};
use easel::{bench, weights};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

fn main() -> ExitCode {
    match real_main() {
        Ok(code) => code,
        Err(e) => {
            easel::logging::say_error(format!("error: {e:#}"));
            ExitCode::FAILURE
        }
    }
}

fn real_main() -> Result<ExitCode> {
    // SAFETY: the first thing easel does; no other thread runs yet.
    unsafe { easel::backend::quiet_vulkan_device_select() };
    // Fail points from FAILPOINTS, in builds with the `failpoints` feature (the tests').
    #[cfg(feature = "failpoints")]
    let _faults = fail::FailScenario::setup();
    let cli = Cli::parse();
    engine::keep_panics_off_screen();
    frontend::signals::survive_file_size_limits()?;
    easel::logging::init(cli.verbose, cli.quiet)?;
    let keeps_work = matches!(
        cli.command,
        None | Some(Cmd::Run { .. } | Cmd::Resume { .. } | Cmd::Sweep(_))
    );
    if !keeps_work {
        // Commands that only print end quietly on a closed pipe (`easel runs | head
        // -1`), as C tools do; Rust ignores SIGPIPE, and print! then panics. Runs and
        // sweeps keep ignoring it: they stop cleanly with their checkpoints instead.
        // SAFETY: no other thread runs yet; SIG_DFL is a valid disposition.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match cli.command {
        None => {
            let preset = easel::builtin::default_preset()?;
            let args = RunArgs {
                ui: Ui::Auto,
                weights: None,
                image_protocol: None,
            };
            run(
                &preset,
                &[],
                Destination::New(PathBuf::from("runs")),
                None,
                &args,
            )
        }
        Some(Cmd::Run {
            preset,
            set,
            out,
            run_dir: Some(dir),
            backend,
            args,
        }) if dir.join(run_dir::CHECKPOINT).is_file() => {
            let _ = (preset, out);
            resume(&dir, &set, backend, &args)
        }
        Some(Cmd::Run {
            preset,
            set,
            out,
            run_dir,
            backend,
            args,
        }) => {
            let place = match (run_dir, out) {
                (Some(dir), _) => Destination::At(dir),
                (None, out) => Destination::New(out.unwrap_or_else(|| PathBuf::from("runs"))),
            };
            run(&preset, &set, place, backend, &args)
        }
        Some(Cmd::Resume {
            run_dir,
            set,
            backend,
            args,
        }) => resume(&run_dir, &set, backend, &args),
        Some(Cmd::Completions { shell }) => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "easel", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Some(Cmd::Sweep(args)) => sweep(args),
        Some(Cmd::Runs {
            dir,
            json,
            list,
            image_protocol,
        }) => {
            let terminal = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
            if terminal && !json && !list {
                return browse_runs(&dir, image_protocol);
            }
            let runs = easel::runs::list(&dir)?;
            if json {
                for r in &runs {
                    println!("{}", serde_json::to_string(r)?);
                }
            } else if runs.is_empty() && dir.join(easel::run_dir::PRESET).is_file() {
                let absolute = std::path::absolute(&dir)?;
                easel::logging::say(format!(
                    "no run directories in {d}: it is a run directory itself; `easel runs {}` lists it with its neighbours, `easel plot {d}` redraws its report",
                    absolute.parent().unwrap_or(&absolute).display(),
                    d = dir.display()
                ));
            } else if runs.is_empty() {
                easel::logging::say(format!("no run directories in {}", dir.display()));
            } else {
                print!("{}", easel::runs::table(&runs));
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(Cmd::Plot { run_dir }) => {
            let plotted = easel::report::write(&run_dir, None)?;
            println!(
                "wrote {} and {}",
                run_dir.join(easel::report::LOSSES_SVG).display(),
                run_dir.join(easel::report::REPORT_HTML).display()
            );
            if plotted == 0 {
                easel::logging::say(format!(
                    "note: {} records no costs ({} is missing, empty or unreadable), so the plot is empty",
                    run_dir.display(),
                    easel::run_dir::LOSSES
                ));
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(Cmd::Backends { json }) => {
            let statuses = easel::backend::report::backends();
            if json {
                println!("{}", serde_json::to_string_pretty(&statuses)?);
            } else {
                print!("{}", easel::backend::report::text(&statuses));
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(Cmd::Presets) => {
            print!("{}", easel::builtin::list_presets(Path::new("presets"))?);
            Ok(ExitCode::SUCCESS)
        }
        Some(Cmd::Weights { action }) => {
            let dir = weights::default_dir();
            match action {
                WeightsCmd::Fetch => {
                    weights::fetch(&dir)?;
                    println!("VGG-19 weights ready in {}", dir.display());
                }
                WeightsCmd::Info => {
                    let info = weights::info(&dir)?;
                    print!("{}", info.text);
                    if !info.healthy {
                        easel::logging::say_error(format!(
                            "error: a weights file in {} does not verify; run `easel weights fetch`",
                            dir.display()
                        ));
                        return Ok(ExitCode::FAILURE);
                    }
                }
                WeightsCmd::Import { path } => {
                    let out = weights::import(&path, &dir)?;
                    println!("imported {} -> {}", path.display(), out.display());
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(Cmd::Bench {
            sizes,
            iters,
            backend,
            optimizer,
            profile,
            conv,
            padding,
            precision,
            conv_search,
            tile,
            time_to_target,
            target_iterations,
            weights: w,
        }) => {
            let weights_path = weights::resolve(w.as_deref())?;
            let backend = Backend::resolve(backend)?;
            if time_to_target {
                let first = sizes.first().map(String::as_str).unwrap_or("512x512");
                let (w, h) = bench::parse_size(first)?;
                bench::time_to_target(&weights_path, backend, w, h, target_iterations)?;
            } else {
                let opts = bench::BenchOptions {
                    sizes: &sizes,
                    iters: iters as usize,
                    optimizer,
                    profile,
                    conv,
                    padding,
                    precision,
                    conv_search: &conv_search,
                    tile,
                };
                bench::run(&weights_path, backend, &opts)?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn run(
    preset_path: &Path,
    set: &[String],
    place: Destination,
    backend: Option<BackendChoice>,
    args: &RunArgs,
) -> Result<ExitCode> {
    let preset = Preset::load(&easel::builtin::resolve(preset_path)?, set)?;
    start(run_spec(preset, place, backend, args)?, args)
}

fn resume(
    dir: &Path,
    set: &[String],
    backend: Option<BackendChoice>,
    args: &RunArgs,
) -> Result<ExitCode> {
    let preset_path = dir.join(run_dir::PRESET);
    if !dir.join(run_dir::CHECKPOINT).is_file() {
        bail!(
            "{} has no {}: it is not a run directory easel can resume (runs write one every `save_every` iterations and when they stop)",
            dir.display(),
            run_dir::CHECKPOINT
        );
    }
    let preset = Preset::load(&preset_path, set)
        .with_context(|| format!("cannot resume {}", dir.display()))?;
    let run_dir = RunDir::open(dir)?;
    start(
        run_spec(preset, Destination::Resume(run_dir), backend, args)?,
        args,
    )
}

/// What `run` and `resume` both start from: `--backend` over the preset's, resolved,
/// and the weights.
fn run_spec(
    mut preset: Preset,
    destination: Destination,
    backend: Option<BackendChoice>,
    args: &RunArgs,
) -> Result<RunSpec> {
    if let Some(b) = backend {
        preset.backend = b;
    }
    Ok(RunSpec {
        backend: Backend::resolve(preset.backend)?,
        weights: weights::resolve(args.weights.as_deref())?,
        preset,
        destination,
        preview_every_s: 2.0,
    })
}

fn start(mut spec: RunSpec, args: &RunArgs) -> Result<ExitCode> {
    let terminal = std::io::stdin().is_terminal() && std::io::stdout().is_terminal();
    let ui = match args.ui {
        Ui::Auto if terminal => Ui::Tui,
        Ui::Auto => Ui::Plain,
        // Refused before the run starts, so that nothing is left behind.
        Ui::Tui if !terminal => bail!(
            "--ui tui needs a terminal, and stdin or stdout is not one (redirected, or no TTY over ssh: use `ssh -t`); use --ui plain or --ui jsonl, or leave --ui out"
        ),
        other => other,
    };
    if ui != Ui::Tui && args.image_protocol.is_some() {
        bail!(
            "--image-protocol sets how the workbench shows its preview, and this run has no workbench (--ui plain or jsonl, or output not a terminal); leave it out"
        );
    }
    if ui != Ui::Tui {
        // Only the workbench shows previews: a plain or jsonl run would read the image
        // back for nothing, at moments the wall clock picks.
        spec.preview_every_s = 0.0;
    }
    let handle = engine::spawn(spec);
    let outcome = match ui {
        Ui::Jsonl => frontend::drive(handle, Mode::Jsonl)?,
        Ui::Tui => {
            // The screen is the workbench's: log lines wait for the run directory.
            if let Some(log) = easel::logging::sink() {
                log.hold();
            }
            let protocol = args
                .image_protocol
                .as_deref()
                .map(easel::tui::parse_protocol)
                .transpose()?;
            easel::tui::run(handle, protocol, PathBuf::from("presets"))?
        }
        _ => frontend::drive(handle, Mode::Plain)?,
    };
    if let Some(f) = &outcome.final_image {
        let costs = outcome.last.map_or(String::new(), |(iter, j, s)| {
            format!(" (J {j:.4e} at iteration {iter}, {s:.1} s of work)")
        });
        easel::logging::say(format!("{}: {}{costs}", outcome.state.label(), f.display()));
    }
    Ok(match outcome.state {
        RunState::Finished => ExitCode::SUCCESS,
        // Stopped after three rollbacks in a row: a failure, not an interruption.
        RunState::Stopped if outcome.gave_up => {
            let dir = outcome.run_dir.as_deref().unwrap_or(Path::new("RUN_DIR"));
            easel::logging::say_error(format!(
                "error: the cost blew up three times in a row, each time rolled back with half the learning rate; the run stopped with its checkpoint. Go on with a lower rate or weights: `easel resume {} --set optimizer.lr=VALUE`",
                dir.display()
            ));
            ExitCode::FAILURE
        }
        RunState::Stopped => {
            if let Some(d) = &outcome.run_dir {
                easel::logging::say(format!("resume with: easel resume {}", d.display()));
            }
            // 128 + the signal's number, as shells report it; 130 (SIGINT's) when the
            // user stopped the run from the workbench.
            ExitCode::from(outcome.signal.map_or(130, |s| (128 + s) as u8))
        }
        _ => ExitCode::FAILURE,
    })
}

fn sweep(args: SweepArgs) -> Result<ExitCode> {
    use easel::sweep::{SweepDir, local, plan::Plan, slurm};
    let dir = match args.action {
        Some(SweepCmd::Status { dir }) => {
            let sweep = SweepDir::open(&dir)?;
            print!("{}", sweep.table(&sweep.results()));
            if dir.join(slurm::JOBS).is_file() {
                match slurm::queued(&sweep) {
                    Ok(q) if q.is_empty() => println!("Slurm holds none of the points"),
                    Ok(q) => {
                        for (point, state) in q {
                            println!("{point}: {state} in Slurm");
                        }
                    }
                    Err(e) => println!("(no word from Slurm: {e:#})"),
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
        Some(SweepCmd::Collect { dir }) => dir,
        None => {
            let file = args.sweep.context("give a sweep file")?;
            let plan = Plan::load(&file)?;
            // The command that goes on with this sweep, for the messages below.
            let again = match &args.dir {
                Some(d) => format!("easel sweep {} --dir {}", file.display(), d.display()),
                None => format!("easel sweep {}", file.display()),
            };
            let dir = args
                .dir
                .unwrap_or_else(|| Path::new("sweeps").join(&plan.name));
            let sweep = SweepDir::prepare(&dir, plan)?;
            let weights = weights::resolve(args.weights.as_deref())?;
            if args.slurm {
                let opts = slurm::Options {
                    partition: args.partition,
                    gres: args.gres,
                    time: args.time,
                    sbatch_args: args.sbatch_args,
                    resubmit_failed: args.resubmit_failed,
                    weights,
                    backend: args.backend,
                };
                match slurm::submit(&sweep, &opts)? {
                    Some(id) => println!(
                        "submitted job {id}; `easel sweep status {d}` shows the points, `easel sweep collect {d}` makes the contact sheet",
                        d = dir.display()
                    ),
                    None => println!("every point of {} has finished", dir.display()),
                }
                return Ok(ExitCode::SUCCESS);
            }
            let opts = local::Options {
                jobs: args.jobs as usize,
                weights,
                backend: args.backend,
            };
            let ended = local::run(&sweep, &opts)?;
            collect(&sweep)?;
            if let Some(sig) = ended.signal {
                easel::logging::say(format!("stopped; `{again}` goes on with what is missing"));
                return Ok(ExitCode::from((128 + sig) as u8));
            }
            if !ended.failed.is_empty() {
                bail!(
                    "points {} failed (their logs are in {}); fix the cause and run `{again}` again: it goes on with what is missing",
                    ended.failed.join(", "),
                    sweep.path.join("logs").display(),
                );
            }
            return Ok(ExitCode::SUCCESS);
        }
    };
    collect(&SweepDir::open(&dir)?)?;
    Ok(ExitCode::SUCCESS)
}

fn collect(sweep: &easel::sweep::SweepDir) -> Result<()> {
    let (results, sheets) = sweep.collect()?;
    print!("{}", sweep.table(&results));
    println!("wrote {}", sweep.path.join(easel::sweep::RESULTS).display());
    for s in sheets {
        println!("wrote {}", s.display());
    }
    Ok(())
}

/// The runs browser; a run picked with `r` goes to the workbench, then back here.
fn browse_runs(dir: &Path, image_protocol: Option<String>) -> Result<ExitCode> {
    use easel::tui::browser::{browse, state::Action};
    let protocol = image_protocol
        .as_deref()
        .map(easel::tui::parse_protocol)
        .transpose()?;
    let mut notice = None;
    while let Some(Action::Resume { dir: run, set }) = browse(dir, protocol, notice.take())? {
        let args = RunArgs {
            ui: Ui::Tui,
            weights: None,
            image_protocol: image_protocol.clone(),
        };
        notice = Some(match resume(&run, &set, None, &args) {
            Ok(_) => format!("back from {}", run.display()),
            Err(e) => format!("cannot resume {}: {e:#}", run.display()),
        });
    }
    Ok(ExitCode::SUCCESS)
}
