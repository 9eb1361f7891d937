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
    refused(&o, dir.path(), needles, &format!("{extra:?} {args:?}"));
}

/// `o` is a refusal: a failure whose message mentions every needle, no panic, and no
/// run directory left in `dir`.
fn refused(o: &Output, dir: &Path, needles: &[&str], what: &str) {
    let err = stderr(o);
    assert!(!o.status.success(), "easel accepted {what}: {err}");
    for n in needles {
        assert!(
            err.contains(n),
            "error for {what} does not mention {n:?}:\n{err}"
        );
    }
    assert!(!err.contains("panicked"), "{what}: {err}");
    assert!(
        runs_in(dir).is_empty(),
        "a refused run left output behind ({what})"
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
    // A key set twice: the last --set holds, and is the one blamed.
    assert_refused(
        "",
        &["--set", "iterations=3", "--set", "iterations=-3"],
        &["--set iterations=-3"],
    );
    assert_refused("", &["--set", "size.width=4"], &["size", "16..8192"]);
    assert_refused(
        "tile: {size: 100}\n",
        &[],
        &["p.yaml", "tile", "multiple of 64"],
    );
    assert_refused("tile: always\n", &[], &["p.yaml", "tile", "{size: N}"]);
    assert_refused(
        "conv_search: fastest\n",
        &[],
        &["p.yaml", "conv_search", "`auto`, `heuristic`, `measured`"],
    );
}

#[test]
fn an_out_that_is_a_file_is_refused_as_such() {
    let dir = scratch("");
    std::fs::write(dir.path().join("afile"), b"").expect("write");
    let o = easel(
        &["run", "p.yaml", "--ui", "plain", "--out", "afile"],
        dir.path(),
    );
    let err = stderr(&o);
    assert!(!o.status.success());
    assert!(
        err.contains("afile is a file, not a folder") && err.contains("--out"),
        "{err}"
    );
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
    // A JPEG decoder fills a cut-off scan with grey and says nothing.
    let jpeg = std::fs::read(dir.path().join("starry_night.jpg")).expect("read");
    std::fs::write(dir.path().join("cut.jpg"), &jpeg[..jpeg.len() * 2 / 3]).expect("write");
    for (file, needle) in [
        ("empty.png", "empty"),
        ("notes.png", "not an image"),
        ("cut.png", "damaged or truncated"),
        ("cut.jpg", "truncated"),
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
            // The CUDA path's setting, kept by a CPU run for a later move or resume.
            "--set",
            "conv_search=measured",
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
        vec![0, 1, 2, 3, 4],
        "one record per iteration, then the final image's"
    );
    assert_eq!(recs[4]["final"], true);
    assert!(recs[..4].iter().all(|r| r.get("final").is_none()));
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
        preset.contains("iterations: 4")
            && preset.contains("beta: 20")
            && preset.contains("conv_search: measured"),
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
        assert_eq!(ra.len(), 7, "six iterations and the final image's record");
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
        &[
            "--set",
            "size={width: 8192, height: 8192}",
            "--set",
            "tile=off",
        ],
        &["8192x8192", "GiB", "lower `size`", "tile: auto"],
    );
}

/// With `tile: auto` (the default), a run that would not fit under an address-space
/// limit is computed in tiles instead, says so, and finishes.
#[test]
fn a_run_too_big_for_memory_is_computed_in_tiles() {
    let dir = scratch("");
    let args = ["run", "p.yaml", "--ui", "plain", "--out", "out"];
    let more = [
        "--set",
        "size={width: 1024, height: 1024}",
        "--set",
        "iterations=1",
    ];
    let o = common::easel_limited("--as=4000000000", &[&args[..], &more].concat(), dir.path());
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    // The tile side follows the memory free at the time (512 on an idle machine, 256
    // when other tests hold memory), so only tiling itself is checked.
    assert!(
        err.contains("computing 1024x1024 in") && err.contains("tiles of"),
        "{err}"
    );
    let run = runs_in(dir.path()).pop().expect("the run");
    let image = image::open(run.join("final.png")).expect("final.png");
    assert_eq!((image.width(), image.height()), (1024, 1024));
}

/// Not a preset: a device, a pipe, a folder, a huge file. Refused at once (a FIFO would
/// block the read forever, /dev/zero would fill memory), nothing left behind.
#[test]
fn presets_that_are_not_small_regular_files_are_refused_at_once() {
    let dir = scratch("");
    let fifo = dir.path().join("pipe.yaml");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo runs");
    assert!(made.success(), "mkfifo made the pipe");
    let huge = dir.path().join("huge.yaml");
    std::fs::write(&huge, vec![b'#'; 2 << 20]).expect("write");
    for (preset, needle) in [
        ("/dev/zero", "not a regular file"),
        ("pipe.yaml", "not a regular file"),
        (".", "not a regular file"),
        ("huge.yaml", "bytes"),
    ] {
        let started = std::time::Instant::now();
        let o = easel(
            &["run", preset, "--ui", "plain", "--out", "out"],
            dir.path(),
        );
        refused(&o, dir.path(), &[needle, preset], preset);
        assert!(started.elapsed().as_secs() < 30, "{preset} took too long");
    }
}

/// The workbench without a terminal is refused before the run starts: no run directory,
/// no stale lock, no panic.
#[test]
fn the_workbench_without_a_terminal_is_refused_before_the_run_starts() {
    let dir = scratch("");
    let o = easel(
        &["run", "p.yaml", "--ui", "tui", "--out", "out"],
        dir.path(),
    );
    let needles = ["--ui tui needs a terminal", "--ui plain"];
    refused(&o, dir.path(), &needles, "--ui tui without a terminal");
}

/// `bench` takes the sizes and tiles a run takes, and at least one iteration.
#[test]
fn bench_refuses_sizes_and_iterations_a_run_would_not_take() {
    let dir = scratch("");
    for size in ["0x0", "8x8", "1x1", "100000x100000", "-5x10", "400"] {
        let o = easel(&["bench", &format!("--sizes={size}")], dir.path());
        let err = stderr(&o);
        assert!(!o.status.success(), "--sizes {size} was accepted");
        assert!(
            err.contains("16..8192") && !err.contains("panicked"),
            "{size}: {err}"
        );
    }
    let o = easel(&["bench", "--iters", "0"], dir.path());
    assert!(!o.status.success(), "--iters 0 was accepted");
    assert!(stderr(&o).contains("give 1 or more"), "{}", stderr(&o));
    // bench's tile is a flag, so its error writes one, not a preset's `{size: N}`.
    let o = easel(&["bench", "--tile", "100"], dir.path());
    let err = stderr(&o);
    assert!(!o.status.success(), "--tile 100 was accepted");
    assert!(
        err.contains("multiple of 64") && err.contains("--tile 1024") && !err.contains("{size"),
        "{err}"
    );
}

/// Under an address-space limit the memory check counts the limit, not the machine's
/// RAM: the run is refused before it starts instead of aborting on an allocation.
#[test]
fn the_memory_check_counts_an_address_space_limit() {
    let dir = scratch("");
    let args = ["run", "p.yaml", "--ui", "plain", "--out", "out"];
    let size = [
        "--set",
        "size={width: 1024, height: 1024}",
        "--set",
        "tile=off",
    ];
    let o = common::easel_limited("--as=3000000000", &[&args[..], &size].concat(), dir.path());
    refused(
        &o,
        dir.path(),
        &["1024x1024", "GiB"],
        "1024x1024 under --as=3e9",
    );
}

/// SIGTERM and SIGHUP stop a run cleanly, and the exit code says which signal it was
/// (128 + its number, as shells report it).
#[test]
fn a_run_stopped_by_a_signal_exits_with_its_code() {
    use std::io::BufRead;
    for (signal, code) in [("-TERM", 143), ("-HUP", 129), ("-INT", 130)] {
        let dir = scratch("");
        let mut child = common::easel_command(dir.path())
            .args(["run", "p.yaml", "--ui", "plain", "--out", "out"])
            .args(["--set", "iterations=100000"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("easel starts");
        let mut lines = std::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
        let header = lines.next().expect("a first line").expect("text");
        assert!(header.starts_with("run "), "{header}");
        std::process::Command::new("kill")
            .args([signal, &child.id().to_string()])
            .status()
            .expect("kill");
        let rest: Vec<String> = lines.map_while(Result::ok).collect();
        let status = child.wait().expect("easel ends");
        assert_eq!(status.code(), Some(code), "{signal}: {rest:?}");
        let runs = runs_in(dir.path());
        assert_eq!(runs.len(), 1);
        assert!(
            runs[0].join("final.png").is_file(),
            "{signal}: no final image"
        );
    }
}

/// Errors say what is wrong with what the user gave and how to fix it, naming the
/// `--set` that gave a bad value, and the weights path for what it really is.
#[test]
fn errors_name_what_the_user_gave_and_the_fix() {
    assert_refused(
        "",
        &["--set", "alpha=-1"],
        &["--set alpha=-1", "alpha", ">= 0"],
    );
    assert_refused(
        "",
        &["--set", "size={width: -5, height: 10}"],
        &["size", "is not a size", "{width: W, height: H}"],
    );
    let long = format!("name={}", "x".repeat(2000));
    assert_refused(
        "",
        &["--set", &long],
        &["name", "longer than 100 characters"],
    );
    let dir = scratch("");
    std::fs::create_dir(dir.path().join("wdir")).expect("mkdir");
    std::fs::write(dir.path().join("vgg.h5"), b"HDF5 stand-in").expect("write");
    for (weights, needles) in [
        ("wdir", ["is a folder", "EASEL_WEIGHTS_DIR"]),
        ("/dev/zero", ["not a regular file", "safetensors"]),
        ("vgg.h5", ["easel weights import", "vgg.h5"]),
    ] {
        let args = [
            "run",
            "p.yaml",
            "--ui",
            "plain",
            "--out",
            "out",
            "--weights",
            weights,
        ];
        let o = easel(&args, dir.path());
        refused(&o, dir.path(), &needles, &format!("--weights {weights}"));
    }
}

/// A damaged checkpoint is named as one, with a fix that is about the run, not the
/// weights.
#[test]
fn a_damaged_checkpoint_is_named_with_the_right_fix() {
    let dir = scratch("");
    let o = easel(
        &["run", "p.yaml", "--ui", "plain", "--out", "out"],
        dir.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let run = runs_in(dir.path()).pop().expect("the run");
    let path = run.join("checkpoint.safetensors");
    // Whole as a file, but with a tensor of the wrong shape: refused, not a panic.
    let (mut tensors, meta) = easel::tensor_file::read(&path, "checkpoint", "").expect("read");
    let x = tensors.get_mut("x").expect("the image");
    x.shape = vec![x.data.len()];
    easel::tensor_file::write(&path, &tensors, meta).expect("write");
    let o = easel(&["resume", run.to_str().expect("utf-8 path")], dir.path());
    let err = stderr(&o);
    assert!(!o.status.success());
    assert!(
        err.contains("not one easel wrote") && err.contains("[1, 3, H, W]"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    std::fs::write(&path, b"torn").expect("write");
    let o = easel(&["resume", run.to_str().expect("utf-8 path")], dir.path());
    let err = stderr(&o);
    assert!(!o.status.success());
    assert!(
        err.contains("checkpoint") && err.contains("damaged"),
        "{err}"
    );
    assert!(!err.contains("weights fetch"), "{err}");
}

/// `easel run --ui jsonl | head -c 100`: a closed stdout stops the run cleanly (exit 141,
/// as for SIGPIPE), with its final image and no lock left behind.
#[test]
fn a_closed_stdout_stops_the_run_cleanly() {
    use std::io::Read;
    let dir = scratch("");
    let mut child = common::easel_command(dir.path())
        .args(["run", "p.yaml", "--ui", "jsonl", "--out", "out"])
        .args(["--set", "iterations=100000"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("easel starts");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut first = [0u8; 100];
    stdout.read_exact(&mut first).expect("the first records");
    drop(stdout);
    let o = child.wait_with_output().expect("easel ends");
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(141), "{err}");
    assert!(!err.contains("Broken pipe"), "{err}");
    let runs = runs_in(dir.path());
    assert_eq!(runs.len(), 1);
    assert!(runs[0].join("final.png").is_file(), "no final image: {err}");
    assert!(!runs[0].join(".lock").exists(), "a stale lock was left");
}

/// `easel run ... 2>&1 | true`: a closed stderr loses the progress lines, not the run.
#[test]
fn a_closed_stderr_loses_the_lines_not_the_run() {
    let dir = scratch("");
    let mut child = common::easel_command(dir.path())
        .args(["run", "p.yaml", "--ui", "plain", "--out", "out"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("easel starts");
    drop(child.stderr.take());
    let status = child.wait().expect("easel ends");
    assert_eq!(status.code(), Some(0));
    let runs = runs_in(dir.path());
    assert!(runs[0].join("final.png").is_file(), "no final image");
    assert!(!runs[0].join(".lock").exists(), "a stale lock was left");
}

/// A plain run the divergence guard pauses cannot be resumed from a keyboard: it stops
/// with its checkpoint and exits 1 (a failure, not 130's interruption), saying how to
/// go on.
#[test]
fn a_run_that_keeps_diverging_exits_with_a_failure() {
    let dir = scratch("");
    let o = easel(
        &["run", "p.yaml", "--ui", "plain", "--out", "out"]
            .into_iter()
            .chain(["--set", "optimizer.lr=1e9", "--set", "iterations=20"])
            .collect::<Vec<_>>(),
        dir.path(),
    );
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("blew up three times") && err.contains("easel resume"),
        "{err}"
    );
}

/// The run directory's lock is the kernel's: a `.lock` left by a crash (even naming a
/// live process) never blocks a resume, and two resumers never share a run.
#[test]
fn a_stale_lock_never_blocks_and_a_live_one_always_does() {
    let dir = scratch("");
    let o = easel(
        &["run", "p.yaml", "--ui", "plain", "--out", "out"],
        dir.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let run = runs_in(dir.path()).pop().expect("the run");
    let run = run.to_str().expect("utf-8 path").to_string();
    // A crashed easel's lock file, naming a process that is alive (init).
    std::fs::write(Path::new(&run).join(".lock"), "1").expect("write");
    let mut first = common::easel_command(dir.path())
        .args([
            "resume",
            &run,
            "--ui",
            "plain",
            "--set",
            "iterations=100000",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("easel starts");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(
        first.stderr.take().expect("stderr"),
    ));
    let header = lines.next().expect("a first line").expect("text");
    assert!(
        header.starts_with("run "),
        "the stale lock blocked the resume: {header}"
    );
    let second = easel(&["resume", &run, "--ui", "plain"], dir.path());
    let err = stderr(&second);
    assert!(!second.status.success(), "two resumers shared the run");
    assert!(
        err.contains("in use by another easel") && err.contains(&first.id().to_string()),
        "{err}"
    );
    std::process::Command::new("kill")
        .args(["-TERM", &first.id().to_string()])
        .status()
        .expect("kill");
    let _ = lines.count();
    assert_eq!(first.wait().expect("easel ends").code(), Some(143));
}

/// What used to be accepted without a word: no style at all, and a preview protocol
/// for a run that has no preview.
#[test]
fn no_style_and_a_protocol_without_a_workbench_are_refused() {
    assert_refused("", &["--set", "style=[]"], &["p.yaml", "style", "empty"]);
    assert_refused(
        "",
        &["--image-protocol", "kitty"],
        &["--image-protocol", "no workbench"],
    );
}

/// A write that hits a file-size limit fails with a message, leaves no temporary file
/// and keeps the last checkpoint, which resumes once the limit is lifted.
#[test]
fn a_file_size_limit_loses_nothing() {
    let dir = scratch("");
    let size = ["--set", "size={width: 400, height: 300}"];
    let mut args = vec!["run", "p.yaml", "--ui", "plain", "--out", "out"];
    args.extend(size);
    let o = easel(&args, dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let run = runs_in(dir.path()).pop().expect("the run");
    let checkpoint = std::fs::read(run.join("checkpoint.safetensors")).expect("checkpoint");
    let resume = ["resume", run.to_str().expect("utf-8"), "--ui", "plain"];
    let more = ["--set", "iterations=6"];
    let o = common::easel_limited(
        "--fsize=1000000",
        &[&resume[..], &more].concat(),
        dir.path(),
    );
    let err = stderr(&o);
    assert!(
        !o.status.success(),
        "the limited resume did not fail: {err}"
    );
    assert!(
        err.contains("cannot write") && err.contains("checkpoint"),
        "{err}"
    );
    let left = common::temp_files(&run);
    assert!(left.is_empty(), "temporary files left: {left:?}");
    let kept = std::fs::read(run.join("checkpoint.safetensors")).expect("checkpoint");
    assert!(
        kept == checkpoint,
        "the last checkpoint was not kept as it was"
    );
    let o = easel(
        &[
            "resume",
            run.to_str().expect("utf-8"),
            "--ui",
            "plain",
            "--set",
            "iterations=6",
        ],
        dir.path(),
    );
    assert!(
        o.status.success(),
        "the resume after the limit: {}",
        stderr(&o)
    );
}

/// `resume --set` that changes the cost (a weight 1000 times larger) goes on from the
/// checkpoint, with the guard held to the new cost, and logs what changed there.
#[test]
fn a_resume_that_changes_a_weight_goes_on_and_logs_the_change() {
    let dir = scratch("beta: 100\n");
    let o = easel(
        &["run", "p.yaml", "--ui", "plain", "--out", "out"],
        dir.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let run = runs_in(dir.path()).pop().expect("the run");
    let path = run.to_str().expect("utf-8 path");
    let set = ["--set", "iterations=5", "--set", "beta=100000"];
    let o = easel(
        &[&["resume", path, "--ui", "plain"][..], &set].concat(),
        dir.path(),
    );
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(!err.contains("diverged"), "{err}");
    let changes = easel::run_dir::read_changes(&run.join("preset.yaml")).expect("changes");
    let logged: Vec<(u64, &str, String)> = changes
        .iter()
        .map(|c| (c.iter, c.key.as_str(), c.value_text()))
        .collect();
    assert_eq!(
        logged,
        [
            (3, "beta", "100000.0".into()),
            (3, "iterations", "5".into())
        ]
    );
    assert_eq!(
        common::records(&run).len(),
        6,
        "five iterations and the final image's"
    );
}

/// An input image replaced between a run and its resume is used, but not silently.
#[test]
fn a_resume_says_when_an_input_image_changed() {
    let dir = scratch("");
    let o = easel(
        &["run", "p.yaml", "--ui", "plain", "--out", "out"],
        dir.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let run = runs_in(dir.path()).pop().expect("the run");
    let run = run.to_str().expect("utf-8 path").to_string();
    let args = [
        "resume",
        run.as_str(),
        "--ui",
        "plain",
        "--set",
        "iterations=4",
    ];
    let o = easel(&args, dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("has changed"), "{}", stderr(&o));
    image::RgbImage::from_pixel(64, 48, image::Rgb([10, 20, 30]))
        .save(dir.path().join("chelsea.png"))
        .expect("write another content image");
    let args = [
        "resume",
        run.as_str(),
        "--ui",
        "plain",
        "--set",
        "iterations=5",
    ];
    let o = easel(&args, dir.path());
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("chelsea.png has changed since the run started"),
        "{err}"
    );
}

/// `easel run NAME` takes a preset in presets/ by its file's stem or by its `name:`, as
/// `easel presets` lists them; a name that is none of them is refused with the names.
#[test]
fn presets_run_by_the_names_easel_presets_lists() {
    let dir = scratch("");
    let presets = dir.path().join("presets");
    std::fs::create_dir(&presets).expect("presets/");
    let yaml = "name: my-look\ncontent: ../chelsea.png\nstyle: ../starry_night.jpg\nsize: {width: 32, height: 24}\niterations: 1\nbackend: cpu\n";
    std::fs::write(presets.join("mine.yaml"), yaml).expect("preset");
    let o = easel(&["presets"], dir.path());
    let listed = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        listed
            .lines()
            .any(|l| l.trim_start().starts_with("mine ") && l.contains("my-look")),
        "{listed}"
    );
    for name in ["mine", "my-look"] {
        let o = easel(&["run", name, "--ui", "plain", "--out", "out"], dir.path());
        assert!(o.status.success(), "easel run {name}: {}", stderr(&o));
    }
    let o = easel(&["run", "nosuch", "--ui", "plain"], dir.path());
    let err = stderr(&o);
    assert!(!o.status.success());
    assert!(
        err.contains("no preset nosuch") && err.contains("default, best, mine"),
        "{err}"
    );
}

/// Outside a checkout: the built-in default preset and its images come from the binary
/// (written into the user's cache folder), for `easel presets` and `easel bench`.
#[test]
fn the_default_preset_is_built_in() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cache = dir.path().join("cache");
    let with_cache = |args: &[&str]| {
        common::easel_command(dir.path())
            .args(args)
            .env("XDG_CACHE_HOME", &cache)
            .output()
            .expect("easel runs")
    };
    let o = with_cache(&["presets"]);
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        out.contains("chelsea-starry") && out.contains("400x300"),
        "{out}"
    );
    assert!(out.contains("best-chelsea-starry"), "{out}");
    assert!(cache.join("easel/presets/images/chelsea.png").is_file());
    // A built-in preset by name, outside a checkout.
    let tiny = [
        "--set",
        "size.width=32",
        "--set",
        "size.height=24",
        "--set",
        "iterations=2",
    ];
    let o = with_cache(&[&["run", "best", "--ui", "plain", "--out", "out"], &tiny[..]].concat());
    assert!(o.status.success(), "easel run best: {}", stderr(&o));
    let run = common::run_dirs(&dir.path().join("out"))
        .pop()
        .expect("a run");
    let kept = std::fs::read_to_string(run.join("preset.yaml")).expect("preset.yaml");
    assert!(kept.contains("best-chelsea-starry"), "{kept}");
    let o = with_cache(&["bench", "--sizes", "16x16", "--iters", "1"]);
    assert!(
        o.status.success(),
        "bench outside a checkout: {}",
        stderr(&o)
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("16x16"));
}

/// Shell completions name the subcommands and the backends, and bash accepts its script.
#[test]
fn completions_are_generated_for_the_shells() {
    let dir = tempfile::tempdir().expect("tempdir");
    for shell in ["bash", "zsh", "fish"] {
        let o = easel(&["completions", shell], dir.path());
        let script = String::from_utf8_lossy(&o.stdout).into_owned();
        assert!(o.status.success(), "{shell}: {}", stderr(&o));
        assert!(
            script.contains("resume") && script.contains("cuda"),
            "{shell}"
        );
    }
    let script = dir.path().join("easel.bash");
    std::fs::write(&script, easel(&["completions", "bash"], dir.path()).stdout).expect("write");
    let check = std::process::Command::new("bash")
        .arg("-n")
        .arg(&script)
        .status()
        .expect("bash runs");
    assert!(check.success(), "bash -n refused the script");
}

/// `-v` shows what easel decided (the backend and why); `-q` keeps errors only.
#[test]
fn verbose_and_quiet_set_what_is_logged() {
    let dir = scratch("");
    let args = ["run", "p.yaml", "--ui", "plain", "--out", "out"];
    let verbose = easel(&[&["-v"], &args[..]].concat(), dir.path());
    assert!(verbose.status.success(), "{}", stderr(&verbose));
    assert!(
        stderr(&verbose).contains("INFO easel::backend: backend Cpu"),
        "{}",
        stderr(&verbose)
    );
    let quiet = easel(&[&["-q"], &args[..]].concat(), dir.path());
    assert!(quiet.status.success(), "{}", stderr(&quiet));
    assert!(!stderr(&quiet).contains("INFO"), "{}", stderr(&quiet));
    let both = easel(&[&["-q", "-v"], &args[..]].concat(), dir.path());
    assert!(!both.status.success(), "-q and -v together were accepted");
}

/// Every preset shipped in presets/ (best.yaml among them) loads and runs, at a tiny
/// size, and its run directory keeps what it asked for.
#[test]
fn every_shipped_preset_runs() {
    let presets = Path::new(env!("CARGO_MANIFEST_DIR")).join("presets");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&presets)
        .expect("presets/")
        .map(|e| e.expect("an entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    names.sort();
    assert!(
        names.iter().any(|p| p.ends_with("best.yaml")),
        "presets/best.yaml is missing: {names:?}"
    );
    for preset in names {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = preset.to_str().expect("a UTF-8 path");
        let args = [
            "run",
            path,
            "--ui",
            "plain",
            "--out",
            "out",
            "--backend",
            "cpu",
            "--set",
            "size.width=48",
            "--set",
            "size.height=32",
            "--set",
            "iterations=4",
        ];
        let o = easel(&args, dir.path());
        assert!(o.status.success(), "{path}: {}", stderr(&o));
        let run = runs_in(dir.path()).pop().expect("a run directory");
        assert!(run.join("final.png").is_file(), "{path}: no final.png");
        let wanted = std::fs::read_to_string(&preset).expect("the preset");
        let kept = std::fs::read_to_string(run.join("preset.yaml")).expect("preset.yaml");
        for key in ["padding: replicate", "trim_style: true", "ema:", "scales:"] {
            if wanted.lines().any(|l| l.starts_with(key)) {
                assert!(kept.contains(key), "{path}: the run lost `{key}`:\n{kept}");
            }
        }
    }
}

/// `easel backends` on this machine: the CPU is always usable, each other backend is
/// usable or says why not, and `auto` takes one; `--json` says the same as data.
#[test]
fn backends_says_what_this_machine_can_run_and_why_not() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = easel(&["backends", "--json"], dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let all: serde_json::Value = serde_json::from_slice(&o.stdout).expect("JSON");
    let all = all.as_array().expect("an array");
    let names: Vec<&str> = all.iter().filter_map(|b| b["backend"].as_str()).collect();
    assert_eq!(names, ["cpu", "cuda", "wgpu", "auto"]);
    for b in all {
        let detail = b["detail"].as_str().unwrap_or_default();
        match (b["backend"].as_str(), b["usable"].as_bool()) {
            (Some("cpu" | "auto"), usable) => assert_eq!(usable, Some(true), "{b}"),
            // Why not: a missing library, no card, an old card, a build without CUDA.
            (Some("cuda"), Some(false)) => assert!(
                detail.contains("cannot use CUDA") || detail.contains("no CUDA backend"),
                "{b}"
            ),
            (Some("wgpu"), Some(false)) => {
                assert!(
                    detail.contains("no usable wgpu adapter") && !detail.contains("Device<"),
                    "{b}"
                )
            }
            (_, Some(true)) => assert!(!detail.is_empty(), "{b}"),
            _ => panic!("no usable flag: {b}"),
        }
    }
    let text = easel(&["backends"], dir.path());
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    let state = |name: &str| {
        let line = text
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name));
        line.map(|l| l[5..].trim_start().to_string())
    };
    assert!(
        state("cpu").is_some_and(|s| s.starts_with("usable")),
        "{text}"
    );
    assert!(
        state("auto").is_some_and(|s| s.starts_with("takes")),
        "{text}"
    );
}

/// Over ssh without a login session, in Slurm jobs and containers there is no
/// XDG_RUNTIME_DIR, and Mesa's device-select Vulkan layer (installed with Mesa's
/// Vulkan drivers, as scripts/test.sh does) made libwayland print "error:
/// XDG_RUNTIME_DIR is invalid or not set" each time wgpu listed adapters.
#[test]
fn listing_gpus_without_a_wayland_session_prints_no_foreign_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = common::easel_command(dir.path())
        .arg("backends")
        .env_remove("XDG_RUNTIME_DIR")
        .env_remove("NODEVICE_SELECT")
        .output()
        .expect("easel runs");
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(!err.contains("XDG_RUNTIME_DIR"), "{err}");
}
