//! `easel backends`: each compute path on this machine, whether a run can use it (and
//! if not, why and how to fix it), and what `auto` takes.

use super::{Backend, BackendChoice};
use serde::Serialize;

/// One backend as this machine offers it.
#[derive(Debug, Serialize)]
pub struct BackendStatus {
    pub backend: &'static str,
    pub usable: bool,
    /// What it runs on where usable; else why not, with the fix.
    pub detail: String,
    /// Where CUDA's libraries were loaded from (CUDA only, where they loaded).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub libraries: Vec<String>,
}

/// The CPU, CUDA and wgpu, then `auto`'s choice.
pub fn backends() -> Vec<BackendStatus> {
    let choices = [
        ("cpu", BackendChoice::Cpu),
        ("cuda", BackendChoice::Cuda),
        ("wgpu", BackendChoice::Wgpu),
        ("auto", BackendChoice::Auto),
    ];
    choices
        .into_iter()
        .map(|(name, choice)| {
            let resolved = Backend::resolve(choice);
            let libraries = match (&resolved, choice) {
                (Ok(_), BackendChoice::Cuda) => cuda_libraries(),
                _ => Vec::new(),
            };
            BackendStatus {
                backend: name,
                usable: resolved.is_ok(),
                detail: match resolved {
                    Ok(b) => b.description,
                    Err(e) => format!("{e:#}"),
                },
                libraries,
            }
        })
        .collect()
}

#[cfg(feature = "cuda")]
fn cuda_libraries() -> Vec<String> {
    let Ok(loaded) = super::cuda_libs::load() else {
        return Vec::new();
    };
    loaded
        .found
        .iter()
        .map(|(what, dir)| match dir {
            Some(d) => format!("{what}: {}", d.display()),
            None => format!("{what}: the system's library path"),
        })
        .collect()
}

#[cfg(not(feature = "cuda"))]
fn cuda_libraries() -> Vec<String> {
    Vec::new()
}

/// The report as lines for a terminal.
pub fn text(statuses: &[BackendStatus]) -> String {
    let mut out = String::new();
    for s in statuses {
        let state = match (s.backend, s.usable) {
            ("auto", _) => "takes",
            (_, true) => "usable",
            (_, false) => "not usable",
        };
        out.push_str(&format!("{:<5} {:<10} {}\n", s.backend, state, s.detail));
        for lib in &s.libraries {
            out.push_str(&format!("{:<16} {lib}\n", ""));
        }
    }
    out
}
