//! Contact sheets: the points' final images in a grid, the last axis across, the one
//! before it down, one sheet per combination of any others; every row and column
//! labelled with its axis' values. `contact.json` says what each cell shows.

use super::PointResult;
use super::plan::{Axis, Plan};
use crate::atomic;
use anyhow::Result;
use font8x8::UnicodeFonts;
use image::{Rgb, RgbImage, imageops};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The longer side of a cell's image box, in pixels.
const CELL: u32 = 256;
/// Glyphs are the font's 8x8 pixels drawn 2x2.
const SCALE: u32 = 2;
const GLYPH: u32 = 8 * SCALE;
const GAP: u32 = 8;
const INK: Rgb<u8> = Rgb([20, 20, 20]);
const PAPER: Rgb<u8> = Rgb([255, 255, 255]);

pub const SHEETS: &str = "contact.json";

#[derive(Debug, Serialize)]
struct Labels {
    axis: String,
    labels: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Cell {
    row: usize,
    column: usize,
    point: String,
    /// Where the point's image sits on the sheet (absent while it has none).
    rect: Option<[u32; 4]>,
}

#[derive(Debug, Serialize)]
struct Sheet {
    file: String,
    /// The values of the axes this sheet holds fixed (axis name -> label).
    fixed: BTreeMap<String, String>,
    rows: Option<Labels>,
    columns: Labels,
    cells: Vec<Cell>,
}

/// Writes the contact sheets and `contact.json` in `dir`; returns the sheets' paths.
pub fn write(dir: &Path, plan: &Plan, results: &[PointResult]) -> Result<Vec<PathBuf>> {
    let n = plan.axes.len();
    let (cols, rows) = (&plan.axes[n - 1], (n >= 2).then(|| &plan.axes[n - 2]));
    let fixed_axes = &plan.axes[..n.saturating_sub(2)];
    let per_sheet = cols.values.len() * rows.map_or(1, |r| r.values.len());
    let sheets = results.len() / per_sheet;
    let boxed = cell_box(results);
    let mut written = Vec::new();
    let mut index = Vec::new();
    for k in 0..sheets {
        let mine = &results[k * per_sheet..(k + 1) * per_sheet];
        let file = if sheets == 1 {
            "contact.png".to_string()
        } else {
            format!("contact-{:02}.png", k + 1)
        };
        let steps = &plan.points[k * per_sheet].steps;
        let fixed: BTreeMap<String, String> = fixed_axes
            .iter()
            .zip(steps)
            .map(|(a, &s)| (a.name(), a.labels[s].clone()))
            .collect();
        let (image, sheet) = draw(&plan.name, fixed, rows, cols, mine, boxed, file.clone())?;
        let path = dir.join(&file);
        atomic::write_with(&path, |f| {
            image.write_to(f, image::ImageFormat::Png)?;
            Ok(())
        })?;
        written.push(path);
        index.push(sheet);
    }
    atomic::write(
        &dir.join(SHEETS),
        serde_json::to_string_pretty(&index)?.as_bytes(),
    )?;
    Ok(written)
}

/// The box every cell's image fits in: `CELL` on the long side, at the aspect of the
/// first final image (square until one exists).
fn cell_box(results: &[PointResult]) -> (u32, u32) {
    let first = results
        .iter()
        .filter_map(|r| r.final_image.as_ref())
        .find_map(|p| image::image_dimensions(p).ok());
    match first {
        Some((w, h)) if w >= h => (CELL, (CELL * h / w).max(1)),
        Some((w, h)) => ((CELL * w / h).max(1), CELL),
        None => (CELL, CELL),
    }
}

fn text_width(text: &str) -> u32 {
    text.chars().count() as u32 * GLYPH
}

/// `text` cut to `max` pixels wide, with `..` where it was cut.
fn fit(text: &str, max: u32) -> String {
    let room = (max / GLYPH) as usize;
    if text.chars().count() <= room {
        return text.to_string();
    }
    let kept: String = text.chars().take(room.saturating_sub(2)).collect();
    format!("{kept}..")
}

fn draw_text(img: &mut RgbImage, x: u32, y: u32, text: &str) {
    for (i, c) in text.chars().enumerate() {
        let glyph = font8x8::BASIC_FONTS
            .get(c)
            .or_else(|| font8x8::BASIC_FONTS.get('?'))
            .unwrap_or([0; 8]);
        let gx = x + i as u32 * GLYPH;
        for (row, bits) in glyph.iter().enumerate() {
            for col in 0..8 {
                if bits & (1 << col) == 0 {
                    continue;
                }
                for dy in 0..SCALE {
                    for dx in 0..SCALE {
                        let (px, py) = (gx + col * SCALE + dx, y + row as u32 * SCALE + dy);
                        if px < img.width() && py < img.height() {
                            img.put_pixel(px, py, INK);
                        }
                    }
                }
            }
        }
    }
}

fn draw(
    title: &str,
    fixed: BTreeMap<String, String>,
    rows: Option<&Axis>,
    cols: &Axis,
    results: &[PointResult],
    (bw, bh): (u32, u32),
    file: String,
) -> Result<(RgbImage, Sheet)> {
    let n_rows = rows.map_or(1, |r| r.values.len()) as u32;
    let n_cols = cols.values.len() as u32;
    let label_w = rows
        .map(|r| {
            let widest = r
                .labels
                .iter()
                .cloned()
                .chain([format!("{} v", r.name())])
                .map(|l| text_width(&l))
                .max()
                .unwrap_or(0);
            widest.min(20 * GLYPH) + 2 * GAP
        })
        .unwrap_or(GAP);
    let header = 3 * (GLYPH + GAP) + GAP;
    let width = label_w + n_cols * (bw + GAP) + GAP;
    let height = header + n_rows * (bh + GAP) + GAP;
    let mut img = RgbImage::from_pixel(width, height, PAPER);
    let mut heading = title.to_string();
    for (k, v) in &fixed {
        heading += &format!("  {k}={v}");
    }
    draw_text(&mut img, GAP, GAP, &fit(&heading, width - 2 * GAP));
    draw_text(
        &mut img,
        label_w,
        GAP + GLYPH + GAP,
        &fit(&format!("{} ->", cols.name()), width - label_w),
    );
    if let Some(r) = rows {
        draw_text(
            &mut img,
            GAP,
            GAP + GLYPH + GAP,
            &fit(&format!("{} v", r.name()), label_w - GAP),
        );
    }
    let mut cells = Vec::new();
    for (i, result) in results.iter().enumerate() {
        let (row, column) = (i as u32 / n_cols, i as u32 % n_cols);
        let (x, y) = (label_w + column * (bw + GAP), header + row * (bh + GAP));
        if row == 0 {
            draw_text(
                &mut img,
                x,
                header - GLYPH - GAP,
                &fit(&cols.labels[column as usize], bw),
            );
        }
        if column == 0
            && let Some(r) = rows
        {
            draw_text(
                &mut img,
                GAP,
                y + bh / 2 - GLYPH / 2,
                &fit(&r.labels[row as usize], label_w - 2 * GAP),
            );
        }
        let rect = place(&mut img, result, x, y, (bw, bh));
        cells.push(Cell {
            row: row as usize,
            column: column as usize,
            point: result.point.clone(),
            rect,
        });
    }
    let sheet = Sheet {
        file,
        fixed,
        rows: rows.map(|r| Labels {
            axis: r.name(),
            labels: r.labels.clone(),
        }),
        columns: Labels {
            axis: cols.name(),
            labels: cols.labels.clone(),
        },
        cells,
    };
    Ok((img, sheet))
}

/// Puts the point's final image, scaled into the box, at `(x, y)`; a grey box with the
/// point's state where it has none yet.
fn place(
    img: &mut RgbImage,
    result: &PointResult,
    x: u32,
    y: u32,
    (bw, bh): (u32, u32),
) -> Option<[u32; 4]> {
    let picture = result
        .final_image
        .as_ref()
        .and_then(|p| image::open(p).ok())
        .map(|i| i.to_rgb8());
    let Some(picture) = picture else {
        for py in y..y + bh {
            for px in x..x + bw {
                img.put_pixel(px, py, Rgb([200, 200, 200]));
            }
        }
        draw_text(
            img,
            x + GAP,
            y + bh / 2 - GLYPH / 2,
            &fit(&result.state, bw.saturating_sub(2 * GAP)),
        );
        return None;
    };
    let scale = (bw as f64 / picture.width() as f64).min(bh as f64 / picture.height() as f64);
    let w = ((picture.width() as f64 * scale).round() as u32).clamp(1, bw);
    let h = ((picture.height() as f64 * scale).round() as u32).clamp(1, bh);
    let thumb = imageops::resize(&picture, w, h, imageops::FilterType::Triangle);
    imageops::replace(img, &thumb, x as i64, y as i64);
    Some([x, y, w, h])
}
