//! The real `easel` binary in a real terminal (tmux) on a tiny preset with the real
//! weights: it starts, plots, takes Space, `+` on beta, `p` with a name and `q`; then
//! the saved preset, the change recorded in the run directory and final.png are checked.

mod common;

use common::tmux::Tmux;

use std::path::PathBuf;

/// The workbench on a tiny endless preset named `name` in a 100x30 tmux, with `args`;
/// the shell says `EXITED CODE` when easel ends.
fn workbench(name: &'static str, args: &str) -> (tempfile::TempDir, Tmux) {
    let weights = common::real_weights();
    let dir = common::scratch(
        &["chelsea.png", "starry_night.jpg"],
        &format!(
            "name: {name}\ncontent: chelsea.png\nstyle: starry_night.jpg\nsize: {{width: 32, height: 24}}\niterations: 100000\nsave_every: 0\nbackend: cpu\n"
        ),
    );
    let command = format!(
        "env EASEL_WEIGHTS_DIR={} {} run p.yaml --ui tui {args} --out out; echo EXITED $?; sleep 60",
        weights.parent().expect("weights folder").display(),
        env!("CARGO_BIN_EXE_easel")
    );
    let tmux = Tmux::start(name, dir.path(), (100, 30), &command);
    (dir, tmux)
}

#[test]
fn workbench_in_tmux_pauses_changes_saves_and_quits() {
    let (dir, tmux) = workbench("e2e", "--image-protocol halfblocks");

    let screen = tmux.wait_for("RUNNING", 60);
    assert!(
        screen.contains("Cost") && screen.contains("Settings"),
        "{screen}"
    );
    tmux.wait_for("1e", 30); // the plot has an axis with decades once records arrive
    tmux.keys(&["Space"]);
    tmux.wait_for("PAUSED", 10);
    tmux.keys(&["Down", "+"]);
    tmux.wait_for("beta = 50", 10);
    tmux.keys(&["p"]);
    tmux.wait_for("Save preset", 10);
    for _ in 0..10 {
        tmux.keys(&["BSpace"]);
    }
    tmux.keys(&["-l", "mine"]);
    tmux.keys(&["Enter"]);
    tmux.wait_for("saved", 10);
    tmux.keys(&["q"]);
    tmux.wait_for("Stop the run?", 10);
    tmux.keys(&["y"]);
    let screen = tmux.wait_for("EXITED", 60);
    assert!(
        screen.contains("EXITED 130"),
        "a stopped run exits with 130:\n{screen}"
    );

    let saved = easel::preset::Preset::load(&dir.path().join("presets/mine.yaml"), &[])
        .expect("the saved preset loads");
    assert_eq!(saved.name, "mine");
    assert_eq!(saved.settings.beta, 50.0);
    let saved_changes = easel::run_dir::read_changes(&dir.path().join("presets/mine.yaml"));
    assert!(saved_changes.expect("readable").is_empty());
    let runs: Vec<PathBuf> = std::fs::read_dir(dir.path().join("out"))
        .expect("out")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    assert_eq!(runs.len(), 1);
    let run = easel::preset::Preset::load(&runs[0].join("preset.yaml"), &[]).expect("run preset");
    assert_eq!(run.settings.beta, 50.0);
    let changes = easel::run_dir::read_changes(&runs[0].join("preset.yaml")).expect("changes");
    let change = changes
        .iter()
        .find(|c| c.key == "beta")
        .expect("the change is recorded");
    assert_eq!(change.value.as_f64(), Some(50.0));
    assert!(runs[0].join("final.png").is_file());
    assert!(
        runs[0].join("easel.log").is_file(),
        "the workbench's log goes to the run directory"
    );
    assert!(
        std::fs::read_to_string(runs[0].join("losses.jsonl"))
            .expect("losses")
            .lines()
            .count()
            > 0
    );
}

/// Without `--image-protocol`, the workbench asks the terminal what it can draw. Inside
/// tmux (passthrough off, its default) nothing answers, and the probe's reader, left
/// waiting, used to take the first key pressed: the first Space did not pause.
#[test]
fn the_first_key_counts_after_the_terminal_probe() {
    let (_dir, tmux) = workbench("probe", "");
    tmux.wait_for("RUNNING", 60);
    tmux.wait_for("1e", 30);
    tmux.keys(&["Space"]);
    tmux.wait_for("PAUSED", 10);
    tmux.keys(&["q"]);
    tmux.wait_for("Stop the run?", 10);
    tmux.keys(&["y"]);
    let screen = tmux.wait_for("EXITED", 60);
    assert!(screen.contains("EXITED 130"), "{screen}");
}
