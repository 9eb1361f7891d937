//! Drawing the runs browser: the list, one run, two runs compared.

use super::state::{Browser, Entry, Screen};
use crate::tui::keys::BROWSER_BINDINGS;
use crate::tui::view::{self, COST_COLOURS, LAYER_COLOURS, Series, XAxis};
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Paragraph, Row, Table, TableState};
use ratatui_image::protocol::StatefulProtocol;

/// A run's final image on screen, one slot per entry (`None`: not loaded or none).
pub type Pictures = [Option<StatefulProtocol>];

const A: [Color; 2] = [Color::White, Color::Magenta];
const B: [Color; 2] = [Color::Cyan, Color::Yellow];

pub fn draw(frame: &mut Frame, b: &Browser, pictures: &mut Pictures) {
    let area = frame.area();
    let [header, body, status, footer] = view::screen_areas(area);
    let title = match b.screen {
        Screen::List => format!(
            "easel runs · {} · {} runs",
            b.dir.display(),
            b.entries.len()
        ),
        Screen::Run(i) => format!("run {}", b.entries[i].name()),
        Screen::Compare(x, y) => {
            format!("A {}  vs  B {}", b.entries[x].name(), b.entries[y].name())
        }
    };
    frame.render_widget(Paragraph::new(title).style(Style::new().bold()), header);
    match b.screen {
        Screen::List => draw_list(frame, b, body),
        Screen::Run(i) => draw_run(frame, &b.entries[i], body, pictures[i].as_mut()),
        Screen::Compare(x, y) => {
            let (px, py) = pair(pictures, x, y);
            draw_compare(frame, b, (x, y), body, (px.as_mut(), py.as_mut()));
        }
    }
    let selected = b.entries.get(b.selected);
    let status_text = b
        .notice
        .clone()
        .or_else(|| {
            selected
                .and_then(|e| e.summary.resume.clone())
                .map(|c| format!("to go on: {c}"))
        })
        .unwrap_or_default();
    frame.render_widget(
        Paragraph::new(status_text).style(Style::new().fg(Color::Yellow)),
        status,
    );
    view::draw_footer(frame, footer, BROWSER_BINDINGS);
    if b.help {
        view::draw_help(
            frame,
            area,
            BROWSER_BINDINGS,
            " Runs are read from their run directories.",
        );
    }
}

/// Two distinct elements of a slice, both mutable.
fn pair<T>(v: &mut [T], a: usize, b: usize) -> (&mut T, &mut T) {
    if a < b {
        let (lo, hi) = v.split_at_mut(b);
        (&mut lo[a], &mut hi[0])
    } else {
        let (lo, hi) = v.split_at_mut(a);
        (&mut hi[0], &mut lo[b])
    }
}

fn fmt_j(j: Option<f64>) -> String {
    j.map(|j| format!("{j:.3e}")).unwrap_or_else(|| "-".into())
}

fn draw_list(frame: &mut Frame, b: &Browser, area: Rect) {
    if b.entries.is_empty() {
        frame.render_widget(
            Paragraph::new(format!("no run directories in {}", b.dir.display()))
                .block(Block::new().borders(Borders::ALL).title("Runs")),
            area,
        );
        return;
    }
    let header = Row::new(["", "run", "state", "iterations", "J", "backend", "time"])
        .style(Style::new().add_modifier(Modifier::BOLD));
    let rows = b.entries.iter().enumerate().map(|(i, e)| {
        let s = &e.summary;
        let mark = if b.marked == Some(i) { "*" } else { "" };
        let row = Row::new([
            Cell::from(mark),
            Cell::from(e.name()),
            Cell::from(s.state.label()),
            Cell::from(format!("{}/{}", s.done, s.total)),
            Cell::from(fmt_j(s.j)),
            Cell::from(s.backend.clone()),
            Cell::from(view::fmt_duration(s.elapsed_s)),
        ]);
        if i == b.selected {
            row.style(Style::new().add_modifier(Modifier::REVERSED))
        } else {
            row
        }
    });
    let widths = [
        Constraint::Length(1),
        Constraint::Min(20),
        Constraint::Length(8),
        Constraint::Length(11),
        Constraint::Length(10),
        Constraint::Length(7),
        Constraint::Length(8),
    ];
    // Stateful, so that the table scrolls to keep the selected run in view.
    let mut state = TableState::default().with_selected(Some(b.selected));
    frame.render_stateful_widget(
        Table::new(rows, widths)
            .header(header)
            .block(Block::new().borders(Borders::ALL).title("Runs")),
        area,
        &mut state,
    );
}

fn series(
    e: &Entry,
    name: &str,
    colour: Color,
    f: impl Fn(&crate::run_dir::Record) -> f64,
) -> Series {
    (name.to_string(), colour, view::log_points(&e.records, f))
}

fn x_max(entries: &[&Entry]) -> f64 {
    entries
        .iter()
        .map(|e| e.summary.total.max(e.summary.done))
        .max()
        .unwrap_or(1) as f64
}

fn draw_run(frame: &mut Frame, e: &Entry, area: Rect, picture: Option<&mut StatefulProtocol>) {
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(60), Constraint::Percentage(40)]).areas(area);
    let [costs, layers] =
        Layout::vertical([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(left);
    let x = || XAxis {
        max: x_max(&[e]),
        marks: &e.changes,
    };
    let totals = vec![
        series(e, "J", COST_COLOURS[0], |r| r.j),
        series(e, "J_content", COST_COLOURS[1], |r| r.j_content),
        series(e, "J_style", COST_COLOURS[2], |r| r.j_style),
    ];
    view::log_chart(
        frame,
        costs,
        Line::raw("Cost J, J_content, J_style"),
        true,
        totals,
        x(),
    );
    let names: Vec<String> = e
        .records
        .last()
        .map(|r| r.style.keys().cloned().collect())
        .unwrap_or_default();
    let per_layer = names
        .iter()
        .enumerate()
        .map(|(i, l)| {
            series(e, l, LAYER_COLOURS[i % LAYER_COLOURS.len()], |r| {
                r.style.get(l).copied().unwrap_or(0.0)
            })
        })
        .collect();
    view::log_chart(
        frame,
        layers,
        Line::raw("J_style per layer"),
        true,
        per_layer,
        x(),
    );
    let s = &e.summary;
    let facts = vec![
        Line::raw(format!("state       {}", s.state.label())),
        Line::raw(format!("started     {}", s.started)),
        Line::raw(format!("iterations  {}/{}", s.done, s.total)),
        Line::raw(format!("J, last     {}", fmt_j(s.j))),
        Line::raw(format!("time        {}", view::fmt_duration(s.elapsed_s))),
        Line::raw(format!("backend     {}", s.backend)),
    ];
    let [numbers, image] = Layout::vertical([
        Constraint::Length(facts.len() as u16 + 2),
        Constraint::Min(3),
    ])
    .areas(right);
    frame.render_widget(
        Paragraph::new(facts).block(Block::new().borders(Borders::ALL).title("Run")),
        numbers,
    );
    view::draw_image(
        frame,
        image,
        "final.png".into(),
        picture,
        "no final image yet",
    );
}

fn draw_compare(
    frame: &mut Frame,
    b: &Browser,
    (x, y): (usize, usize),
    area: Rect,
    pictures: (Option<&mut StatefulProtocol>, Option<&mut StatefulProtocol>),
) {
    let (ea, eb) = (&b.entries[x], &b.entries[y]);
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(60), Constraint::Percentage(40)]).areas(area);
    let [plot, images] =
        Layout::vertical([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(left);
    let overlaid = vec![
        series(ea, "A J", A[0], |r| r.j),
        series(ea, "A J_style", A[1], |r| r.j_style),
        series(eb, "B J", B[0], |r| r.j),
        series(eb, "B J_style", B[1], |r| r.j_style),
    ];
    let title = Line::from(vec![
        Span::raw("Cost "),
        Span::styled(
            format!("A J {} ", fmt_j(ea.summary.j)),
            Style::new().fg(A[0]),
        ),
        Span::styled(
            format!("B J {}", fmt_j(eb.summary.j)),
            Style::new().fg(B[0]),
        ),
    ]);
    let x_axis = XAxis {
        max: x_max(&[ea, eb]),
        marks: &[],
    };
    view::log_chart(frame, plot, title, true, overlaid, x_axis);
    let [ia, ib] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(images);
    view::draw_image(
        frame,
        ia,
        "A final.png".into(),
        pictures.0,
        "no final image yet",
    );
    view::draw_image(
        frame,
        ib,
        "B final.png".into(),
        pictures.1,
        "no final image yet",
    );
    let mut diffs = b.differences(x, y);
    // The settings that differ first: they are what the comparison is about.
    diffs.sort_by_key(|d| !d.3);
    let differ = diffs.iter().filter(|d| d.3).count();
    let rows = diffs.into_iter().map(|(k, va, vb, differs)| {
        let style = if differs {
            Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD)
        } else {
            Style::new().fg(Color::DarkGray)
        };
        Row::new([k, va, vb]).style(style)
    });
    let widths = [
        Constraint::Min(18),
        Constraint::Percentage(30),
        Constraint::Percentage(30),
    ];
    frame.render_widget(
        Table::new(rows, widths)
            .header(
                Row::new(["setting", "A", "B"]).style(Style::new().add_modifier(Modifier::BOLD)),
            )
            .block(
                Block::new()
                    .borders(Borders::ALL)
                    .title(format!("Settings ({differ} differ)")),
            ),
        right,
    );
}
