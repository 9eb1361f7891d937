//! The workbench without a terminal: key handling (keys in, commands out) and rendering
//! with ratatui's TestBackend against insta snapshots at 80x24 and 120x40.

use easel::engine::{Command, Event, RunState, Setting, Started};
use easel::preset::Preset;
use easel::run_dir::Record;
use easel::tui::app::{Action, App, Mode, Row};
use easel::tui::view;
use easel::vgg::Layer;
use ratatui::Terminal;
use ratatui::backend::TestBackend;
use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyModifiers};
use std::path::{Path, PathBuf};

fn preset() -> Preset {
    Preset::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("presets/quick.yaml"),
        &[],
    )
    .expect("quick preset")
}

fn record(iter: u64) -> Record {
    let t = iter as f64;
    let layers = ["conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1"];
    Record {
        iter,
        j: 1.4e10 * (-t / 15.0).exp() + 1e9,
        j_content: 7e3 + 200.0 * t,
        j_style: 3.5e8 * (-t / 15.0).exp() + 2.5e7,
        style: layers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                (
                    l.to_string(),
                    10f64.powi(4 + i as i32) * (-t / (10.0 + i as f64)).exp() + 1e3,
                )
            })
            .collect(),
        elapsed_s: t * 0.3,
        backend: "cpu".into(),
        is_final: false,
    }
}

/// A workbench 40 iterations into the quick preset.
fn app() -> App {
    let mut app = App::new(PathBuf::from("presets"));
    app.on_event(Event::Started(Box::new(Started {
        run_dir: PathBuf::from("runs/20261127T000000Z-quick-chelsea-starry"),
        backend: "cpu (burn-flex)".into(),
        width: 128,
        height: 96,
        start_iter: 0,
        preset: preset(),
        history: Vec::new(),
        changes: Vec::new(),
    })));
    app.on_event(Event::State(RunState::Running));
    for i in 0..40 {
        app.on_event(Event::Iteration(record(i)));
    }
    app
}

fn key(code: KeyCode) -> KeyEvent {
    KeyEvent::new(code, KeyModifiers::NONE)
}

fn press(app: &mut App, code: KeyCode) -> Vec<Action> {
    app.on_key(key(code))
}

#[test]
fn space_pauses_and_resumes() {
    let mut app = app();
    assert_eq!(
        press(&mut app, KeyCode::Char(' ')),
        vec![Action::Send(Command::Pause)]
    );
    app.on_event(Event::State(RunState::Paused));
    assert_eq!(
        press(&mut app, KeyCode::Char(' ')),
        vec![Action::Send(Command::Resume)]
    );
}

#[test]
fn arrows_select_and_change_settings_multiplicatively() {
    let mut app = app();
    assert_eq!(app.rows[0], Row::Alpha);
    assert_eq!(
        press(&mut app, KeyCode::Right),
        vec![Action::Send(Command::Set(Setting::Alpha, 12.5))]
    );
    press(&mut app, KeyCode::Down);
    assert_eq!(
        press(&mut app, KeyCode::Char('-')),
        vec![Action::Send(Command::Set(Setting::Beta, 32.0))]
    );
    assert_eq!(
        app.on_key(KeyEvent::new(KeyCode::Right, KeyModifiers::SHIFT)),
        vec![Action::Send(Command::Set(Setting::Beta, 400.0))]
    );
    press(&mut app, KeyCode::Char('j'));
    let conv1_1 = Layer::parse("conv1_1").expect("layer");
    assert_eq!(
        press(&mut app, KeyCode::Char('+')),
        vec![Action::Send(Command::Set(
            Setting::StyleLayer(conv1_1),
            0.25
        ))]
    );
    press(&mut app, KeyCode::Char('k'));
    press(&mut app, KeyCode::Up);
    press(&mut app, KeyCode::Up);
    assert_eq!(app.selected, 0, "selection stops at the top");
}

#[test]
fn content_layer_steps_through_layers() {
    let mut app = app();
    app.selected = app
        .rows
        .iter()
        .position(|r| *r == Row::ContentLayer)
        .expect("row");
    let conv4_3 = Layer::parse("conv4_3").expect("layer");
    assert_eq!(
        press(&mut app, KeyCode::Right),
        vec![Action::Send(Command::SetContentLayer(conv4_3))]
    );
}

#[test]
fn enter_types_an_exact_value_and_esc_cancels() {
    let mut app = app();
    press(&mut app, KeyCode::Enter);
    for c in "1.5e2".chars() {
        press(&mut app, KeyCode::Char(c));
    }
    assert_eq!(app.mode, Mode::Editing("1.5e2".into()));
    assert_eq!(
        press(&mut app, KeyCode::Enter),
        vec![Action::Send(Command::Set(Setting::Alpha, 150.0))]
    );
    press(&mut app, KeyCode::Enter);
    press(&mut app, KeyCode::Char('7'));
    press(&mut app, KeyCode::Char('x'));
    assert_eq!(app.mode, Mode::Editing("7".into()), "a letter is left out");
    assert!(
        app.notice.as_deref().unwrap_or("").contains("'x' left out"),
        "and the notice says so: {:?}",
        app.notice
    );
    assert!(press(&mut app, KeyCode::Esc).is_empty());
    assert_eq!(app.mode, Mode::Normal);
    press(&mut app, KeyCode::Enter);
    press(&mut app, KeyCode::Char('-'));
    assert!(
        press(&mut app, KeyCode::Enter).is_empty(),
        "a negative value is refused"
    );
    assert!(
        app.notice
            .as_deref()
            .unwrap_or("")
            .contains("not a number >= 0")
    );
}

#[test]
fn changes_arrive_as_events_and_update_the_panel() {
    let mut app = app();
    let mut settings = preset().settings;
    settings.beta = 50.0;
    app.on_event(Event::Changed {
        iter: 40,
        key: "beta".into(),
        value: "50.0".into(),
        settings: Box::new(settings),
    });
    assert_eq!(app.value(&Row::Beta), "50");
    assert_eq!(app.changes, vec![(40, "beta = 50.0".to_string())]);
}

#[test]
fn quit_asks_while_running_and_stops_the_engine() {
    let mut app = app();
    assert!(press(&mut app, KeyCode::Char('q')).is_empty());
    assert_eq!(app.mode, Mode::ConfirmQuit);
    assert!(
        press(&mut app, KeyCode::Char('n')).is_empty(),
        "any other key keeps running"
    );
    assert_eq!(app.mode, Mode::Normal);
    press(&mut app, KeyCode::Char('q'));
    assert_eq!(
        press(&mut app, KeyCode::Char('y')),
        vec![Action::Send(Command::Stop)]
    );
    app.on_event(Event::Finished {
        final_image: PathBuf::from("final.png"),
        state: RunState::Stopped,
    });
    assert!(app.quit && app.finished);
    let mut done = app;
    done.quit = false;
    assert_eq!(
        press(&mut done, KeyCode::Char('q')),
        vec![Action::Quit],
        "a finished run quits at once"
    );
}

#[test]
fn preset_save_asks_for_a_name_and_never_overwrites_silently() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut app = app();
    app.presets_dir = dir.path().to_path_buf();
    press(&mut app, KeyCode::Char('p'));
    assert!(matches!(app.mode, Mode::PresetName(_)));
    app.mode = Mode::PresetName(String::new());
    for c in "mi/ne".chars() {
        press(&mut app, KeyCode::Char(c));
    }
    assert!(
        app.notice.as_deref().unwrap_or("").contains("'/' left out"),
        "a character a file name cannot hold is left out, and said: {:?}",
        app.notice
    );
    let path = dir.path().join("mine.yaml");
    assert_eq!(
        press(&mut app, KeyCode::Enter),
        vec![Action::Send(Command::SavePreset {
            path: path.clone(),
            name: "mine".into()
        })]
    );
    std::fs::write(&path, "name: mine\n").expect("write");
    press(&mut app, KeyCode::Char('p'));
    app.mode = Mode::PresetName("mine".into());
    assert!(press(&mut app, KeyCode::Enter).is_empty());
    assert_eq!(app.mode, Mode::ConfirmOverwrite("mine".into()));
    assert!(
        press(&mut app, KeyCode::Char('n')).is_empty(),
        "declining keeps the file"
    );
    app.mode = Mode::ConfirmOverwrite("mine".into());
    assert_eq!(
        press(&mut app, KeyCode::Char('y')),
        vec![Action::Send(Command::SavePreset {
            path,
            name: "mine".into()
        })]
    );
}

#[test]
fn b_asks_for_the_other_backend() {
    let mut app = app();
    assert_eq!(
        press(&mut app, KeyCode::Char('b')),
        vec![Action::Send(Command::NextBackend)]
    );
}

#[test]
fn history_stays_bounded_and_replaces_repeated_iterations() {
    let mut app = app();
    for i in 40..5000 {
        app.on_event(Event::Iteration(record(i)));
    }
    assert!(app.history.records.len() <= easel::tui::app::MAX_POINTS);
    assert_eq!(app.history.last().map(|r| r.iter), Some(4999));
    app.on_event(Event::Iteration(record(4990)));
    assert_eq!(
        app.history.last().map(|r| r.iter),
        Some(4990),
        "a rollback replaces the tail"
    );
}

fn render(app: &App, w: u16, h: u16) -> TestBackend {
    let mut terminal = Terminal::new(TestBackend::new(w, h)).expect("terminal");
    terminal.draw(|f| view::draw(f, app, None)).expect("draw");
    terminal.backend().clone()
}

#[test]
fn renders_the_dashboard() {
    let app = app();
    insta::assert_snapshot!("dashboard_80x24", render(&app, 80, 24));
    insta::assert_snapshot!("dashboard_120x40", render(&app, 120, 40));
}

#[test]
fn renders_the_paused_state_with_a_change_marked() {
    let mut app = app();
    app.on_event(Event::State(RunState::Paused));
    let mut settings = preset().settings;
    settings.beta = 50.0;
    app.on_event(Event::Changed {
        iter: 20,
        key: "beta".into(),
        value: "50.0".into(),
        settings: Box::new(settings),
    });
    app.selected = 1;
    insta::assert_snapshot!("paused_80x24", render(&app, 80, 24));
    insta::assert_snapshot!("paused_120x40", render(&app, 120, 40));
}

#[test]
fn renders_the_help_overlay() {
    let mut app = app();
    press(&mut app, KeyCode::Char('?'));
    insta::assert_snapshot!("help_80x24", render(&app, 80, 24));
    insta::assert_snapshot!("help_120x40", render(&app, 120, 40));
}

/// The README's key table is the one the workbench draws its help and footer from.
#[test]
fn the_readme_key_table_is_the_workbenchs() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
        .expect("README.md");
    use easel::tui::keys::{BINDINGS, BROWSER_BINDINGS, markdown_table};
    for (bindings, section) in [
        (BINDINGS, "The workbench"),
        (BROWSER_BINDINGS, "The runs browser"),
    ] {
        let want = markdown_table(bindings);
        assert!(
            readme.contains(&want),
            "README.md's key table differs from src/tui/keys.rs; put this table under \"{section}\":\n{want}"
        );
    }
    for b in BINDINGS.iter().chain(BROWSER_BINDINGS) {
        assert!(
            b.does.chars().count() <= easel::tui::keys::DOES_WIDTH,
            "`{}` is too long for the help overlay",
            b.does
        );
    }
}

/// With `regions`, each region with a style is a row of its own; its weight changes
/// like any other setting (a region without a style has no row).
#[test]
fn each_region_with_a_style_is_a_setting() {
    let preset = Preset::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("presets/regions.yaml"),
        &[],
    )
    .expect("regions preset");
    let mut app = App::new(PathBuf::from("presets"));
    app.on_event(Event::Started(Box::new(Started {
        run_dir: PathBuf::from("runs/20261129T000000Z-regions-chelsea"),
        backend: "cpu (burn-flex)".into(),
        width: 400,
        height: 300,
        start_iter: 0,
        preset,
        history: Vec::new(),
        changes: Vec::new(),
    })));
    let (blue, red) = ([0, 0, 255], [255, 0, 0]);
    assert!(app.rows.contains(&Row::Region(red)));
    assert!(!app.rows.contains(&Row::Region([0, 0, 0])));
    assert_eq!(Row::Region(blue).label(), "style #0000ff");
    let at = app
        .rows
        .iter()
        .position(|r| *r == Row::Region(blue))
        .expect("the blue region's row");
    for _ in 0..at {
        press(&mut app, KeyCode::Down);
    }
    assert_eq!(app.value(&Row::Region(blue)), "2");
    assert_eq!(
        press(&mut app, KeyCode::Right),
        vec![Action::Send(Command::Set(Setting::RegionWeight(blue), 2.5))]
    );
}
