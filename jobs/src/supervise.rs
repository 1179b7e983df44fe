//! Parts fail alone: each part of a deployment (speed layer, lake sink, scheduler, serving,
//! generator) runs under a supervisor that restarts it with exponential backoff when it fails
//! or panics, records its status for `/health` and `/metrics`, and logs the error. One part's
//! failure never stops the others.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use duet_serving::health::Parts;
use tokio::sync::watch;

/// How a supervisor waits between restarts.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// Wait after the first failure; doubled after each further one.
    pub first: Duration,
    /// Longest wait.
    pub max: Duration,
    /// A part that ran this long before failing starts again from `first`.
    pub reset_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            first: Duration::from_millis(500),
            max: Duration::from_secs(60),
            reset_after: Duration::from_secs(60),
        }
    }
}

/// Runs the part `start` makes until `shutdown` turns true, restarting it whenever it
/// returns an error, returns early or panics.
pub async fn supervise<F, Fut>(
    name: &'static str,
    parts: Arc<Parts>,
    backoff: Backoff,
    mut shutdown: watch::Receiver<bool>,
    mut start: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let mut wait = backoff.first;
    loop {
        parts.running(name, duet_speed::now_ms());
        let started = Instant::now();
        let outcome = tokio::spawn(start()).await;
        if *shutdown.borrow() {
            parts.stopped(name, duet_speed::now_ms());
            return;
        }
        let error = match outcome {
            Ok(Ok(())) => "stopped unexpectedly".to_string(),
            Ok(Err(e)) => format!("{e:#}"),
            Err(e) => format!("panicked: {e}"),
        };
        if started.elapsed() >= backoff.reset_after {
            wait = backoff.first;
        }
        tracing::error!(part = name, error = %error, restart_in_ms = wait.as_millis() as u64, "Part failed; restarting it.");
        parts.failed(name, &error, duet_speed::now_ms());
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => {
                parts.stopped(name, duet_speed::now_ms());
                return;
            }
            () = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(backoff.max);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use duet_serving::health::PartState;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn failing_and_panicking_parts_are_restarted() {
        let parts = Arc::new(Parts::default());
        let (stop, rx) = watch::channel(false);
        let runs = Arc::new(AtomicU32::new(0));
        let backoff = Backoff {
            first: Duration::from_millis(5),
            max: Duration::from_millis(20),
            reset_after: Duration::from_secs(60),
        };
        let task = {
            let (parts, runs, rx2) = (parts.clone(), runs.clone(), rx.clone());
            tokio::spawn(supervise("flaky", parts, backoff, rx, move || {
                let n = runs.fetch_add(1, Ordering::SeqCst);
                let mut rx = rx2.clone();
                async move {
                    match n {
                        0 => anyhow::bail!("commit conflict"),
                        1 => panic!("bug"),
                        2 => Ok(()),
                        _ => {
                            let _ = rx.wait_for(|s| *s).await;
                            Ok(())
                        }
                    }
                }
            }))
        };
        let start = Instant::now();
        while runs.load(Ordering::SeqCst) < 4 {
            assert!(start.elapsed() < Duration::from_secs(10), "not restarted");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        let s = parts.snapshot()["flaky"].clone();
        assert_eq!(s.state, PartState::Running);
        assert_eq!(s.restarts, 3);
        assert_eq!(s.last_error.as_deref(), Some("stopped unexpectedly"));
        stop.send(true).unwrap();
        task.await.unwrap();
        assert_eq!(parts.snapshot()["flaky"].state, PartState::Stopped);
        assert_eq!(runs.load(Ordering::SeqCst), 4);
    }
}
