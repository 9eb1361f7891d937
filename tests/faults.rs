//! Faults on purpose, through fail points (the `failpoints` feature, which
//! scripts/test.sh turns on): a compute path that panics mid-run and an engine that
//! panics between iterations end as reported failures, in plain mode and in the
//! workbench, never as a hang, and the run's checkpoint resumes the run.

mod common;

use common::tmux::Tmux;
use std::path::Path;
use std::process::Output;

fn scratch() -> tempfile::TempDir {
    common::scratch(
        &["chelsea.png", "starry_night.jpg"],
        "name: tiny\ncontent: chelsea.png\nstyle: starry_night.jpg\nsize: {width: 32, height: 24}\niterations: 6\nsave_every: 2\nbackend: cpu\n",
    )
}

fn run_with(failpoints: &str, dir: &Path) -> Output {
    common::easel_command(dir)
        .env("FAILPOINTS", failpoints)
        .args(["run", "p.yaml", "--ui", "plain", "--out", "out"])
        .output()
        .expect("easel runs")
}

fn only_run(dir: &Path) -> std::path::PathBuf {
    let runs = common::run_dirs(&dir.join("out"));
    assert_eq!(runs.len(), 1, "{runs:?}");
    runs[0].clone()
}

/// The run left behind resumes (without the fault) to its end.
fn assert_resumes(dir: &Path) {
    let run = only_run(dir);
    assert!(run.join("checkpoint.safetensors").is_file());
    let o = common::easel(
        &["resume", run.to_str().expect("utf-8"), "--ui", "plain"],
        dir,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let records = common::records(&run);
    assert_eq!(records.last().map(|r| r["iter"].as_u64()), Some(Some(6)));
}

/// A run with `failpoints` exits 1 with a message holding every needle, and its run
/// directory resumes to the end.
fn fails_then_resumes(failpoints: &str, needles: &[&str]) {
    let dir = scratch();
    let o = run_with(failpoints, dir.path());
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    for n in needles {
        assert!(err.contains(n), "{failpoints}: no {n:?} in {err}");
    }
    assert_resumes(dir.path());
}

#[test]
#[cfg_attr(
    not(feature = "failpoints"),
    ignore = "needs --features failpoints: run by scripts/test.sh"
)]
fn a_compute_path_that_panics_ends_the_run_with_its_checkpoint() {
    fails_then_resumes(
        "network-evaluate=3*off->panic(the device was lost)",
        &[
            "stopped on an internal error at iteration 3",
            "the device was lost",
            "easel resume",
        ],
    );
}

#[test]
#[cfg_attr(
    not(feature = "failpoints"),
    ignore = "needs --features failpoints: run by scripts/test.sh"
)]
fn an_engine_that_panics_is_reported_not_silent() {
    fails_then_resumes(
        "engine-loop=2*off->panic(a bug)",
        &["engine stopped on an internal error", "a bug"],
    );
}

#[test]
#[cfg_attr(
    not(feature = "failpoints"),
    ignore = "needs --features failpoints: run by scripts/test.sh"
)]
fn the_workbench_shows_an_engine_panic_and_quits() {
    let dir = scratch();
    let weights = common::real_weights();
    let command = format!(
        "env FAILPOINTS='engine-loop=2*off->panic(a bug)' EASEL_WEIGHTS_DIR={} {} run p.yaml --ui tui --image-protocol halfblocks --out out; echo EXITED $?; sleep 60",
        weights.parent().expect("weights folder").display(),
        env!("CARGO_BIN_EXE_easel")
    );
    let tmux = Tmux::start("faults", dir.path(), (100, 30), &command);
    let screen = tmux.wait_for("FAILED", 60);
    assert!(
        screen.contains("a bug"),
        "the failure is on the screen:\n{screen}"
    );
    tmux.keys(&["q"]);
    let screen = tmux.wait_for("EXITED", 10);
    assert!(screen.contains("EXITED 1"), "{screen}");
}

/// The run's checkpoint: its tensors by name.
fn checkpoint_tensors(run: &Path) -> std::collections::HashMap<String, Vec<f32>> {
    let (tensors, _) = easel::weights::read_safetensors(&run.join("checkpoint.safetensors"))
        .expect("the run's checkpoint");
    tensors.into_iter().map(|(k, t)| (k, t.data)).collect()
}

#[test]
#[cfg_attr(
    not(feature = "failpoints"),
    ignore = "needs --features failpoints: run by scripts/test.sh"
)]
fn a_rollback_returns_to_the_same_image_whether_or_not_a_snapshot_came_between() {
    // Iterations 0-3 pass, then three evaluations fail in a row: three rollbacks to
    // iteration 3, a pause, and plain mode stops with a checkpoint. With snapshots
    // every 2 iterations the network's state was read back at iteration 4 but not at
    // 3; the point rolled back to must still be iteration 3's image, as without them.
    let stopped = |save_every: u32| {
        let dir = common::scratch(
            &["chelsea.png", "starry_night.jpg"],
            &format!(
                "name: tiny\ncontent: chelsea.png\nstyle: starry_night.jpg\nsize: {{width: 32, height: 24}}\niterations: 20\nsave_every: {save_every}\nbackend: cpu\n"
            ),
        );
        let o = run_with(
            "network-evaluate=4*off->3*return(injected)->off",
            dir.path(),
        );
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(err.contains("diverged at iteration 4 (injected)"), "{err}");
        assert_eq!(
            err.matches("rolled back to iteration 3").count(),
            3,
            "{err}"
        );
        let run = only_run(dir.path());
        let records = common::records(&run);
        let last = records.last().expect("records").clone();
        (checkpoint_tensors(&run), last, dir)
    };
    let (with_snapshots, last_a, _a) = stopped(2);
    let (without, last_b, _b) = stopped(0);
    for name in ["x", "adam.m", "adam.v"] {
        let (a, b) = (&with_snapshots[name], &without[name]);
        let most = a
            .iter()
            .zip(b)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0, f32::max);
        assert!(
            a.len() == b.len() && most == 0.0,
            "the checkpoint's {name} depends on whether a snapshot came between (by up to {most})"
        );
    }
    assert_eq!(
        last_a["j"], last_b["j"],
        "the final J differs: {last_a} vs {last_b}"
    );
}
