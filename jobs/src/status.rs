//! The status line `duet run` and `duet demo` log every few seconds: what a person watching
//! the terminal needs (rate, lag, how far the batch layer has sealed, quarantine), instead of a
//! line per event. Per-event details go to the quarantine and to debug logs.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use duet_speed::SpeedCounters;
use tokio::sync::watch;

/// How often the status line is logged.
pub const STATUS_EVERY: Duration = Duration::from_secs(5);

/// The totals one status line compares with the previous one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    /// Messages consumed by the speed layer.
    pub consumed: u64,
    /// Events quarantined.
    pub quarantined: u64,
    /// Duplicates dropped.
    pub duplicates: u64,
}

impl Totals {
    /// The current totals of `c`.
    pub fn of(c: &SpeedCounters) -> Totals {
        Totals {
            consumed: c.consumed.load(Relaxed),
            quarantined: c.quarantined.load(Relaxed),
            duplicates: c.duplicates.load(Relaxed),
        }
    }
}

/// One status line: `now` against `before`, `elapsed` apart; `lag` is the total consumer lag
/// (`None` before the broker answered); `sealed_until` the batch layer's frontier per view.
pub fn line(
    before: Totals,
    now: Totals,
    elapsed: Duration,
    lag: Option<i64>,
    sealed_until: &BTreeMap<String, i64>,
) -> String {
    let secs = elapsed.as_secs_f64().max(1e-3);
    let rate = now.consumed.saturating_sub(before.consumed) as f64 / secs;
    let lag = lag.map_or_else(|| "?".to_string(), |l| l.to_string());
    let sealed = match sealed_until.values().min() {
        Some(t) => duet_config::time::iso(*t),
        None => "nothing yet".to_string(),
    };
    let new_q = now.quarantined.saturating_sub(before.quarantined);
    format!(
        "{rate:.0} events/s · lag {lag} · sealed until {sealed} · quarantined {}{} · duplicates {}",
        now.quarantined,
        if new_q > 0 {
            format!(" (+{new_q})")
        } else {
            String::new()
        },
        now.duplicates
    )
}

/// Logs a status line every [`STATUS_EVERY`] until `shutdown` turns true.
pub async fn run(
    counters: Arc<SpeedCounters>,
    sealed: watch::Receiver<BTreeMap<String, i64>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut before = Totals::of(&counters);
    let mut at = Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            () = tokio::time::sleep(STATUS_EVERY) => {}
        }
        let now = Totals::of(&counters);
        let lags = counters.lag();
        let lag = (!lags.is_empty()).then(|| lags.iter().map(|l| l.lag).sum());
        let text = line(before, now, at.elapsed(), lag, &sealed.borrow());
        tracing::info!(target: "duet::status", "{text}");
        before = now;
        at = Instant::now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_says_rate_lag_frontier_and_quarantine() {
        let before = Totals {
            consumed: 1_000,
            quarantined: 3,
            duplicates: 1,
        };
        let now = Totals {
            consumed: 6_000,
            quarantined: 5,
            duplicates: 4,
        };
        let sealed = BTreeMap::from([("a".to_string(), 120_000), ("b".to_string(), 60_000)]);
        assert_eq!(
            line(before, now, Duration::from_secs(5), Some(42), &sealed),
            "1000 events/s · lag 42 · sealed until 1970-01-01T00:01:00.000Z · quarantined 5 (+2) · duplicates 4"
        );
        assert_eq!(
            line(now, now, Duration::from_secs(5), None, &BTreeMap::new()),
            "0 events/s · lag ? · sealed until nothing yet · quarantined 5 · duplicates 4"
        );
    }
}
