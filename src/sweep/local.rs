//! A sweep on this machine: each point is `easel run --run-dir` in a child process,
//! `jobs` at once (as many as the memory estimate allows), the cores shared between
//! them. SIGINT, SIGTERM and SIGHUP stop the points cleanly (their checkpoints kept);
//! the same command later goes on with what is missing.

use super::SweepDir;
use super::plan::Point;
use crate::backend::BackendChoice;
use crate::engine::memory::{available_memory, memory_estimate};
use crate::image::Size;
use crate::run_dir::Record;
use anyhow::{Context, Result};
use clap::ValueEnum;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Sender, channel};
use std::time::Duration;

pub struct Options {
    pub jobs: usize,
    /// Resolved (and fetched) once, so that the points do not each fetch.
    pub weights: PathBuf,
    pub backend: Option<BackendChoice>,
}

/// A message from a point's reader thread.
enum Msg {
    Record(usize, Record),
    Ended(usize),
}

struct Running {
    child: Child,
    bar: ProgressBar,
}

/// How a local sweep ended.
#[derive(Debug, Default)]
pub struct Ended {
    /// The signal that stopped it, if one did.
    pub signal: Option<i32>,
    /// The points whose run failed (their logs say why).
    pub failed: Vec<String>,
}

/// Runs the sweep's unfinished points.
pub fn run(sweep: &SweepDir, opts: &Options) -> Result<Ended> {
    let mut todo: Vec<&Point> = sweep.unfinished();
    todo.reverse();
    let total = sweep.plan.points.len();
    let jobs = allowed_jobs(sweep, &todo, opts.jobs)?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) / jobs;
    let multi = MultiProgress::new();
    let say = |text: String| multi.suspend(|| crate::logging::say(text));
    say(format!(
        "sweep {}: {} of {total} points to run, {jobs} at a time",
        sweep.path.display(),
        todo.len()
    ));
    let signals = Signals::install()?;
    let (tx, rx) = channel();
    let mut running: Vec<Option<Running>> = (0..total).map(|_| None).collect();
    let (mut active, mut failed, mut forwarded) = (0usize, Vec::new(), 0usize);
    loop {
        let sig = signals.first();
        // The first signal stops the points cleanly (SIGTERM), a second at once (SIGTERM
        // again), a third kills them.
        if sig != 0 && forwarded < 3 && signals.count() > forwarded {
            forwarded += 1;
            let pass_on = if forwarded < 3 {
                libc::SIGTERM
            } else {
                libc::SIGKILL
            };
            running
                .iter()
                .flatten()
                .for_each(|r| send_signal(&r.child, pass_on));
        }
        while sig == 0 && active < jobs {
            let Some(p) = todo.pop() else { break };
            let child = spawn(sweep, p, opts, threads.max(1), tx.clone())?;
            let bar = multi.add(point_bar(sweep, p));
            running[p.index] = Some(Running { child, bar });
            active += 1;
        }
        if active == 0 {
            break;
        }
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(Msg::Record(i, r)) => {
                if let Some(run) = &running[i] {
                    run.bar.set_position(r.iter + u64::from(!r.is_final));
                    run.bar.set_message(format!("J {:.3e}", r.j));
                }
            }
            Ok(Msg::Ended(i)) => {
                let Some(mut run) = running[i].take() else {
                    continue;
                };
                active -= 1;
                let status = run.child.wait()?;
                run.bar.finish_and_clear();
                let p = &sweep.plan.points[i];
                if status.success() {
                    say(format!(
                        "{} finished ({})",
                        p.dir,
                        p.label(&sweep.plan.axes)
                    ));
                } else if sig == 0 {
                    say(format!(
                        "{} failed (exit code {}): see {}",
                        p.dir,
                        status.code().unwrap_or(-1),
                        sweep.log_path(p).display()
                    ));
                    // The mark only tells `status` apart from pending; the failure is
                    // reported either way.
                    let _ = sweep.mark_failed(p);
                    failed.push(p.dir.clone());
                }
            }
            Err(_) => {}
        }
    }
    let sig = signals.first();
    Ok(Ended {
        signal: (sig != 0).then_some(sig),
        failed,
    })
}

/// The signals that have arrived: the first one, and how many.
#[derive(Default)]
struct Signals {
    first: AtomicUsize,
    count: AtomicUsize,
}

impl Signals {
    /// Counts SIGINT, SIGTERM and SIGHUP; none ends the sweep by itself.
    fn install() -> Result<Arc<Signals>> {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let signals = Arc::new(Signals::default());
        for sig in [SIGINT, SIGTERM, SIGHUP] {
            let s = Arc::clone(&signals);
            // SAFETY: the handler only touches atomics, which is async-signal-safe.
            unsafe {
                signal_hook::low_level::register(sig, move || {
                    let _ = s.first.compare_exchange(
                        0,
                        sig as usize,
                        Ordering::Relaxed,
                        Ordering::Relaxed,
                    );
                    s.count.fetch_add(1, Ordering::Relaxed);
                })?;
            }
        }
        Ok(signals)
    }

    fn first(&self) -> i32 {
        self.first.load(Ordering::Relaxed) as i32
    }

    fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }
}

/// Passes a signal on to a point: the first stops it cleanly, a second at once.
fn send_signal(child: &Child, sig: i32) {
    // SAFETY: kill(2) on our own child's pid, which we have not yet waited for.
    unsafe {
        libc::kill(child.id() as libc::pid_t, sig);
    }
}

fn point_bar(sweep: &SweepDir, p: &Point) -> ProgressBar {
    let bar = ProgressBar::new(sweep.plan.preset(p).map_or(0, |pr| pr.iterations));
    if let Ok(style) =
        ProgressStyle::with_template("{prefix:>5} [{bar:30}] {pos}/{len} {msg} ({eta})")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(p.dir.clone());
    bar
}

/// Starts `easel run` on a point, its records read by a thread of their own.
fn spawn(
    sweep: &SweepDir,
    p: &Point,
    opts: &Options,
    threads: usize,
    tx: Sender<Msg>,
) -> Result<Child> {
    use std::os::unix::process::CommandExt;
    sweep.clear_failed(p);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(sweep.log_path(p))
        .with_context(|| format!("cannot open {}", sweep.log_path(p).display()))?;
    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.arg("run")
        .arg(sweep.preset_path(p))
        .arg("--run-dir")
        .arg(sweep.run_dir(p))
        .args(["--ui", "jsonl", "--weights"])
        .arg(&opts.weights)
        .env("RAYON_NUM_THREADS", threads.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        // Its own process group: a Ctrl-C in the terminal reaches the sweep alone, which
        // passes it on once, rather than every point at once and again.
        .process_group(0);
    if let Some(b) = opts.backend
        && let Some(v) = b.to_possible_value()
    {
        cmd.args(["--backend", v.get_name()]);
    }
    let mut child = cmd
        .spawn()
        .context("cannot start easel for a sweep point")?;
    let stdout = child.stdout.take().context("the point's output")?;
    let index = p.index;
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Ok(r) = serde_json::from_str::<Record>(&line) {
                let _ = tx.send(Msg::Record(index, r));
            }
        }
        let _ = tx.send(Msg::Ended(index));
    });
    Ok(child)
}

/// `jobs`, or fewer where that many points at once would not fit in memory.
fn allowed_jobs(sweep: &SweepDir, todo: &[&Point], jobs: usize) -> Result<usize> {
    let mut need = 0;
    for p in todo {
        let preset = sweep.plan.preset(p)?;
        let pixels = match preset.size {
            Size::Exact { width, height } => width as u64 * height as u64,
            Size::MaxSide { max_side } => max_side as u64 * max_side as u64,
        };
        need = need.max(memory_estimate(pixels, &preset.settings.optimizer));
    }
    let fits = available_memory().map_or(jobs, |have| (have / need.max(1)) as usize);
    if fits < jobs {
        crate::logging::say(format!(
            "note: {jobs} points at once would need about {:.1} GiB; running {} at a time",
            crate::backend::gib(need * jobs as u64),
            fits.max(1)
        ));
    }
    Ok(jobs.min(fits).max(1))
}
