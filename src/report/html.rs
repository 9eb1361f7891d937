//! `report.html`: one self-contained page per run that links the run's own files, so
//! it opens from the run directory (or a copy of it) in any browser.

use crate::preset::Change;
use crate::runs::RunSummary;
use std::fmt::Write;
use std::path::PathBuf;

/// At most this many snapshots in the strip, spread evenly over the run.
const STRIP: usize = 10;

pub struct Report<'a> {
    pub summary: &'a RunSummary,
    /// `preset.yaml` as written.
    pub preset: &'a str,
    pub changes: &'a [Change],
    /// Relative to the run directory, in order.
    pub snapshots: &'a [PathBuf],
    pub has_final: bool,
}

/// Text made safe to place in HTML.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Up to `n` items spread evenly over `all`, the last always among them.
fn spread<T>(all: &[T], n: usize) -> Vec<&T> {
    if all.len() <= n {
        return all.iter().collect();
    }
    (1..=n).map(|k| &all[k * all.len() / n - 1]).collect()
}

pub fn page(r: &Report) -> String {
    let s = r.summary;
    let title = escape(&format!("{} — easel", s.name));
    let mut out = String::new();
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>\n<style>{CSS}</style></head><body>\n<h1>{}</h1>\n",
        escape(&s.name)
    );
    facts(&mut out, s);
    out += "<h2>Costs</h2>\n<img class=\"plot\" src=\"losses.svg\" alt=\"J, J_content and J_style against the iteration\">\n";
    if r.has_final {
        out += "<h2>Final image</h2>\n<img class=\"final\" src=\"final.png\" alt=\"the final image\">\n";
    }
    strip(&mut out, r.snapshots);
    changes(&mut out, r.changes);
    let _ = write!(
        out,
        "<h2>Settings</h2>\n<pre>{}</pre>\n</body></html>\n",
        escape(r.preset)
    );
    out
}

fn facts(out: &mut String, s: &RunSummary) {
    let j =
        s.j.map(|j| format!("{j:.4e}"))
            .unwrap_or_else(|| "-".into());
    let rows = [
        ("state", s.state.label().to_string()),
        ("started (UTC)", s.started.clone()),
        ("iterations", format!("{} of {}", s.done, s.total)),
        ("J, last", j),
        ("time", format!("{:.1} s", s.elapsed_s)),
        ("backend", s.backend.clone()),
        ("to go on", s.resume.clone().unwrap_or_default()),
    ];
    out.push_str("<table class=\"facts\">\n");
    for (k, v) in rows {
        let _ = writeln!(out, "<tr><th>{k}</th><td>{}</td></tr>", escape(&v));
    }
    out.push_str("</table>\n");
}

fn strip(out: &mut String, snapshots: &[PathBuf]) {
    if snapshots.is_empty() {
        return;
    }
    out.push_str("<h2>Snapshots</h2>\n<div class=\"strip\">\n");
    for p in spread(snapshots, STRIP) {
        let name = p.display().to_string();
        let label = p
            .file_stem()
            .map(|n| {
                n.to_string_lossy()
                    .trim_start_matches("iter_")
                    .trim_start_matches('0')
                    .to_string()
            })
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "<figure><img src=\"{}\" alt=\"snapshot\"><figcaption>iteration {}</figcaption></figure>",
            escape(&name),
            escape(if label.is_empty() { "0" } else { &label })
        );
    }
    out.push_str("</div>\n");
}

fn changes(out: &mut String, changes: &[Change]) {
    if changes.is_empty() {
        return;
    }
    out.push_str("<h2>Changes during the run</h2>\n<table>\n<tr><th>iteration</th><th>setting</th><th>value</th></tr>\n");
    for c in changes {
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td></tr>",
            c.iter,
            escape(&c.key),
            escape(&c.value_text())
        );
    }
    out.push_str("</table>\n");
}

const CSS: &str = "body{font-family:sans-serif;max-width:1150px;margin:2em auto;color:#222}\
table{border-collapse:collapse}th,td{text-align:left;padding:2px 12px 2px 0}\
.plot{width:100%}.final{max-width:100%}\
.strip{display:flex;flex-wrap:wrap;gap:8px}.strip img{height:120px}\
figure{margin:0}figcaption{font-size:small;color:#666}\
pre{background:#f4f4f4;padding:1em;overflow:auto}";
