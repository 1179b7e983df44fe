//! The health of the parts of a running deployment (speed layer, lake sink, scheduler, …), as
//! the supervisor that restarts them records it and `/health` and `/metrics` report it.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// What a part is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PartState {
    /// Running.
    Running,
    /// Failed; waiting to be restarted.
    Restarting,
    /// Stopped on request (shutdown).
    Stopped,
}

/// The status of one part.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PartStatus {
    /// What it is doing.
    pub state: PartState,
    /// How many times it failed and was restarted.
    pub restarts: u64,
    /// Its last error, if it ever failed.
    pub last_error: Option<String>,
    /// When the state last changed, epoch ms.
    pub since_ms: i64,
}

/// The parts of a deployment and their status; shared by the supervisor (writer) and
/// serving (reader).
#[derive(Debug, Default)]
pub struct Parts {
    parts: Mutex<BTreeMap<String, PartStatus>>,
}

impl Parts {
    fn update(&self, name: &str, now_ms: i64, f: impl FnOnce(&mut PartStatus)) {
        let mut parts = self.parts.lock().unwrap_or_else(|e| e.into_inner());
        let status = parts.entry(name.to_string()).or_insert(PartStatus {
            state: PartState::Running,
            restarts: 0,
            last_error: None,
            since_ms: now_ms,
        });
        f(status);
        status.since_ms = now_ms;
    }

    /// `name` is (again) running.
    pub fn running(&self, name: &str, now_ms: i64) {
        self.update(name, now_ms, |s| s.state = PartState::Running);
    }

    /// `name` failed with `error` and will be restarted.
    pub fn failed(&self, name: &str, error: &str, now_ms: i64) {
        self.update(name, now_ms, |s| {
            s.state = PartState::Restarting;
            s.restarts += 1;
            s.last_error = Some(error.to_string());
        });
    }

    /// `name` stopped on request.
    pub fn stopped(&self, name: &str, now_ms: i64) {
        self.update(name, now_ms, |s| s.state = PartState::Stopped);
    }

    /// Every part and its status, by name.
    pub fn snapshot(&self) -> BTreeMap<String, PartStatus> {
        self.parts.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// How the batch layer's recompute of a view compared with what the speed layer held for the
/// same buckets, at the scheduler's seals.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct SealCheck {
    /// Buckets compared at the last seal.
    pub buckets: u64,
    /// Buckets that differed at the last seal.
    pub mismatched: u64,
    /// The largest relative difference of any measure at the last seal (0 to 1).
    pub max_drift: f64,
    /// Buckets that differed, over all seals since start.
    pub mismatched_total: u64,
}

/// The seal checks of every view; written by the scheduler, read by `/metrics`.
#[derive(Debug, Default)]
pub struct SealChecks {
    views: Mutex<BTreeMap<String, SealCheck>>,
}

impl SealChecks {
    /// Records the comparison of one seal of `view`.
    pub fn record(&self, view: &str, buckets: u64, mismatched: u64, max_drift: f64) {
        let mut views = self.views.lock().unwrap_or_else(|e| e.into_inner());
        let c = views.entry(view.to_string()).or_default();
        c.buckets = buckets;
        c.mismatched = mismatched;
        c.max_drift = max_drift;
        c.mismatched_total += mismatched;
    }

    /// Every view's last check.
    pub fn snapshot(&self) -> BTreeMap<String, SealCheck> {
        self.views.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_failures_and_restarts() {
        let p = Parts::default();
        p.running("sink", 1);
        p.failed("sink", "boom", 2);
        let s = &p.snapshot()["sink"];
        assert_eq!(
            (s.state, s.restarts, s.since_ms),
            (PartState::Restarting, 1, 2)
        );
        p.running("sink", 3);
        let s = &p.snapshot()["sink"];
        assert_eq!(s.state, PartState::Running);
        assert_eq!(s.last_error.as_deref(), Some("boom"));
    }
}
