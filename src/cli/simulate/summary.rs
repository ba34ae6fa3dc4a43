//! The live summary on standard error: a spinner line redrawn in place on a terminal
//! (indicatif), a plain line every `--summary-every` otherwise.

use std::io::IsTerminal;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

use super::fleet::{Shared, UpdateState};

pub struct Summary {
    bar: Option<ProgressBar>,
    every: Duration,
    started: Instant,
    last: (Instant, u64, u64),
}

impl Summary {
    pub fn new(shared: &Shared, started: Instant) -> Summary {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}").unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        let every = if bar.is_some() { Duration::from_secs(1) } else { shared.plan.summary_every };
        Summary { bar, every, started, last: (started, 0, 0) }
    }

    pub fn every(&self) -> Duration {
        self.every
    }

    /// Counts by state and version, offers and requests a second, errors.
    fn line(&mut self, shared: &Shared) -> String {
        let stats = &shared.stats;
        let states: Vec<String> = UpdateState::ALL
            .iter()
            .enumerate()
            .filter_map(|(i, state)| {
                let n = stats.states[i].load(Ordering::Relaxed);
                (n > 0).then(|| format!("{} {n}", state.as_str()))
            })
            .collect();
        let mut versions: Vec<(String, i64)> =
            stats.versions.lock().expect("versions lock").iter().filter(|(_, n)| **n > 0).map(|(v, n)| (v.to_string(), *n)).collect();
        versions.sort();
        let versions: Vec<String> = versions.into_iter().map(|(v, n)| format!("{v} {n}")).collect();
        let now = Instant::now();
        let (offers, requests) = (stats.offers.load(Ordering::Relaxed), stats.requests.load(Ordering::Relaxed));
        let seconds = now.duration_since(self.last.0).as_secs_f64().max(0.001);
        let offer_rate = (offers - self.last.1) as f64 / seconds;
        let request_rate = (requests - self.last.2) as f64 / seconds;
        self.last = (now, offers, requests);
        let sessions = stats.sessions.load(Ordering::Relaxed);
        let sessions = if sessions > 0 { format!(" | mqtt sessions {sessions}") } else { String::new() };
        format!(
            "{} | versions {} | offers/s {offer_rate:.1} | requests/s {request_rate:.0}{sessions} | errors {}",
            states.join(", "),
            versions.join(", "),
            stats.errors_total()
        )
    }

    pub fn tick(&mut self, shared: &Shared) {
        let line = self.line(shared);
        match &self.bar {
            Some(bar) => bar.set_message(line),
            None => eprintln!("[{:>5.0}s] {line}", self.started.elapsed().as_secs_f64()),
        }
    }

    pub fn finish(&mut self, shared: &Shared) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        let line = self.line(shared);
        eprintln!("[{:>5.0}s] {line}", self.started.elapsed().as_secs_f64());
    }
}
