//! The engine on its own: commands in, events out, with the real weights.

mod common;

use easel::backend::Backend;
use easel::engine::{self, Command, Destination, Event, RunSpec, RunState, Setting};
use easel::preset::Preset;
use std::path::Path;
use std::time::Duration;

fn spec(dir: &Path, overrides: &[&str]) -> RunSpec {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut o: Vec<String> = vec![
        "size={width: 32, height: 24}".into(),
        "save_every=0".into(),
        "backend=cpu".into(),
    ];
    o.extend(overrides.iter().map(|s| s.to_string()));
    RunSpec {
        preset: Preset::load(&root.join("presets/quick.yaml"), &o).expect("preset"),
        destination: Destination::New(dir.to_path_buf()),
        weights: common::real_weights(),
        backend: Backend::cpu(),
        preview_every_s: 0.0,
    }
}

fn next(handle: &engine::EngineHandle) -> Event {
    handle
        .events
        .recv_timeout(Duration::from_secs(120))
        .expect("the engine keeps talking")
}

#[test]
fn divergence_rolls_back_halves_the_rate_and_pauses_after_three() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut handle = engine::spawn(spec(dir.path(), &["optimizer.lr=1e6", "iterations=50"]));
    let (mut rollbacks, mut rates, mut run_dir) = (0, Vec::new(), None);
    loop {
        match next(&handle) {
            Event::Started(s) => run_dir = Some(s.run_dir),
            Event::Notice(text) if text.contains("diverged") => rollbacks += 1,
            Event::Changed { key, value, .. } if key == "optimizer.lr" => {
                rates.push(value.parse::<f64>().expect("rate"))
            }
            Event::State(RunState::Paused) => break,
            Event::Failed(e) => panic!("{e}"),
            _ => {}
        }
    }
    assert_eq!(rollbacks, 3);
    assert_eq!(rates, vec![5e5, 2.5e5, 1.25e5]);
    handle.send(Command::Stop);
    loop {
        if let Event::Finished { state, .. } = next(&handle) {
            assert_eq!(state, RunState::Stopped);
            break;
        }
    }
    handle.join();
    let run_dir = run_dir.expect("started");
    let text = std::fs::read_to_string(run_dir.join("losses.jsonl")).expect("losses");
    let iters: Vec<u64> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).expect("json")["iter"]
                .as_u64()
                .expect("iter")
        })
        .collect();
    let expected: Vec<u64> = (0..iters.len() as u64).collect();
    assert_eq!(
        iters, expected,
        "a rollback leaves each iteration once in losses.jsonl"
    );
    let preset = Preset::load(&run_dir.join("preset.yaml"), &[]).expect("preset.yaml");
    assert_eq!(preset.settings.optimizer.lr(), 1.25e5);
    let changes = easel::run_dir::read_changes(&run_dir.join("preset.yaml")).expect("changes");
    assert_eq!(
        changes.iter().filter(|c| c.key == "optimizer.lr").count(),
        3
    );
}

#[test]
fn commands_apply_between_iterations_and_pause_stops_computing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut handle = engine::spawn(spec(dir.path(), &["iterations=100000"]));
    let mut seen = 0;
    while seen < 3 {
        match next(&handle) {
            Event::Iteration(_) => seen += 1,
            Event::Failed(e) => panic!("{e}"),
            _ => {}
        }
    }
    handle.send(Command::Pause);
    let mut last_iter = None;
    loop {
        match next(&handle) {
            Event::Iteration(r) => last_iter = Some(r.iter),
            Event::State(RunState::Paused) => break,
            _ => {}
        }
    }
    // Paused: no iteration arrives, but settings still apply at once.
    handle.send(Command::Set(Setting::Beta, 80.0));
    match next(&handle) {
        Event::Changed {
            key,
            value,
            settings,
            ..
        } => {
            assert_eq!(key, "beta");
            assert_eq!(value, "80.0");
            assert_eq!(settings.beta, 80.0);
        }
        other => panic!("expected the change, got {other:?}"),
    }
    assert!(
        handle
            .events
            .recv_timeout(Duration::from_millis(1500))
            .is_err(),
        "nothing is computed while paused"
    );
    handle.send(Command::Resume);
    loop {
        match next(&handle) {
            Event::Iteration(r) => {
                assert!(
                    last_iter.is_none_or(|l| r.iter == l + 1),
                    "the run continues where it paused"
                );
                break;
            }
            Event::Failed(e) => panic!("{e}"),
            _ => {}
        }
    }
    handle.send(Command::SwitchBackend(easel::backend::BackendChoice::Gpu));
    handle.send(Command::Stop);
    let mut notice = String::new();
    loop {
        match next(&handle) {
            Event::Notice(t) => notice = t,
            Event::Finished { state, .. } => {
                assert_eq!(state, RunState::Stopped);
                break;
            }
            _ => {}
        }
    }
    assert!(notice.contains("cannot switch backend"), "{notice}");
    handle.join();
}
