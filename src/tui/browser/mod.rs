//! The runs browser (`easel runs` in a terminal): the run directories in a list, one
//! run's plots, final image and numbers, two runs compared, and `r` to resume one in
//! the workbench. It reads run directories only; it never writes to them.

pub mod state;
pub mod view;

use anyhow::Result;
use ratatui::crossterm::event::{Event as TermEvent, KeyEventKind};
use ratatui_image::picker::ProtocolType;
use ratatui_image::protocol::StatefulProtocol;
use state::{Action, Browser, Screen};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Shows the runs under `dir` until the user quits (`None`) or picks one to resume.
pub fn browse(
    dir: &Path,
    protocol: Option<ProtocolType>,
    notice: Option<String>,
) -> Result<Option<Action>> {
    let mut browser = Browser::load(dir)?;
    browser.notice = notice;
    let signal = crate::frontend::signals::install()?;
    let mut terminal = ratatui::init();
    let picker = super::picker(protocol);
    let stop_input = Arc::new(AtomicBool::new(false));
    let keys = super::spawn_input(Arc::clone(&stop_input));
    let n = browser.entries.len();
    let mut pictures: Vec<Option<StatefulProtocol>> = (0..n).map(|_| None).collect();
    let mut tried = vec![false; n];
    let result: Result<Option<Action>> = (|| {
        loop {
            if crate::frontend::signals::requested(&signal).is_some() {
                return Ok(None);
            }
            while let Ok(ev) = keys.try_recv() {
                match ev {
                    TermEvent::Key(k) if k.kind == KeyEventKind::Press => {
                        if let Some(action) = browser.on_key(k) {
                            return Ok(Some(action));
                        }
                    }
                    TermEvent::Resize(..) => browser.dirty = true,
                    _ => {}
                }
            }
            for i in shown(browser.screen) {
                if !tried[i] {
                    tried[i] = true;
                    if let Ok(img) = image::open(browser.entries[i].final_image()) {
                        pictures[i] = Some(picker.new_resize_protocol(img));
                    }
                }
            }
            if browser.dirty {
                terminal.draw(|f| view::draw(f, &browser, &mut pictures))?;
                browser.dirty = false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    })();
    stop_input.store(true, Ordering::Relaxed);
    ratatui::restore();
    result
}

/// The entries whose final images the screen shows.
fn shown(screen: Screen) -> Vec<usize> {
    match screen {
        Screen::List => Vec::new(),
        Screen::Run(i) => vec![i],
        Screen::Compare(a, b) => vec![a, b],
    }
}
