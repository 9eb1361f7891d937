//! `losses.svg`: the run's costs on a log scale against the iteration, the totals on
//! the left and each style layer's unweighted J_style on the right, with a grey line
//! where a setting changed.

use crate::preset::Change;
use crate::run_dir::Record;
use anyhow::{Result, anyhow};
use plotters::prelude::*;

const SIZE: (u32, u32) = (1100, 440);
/// Distinct on white and for the common colour blindnesses (Okabe and Ito's palette).
const PALETTE: [RGBColor; 7] = [
    RGBColor(0, 0, 0),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(0, 158, 115),
    RGBColor(213, 94, 0),
    RGBColor(0, 114, 178),
    RGBColor(204, 121, 167),
];

/// One line of a panel: its label and `(iteration, value)` points.
type Series = (String, Vec<(u64, f64)>);

/// The SVG text of the plot of `records`, with `changes` marked.
pub fn losses_svg(records: &[Record], changes: &[Change]) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(drawing)?;
        let (left, right) = root.split_horizontally(SIZE.0 / 2);
        panel(&left, "costs", &totals(records), changes)?;
        panel(&right, "J_style per layer", &layers(records), changes)?;
        root.present().map_err(drawing)?;
    }
    Ok(svg)
}

fn totals(records: &[Record]) -> Vec<Series> {
    let pick = |name: &str, f: fn(&Record) -> f64| -> Series {
        (
            name.to_string(),
            records.iter().map(|r| (r.iter, f(r))).collect(),
        )
    };
    vec![
        pick("J", |r| r.j),
        pick("J_content", |r| r.j_content),
        pick("J_style", |r| r.j_style),
    ]
}

fn layers(records: &[Record]) -> Vec<Series> {
    let names: Vec<&String> = records
        .first()
        .map(|r| r.style.keys().collect())
        .unwrap_or_default();
    names
        .into_iter()
        .map(|name| {
            let points = records
                .iter()
                .filter_map(|r| r.style.get(name).map(|v| (r.iter, *v)))
                .collect();
            (name.clone(), points)
        })
        .collect()
}

/// The value range of the positive points, widened to whole decades (a log axis
/// cannot show zero or negative costs: those points are left out).
fn decades(series: &[Series]) -> (f64, f64) {
    let positive = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|&(_, v)| v))
        .filter(|v| *v > 0.0 && v.is_finite());
    let (lo, hi) = positive.fold((f64::INFINITY, 0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if hi <= 0.0 {
        return (1.0, 10.0);
    }
    let lo = 10f64.powf(lo.log10().floor());
    let hi = 10f64.powf(hi.log10().ceil()).max(lo * 10.0);
    (lo, hi)
}

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    series: &[Series],
    changes: &[Change],
) -> Result<()> {
    let last = series
        .iter()
        .flat_map(|(_, p)| p.last().map(|&(i, _)| i))
        .max()
        .unwrap_or(0)
        .max(1);
    let (lo, hi) = decades(series);
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(0u64..last, (lo..hi).log_scale())
        .map_err(drawing)?;
    chart
        .configure_mesh()
        .x_desc("iteration")
        .y_label_formatter(&|v| format!("{v:.0e}"))
        .light_line_style(WHITE.mix(0.0))
        .draw()
        .map_err(drawing)?;
    for change in changes.iter().filter(|c| c.iter <= last) {
        let grey = RGBColor(160, 160, 160);
        chart
            .draw_series(LineSeries::new(
                [(change.iter, lo), (change.iter, hi)],
                grey,
            ))
            .map_err(drawing)?;
        let text = format!("{}={}", change.key, change.value_text());
        chart
            .draw_series([Text::new(
                text,
                (change.iter, hi),
                ("sans-serif", 11).into_font().color(&grey),
            )])
            .map_err(drawing)?;
    }
    for (i, (name, points)) in series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        let positive = points
            .iter()
            .copied()
            .filter(|&(_, v)| v > 0.0 && v.is_finite());
        chart
            .draw_series(LineSeries::new(positive, color.stroke_width(2)))
            .map_err(drawing)?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK.mix(0.3))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(drawing)?;
    Ok(())
}

/// plotters' errors borrow the backend; keep their message only.
fn drawing<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("cannot draw the plot: {e}")
}
