//! Drawing the workbench: cost plots, settings, preview, footer, overlays.

use super::app::{App, Mode};
use super::keys::{self, BINDINGS};
use crate::engine::RunState;
use ratatui::Frame;
use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::symbols::Marker;
use ratatui::text::{Line, Span};
use ratatui::widgets::{Axis, Block, Borders, Chart, Clear, Dataset, GraphType, Paragraph, Wrap};
use ratatui_image::protocol::StatefulProtocol;
use ratatui_image::{Resize, StatefulImage};

/// Stable colours: J, J_content, J_style, then one per style layer.
pub(super) const COST_COLOURS: [Color; 3] = [Color::White, Color::Cyan, Color::Magenta];
pub(super) const LAYER_COLOURS: [Color; 8] = [
    Color::Red,
    Color::Yellow,
    Color::Green,
    Color::Blue,
    Color::LightMagenta,
    Color::LightCyan,
    Color::LightRed,
    Color::LightGreen,
];

/// Every screen's rows: a header line, the body, a status line and the key footer.
pub(super) fn screen_areas(area: Rect) -> [Rect; 4] {
    Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(6),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(area)
}

pub fn draw(frame: &mut Frame, app: &App, preview: Option<&mut StatefulProtocol>) {
    let area = frame.area();
    let [header, body, status, footer] = screen_areas(area);
    frame.render_widget(Paragraph::new(header_line(app)), header);
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(60), Constraint::Percentage(40)]).areas(body);
    let [costs, layers] =
        Layout::vertical([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(left);
    draw_costs(frame, app, costs);
    draw_layers(frame, app, layers);
    let settings_height = (app.rows.len() as u16 + 2).min(right.height.saturating_sub(4));
    let [settings, image] =
        Layout::vertical([Constraint::Length(settings_height), Constraint::Min(3)]).areas(right);
    draw_settings(frame, app, settings);
    draw_preview(frame, app, image, preview);
    let status_text = app
        .notice
        .clone()
        .or_else(|| {
            app.run_dir
                .as_ref()
                .map(|d| format!("run: {}", d.display()))
        })
        .unwrap_or_default();
    frame.render_widget(
        Paragraph::new(status_text).style(Style::new().fg(Color::Yellow)),
        status,
    );
    draw_footer(frame, footer, BINDINGS);
    match &app.mode {
        Mode::Help => draw_help(
            frame,
            area,
            BINDINGS,
            " Changes apply from the next iteration and are recorded in preset.yaml.",
        ),
        Mode::ConfirmQuit => popup(
            frame,
            area,
            "Quit",
            "Stop the run? The final image, the losses and a checkpoint are written (easel resume continues it).\n\ny: stop and quit    any other key: keep running",
        ),
        Mode::PresetName(buf) => popup(
            frame,
            area,
            "Save preset",
            &format!(
                "Name (written to {}):\n\n{buf}█\n\nEnter save · Esc cancel",
                app.presets_dir.display()
            ),
        ),
        Mode::ConfirmOverwrite(name) => popup(
            frame,
            area,
            "Save preset",
            &format!(
                "{} exists. Replace it?\n\ny: replace    any other key: keep it",
                app.preset_path(name).display()
            ),
        ),
        Mode::Normal | Mode::Editing(_) => {}
    }
}

fn header_line(app: &App) -> Line<'static> {
    let name = app.name.clone();
    let state_style = match app.state {
        RunState::Running => Style::new().fg(Color::Green),
        RunState::Paused => Style::new().fg(Color::Yellow).add_modifier(Modifier::BOLD),
        RunState::Failed => Style::new().fg(Color::Red),
        _ => Style::new().fg(Color::Cyan),
    };
    let total = app.total();
    let iter = app.iter().min(total.max(app.iter()));
    let rate = app.rate();
    let eta = match rate {
        Some(r) if r > 0.0 && app.state == RunState::Running => {
            fmt_duration(total.saturating_sub(iter) as f64 / r)
        }
        _ => "-".into(),
    };
    let tiles = match (&app.tiles, app.state) {
        (Some(t), RunState::Running | RunState::Preparing) => format!(" · {}", t.label()),
        _ => String::new(),
    };
    Line::from(vec![
        Span::styled(" easel ", Style::new().bold()),
        Span::raw(format!("{name} ")),
        Span::styled(app.state.label().to_uppercase(), state_style),
        Span::raw(format!(
            " · {iter}/{total} · {} it/s · ETA {eta} · {} · {}x{}{tiles}",
            rate.map(|r| format!("{r:.2}"))
                .unwrap_or_else(|| "-".into()),
            app.backend.split(" (").next().unwrap_or_default(),
            app.width,
            app.height
        )),
    ])
}

pub fn fmt_duration(s: f64) -> String {
    let s = s.round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// A plotted series: legend name, colour, (iteration, log10 value) points.
pub(super) type Series = (String, Color, Vec<(f64, f64)>);

/// log10, with zeros and negatives kept off the plot.
fn log10(v: f64) -> Option<f64> {
    (v > 0.0 && v.is_finite()).then(|| v.log10())
}

/// The x axis of a plot: its last iteration, and the iterations where settings changed
/// (marked with short strokes at the top).
pub(super) struct XAxis<'a> {
    pub max: f64,
    pub marks: &'a [u64],
}

/// Draws series of (iteration, log10 value) with decade labels.
pub(super) fn log_chart(
    frame: &mut Frame,
    area: Rect,
    title: Line<'static>,
    legend: bool,
    series: Vec<Series>,
    x: XAxis,
) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for (_, _, pts) in &series {
        for (_, y) in pts {
            lo = lo.min(*y);
            hi = hi.max(*y);
        }
    }
    if !lo.is_finite() {
        (lo, hi) = (0.0, 1.0);
    }
    let (lo, hi) = (lo.floor(), hi.ceil().max(lo.floor() + 1.0));
    let x_max = x.max.max(1.0);
    // Marks of settings changes: short vertical strokes at the top of the plot.
    let marks: Vec<Vec<(f64, f64)>> = x
        .marks
        .iter()
        .map(|&i| vec![(i as f64, hi), (i as f64, hi - (hi - lo) * 0.08)])
        .collect();
    let mut datasets: Vec<Dataset> = series
        .iter()
        .map(|(name, colour, pts)| {
            Dataset::default()
                .name(name.clone())
                .marker(Marker::Braille)
                .graph_type(GraphType::Line)
                .style(Style::new().fg(*colour))
                .data(pts)
        })
        .collect();
    for m in &marks {
        datasets.push(
            Dataset::default()
                .marker(Marker::Braille)
                .graph_type(GraphType::Line)
                .style(Style::new().fg(Color::Yellow))
                .data(m),
        );
    }
    let decades = (hi - lo) as usize;
    let step = decades.div_ceil(4).max(1);
    let y_labels: Vec<Span> = (0..=decades)
        .step_by(step)
        .map(|k| Span::raw(format!("1e{}", lo as i64 + k as i64)))
        .collect();
    let x_labels = vec![Span::raw("0"), Span::raw(format!("{}", x_max as u64))];
    let chart = Chart::new(datasets)
        .block(Block::new().borders(Borders::ALL).title(title))
        .x_axis(
            Axis::default()
                .bounds([0.0, x_max])
                .labels(x_labels)
                .style(Style::new().fg(Color::DarkGray)),
        )
        .y_axis(
            Axis::default()
                .bounds([
                    lo,
                    lo + (y_labels.len().saturating_sub(1) * step).max(1) as f64,
                ])
                .labels(y_labels)
                .style(Style::new().fg(Color::DarkGray)),
        )
        .legend_position(legend.then_some(ratatui::widgets::LegendPosition::TopRight))
        .hidden_legend_constraints((Constraint::Percentage(60), Constraint::Percentage(80)));
    frame.render_widget(chart, area);
}

fn marks(app: &App) -> Vec<u64> {
    app.changes.iter().map(|(i, _)| *i).collect()
}

fn x_axis<'a>(app: &App, marks: &'a [u64]) -> XAxis<'a> {
    XAxis {
        max: app.total().max(app.iter()) as f64,
        marks,
    }
}

fn points(app: &App, f: impl Fn(&crate::run_dir::Record) -> f64) -> Vec<(f64, f64)> {
    log_points(&app.history.records, f)
}

/// `(iteration, log10 f(record))` of records, those with a value a log axis can show.
pub(super) fn log_points<'a>(
    records: impl IntoIterator<Item = &'a crate::run_dir::Record>,
    f: impl Fn(&crate::run_dir::Record) -> f64,
) -> Vec<(f64, f64)> {
    records
        .into_iter()
        .filter_map(|r| log10(f(r)).map(|y| (r.iter as f64, y)))
        .collect()
}

fn draw_costs(frame: &mut Frame, app: &App, area: Rect) {
    let last = app.history.last();
    let value = |v: Option<f64>| v.map(|v| format!("{v:.2e}")).unwrap_or_else(|| "-".into());
    // The current values sit in the title, in the series' colours: legible at any size.
    let names = ["J", "J_content", "J_style"];
    let values = [
        last.map(|r| r.j),
        last.map(|r| r.j_content),
        last.map(|r| r.j_style),
    ];
    let mut title = vec![Span::raw("Cost ")];
    for (i, name) in names.iter().enumerate() {
        title.push(Span::styled(
            format!("{name} {} ", value(values[i])),
            Style::new().fg(COST_COLOURS[i]),
        ));
    }
    let series = vec![
        (names[0].to_string(), COST_COLOURS[0], points(app, |r| r.j)),
        (
            names[1].to_string(),
            COST_COLOURS[1],
            points(app, |r| r.j_content),
        ),
        (
            names[2].to_string(),
            COST_COLOURS[2],
            points(app, |r| r.j_style),
        ),
    ];
    log_chart(
        frame,
        area,
        Line::from(title),
        false,
        series,
        x_axis(app, &marks(app)),
    );
}

fn draw_layers(frame: &mut Frame, app: &App, area: Rect) {
    let layers: Vec<String> = app
        .history
        .last()
        .map(|r| r.style.keys().cloned().collect())
        .unwrap_or_default();
    let last = app.history.last();
    let series = layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let v = last.and_then(|r| r.style.get(l)).copied().unwrap_or(0.0);
            (
                format!("{l} {v:.2e}"),
                LAYER_COLOURS[i % LAYER_COLOURS.len()],
                points(app, |r| r.style.get(l).copied().unwrap_or(0.0)),
            )
        })
        .collect();
    // Colour key in the title for narrow screens, where the legend does not fit.
    let mut title = vec![Span::raw("J_style per layer ")];
    for (i, l) in layers.iter().enumerate() {
        title.push(Span::styled(
            format!("■{} ", l.trim_start_matches("conv")),
            Style::new().fg(LAYER_COLOURS[i % LAYER_COLOURS.len()]),
        ));
    }
    log_chart(
        frame,
        area,
        Line::from(title),
        true,
        series,
        x_axis(app, &marks(app)),
    );
}

fn draw_settings(frame: &mut Frame, app: &App, area: Rect) {
    let width = area.width.saturating_sub(2) as usize;
    let lines: Vec<Line> = app
        .rows
        .iter()
        .enumerate()
        .map(|(i, row)| {
            let selected = i == app.selected;
            let value = match (&app.mode, selected) {
                (Mode::Editing(buf), true) => format!("[{buf}█]"),
                _ => app.value(row),
            };
            let label = row.label();
            let pad = width.saturating_sub(label.chars().count() + value.chars().count() + 2);
            let text = format!(
                "{} {label}{}{value}",
                if selected { "›" } else { " " },
                " ".repeat(pad)
            );
            let style = if selected {
                Style::new().fg(Color::Black).bg(Color::Cyan)
            } else {
                Style::new()
            };
            Line::styled(text, style)
        })
        .collect();
    frame.render_widget(
        Paragraph::new(lines).block(Block::new().borders(Borders::ALL).title("Settings")),
        area,
    );
}

/// The key footer: the wide one where it fits, else the narrow one.
pub(super) fn draw_footer(frame: &mut Frame, area: Rect, bindings: &[keys::Binding]) {
    let wide = keys::footer(bindings, false);
    let text = if (area.width as usize) < wide.chars().count() {
        keys::footer(bindings, true)
    } else {
        wide
    };
    frame.render_widget(
        Paragraph::new(text).style(Style::new().fg(Color::DarkGray)),
        area,
    );
}

fn draw_preview(frame: &mut Frame, app: &App, area: Rect, preview: Option<&mut StatefulProtocol>) {
    let title = match app.preview_iter {
        Some(i) => format!("Preview · iter {i}"),
        None => "Preview".into(),
    };
    draw_image(frame, area, title, preview, "waiting for the first image…");
}

/// An image in a titled box, scaled to fit; `empty` where there is none.
pub(super) fn draw_image(
    frame: &mut Frame,
    area: Rect,
    title: String,
    image: Option<&mut StatefulProtocol>,
    empty: &str,
) {
    let block = Block::new().borders(Borders::ALL).title(title);
    let inner = block.inner(area);
    frame.render_widget(block, area);
    match image {
        Some(p) => frame.render_stateful_widget(
            StatefulImage::default().resize(Resize::Scale(None)),
            inner,
            p,
        ),
        None => frame.render_widget(
            Paragraph::new(empty.to_string()).alignment(Alignment::Center),
            inner,
        ),
    }
}

fn centered(area: Rect, width: u16, height: u16) -> Rect {
    let w = width.min(area.width);
    let h = height.min(area.height);
    Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    }
}

pub(super) fn popup(frame: &mut Frame, area: Rect, title: &str, text: &str) {
    let rect = centered(area, 64, 9);
    frame.render_widget(Clear, rect);
    frame.render_widget(
        Paragraph::new(text.to_string())
            .wrap(Wrap { trim: false })
            .block(Block::new().borders(Borders::ALL).title(title.to_string())),
        rect,
    );
}

pub(super) fn draw_help(frame: &mut Frame, area: Rect, bindings: &[keys::Binding], note: &str) {
    let rect = centered(area, 72, bindings.len() as u16 + 4);
    let mut lines: Vec<Line> = bindings
        .iter()
        .map(|b| {
            Line::from(vec![
                Span::styled(format!(" {:<11}", b.keys), Style::new().bold()),
                Span::raw(b.does),
            ])
        })
        .collect();
    lines.push(Line::raw(""));
    lines.push(Line::raw(note.to_string()));
    frame.render_widget(Clear, rect);
    frame.render_widget(
        Paragraph::new(lines).block(Block::new().borders(Borders::ALL).title("Keys")),
        rect,
    );
}
