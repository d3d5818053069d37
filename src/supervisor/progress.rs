//! Live progress on a terminal: records read, written and dead-lettered per sink. Quiet when
//! stderr is not a terminal (cron, CI), where only the summary is printed.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

use super::summary::thousands;
use crate::run_state::Progress;

/// A one-line live display, or nothing.
pub(super) struct ProgressLine(Option<ProgressBar>);

impl ProgressLine {
    /// Shows progress only when stderr is a terminal.
    pub(super) fn new() -> ProgressLine {
        if !std::io::stderr().is_terminal() {
            return ProgressLine(None);
        }
        let bar = ProgressBar::new_spinner();
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed}] {msg}").expect("template is valid"),
        );
        ProgressLine(Some(bar))
    }

    /// Redraws with the latest counters.
    pub(super) fn update(&self, progress: &Progress, sinks: &[String]) {
        let Some(bar) = &self.0 else { return };
        let mut message = format!("read {}", thousands(progress.read));
        for sink in sinks {
            let written = progress.written.get(sink).copied().unwrap_or(0);
            let dead = progress.dead.get(sink).copied().unwrap_or(0);
            message.push_str(&format!(" | {sink}: {} written", thousands(written)));
            if dead > 0 {
                message.push_str(&format!(", {} dead", thousands(dead)));
            }
        }
        bar.set_message(message);
        bar.tick();
    }

    /// Removes the line before the summary is printed.
    pub(super) fn finish(&self) {
        if let Some(bar) = &self.0 {
            bar.finish_and_clear();
        }
    }
}

impl Default for ProgressLine {
    fn default() -> Self {
        Self::new()
    }
}
