//! The workbench's keys, once: the footer, the help overlay and the README's key table
//! are all made from [`BINDINGS`] (a test holds the README to it). What each key does to
//! the run is `App::on_key`.

/// One row of the key table.
pub struct Binding {
    /// The keys, as the help overlay and the README show them.
    pub keys: &'static str,
    /// What they do (at most [`DOES_WIDTH`] characters: the help overlay's width).
    pub does: &'static str,
    /// In the footer, wide and narrow; `None` where the footer leaves the key out.
    pub footer: Option<(&'static str, &'static str)>,
}

/// The widest `does` the help overlay shows whole.
pub const DOES_WIDTH: usize = 57;

pub const BINDINGS: &[Binding] = &[
    Binding {
        keys: "Space",
        does: "pause / resume (nothing is computed while paused)",
        footer: Some(("Space pause", "Spc pause")),
    },
    Binding {
        keys: "↑ ↓  k j",
        does: "select a setting",
        footer: Some(("↑↓ select", "↑↓ select")),
    },
    Binding {
        keys: "← →  - +",
        does: "change it by x1.25 (content layer: previous/next)",
        footer: Some(("←→ change", "←→ change")),
    },
    Binding {
        keys: "Shift ← →",
        does: "change it by x10",
        footer: None,
    },
    Binding {
        keys: "Enter",
        does: "type an exact value (Enter applies, Esc cancels)",
        footer: Some(("Enter type", "⏎ type")),
    },
    Binding {
        keys: "s",
        does: "save a snapshot and a checkpoint now",
        footer: Some(("s snapshot", "s snap")),
    },
    Binding {
        keys: "r",
        does: "refresh the preview now",
        footer: None,
    },
    Binding {
        keys: "p",
        does: "save the settings as a preset in presets/",
        footer: Some(("p preset", "p preset")),
    },
    Binding {
        keys: "b",
        does: "next usable backend (cpu, cuda, wgpu)",
        footer: Some(("b backend", "b backend")),
    },
    Binding {
        keys: "?",
        does: "this help (Esc closes)",
        footer: Some(("? help", "? help")),
    },
    Binding {
        keys: "q  Ctrl-C",
        does: "stop the run (asks first) and quit",
        footer: Some(("q quit", "q quit")),
    },
];

/// The footer: `narrow` for terminals too narrow for the wide one.
pub fn footer(narrow: bool) -> String {
    let parts = BINDINGS.iter().filter_map(|b| b.footer);
    if narrow {
        parts.map(|(_, n)| n).collect::<Vec<_>>().join(" ")
    } else {
        parts.map(|(w, _)| w).collect::<Vec<_>>().join(" · ")
    }
}

/// The README's key table, in Markdown.
pub fn markdown_table() -> String {
    let mut table = String::from("| key | what it does |\n|---|---|\n");
    for b in BINDINGS {
        table.push_str(&format!("| {} | {} |\n", b.keys, b.does));
    }
    table
}
