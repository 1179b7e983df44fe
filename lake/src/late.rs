//! Which events the lake sink is about to append are late: they fall in a bucket of some view
//! that is sealed, or that the scheduler may seal at any moment (the bucket ended `lateness`
//! before the source's recorded watermark, so a recompute may have read the raw table without
//! them). Such events become late marks in the ledger, written before the events themselves,
//! so that the scheduler recomputes exactly those buckets.

use std::collections::BTreeMap;

use duet_config::ViewSpec;

use crate::ledger::{AppOffset, Interval, LateMark, LedgerSnapshot};
use crate::raw::RawRecord;

/// The late marks for `records` (not yet written) of one source, one per view and bucket.
/// `views` are the source's views, `watermark` its recorded watermark before these records,
/// `app` the lake sink's `txn` app id of a partition.
pub fn late_marks(
    views: &[&ViewSpec],
    lateness_ms: i64,
    watermark: Option<i64>,
    ledger: &LedgerSnapshot,
    records: &[&RawRecord],
    app: impl Fn(i32) -> String,
    now_ms: i64,
) -> Vec<LateMark> {
    #[derive(Default)]
    struct Acc {
        events: i64,
        offsets: BTreeMap<String, (i64, i64)>,
    }
    let mut acc: BTreeMap<(String, i64, i64), Acc> = BTreeMap::new();
    for view in views {
        let seals = ledger.view(&view.name);
        for r in records {
            let mut buckets: Vec<i64> = view
                .contributions(&r.event)
                .into_iter()
                .map(|c| c.bucket)
                .collect();
            buckets.sort_unstable();
            buckets.dedup();
            for b in buckets {
                let end = b + view.bucket_ms;
                let sealable = watermark.is_some_and(|w| end.saturating_add(lateness_ms) <= w);
                if !sealable && !seals.covers(b, end) {
                    continue;
                }
                let a = acc.entry((view.name.clone(), b, end)).or_default();
                a.events += 1;
                let o = a
                    .offsets
                    .entry(app(r.partition))
                    .or_insert((r.offset, r.offset));
                o.0 = o.0.min(r.offset);
                o.1 = o.1.max(r.offset);
            }
        }
    }
    acc.into_iter()
        .map(|((view, from, to), a)| {
            let id = a
                .offsets
                .iter()
                .map(|(app, (lo, hi))| format!("{app}@{lo}-{hi}"))
                .collect::<Vec<_>>()
                .join(",");
            LateMark {
                id: format!("{view}/{from}/{id}"),
                view,
                bucket: Interval::new(from, to),
                events: a.events,
                offsets: a
                    .offsets
                    .into_iter()
                    .map(|(app, (_, hi))| AppOffset { app, offset: hi })
                    .collect(),
                at: now_ms,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::ViewSeals;
    use duet_config::Config;

    #[test]
    fn events_for_sealed_or_sealable_buckets_are_late() {
        let cfg = Config::from_toml_str(
            r#"
            [[sources]]
            name = "clicks"
            topic = "clicks"
            event_id = "id"
            event_time = "ts"
            fields = { id = "string", ts = "int", kind = "string" }

            [[views]]
            name = "per_minute"
            source = "clicks"
            bucket = "1m"
            filter = "kind == 'buy'"
            measures = [{ name = "n", kind = "count" }]
            "#,
            "t.toml".as_ref(),
        )
        .unwrap();
        let source = &cfg.sources[0];
        let rec = |id: &str, ts: i64, kind: &str, offset: i64| RawRecord {
            event: source
                .decode(format!(r#"{{"id":"{id}","ts":{ts},"kind":"{kind}"}}"#).as_bytes())
                .unwrap(),
            partition: 1,
            offset,
            payload: String::new(),
        };
        let mut ledger = LedgerSnapshot::default();
        ledger.views.insert(
            "per_minute".into(),
            ViewSeals {
                sealed: vec![Interval::new(0, 120_000)],
                ..ViewSeals::default()
            },
        );
        let records = [
            rec("a", 30_000, "buy", 10),  // sealed bucket
            rec("b", 50_000, "buy", 12),  // same bucket
            rec("c", 50_000, "view", 13), // filtered out of the view: not late for it
            rec("d", 130_000, "buy", 14), // unsealed, but the watermark passed it
            rec("e", 300_000, "buy", 15), // open
        ];
        let refs: Vec<&RawRecord> = records.iter().collect();
        let views: Vec<&ViewSpec> = cfg.views.iter().collect();
        let marks = late_marks(
            &views,
            10_000,
            Some(200_000),
            &ledger,
            &refs,
            |p| format!("g/clicks/{p}"),
            7,
        );
        assert_eq!(marks.len(), 2, "{marks:#?}");
        assert_eq!(marks[0].bucket, Interval::new(0, 60_000));
        assert_eq!(marks[0].events, 2);
        assert_eq!(
            marks[0].offsets,
            vec![AppOffset {
                app: "g/clicks/1".into(),
                offset: 12
            }]
        );
        assert_eq!(marks[0].id, "per_minute/0/g/clicks/1@10-12");
        assert_eq!(marks[1].bucket, Interval::new(120_000, 180_000));
        // without a watermark only sealed buckets count
        let marks = late_marks(&views, 10_000, None, &ledger, &refs, |p| p.to_string(), 7);
        assert_eq!(marks.len(), 1);
    }
}
