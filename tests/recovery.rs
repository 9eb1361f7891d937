//! Never lose a run: kill `easel run` with SIGKILL and SIGHUP at random points, check
//! that no file in the run directory is torn, resume, and compare the trajectory with
//! a run that was never interrupted.

mod common;

use rand::{RngExt, SeedableRng};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const PRESET: &str = "name: kill\ncontent: chelsea.png\nstyle: starry_night.jpg\nsize: {width: 64, height: 48}\niterations: 80\nsave_every: 5\nbackend: cpu\n";

fn easel(dir: &Path, args: &[&str]) -> Child {
    common::easel_command(dir)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("easel starts")
}

/// Every file of the run directory is whole: it parses, decodes or loads.
fn assert_whole(run: &Path) {
    common::records(run);
    easel::preset::Preset::load(&run.join("preset.yaml"), &[]).expect("preset.yaml is whole");
    easel::engine::Checkpoint::load(
        &run.join("checkpoint.safetensors"),
        &burn::tensor::Device::flex(),
    )
    .expect("checkpoint is whole");
    for entry in std::fs::read_dir(run.join("snapshots")).expect("snapshots") {
        let p = entry.expect("entry").path();
        if p.extension().is_some_and(|e| e == "png") {
            image::open(&p).unwrap_or_else(|e| panic!("{} is torn: {e}", p.display()));
        }
    }
    if run.join("final.png").exists() {
        image::open(run.join("final.png")).expect("final.png is whole");
    }
}

/// Resumes the run in `out` and lets it finish; returns its directory.
fn resume_to_end(dir: &Path, out: &Path) -> PathBuf {
    let run = only_run(out).expect("run dir");
    let status = easel(
        dir,
        &["resume", run.to_str().expect("utf-8"), "--ui", "plain"],
    )
    .wait()
    .expect("wait");
    assert!(status.success(), "the last resume completes");
    run
}

fn only_run(out: &Path) -> Option<PathBuf> {
    common::run_dirs(out).into_iter().next()
}

#[test]
fn killed_runs_resume_to_the_same_trajectory() {
    let dir = common::scratch(&["chelsea.png", "starry_night.jpg"], PRESET);
    let status = easel(
        dir.path(),
        &["run", "p.yaml", "--ui", "plain", "--out", "straight"],
    )
    .wait()
    .expect("wait");
    assert!(status.success());
    let reference =
        common::records(&only_run(&dir.path().join("straight")).expect("reference run"));

    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let out = dir.path().join("killed");
    let mut finished = false;
    let mut kills = 0;
    for round in 0..12 {
        let mut child = match only_run(&out) {
            None => easel(
                dir.path(),
                &["run", "p.yaml", "--ui", "plain", "--out", "killed"],
            ),
            Some(run) => easel(
                dir.path(),
                &["resume", run.to_str().expect("utf-8"), "--ui", "plain"],
            ),
        };
        std::thread::sleep(Duration::from_millis(rng.random_range(300..2500)));
        if child.try_wait().expect("poll").is_some_and(|s| s.success()) {
            finished = true;
            break;
        }
        let signal = if round % 2 == 0 { "-KILL" } else { "-HUP" };
        Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .expect("kill");
        let status = child.wait().expect("wait");
        kills += 1;
        if status.success() {
            finished = true;
            break;
        }
        if let Some(run) = only_run(&out) {
            assert_whole(&run);
        }
    }
    if !finished {
        resume_to_end(dir.path(), &out);
    }
    assert!(kills >= 3, "the run was interrupted only {kills} times");
    let run = only_run(&out).expect("run dir");
    assert_whole(&run);
    let resumed = common::records(&run);
    common::assert_same_trajectory(&reference, &resumed, "after kills and resumes");
}

/// A hundred SIGKILL, SIGTERM and SIGHUP at random points of a small run, each followed
/// by a resume: every file whole after each one, no temporary file left, and the
/// trajectory the same as a run never interrupted (Adam: to 1e-12).
#[test]
fn a_hundred_kills_at_random_points_lose_nothing() {
    const SMALL: &str = "name: kill\ncontent: chelsea.png\nstyle: starry_night.jpg\nsize: {width: 32, height: 24}\niterations: 400\nsave_every: 3\nbackend: cpu\n";
    let dir = common::scratch(&["chelsea.png", "starry_night.jpg"], SMALL);
    let run_args = ["run", "p.yaml", "--ui", "plain", "--out"];
    let status = easel(dir.path(), &[&run_args[..], &["straight"]].concat())
        .wait()
        .expect("wait");
    assert!(status.success());
    let reference =
        common::records(&only_run(&dir.path().join("straight")).expect("reference run"));
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let out = dir.path().join("killed");
    let mut kills = 0;
    while kills < 100 {
        let mut child = match only_run(&out) {
            None => easel(dir.path(), &[&run_args[..], &["killed"]].concat()),
            Some(run) => easel(
                dir.path(),
                &["resume", run.to_str().expect("utf-8"), "--ui", "plain"],
            ),
        };
        std::thread::sleep(Duration::from_millis(rng.random_range(20..700)));
        let signal = ["-KILL", "-TERM", "-HUP"][kills % 3];
        Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .expect("kill");
        let status = child.wait().expect("wait");
        kills += 1;
        if status.success() {
            break;
        }
        if let Some(run) = only_run(&out) {
            assert_whole(&run);
            let temps = common::temp_files(&run);
            // A SIGKILL mid-write may leave its own temporary file until the next
            // resume clears it; never more than that one.
            assert!(temps.len() <= 1, "temporary files pile up: {temps:?}");
        }
    }
    assert!(
        kills >= 100,
        "the run finished after {kills} kills; give it more iterations"
    );
    let run = resume_to_end(dir.path(), &out);
    assert_whole(&run);
    let temps = common::temp_files(&run).len();
    assert_eq!(temps, 0, "temporary files left after the last resume");
    let resumed = common::records(&run);
    assert_eq!(resumed.len(), reference.len(), "every iteration once");
    for (x, y) in reference.iter().zip(&resumed) {
        let (jx, jy) = (x["J"].as_f64().expect("J"), y["J"].as_f64().expect("J"));
        assert!(
            (jx - jy).abs() <= 1e-12 * jx.abs(),
            "iteration {}: {jx} vs {jy} after kills and resumes",
            x["iter"]
        );
    }
}
