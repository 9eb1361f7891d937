//! The command line (docs/design.md §2).

use crate::backend::{BackendChoice, ConvSearch, Precision};
use crate::bench::{BenchConv, BenchOptimizer, BenchPadding};
use clap::{Parser, Subcommand, ValueEnum, ValueHint};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "easel",
    version,
    about = "A terminal workbench for neural style transfer (Gatys et al.)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Cmd>,
    /// More log messages (-vv: all); under the workbench they go to RUN_DIR/easel.log.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
    /// Errors only.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Ui {
    /// The workbench when stdin and stdout are terminals, plain output otherwise.
    Auto,
    Tui,
    Plain,
    Jsonl,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// How to show the run.
    #[arg(long, value_enum, default_value_t = Ui::Auto)]
    pub ui: Ui,
    /// A VGG-19 weights file (default: weights/, fetched on first use).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Image protocol for the preview (skips the terminal probe): kitty, sixel, iterm2, halfblocks.
    #[arg(long)]
    pub image_protocol: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Run a preset.
    Run {
        /// The preset YAML file, or the name of a built-in preset (`default`, `best`).
        #[arg(value_hint = ValueHint::FilePath)]
        preset: PathBuf,
        /// Override a preset key, e.g. --set optimizer.lr=1.0 --set iterations=50.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Folder for the run directory (default: runs/).
        #[arg(long, value_hint = ValueHint::DirPath)]
        out: Option<PathBuf>,
        /// The run directory itself, for scripts: created if missing, resumed (with its
        /// own settings) if it holds a checkpoint.
        #[arg(long, conflicts_with = "out", value_hint = ValueHint::DirPath)]
        run_dir: Option<PathBuf>,
        /// Where to compute (overrides the preset's `backend`).
        #[arg(long, value_enum)]
        backend: Option<BackendChoice>,
        #[command(flatten)]
        args: RunArgs,
    },
    /// Continue a run from its run directory's checkpoint.
    Resume {
        #[arg(value_hint = ValueHint::DirPath)]
        run_dir: PathBuf,
        /// Override a setting of the run, e.g. --set iterations=400 to run longer.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        #[arg(long, value_enum)]
        backend: Option<BackendChoice>,
        #[command(flatten)]
        args: RunArgs,
    },
    /// Run a grid of settings over a base preset, here or on a Slurm cluster.
    Sweep(SweepArgs),
    /// Browse the run directories in a folder (a table where there is no terminal):
    /// state, iterations, J, plots, comparisons, and resume.
    Runs {
        /// The folder that holds the run directories.
        #[arg(default_value = "runs", value_hint = ValueHint::DirPath)]
        dir: PathBuf,
        /// One JSON object per run, for scripts.
        #[arg(long, conflicts_with = "list")]
        json: bool,
        /// The table, even in a terminal.
        #[arg(long)]
        list: bool,
        /// Image protocol for the final images: kitty, sixel, iterm2, halfblocks.
        #[arg(long)]
        image_protocol: Option<String>,
    },
    /// Redraw a run directory's losses.svg and report.html.
    Plot {
        #[arg(value_hint = ValueHint::DirPath)]
        run_dir: PathBuf,
    },
    /// List the built-in presets and those in presets/ here.
    Presets,
    /// Say which compute backends this machine can run (CPU, CUDA, wgpu), why not where
    /// one cannot, and which `auto` takes.
    Backends {
        /// One JSON array instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Print a completion script for a shell, e.g. `easel completions bash > ~/.local/share/bash-completion/completions/easel`.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Fetch, check or import the VGG-19 weights.
    Weights {
        #[command(subcommand)]
        action: WeightsCmd,
    },
    /// Measure seconds per iteration and peak memory on the real network.
    Bench {
        /// Sizes to measure, WIDTHxHEIGHT, comma-separated.
        #[arg(long, default_value = "400x300,512x512", value_delimiter = ',')]
        sizes: Vec<String>,
        /// Timed iterations per size (after one warm-up iteration).
        #[arg(long, default_value_t = 5, value_parser = parse_iters)]
        iters: u64,
        #[arg(long, value_enum, default_value_t = BackendChoice::Cpu)]
        backend: BackendChoice,
        /// Optimiser to time.
        #[arg(long, value_enum, default_value_t = BenchOptimizer::Adam)]
        optimizer: BenchOptimizer,
        /// Also time the forward pass alone.
        #[arg(long)]
        profile: bool,
        /// The CPU's convolution: winograd (easel's), direct (burn's im2col), or both,
        /// timed one after the other at each size.
        #[arg(long, value_enum, default_value_t = BenchConv::Winograd)]
        conv: BenchConv,
        /// conv1_1's padding: zero (the seed's), replicate, or both, timed one after
        /// the other at each size.
        #[arg(long, value_enum, default_value_t = BenchPadding::Zero)]
        padding: BenchPadding,
        /// The CUDA path's arithmetic.
        #[arg(long, value_enum, default_value_t = Precision::Fp32)]
        precision: Precision,
        /// How the CUDA path picks cuDNN's algorithms: auto (measured from a megapixel
        /// up), heuristic, measured, or several (`heuristic,measured`), timed one after
        /// the other at each size.
        #[arg(long, value_enum, value_delimiter = ',', default_value = "auto")]
        conv_search: Vec<ConvSearch>,
        /// Also time the CPU's Winograd path in tiles of this side (a multiple of 64), next
        /// to the untiled one where that fits in memory.
        #[arg(long, value_parser = parse_tile)]
        tile: Option<usize>,
        /// Instead: the wall time for coarse to fine to reach the J a plain run reaches
        /// after --target-iterations, at the first size.
        #[arg(long)]
        time_to_target: bool,
        /// With --time-to-target: the plain run's iterations, whose J is the target.
        #[arg(long, default_value_t = 200)]
        target_iterations: u64,
        /// A VGG-19 weights file (default: the one `easel weights fetch` keeps).
        #[arg(long)]
        weights: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum WeightsCmd {
    /// Download the Keras VGG-19 file, verify it and convert it.
    Fetch,
    /// Say which weights are present and whether they verify.
    Info,
    /// Import weights from a file: Keras' .h5, or torchvision's vgg19-dcbb9e9d.pth.
    Import { path: PathBuf },
}

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct SweepArgs {
    #[command(subcommand)]
    pub action: Option<SweepCmd>,
    /// The sweep file: `base` (a preset) and `axes` (key: [values]); see the README.
    #[arg(required = true)]
    pub sweep: Option<PathBuf>,
    /// The sweep's folder (default: sweeps/NAME). Run again, it goes on with what is missing.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Points run at once on this machine (fewer where memory would not hold them).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub jobs: u64,
    /// Where each point computes (overrides the base preset's `backend`).
    #[arg(long, value_enum)]
    pub backend: Option<BackendChoice>,
    /// A VGG-19 weights file for every point (default: fetched once, before the points).
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// Submit the points as a Slurm job array instead of running them here.
    #[arg(long)]
    pub slurm: bool,
    /// The Slurm partition for the tasks (default: the cluster's).
    #[arg(long, requires = "slurm")]
    pub partition: Option<String>,
    /// Generic resources per task, e.g. gpu:1.
    #[arg(long, requires = "slurm")]
    pub gres: Option<String>,
    /// Time limit per task, e.g. 1:00:00.
    #[arg(long, requires = "slurm")]
    pub time: Option<String>,
    /// Another #SBATCH line, e.g. --sbatch-arg=--mem=16G (repeatable).
    #[arg(long = "sbatch-arg", requires = "slurm", allow_hyphen_values = true)]
    pub sbatch_args: Vec<String>,
    /// Send the points that failed or were cancelled, while others are still queued.
    #[arg(long, requires = "slurm")]
    pub resubmit_failed: bool,
}

#[derive(Debug, Subcommand)]
pub enum SweepCmd {
    /// Each point's state, iterations and J (and Slurm's view where it has the job).
    Status {
        #[arg(value_hint = ValueHint::DirPath)]
        dir: PathBuf,
    },
    /// Write sweep.jsonl and the contact sheets from the points' run directories.
    Collect {
        #[arg(value_hint = ValueHint::DirPath)]
        dir: PathBuf,
    },
}

/// `--iters`: at least one timed iteration.
fn parse_iters(s: &str) -> Result<u64, String> {
    match s.parse::<u64>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => Err(format!(
            "{s} is not a number of iterations; give 1 or more, e.g. --iters 5"
        )),
    }
}

/// `--tile`: a tile side the preset's `tile: {size: N}` would take.
fn parse_tile(s: &str) -> Result<usize, String> {
    let size: usize = s
        .parse()
        .map_err(|_| format!("{s} is not a whole number of pixels"))?;
    match (crate::network::tiles::TileSize { size }).problem() {
        Some(problem) => Err(format!("{problem}, e.g. --tile 1024")),
        None => Ok(size),
    }
}
