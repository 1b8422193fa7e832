//! A plugin's recent call times: a fixed ring written without locks, because a policy call
//! costs about a microsecond and a lock per call would be a visible part of that.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// How many recent calls the percentiles cover.
const WINDOW: usize = 1024;

pub(crate) struct LatencyWindow {
    nanos: Box<[AtomicU64]>,
    recorded: AtomicU64,
}

impl Default for LatencyWindow {
    fn default() -> Self {
        LatencyWindow {
            nanos: (0..WINDOW).map(|_| AtomicU64::new(0)).collect(),
            recorded: AtomicU64::new(0),
        }
    }
}

impl LatencyWindow {
    pub(crate) fn record(&self, elapsed: Duration) {
        let slot = self.recorded.fetch_add(1, Ordering::Relaxed) as usize % WINDOW;
        self.nanos[slot].store(elapsed.as_nanos() as u64, Ordering::Relaxed);
    }

    /// `(p50, p99)` in microseconds over the last calls; zero before the first call. Calls
    /// racing with the read may be half counted, which a percentile tolerates.
    pub(crate) fn percentiles_micros(&self) -> (f64, f64) {
        let filled = (self.recorded.load(Ordering::Relaxed) as usize).min(WINDOW);
        let mut sorted: Vec<u64> = self.nanos[..filled]
            .iter()
            .map(|slot| slot.load(Ordering::Relaxed))
            .collect();
        sorted.sort_unstable();
        let at = |q: f64| -> f64 {
            let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
            sorted.get(index).map_or(0.0, |&nanos| {
                // Two decimals are plenty for a percentile shown to people.
                (nanos as f64 / 10.0).round() / 100.0
            })
        };
        (at(0.5), at(0.99))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_cover_the_latest_window_only() {
        let window = LatencyWindow::default();
        assert_eq!(window.percentiles_micros(), (0.0, 0.0));
        for _ in 0..WINDOW {
            window.record(Duration::from_millis(5));
        }
        for micros in 1..=WINDOW as u64 {
            window.record(Duration::from_micros(micros));
        }
        let (p50, p99) = window.percentiles_micros();
        assert_eq!(p50, 513.0, "the 5 ms calls fell out of the window");
        assert_eq!(p99, 1014.0);
    }
}
