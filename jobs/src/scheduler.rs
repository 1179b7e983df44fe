//! The in-process scheduler: each `[[jobs]]` entry's cron expression (UTC) triggers a run of
//! its views: the dirty buckets (late events pending) and every unsealed gap up to what may be
//! sealed now are recomputed and sealed (see [`duet_batch::due`]); then closed raw hours and
//! the ledger are compacted. Only the scheduler compacts.

use std::collections::BTreeMap;
use std::str::FromStr;

use anyhow::Result;
use chrono::Utc;
use cron::Schedule;
use duet_config::Config;
use duet_lake::Lake;
use tokio::sync::watch;

/// Where the scheduler reports how each seal compared with the speed layer.
#[derive(Clone)]
pub struct SealCheck {
    /// The speed layer's store, read for the sealed buckets.
    pub store: std::sync::Arc<dyn duet_speed::ViewStore>,
    /// Where the comparisons go (`/metrics`).
    pub checks: std::sync::Arc<duet_serving::health::SealChecks>,
    /// The sealed frontiers the speed layer knows: it drops its state of buckets sealed more
    /// than `[speed] sealed_retention` before them, so those are not compared.
    pub sealed: watch::Receiver<BTreeMap<String, i64>>,
    /// `[speed] sealed_retention` in ms.
    pub retention_ms: i64,
}

impl SealCheck {
    /// Compares a seal's recompute with what the speed layer holds for the same buckets.
    async fn check(&self, view: &duet_config::ViewSpec, r: &duet_batch::Recompute) {
        let mut speed = Vec::new();
        for range in &r.ranges {
            match self.store.read(&view.name, range.from, range.to).await {
                Ok(rows) => speed.extend(rows),
                Err(e) => {
                    tracing::warn!(view = %view.name, error = %e, "Could not read the speed store to check a seal.");
                    return;
                }
            }
        }
        let horizon = self
            .sealed
            .borrow()
            .get(&view.name)
            .map_or(i64::MIN, |t| t.saturating_sub(self.retention_ms));
        let kept = |rows: &[duet_config::Row]| -> Vec<duet_config::Row> {
            rows.iter()
                .filter(|r| r.bucket >= horizon)
                .cloned()
                .collect()
        };
        let expected = crate::verify::render(view, &kept(&r.written));
        let found = crate::verify::render(view, &kept(&speed));
        let diffs = crate::verify::compare(view, &expected, &found);
        let drift = diffs.iter().map(|d| d.drift()).fold(0.0, f64::max);
        let buckets = expected
            .keys()
            .chain(found.keys())
            .collect::<std::collections::BTreeSet<_>>()
            .len();
        if !diffs.is_empty() {
            tracing::info!(view = %view.name, mismatched = diffs.len(), max_drift = drift, "Sealed buckets differ from the speed layer's.");
        }
        self.checks
            .record(&view.name, buckets as u64, diffs.len() as u64, drift);
    }
}

/// Recomputes and seals what is due for every view of `views`, logging (not failing on)
/// per-view errors: a view that fails is tried again at the next run. With `check`, each
/// seal is compared with the speed layer's state of the same buckets.
pub async fn seal_due(
    cfg: &Config,
    lake: &Lake,
    views: &[String],
    now_ms: i64,
) -> Vec<duet_batch::Recompute> {
    seal_due_checked(cfg, lake, views, now_ms, None).await
}

/// [`seal_due`], comparing each seal with the speed layer when `check` is given.
pub async fn seal_due_checked(
    cfg: &Config,
    lake: &Lake,
    views: &[String],
    now_ms: i64,
    check: Option<&SealCheck>,
) -> Vec<duet_batch::Recompute> {
    let mut out = Vec::new();
    for name in views {
        let Some(view) = cfg.view(name) else { continue };
        let due = match duet_batch::due(lake, cfg, view, now_ms).await {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(view = %name, error = %e, "Scheduled seal failed.");
                continue;
            }
        };
        for pass in due.passes(duet_batch::pass_span(view)) {
            match duet_batch::recompute_ranges(lake, cfg, view, &pass, now_ms).await {
                Ok(r) => {
                    if let Some(c) = check {
                        c.check(view, &r).await;
                    }
                    out.push(r)
                }
                Err(e) => {
                    tracing::error!(view = %name, error = %e, "Scheduled seal failed.");
                    break;
                }
            }
        }
    }
    out
}

/// Compacts the raw partitions of every source whose hour ended `lateness` before both the
/// clock and the lake's watermark (logging, not failing on, errors).
pub async fn compact_closed_hours(cfg: &Config, lake: &Lake, now_ms: i64) -> usize {
    let mut done = 0;
    for s in &cfg.sources {
        let result = async {
            let snapshot = duet_lake::raw::raw_snapshot(lake, &s.name, None).await?;
            let Some(w) = snapshot.watermark else {
                return Ok(0);
            };
            duet_lake::raw::compact_raw(lake, &s.name, now_ms.min(w) - cfg.lateness_ms).await
        }
        .await;
        match result {
            Ok(n) => done += n,
            Err(e) => {
                tracing::warn!(source = %s.name, error = %e, "Raw compaction failed; will retry.")
            }
        }
    }
    done
}

/// Publishes each view's sealed frontier (the end of its contiguous sealed range) from the
/// ledger, for the speed layer to forget dedup ids no open bucket needs.
pub async fn publish_sealed(
    cfg: &Config,
    lake: &Lake,
    sealed: &watch::Sender<BTreeMap<String, i64>>,
) -> Result<()> {
    let ledger = duet_lake::SealLedger::new(lake).snapshot().await?;
    let frontiers: BTreeMap<String, i64> = cfg
        .views
        .iter()
        .filter_map(|v| Some((v.name.clone(), ledger.view(&v.name).sealed_until()?)))
        .collect();
    sealed.send_if_modified(|old| {
        let changed = *old != frontiers;
        *old = frontiers;
        changed
    });
    Ok(())
}

/// Vacuums every table Duet writes: data files removed more than an hour ago are deleted
/// (rewritten view partitions, compacted raw hours, compacted ledger files), so the lake's
/// size follows its data, not its age. Errors are logged; the next run tries again.
pub async fn vacuum_all(cfg: &Config, lake: &Lake) -> usize {
    let hour = std::time::Duration::from_secs(3_600);
    let urls = cfg
        .sources
        .iter()
        .map(|s| lake.raw_table_url(&s.name))
        .chain(cfg.views.iter().map(|v| lake.view_table_url(&v.name)))
        .chain(std::iter::once(
            duet_lake::SealLedger::new(lake).url().clone(),
        ));
    let mut deleted = 0;
    for url in urls {
        match duet_lake::vacuum(&url, hour).await {
            Ok(n) => deleted += n,
            Err(e) => tracing::warn!(table = %url, error = %e, "Vacuum failed; will retry."),
        }
    }
    deleted
}

/// Runs the jobs' schedules until `shutdown` turns true; after each run (and at start) the
/// views' sealed frontiers are published on `sealed`; once an hour the tables are vacuumed.
pub async fn run(
    cfg: &Config,
    lake: &Lake,
    sealed: &watch::Sender<BTreeMap<String, i64>>,
    check: Option<&SealCheck>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    publish_sealed(cfg, lake, sealed).await?;
    let mut last_vacuum = Utc::now();
    let jobs: Vec<(Schedule, Vec<String>, String)> = cfg
        .jobs
        .iter()
        .filter_map(|j| {
            Schedule::from_str(&j.schedule)
                .ok()
                .map(|s| (s, j.all_views(), j.name.clone()))
        })
        .collect();
    if jobs.is_empty() {
        let _ = shutdown.wait_for(|s| *s).await;
        return Ok(());
    }
    loop {
        let now = Utc::now();
        let Some((at, idx)) = jobs
            .iter()
            .enumerate()
            .filter_map(|(i, (s, _, _))| s.after(&now).next().map(|t| (t, i)))
            .min()
        else {
            break;
        };
        let wait = (at - now).to_std().unwrap_or_default();
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => break,
            () = tokio::time::sleep(wait) => {}
        }
        // a run stopped half-way is safe: a view commit without its ledger entry leaves the
        // range open, and the next run seals it again
        let run = async {
            for (i, (s, views, name)) in jobs.iter().enumerate() {
                if i == idx || s.after(&now).next() == Some(at) {
                    let done =
                        seal_due_checked(cfg, lake, views, at.timestamp_millis(), check).await;
                    tracing::info!(job = %name, sealed = done.len(), "Job ran.");
                    let compacted = compact_closed_hours(cfg, lake, at.timestamp_millis()).await;
                    if compacted > 0 {
                        tracing::info!(partitions = compacted, "Compacted raw partitions.");
                    }
                    if let Err(e) = duet_lake::SealLedger::new(lake).compact().await {
                        tracing::warn!(error = %e, "Ledger compaction failed; will retry.");
                    }
                    if let Err(e) = publish_sealed(cfg, lake, sealed).await {
                        tracing::warn!(error = %e, "Could not read the ledger; will retry.");
                    }
                }
            }
            if (at - last_vacuum).num_seconds() >= 3_600 {
                last_vacuum = at;
                let n = vacuum_all(cfg, lake).await;
                tracing::info!(files = n, "Vacuumed the lake.");
            }
        };
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => break,
            () = run => {}
        }
    }
    Ok(())
}
