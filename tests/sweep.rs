//! `easel sweep` end to end: points run here (and resumed after a kill), the contact
//! sheet against sweep.jsonl, and a real single-node Slurm (scripts/slurm-local.sh)
//! running the sweep as a job array, one task cancelled and resubmitted.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BASE: &str = "name: tiny\ncontent: chelsea.png\nstyle: starry_night.jpg\nsize: {width: 32, height: 24}\niterations: 4\nsave_every: 2\nbackend: cpu\n";

fn scratch(sweep: &str) -> tempfile::TempDir {
    let dir = common::scratch(
        &["chelsea.png", "starry_night.jpg", "hubble_deep_field.jpg"],
        BASE,
    );
    std::fs::write(dir.path().join("s.yaml"), sweep).expect("write the sweep file");
    dir
}

/// A fail point (tests are built with `failpoints`) that sleeps 0.1 s each iteration.
const SLOW: &str = "engine-loop=sleep(100)";

fn easel(args: &[&str], cwd: &Path, slurm_conf: Option<&Path>) -> Output {
    let mut cmd = common::easel_command(cwd);
    if let Some(conf) = slurm_conf {
        cmd.env("SLURM_CONF", conf);
    }
    cmd.args(args).output().expect("easel runs")
}

/// `easel sweep NAME` over p.yaml with `axes` (YAML under `axes:`) fails, and its
/// error holds each of `needles`.
fn refused_sweep(dir: &Path, name: &str, axes: &str, needles: &[&str]) {
    std::fs::write(dir.join(name), format!("base: p.yaml\naxes:\n  {axes}\n")).expect("write");
    let o = easel(&["sweep", name], dir, None);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{name} was accepted");
    for n in needles {
        assert!(err.contains(n), "{name}: no {n:?} in {err}");
    }
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn results(sweep: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(sweep.join("sweep.jsonl"))
        .expect("sweep.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect()
}

fn losses(run: &Path) -> Vec<String> {
    std::fs::read_to_string(run.join("losses.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Waits up to `secs` for `done`, failing the test with `what` after.
fn wait_for(secs: u64, what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Each cell of each contact sheet shows the point whose sweep.jsonl labels are the
/// cell's row and column labels, and its pixels are that point's final image.
fn assert_sheet_matches(sweep: &Path) {
    let by_point: std::collections::HashMap<String, serde_json::Value> = results(sweep)
        .into_iter()
        .map(|r| (r["point"].as_str().expect("point").to_string(), r))
        .collect();
    let sheets: Vec<serde_json::Value> = serde_json::from_str(
        &std::fs::read_to_string(sweep.join("contact.json")).expect("contact.json"),
    )
    .expect("JSON");
    let mut seen = 0;
    for sheet in &sheets {
        let png = image::open(sweep.join(sheet["file"].as_str().expect("file")))
            .expect("the sheet decodes")
            .to_rgb8();
        for cell in sheet["cells"].as_array().expect("cells") {
            let r = &by_point[cell["point"].as_str().expect("point")];
            let col_axis = sheet["columns"]["axis"].as_str().expect("axis");
            let col = cell["column"].as_u64().expect("column") as usize;
            assert_eq!(
                r["labels"][col_axis], sheet["columns"]["labels"][col],
                "{cell}"
            );
            if let Some(rows) = sheet["rows"].as_object() {
                let row = cell["row"].as_u64().expect("row") as usize;
                assert_eq!(
                    r["labels"][rows["axis"].as_str().expect("axis")],
                    rows["labels"][row],
                    "{cell}"
                );
            }
            let rect: Vec<u32> = cell["rect"]
                .as_array()
                .expect("a finished point has its image on the sheet")
                .iter()
                .map(|v| v.as_u64().expect("n") as u32)
                .collect();
            let own = image::open(r["final_image"].as_str().expect("final image"))
                .expect("final.png")
                .to_rgb8();
            let thumb = image::imageops::resize(
                &own,
                rect[2],
                rect[3],
                image::imageops::FilterType::Triangle,
            );
            let on_sheet =
                image::imageops::crop_imm(&png, rect[0], rect[1], rect[2], rect[3]).to_image();
            assert_eq!(
                on_sheet, thumb,
                "cell of {} shows another image",
                cell["point"]
            );
            seen += 1;
        }
    }
    assert_eq!(seen, by_point.len(), "every point on a sheet once");
}

#[test]
fn a_sweep_runs_its_points_and_its_contact_sheet_matches_sweep_jsonl() {
    let dir = scratch(
        "base: p.yaml\naxes:\n  beta: [10, 160]\n  style: [starry_night.jpg, hubble_deep_field.jpg]\n",
    );
    let out = ok(&easel(
        &["sweep", "s.yaml", "--jobs", "2"],
        dir.path(),
        None,
    ));
    let sweep = dir.path().join("sweeps/s");
    assert!(out.contains("contact.png"), "{out}");
    let rs = results(&sweep);
    assert_eq!(rs.len(), 4);
    let mut combos = Vec::new();
    for r in &rs {
        assert_eq!(r["state"], "finished", "{r}");
        assert_eq!(
            (r["iterations"].as_u64(), r["total"].as_u64()),
            (Some(4), Some(4))
        );
        assert!(r["J"].as_f64().is_some_and(|j| j > 0.0));
        let run = PathBuf::from(r["run_dir"].as_str().expect("run_dir"));
        let preset = std::fs::read_to_string(run.join("preset.yaml")).expect("the point's preset");
        let beta = r["settings"]["beta"].as_u64().expect("beta");
        assert!(preset.contains(&format!("beta: {beta}")), "{preset}");
        let style = r["labels"]["style"].as_str().expect("style");
        assert!(preset.contains(style), "{preset}");
        combos.push((beta, style.to_string()));
    }
    combos.sort();
    combos.dedup();
    assert_eq!(combos.len(), 4, "every combination once: {combos:?}");
    assert_sheet_matches(&sweep);
    // `easel runs` over the sweeps' folder lists every point as sweep/point.
    let listed = ok(&easel(&["runs", "sweeps", "--json"], dir.path(), None));
    let labels: Vec<String> = listed
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("JSON")["label"]
                .as_str()
                .expect("label")
                .to_string()
        })
        .collect();
    assert_eq!(labels, ["s/p000", "s/p001", "s/p002", "s/p003"]);

    // A sweep file that names an unknown key, gives unequal zip lists, no axis or a key
    // on two axes is refused, naming the file and the point, before anything runs.
    refused_sweep(
        dir.path(),
        "bad.yaml",
        "betta: [1, 2]",
        &["bad.yaml", "betta"],
    );
    let zip = "zip: {alpha: [1, 2], beta: [3]}";
    refused_sweep(dir.path(), "zip.yaml", zip, &["as many values"]);
    refused_sweep(dir.path(), "empty.yaml", "zip: []", &["gives no axis"]);
    let twice = "alpha: [1, 2]\n  zip: {alpha: [1, 10], beta: [3, 4]}";
    let needles = ["twice.yaml", "`alpha` is on two axes"];
    refused_sweep(dir.path(), "twice.yaml", twice, &needles);
    let inside = "optimizer: [{kind: adam}, {kind: lbfgs}]\n  optimizer.lr: [1, 2]";
    let needles = ["`optimizer` and `optimizer.lr` are on two axes"];
    refused_sweep(dir.path(), "inside.yaml", inside, &needles);
    // A base given as a path is the sweep file's neighbour, wherever easel runs from.
    std::fs::create_dir(dir.path().join("sub")).expect("sub/");
    std::fs::write(
        dir.path().join("sub/far.yaml"),
        "base: ../nothere.yaml\naxes:\n  beta: [1, 2]\n",
    )
    .expect("write");
    let o = easel(&["sweep", "sub/far.yaml"], dir.path(), None);
    let err = String::from_utf8_lossy(&o.stderr);
    let looked = dir.path().join("sub/../nothere.yaml");
    assert!(
        !o.status.success() && err.contains(&looked.display().to_string()),
        "{err}"
    );
    // A bare name that is no file there is a preset's name; the error says both.
    std::fs::write(
        dir.path().join("sub/named.yaml"),
        "base: nosuch\naxes:\n  beta: [1, 2]\n",
    )
    .expect("write");
    let o = easel(&["sweep", "sub/named.yaml"], dir.path(), None);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success()
            && err.contains("named.yaml: key `base`")
            && err.contains(&dir.path().join("sub/nosuch").display().to_string())
            && err.contains("no preset nosuch"),
        "{err}"
    );
    assert!(!dir.path().join("sweeps/bad").exists() && !dir.path().join("sweeps/zip").exists());
    // An edited base preset would mix old and new settings in one sweep: refused.
    let base = std::fs::read_to_string(dir.path().join("p.yaml")).expect("p.yaml");
    std::fs::write(
        dir.path().join("p.yaml"),
        base.replace("iterations: 4", "iterations: 5"),
    )
    .expect("write");
    let o = easel(&["sweep", "s.yaml"], dir.path(), None);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("base preset was edited"),
        "{err}"
    );
}

#[test]
fn a_stopped_sweep_finishes_only_what_was_missing() {
    let dir = scratch("base: p.yaml\naxes:\n  beta: [10, 40, 160]\n  iterations: [60]\n");
    let sweep = dir.path().join("sweeps/s");
    let mut child = common::easel_command(dir.path())
        .args(["sweep", "s.yaml"])
        // 0.1 s an iteration, so that p001 is still running when the signal lands.
        .env("FAILPOINTS", SLOW)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("easel starts");
    wait_for(240, "p000 to finish and p001 to be under way", || {
        sweep.join("p000/final.png").is_file() && losses(&sweep.join("p001")).len() >= 5
    });
    // A second sweep on the same folder would take the first one's points for failed.
    let second = easel(&["sweep", "s.yaml"], dir.path(), None);
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        !second.status.success()
            && err.contains("in use by another easel")
            && err.contains(&child.id().to_string()),
        "a second sweep on a busy folder: {err}"
    );
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert_eq!(child.wait().expect("easel ends").code(), Some(143));
    let rs = results(&sweep);
    let states: Vec<&str> = rs
        .iter()
        .map(|r| r["state"].as_str().expect("state"))
        .collect();
    assert_eq!(states, ["finished", "stopped", "pending"]);
    let p000 = losses(&sweep.join("p000"));
    let p001 = losses(&sweep.join("p001"));
    let p000_final = std::fs::metadata(sweep.join("p000/final.png"))
        .and_then(|m| m.modified())
        .expect("mtime");

    ok(&easel(&["sweep", "s.yaml"], dir.path(), None));
    let rs = results(&sweep);
    assert!(rs.iter().all(|r| r["state"] == "finished"), "{rs:?}");
    assert_eq!(
        losses(&sweep.join("p000")),
        p000,
        "a finished point is left alone"
    );
    assert_eq!(
        std::fs::metadata(sweep.join("p000/final.png"))
            .and_then(|m| m.modified())
            .expect("mtime"),
        p000_final
    );
    // Resumed from its checkpoint, not started again: the records from before the stop
    // are kept as they were (timings and all), up to the checkpoint's iteration.
    let after = losses(&sweep.join("p001"));
    assert_eq!(after.len(), 61);
    let kept = p001.iter().zip(&after).take_while(|(a, b)| a == b).count();
    assert!(
        kept >= 4,
        "p001 started again instead of resuming ({kept} records kept)\n{:?}\n{:?}",
        &p001[..3],
        &after[..3]
    );
    assert_sheet_matches(&sweep);
}

/// A single-node Slurm for the test, stopped when dropped.
struct Slurm {
    dir: tempfile::TempDir,
    conf: PathBuf,
}

impl Slurm {
    fn start() -> Slurm {
        let dir = tempfile::tempdir().expect("tempdir");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/slurm-local.sh");
        // Ports free now rather than the script's fixed ones, so that a Slurm left over
        // from an aborted run, or another test run, is never the one this test talks to.
        // Both listeners are held until both ports are read, so the two differ.
        let listeners: Vec<std::net::TcpListener> = (0..2)
            .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("a free port"))
            .collect();
        let ports: Vec<String> = listeners
            .iter()
            .map(|l| l.local_addr().expect("its address").port().to_string())
            .collect();
        drop(listeners);
        let o = Command::new(&script)
            .arg("start")
            .arg(dir.path())
            .env("SLURMCTLD_PORT", &ports[0])
            .env("SLURMD_PORT", &ports[1])
            .output()
            .expect("slurm-local.sh runs");
        assert!(
            o.status.success(),
            "a local Slurm is needed (scripts/test.sh installs it): {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let conf = dir.path().join("slurm.conf");
        Slurm { dir, conf }
    }

    fn queue_empty(&self) -> bool {
        let o = Command::new("squeue")
            .args(["-h", "-r"])
            .env("SLURM_CONF", &self.conf)
            .output()
            .expect("squeue");
        o.status.success() && o.stdout.is_empty()
    }
}

impl Drop for Slurm {
    fn drop(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/slurm-local.sh");
        let _ = Command::new(script)
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }
}

#[test]
fn a_sweep_runs_as_a_slurm_job_array_and_a_cancelled_point_resumes() {
    let slurm = Slurm::start();
    let conf = Some(slurm.conf.as_path());
    let dir = scratch("base: p.yaml\naxes:\n  beta: [10, 160]\n  iterations: [4, 80]\n");
    let sweep = dir.path().join("sweeps/s");
    // 0.1 s an iteration (sbatch passes the environment on to the jobs), so that
    // p001 is still running when scancel reaches it; the resubmission runs at speed.
    let out = ok(&common::easel_command(dir.path())
        .args(["sweep", "s.yaml", "--slurm", "--time", "10:00"])
        .env("SLURM_CONF", &slurm.conf)
        .env("FAILPOINTS", SLOW)
        .output()
        .expect("easel runs"));
    let job = out
        .split_whitespace()
        .nth(2)
        .and_then(|w| w.trim_end_matches(';').parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no job id in {out:?}"));
    let script = std::fs::read_to_string(sweep.join("sweep.sbatch")).expect("sweep.sbatch");
    assert!(
        script.contains("#SBATCH --time=10:00") && script.contains("--run-dir"),
        "{script}"
    );
    let again = easel(&["sweep", "s.yaml", "--slurm"], dir.path(), conf);
    assert!(
        !again.status.success()
            && String::from_utf8_lossy(&again.stderr).contains("Slurm still holds"),
        "a second submission while the first is queued: {}",
        String::from_utf8_lossy(&again.stderr)
    );
    // p001 is beta=10 with 80 iterations: cancel it part way.
    wait_for(240, "p001 to be under way", || {
        losses(&sweep.join("p001")).len() >= 5
    });
    let o = Command::new("scancel")
        .arg(format!("{job}_1"))
        .env("SLURM_CONF", &slurm.conf)
        .output()
        .expect("scancel");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    wait_for(300, "the array to drain", || slurm.queue_empty());
    let status = ok(&easel(
        &["sweep", "status", sweep.to_str().expect("utf-8")],
        dir.path(),
        conf,
    ));
    assert!(status.contains("p001  stopped"), "{status}");
    let before = losses(&sweep.join("p001"));

    let out = ok(&easel(
        &["sweep", "s.yaml", "--slurm", "--resubmit-failed"],
        dir.path(),
        conf,
    ));
    assert!(out.contains("submitted job"), "{out}");
    wait_for(300, "the resubmitted point", || slurm.queue_empty());
    ok(&easel(
        &["sweep", "collect", sweep.to_str().expect("utf-8")],
        dir.path(),
        conf,
    ));
    let rs = results(&sweep);
    assert!(rs.iter().all(|r| r["state"] == "finished"), "{rs:?}");
    let after = losses(&sweep.join("p001"));
    assert_eq!(after.len(), 81);
    let kept = before
        .iter()
        .zip(&after)
        .take_while(|(a, b)| a == b)
        .count();
    assert!(
        kept >= 2,
        "the cancelled point started again instead of resuming"
    );
    assert!(sweep.join("contact.png").is_file());
    assert_sheet_matches(&sweep);
}

#[test]
fn the_shipped_sweeps_expand_to_runnable_points() {
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("presets/sweeps");
    let mut n = 0;
    for entry in std::fs::read_dir(&folder).expect("presets/sweeps") {
        let path = entry.expect("entry").path();
        let plan = easel::sweep::plan::Plan::load(&path)
            .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        assert_eq!(
            plan.points.len(),
            plan.axes.iter().map(|a| a.values.len()).product::<usize>()
        );
        for p in &plan.points {
            plan.preset(p)
                .unwrap_or_else(|e| panic!("{} {}: {e:#}", path.display(), p.dir));
        }
        n += 1;
    }
    assert!(n > 0, "no sweep files in {}", folder.display());
}

/// A point that fails (here: too big for the memory check, untiled) is named with its
/// log; the others finish and the sheet is still made, the failed cell marked.
#[test]
fn a_failed_point_is_reported_and_the_rest_collected() {
    let dir = scratch(
        "base: p.yaml\naxes:\n  zip: {size.width: [32, 8192], size.height: [24, 8192], tile: [auto, off]}\n",
    );
    let o = easel(&["sweep", "s.yaml"], dir.path(), None);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{err}");
    assert!(
        err.contains("points p001 failed") && err.contains("logs"),
        "{err}"
    );
    let sweep = dir.path().join("sweeps/s");
    let log = std::fs::read_to_string(sweep.join("logs/p001.log")).expect("p001's log");
    assert!(log.contains("memory"), "the log says why: {log}");
    let rs = results(&sweep);
    assert_eq!(rs[0]["state"], "finished");
    assert_eq!(
        rs[1]["state"], "failed",
        "a point refused before its run started is failed, not pending"
    );
    assert!(sweep.join("contact.png").is_file());
    let status = ok(&easel(&["sweep", "status", "sweeps/s"], dir.path(), None));
    assert!(status.contains("p001  failed"), "{status}");
}
