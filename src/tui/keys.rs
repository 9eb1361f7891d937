//! The workbench's keys, once: the footer, the help overlay and the README's key table
//! are all made from [`BINDINGS`] (a test holds the README to it), and the runs
//! browser's from [`BROWSER_BINDINGS`]. What each key does is `App::on_key` and
//! `Browser::on_key`.

/// One row of the key table.
pub struct Binding {
    /// The keys, as the help overlay and the README show them.
    pub keys: &'static str,
    /// What they do (at most [`DOES_WIDTH`] characters: the help overlay's width).
    pub does: &'static str,
    /// In the footer, wide and narrow; `None` where the footer leaves the key out.
    pub footer: Option<(&'static str, &'static str)>,
}

const fn key(
    keys: &'static str,
    does: &'static str,
    footer: Option<(&'static str, &'static str)>,
) -> Binding {
    Binding { keys, does, footer }
}

/// The widest `does` the help overlay shows whole.
pub const DOES_WIDTH: usize = 57;

// One key a line: the table reads as the help overlay does.
#[rustfmt::skip]
pub const BINDINGS: &[Binding] = &[
    key("Space", "pause / resume (nothing is computed while paused)", Some(("Space pause", "Spc pause"))),
    key("↑ ↓  k j", "select a setting", Some(("↑↓ select", "↑↓ select"))),
    key("← →  - +", "change it by x1.25 (content layer: previous/next)", Some(("←→ change", "←→ change"))),
    key("Shift ← →", "change it by x10", None),
    key("Enter", "type an exact value (Enter applies, Esc cancels)", Some(("Enter type", "⏎ type"))),
    key("s", "save a snapshot and a checkpoint now", Some(("s snapshot", "s snap"))),
    key("r", "refresh the preview now", None),
    key("p", "save the settings as a preset in presets/", Some(("p preset", "p preset"))),
    key("b", "next usable backend (cpu, cuda, wgpu)", Some(("b backend", "b backend"))),
    key("?", "this help (Esc closes)", Some(("? help", "? help"))),
    key("q  Ctrl-C", "stop the run (asks first) and quit", Some(("q quit", "q quit"))),
];

/// The runs browser's keys (`easel runs` in a terminal), in the workbench's conventions.
#[rustfmt::skip]
pub const BROWSER_BINDINGS: &[Binding] = &[
    key("↑ ↓  k j", "select a run", Some(("↑↓ select", "↑↓ select"))),
    key("Enter", "open it: its plots, final image and numbers", Some(("Enter open", "⏎ open"))),
    key("c", "mark it for comparison; a second mark compares the two", Some(("c compare", "c cmp"))),
    key("r", "resume it in the workbench (finished: 2x iterations)", Some(("r resume", "r resume"))),
    key("Esc", "back to the list", Some(("Esc back", "Esc back"))),
    key("?", "this help (Esc closes)", Some(("? help", "? help"))),
    key("q  Ctrl-C", "quit", Some(("q quit", "q quit"))),
];

/// The footer of a key table: `narrow` for terminals too narrow for the wide one.
pub fn footer(bindings: &[Binding], narrow: bool) -> String {
    let parts = bindings.iter().filter_map(|b| b.footer);
    if narrow {
        parts.map(|(_, n)| n).collect::<Vec<_>>().join(" ")
    } else {
        parts.map(|(w, _)| w).collect::<Vec<_>>().join(" · ")
    }
}

/// A key table as the README shows it, in Markdown.
pub fn markdown_table(bindings: &[Binding]) -> String {
    let mut table = String::from("| key | what it does |\n|---|---|\n");
    for b in bindings {
        table.push_str(&format!("| {} | {} |\n", b.keys, b.does));
    }
    table
}
