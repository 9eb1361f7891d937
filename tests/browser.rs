//! The runs browser (`easel runs` in a terminal): keys against its state, its screens
//! as insta snapshots, and the real binary in tmux opening, comparing and resuming runs.

mod common;

use common::tmux::Tmux;

use easel::run_dir::Record;
use easel::runs::{RunStatus, RunSummary};
use easel::tui::browser::state::{Action, Browser, Entry, Screen};
use easel::tui::browser::view;
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn record(iter: u64, scale: f64, is_final: bool) -> Record {
    let t = iter as f64;
    Record {
        iter,
        j: scale * (1.4e10 * (-t / 15.0).exp() + 1e9),
        j_content: 7e3 + 200.0 * t,
        j_style: scale * (3.5e8 * (-t / 15.0).exp() + 2.5e7),
        style: ["conv1_1", "conv3_1", "conv5_1"]
            .iter()
            .enumerate()
            .map(|(i, l)| {
                (
                    l.to_string(),
                    10f64.powi(4 + 2 * i as i32) * (-t / 12.0).exp() + 1e3,
                )
            })
            .collect(),
        elapsed_s: t * 0.3,
        backend: "cpu".into(),
        is_final,
    }
}

/// A run as the browser reads it, with made-up but fixed numbers.
fn entry(name: &str, state: RunStatus, done: u64, beta: &str, scale: f64) -> Entry {
    let records: Vec<Record> = (0..done)
        .map(|i| record(i, scale, false))
        .chain((state != RunStatus::Running).then(|| record(done, scale, true)))
        .collect();
    let settings: BTreeMap<String, String> = [
        ("alpha", "10.0"),
        ("beta", beta),
        ("content", "chelsea.png"),
        ("iterations", "60"),
        ("optimizer.kind", "adam"),
        ("optimizer.lr", "2.0"),
        ("style", "starry_night.jpg"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let path = PathBuf::from("runs").join(name);
    Entry {
        summary: RunSummary {
            path: path.clone(),
            label: name.to_string(),
            name: "quick".into(),
            started: "2026-11-29 01:00".into(),
            done,
            total: 60,
            j: records.last().map(|r| r.j),
            state,
            backend: "cpu".into(),
            elapsed_s: done as f64 * 0.3,
            resume: None,
        }
        .with_state(state),
        records,
        settings,
        changes: vec![20],
    }
}

fn browser() -> Browser {
    Browser::new(
        Path::new("runs"),
        vec![
            entry(
                "20261129T010000Z-quick",
                RunStatus::Finished,
                60,
                "40.0",
                1.0,
            ),
            entry(
                "20261129T010500Z-quick",
                RunStatus::Stopped,
                25,
                "160.0",
                4.0,
            ),
            entry(
                "20261129T011000Z-quick",
                RunStatus::Running,
                12,
                "10.0",
                0.5,
            ),
        ],
    )
}

fn press(b: &mut Browser, code: KeyCode) -> Option<Action> {
    b.on_key(KeyEvent::new(code, KeyModifiers::NONE))
}

fn render(b: &Browser, w: u16, h: u16) -> TestBackend {
    let mut terminal = Terminal::new(TestBackend::new(w, h)).expect("terminal");
    let mut pictures: Vec<_> = b.entries.iter().map(|_| None).collect();
    terminal
        .draw(|f| view::draw(f, b, &mut pictures))
        .expect("draw");
    terminal.backend().clone()
}

#[test]
fn keys_open_compare_and_resume_runs() {
    let mut b = browser();
    press(&mut b, KeyCode::Char('j'));
    assert_eq!(b.selected, 1);
    press(&mut b, KeyCode::Enter);
    assert_eq!(b.screen, Screen::Run(1));
    press(&mut b, KeyCode::Up);
    assert_eq!(
        b.screen,
        Screen::Run(0),
        "arrows move through runs while one is open"
    );
    press(&mut b, KeyCode::Esc);
    assert_eq!(b.screen, Screen::List);
    press(&mut b, KeyCode::Char('c'));
    assert_eq!(b.marked, Some(0));
    press(&mut b, KeyCode::Down);
    press(&mut b, KeyCode::Char('c'));
    assert_eq!(b.screen, Screen::Compare(0, 1));
    let differ: Vec<String> = b
        .differences(0, 1)
        .into_iter()
        .filter(|d| d.3)
        .map(|d| d.0)
        .collect();
    assert_eq!(differ, ["beta"]);
    // A stopped run resumes as it was; a finished one with twice its iterations; a
    // running one is refused.
    assert_eq!(
        press(&mut b, KeyCode::Char('r')),
        Some(Action::Resume {
            dir: PathBuf::from("runs/20261129T010500Z-quick"),
            set: vec![]
        })
    );
    press(&mut b, KeyCode::Up);
    assert_eq!(
        press(&mut b, KeyCode::Char('r')),
        Some(Action::Resume {
            dir: PathBuf::from("runs/20261129T010000Z-quick"),
            set: vec!["iterations=120".into()]
        })
    );
    press(&mut b, KeyCode::Down);
    press(&mut b, KeyCode::Down);
    assert_eq!(press(&mut b, KeyCode::Char('r')), None);
    assert!(b.notice.as_deref().is_some_and(|n| n.contains("running")));
    assert_eq!(press(&mut b, KeyCode::Char('q')), Some(Action::Quit));
}

#[test]
fn renders_the_list_a_run_and_a_comparison() {
    let mut b = browser();
    insta::assert_snapshot!("browser_list_100x24", render(&b, 100, 24));
    press(&mut b, KeyCode::Down);
    press(&mut b, KeyCode::Enter);
    insta::assert_snapshot!("browser_run_100x30", render(&b, 100, 30));
    press(&mut b, KeyCode::Esc);
    press(&mut b, KeyCode::Up);
    press(&mut b, KeyCode::Char('c'));
    press(&mut b, KeyCode::Down);
    press(&mut b, KeyCode::Char('c'));
    insta::assert_snapshot!("browser_compare_120x32", render(&b, 120, 32));
    press(&mut b, KeyCode::Char('?'));
    insta::assert_snapshot!("browser_help_100x24", render(&b, 100, 24));
}

#[test]
fn the_browser_in_tmux_opens_compares_and_resumes_runs() {
    let dir = common::scratch(
        &["chelsea.png", "starry_night.jpg"],
        "name: tiny\ncontent: chelsea.png\nstyle: starry_night.jpg\nsize: {width: 32, height: 24}\niterations: 3\nsave_every: 0\nbackend: cpu\n",
    );
    for beta in ["10", "160"] {
        let o = common::easel(
            &[
                "run",
                "p.yaml",
                "--ui",
                "plain",
                "--out",
                "out",
                "--set",
                &format!("beta={beta}"),
            ],
            dir.path(),
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        // Run directories are named by the second they start in.
        std::thread::sleep(Duration::from_millis(1100));
    }
    let runs = common::run_dirs(&dir.path().join("out"));
    assert_eq!(runs.len(), 2);
    let weights = common::real_weights();
    let command = format!(
        "env EASEL_WEIGHTS_DIR={} {} runs out --image-protocol halfblocks; echo EXITED $?; sleep 60",
        weights.parent().expect("weights folder").display(),
        env!("CARGO_BIN_EXE_easel")
    );
    let tmux = Tmux::start("browser", dir.path(), (110, 32), &command);
    tmux.wait_for("2 runs", 30);
    tmux.keys(&["Enter"]);
    tmux.wait_for("J_style per layer", 10);
    tmux.wait_for("iterations  3/3", 10);
    tmux.keys(&["Escape", "c", "Down", "c"]);
    let screen = tmux.wait_for("Settings (1 differ)", 10);
    assert!(
        screen.contains("A final.png") && screen.contains("B final.png"),
        "{screen}"
    );
    tmux.keys(&["Escape", "r"]);
    // The second run, finished, goes on to twice its iterations in the workbench.
    tmux.wait_for("FINISHED · 6/6", 60);
    tmux.keys(&["q"]);
    let screen = tmux.wait_for("2 runs", 10);
    assert!(
        screen.contains("6/6"),
        "the list shows the resumed run's iterations:\n{screen}"
    );
    tmux.keys(&["q"]);
    tmux.wait_for("EXITED 0", 10);
    let resumed = runs
        .iter()
        .find(|r| {
            std::fs::read_to_string(r.join("preset.yaml")).is_ok_and(|p| p.contains("beta: 160"))
        })
        .expect("the beta=160 run");
    let records = common::records(resumed);
    assert_eq!(
        records
            .last()
            .map(|r| (r["iter"].as_u64(), r["final"].as_bool())),
        Some((Some(6), Some(true)))
    );
}
