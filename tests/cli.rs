//! The `easel` binary end to end: runs, overrides, resume, and the error paths
//! (each error names the file, the key and the fix, exits non-zero and leaves no output).

mod common;

use common::easel;
use std::path::{Path, PathBuf};
use std::process::Output;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A scratch folder with the demo images and a small valid preset.
fn scratch(preset_extra: &str) -> tempfile::TempDir {
    let preset = format!(
        "name: tiny\ncontent: chelsea.png\nstyle: starry_night.jpg\nsize: {{width: 32, height: 24}}\niterations: 3\nsave_every: 2\nbackend: cpu\n{preset_extra}"
    );
    common::scratch(&["chelsea.png", "starry_night.jpg"], &preset)
}

fn runs_in(dir: &Path) -> Vec<PathBuf> {
    common::run_dirs(&dir.join("out"))
}

fn assert_refused(extra: &str, args: &[&str], needles: &[&str]) {
    let dir = scratch(extra);
    let mut all = vec!["run", "p.yaml", "--ui", "plain", "--out", "out"];
    all.extend_from_slice(args);
    let o = easel(&all, dir.path());
    let err = stderr(&o);
    assert!(
        !o.status.success(),
        "easel accepted {extra:?} {args:?}: {err}"
    );
    for n in needles {
        assert!(
            err.contains(n),
            "error for {extra:?} {args:?} does not mention {n:?}:\n{err}"
        );
    }
    assert!(
        runs_in(dir.path()).is_empty(),
        "a refused run left output behind"
    );
}

#[test]
fn bad_presets_are_refused_with_file_key_and_fix() {
    assert_refused(
        "colour: red\n",
        &[],
        &["p.yaml", "colour", "remove the key"],
    );
    assert_refused(
        "style_layers: {conv9_1: 0.2}\n",
        &[],
        &["p.yaml", "style_layers.conv9_1", "conv5_1"],
    );
    assert_refused(
        "content_layer: relu4_2\n",
        &[],
        &["p.yaml", "content_layer", "conv4_2"],
    );
    assert_refused("alpha: -1\n", &[], &["p.yaml", "alpha", ">= 0"]);
    assert_refused("alpha: ten\n", &[], &["p.yaml", "alpha"]);
    assert_refused(
        "init: {kind: noise, noise_ratio: 2}\n",
        &[],
        &["init.noise_ratio", "0..1"],
    );
    assert_refused(
        "style_layers: {conv1_1: 0, conv2_1: 0}\n",
        &[],
        &["style_layers", "weight 0"],
    );
    assert_refused("", &["--set", "optimizer.lr=0"], &["optimizer.lr", "> 0"]);
    assert_refused("", &["--set", "size.width=4"], &["size", "16..8192"]);
}

#[test]
fn bad_images_are_refused() {
    assert_refused(
        "",
        &["--set", "content=missing.png"],
        &["missing.png", "does not exist"],
    );
    let dir = scratch("");
    std::fs::write(dir.path().join("empty.png"), b"").expect("write");
    std::fs::write(dir.path().join("notes.png"), b"this is not an image at all").expect("write");
    let png = std::fs::read(dir.path().join("chelsea.png")).expect("read");
    std::fs::write(dir.path().join("cut.png"), &png[..png.len() / 3]).expect("write");
    for (file, needle) in [
        ("empty.png", "empty"),
        ("notes.png", "not an image"),
        ("cut.png", "damaged or truncated"),
    ] {
        let o = easel(
            &[
                "run",
                "p.yaml",
                "--ui",
                "plain",
                "--out",
                "out",
                "--set",
                &format!("style={file}"),
            ],
            dir.path(),
        );
        let err = stderr(&o);
        assert!(!o.status.success(), "{file} accepted");
        assert!(
            err.contains(file) && err.contains(needle),
            "error for {file} lacks {needle:?}: {err}"
        );
        assert!(
            runs_in(dir.path()).is_empty(),
            "a refused run left output behind ({file})"
        );
    }
}

#[test]
fn wrong_weights_are_refused() {
    let dir = scratch("");
    std::fs::write(dir.path().join("w.safetensors"), b"garbage").expect("write");
    let o = easel(
        &[
            "run",
            "p.yaml",
            "--ui",
            "plain",
            "--out",
            "out",
            "--weights",
            "w.safetensors",
        ],
        dir.path(),
    );
    assert!(!o.status.success());
    assert!(stderr(&o).contains("w.safetensors"), "{}", stderr(&o));
    assert!(runs_in(dir.path()).is_empty());
    let o = easel(
        &[
            "run",
            "p.yaml",
            "--ui",
            "plain",
            "--out",
            "out",
            "--weights",
            "nowhere.safetensors",
        ],
        dir.path(),
    );
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("nowhere.safetensors") && stderr(&o).contains("easel weights fetch"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn run_writes_the_run_directory_and_streams_jsonl() {
    let dir = scratch("");
    let o = easel(
        &[
            "run",
            "p.yaml",
            "--ui",
            "jsonl",
            "--out",
            "out",
            "--set",
            "iterations=4",
            "--set",
            "beta=20",
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let runs = runs_in(dir.path());
    assert_eq!(runs.len(), 1);
    let run = &runs[0];
    assert!(
        run.file_name()
            .expect("name")
            .to_string_lossy()
            .ends_with("-tiny")
    );
    for f in [
        "preset.yaml",
        "losses.jsonl",
        "final.png",
        "checkpoint.safetensors",
        "snapshots/iter_00002.png",
        "snapshots/iter_00004.png",
    ] {
        assert!(run.join(f).is_file(), "{f} missing");
    }
    let recs = common::records(run);
    assert_eq!(
        recs.iter()
            .map(|r| r["iter"].as_u64().expect("iter"))
            .collect::<Vec<_>>(),
        vec![0, 1, 2, 3]
    );
    for r in &recs {
        for k in ["J", "J_content", "J_style", "elapsed_s"] {
            assert!(r[k].as_f64().is_some(), "record lacks {k}: {r}");
        }
        assert_eq!(r["backend"], "cpu");
        let style = r["style"].as_object().expect("style map");
        assert_eq!(
            style.keys().collect::<Vec<_>>(),
            vec!["conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1"]
        );
        // J = alpha J_content + beta J_style, J_style = sum lambda J_style[l].
        let js: f64 = style
            .values()
            .map(|v| 0.2 * v.as_f64().expect("number"))
            .sum();
        let j = 10.0 * r["J_content"].as_f64().expect("n") + 20.0 * js;
        assert!(
            (j - r["J"].as_f64().expect("n")).abs() <= 1e-6 * j,
            "J does not add up: {r}"
        );
    }
    let streamed: Vec<serde_json::Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("stdout line is JSON"))
        .collect();
    assert_eq!(
        streamed, recs,
        "--ui jsonl streams the records of losses.jsonl"
    );
    let preset = std::fs::read_to_string(run.join("preset.yaml")).expect("preset.yaml");
    assert!(
        preset.contains("iterations: 4") && preset.contains("beta: 20"),
        "{preset}"
    );
    let img = image::open(run.join("final.png")).expect("final.png decodes");
    assert_eq!((img.width(), img.height()), (32, 24));
}

#[test]
fn resumed_run_matches_an_uninterrupted_one() {
    for optimizer in ["{kind: adam, lr: 2.0}", "{kind: lbfgs, history: 5}"] {
        let dir = scratch(&format!("optimizer: {optimizer}\n"));
        let straight = easel(
            &[
                "run",
                "p.yaml",
                "--ui",
                "plain",
                "--out",
                "out",
                "--set",
                "iterations=6",
                "--set",
                "name=straight",
            ],
            dir.path(),
        );
        assert!(straight.status.success(), "{}", stderr(&straight));
        let first = easel(
            &[
                "run",
                "p.yaml",
                "--ui",
                "plain",
                "--out",
                "out",
                "--set",
                "iterations=3",
                "--set",
                "name=halves",
            ],
            dir.path(),
        );
        assert!(first.status.success(), "{}", stderr(&first));
        let runs = runs_in(dir.path());
        let find = |n: &str| {
            runs.iter()
                .find(|p| p.to_string_lossy().ends_with(n))
                .expect("run dir")
                .clone()
        };
        let (a, b) = (find("-straight"), find("-halves"));
        let resumed = easel(
            &[
                "resume",
                b.to_str().expect("path"),
                "--ui",
                "plain",
                "--set",
                "iterations=6",
            ],
            dir.path(),
        );
        assert!(resumed.status.success(), "{}", stderr(&resumed));
        let (ra, rb) = (common::records(&a), common::records(&b));
        assert_eq!(ra.len(), 6);
        common::assert_same_trajectory(&ra, &rb, optimizer);
    }
}

#[test]
fn resume_refuses_a_folder_that_is_not_a_run() {
    let dir = scratch("");
    let o = easel(&["resume", "."], dir.path());
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("checkpoint.safetensors"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn a_run_too_big_for_memory_is_refused_with_what_it_needs() {
    assert_refused(
        "",
        &["--set", "size={width: 8192, height: 8192}"],
        &["8192x8192", "GiB", "lower `size`"],
    );
}
