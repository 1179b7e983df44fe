//! `duet quarantine list|show|replay`: the malformed events the lake keeps (every one, in its
//! `quarantine` table), and sending them back to their topic once they can be read: as they
//! are (after the config was fixed) or corrected by hand.

use std::fmt::Write as _;

use anyhow::{Context, Result, bail};
use duet_config::Config;
use duet_config::Quarantined;
use duet_lake::{Lake, read_quarantine};

/// The quarantined events of the lake, newest first, of `source` if given.
pub async fn records(cfg: &Config, source: Option<&str>) -> Result<Vec<Quarantined>> {
    if let Some(s) = source
        && cfg.source(s).is_none()
    {
        bail!("unknown source `{s}`");
    }
    let lake = Lake::open(&cfg.lake.url)?;
    Ok(read_quarantine(&lake)
        .await?
        .into_iter()
        .filter(|r| source.is_none_or(|s| r.source == s))
        .collect())
}

/// One line per record: id, time, source, reason.
pub fn list(records: &[Quarantined], limit: usize) -> String {
    let mut out = String::from("id\tquarantined\tsource\treason\n");
    for r in records.iter().take(limit) {
        let _ = writeln!(
            out,
            "{}\t{}\t{}\t{}",
            r.id(),
            duet_config::time::iso(r.at_ms),
            r.source,
            r.reason
        );
    }
    if records.len() > limit {
        let _ = writeln!(out, "({} more; --limit N)", records.len() - limit);
    }
    out
}

/// The record named `id` (`topic/partition@offset`), in full.
pub fn show(records: &[Quarantined], id: &str) -> Result<String> {
    let found: Vec<&Quarantined> = records.iter().filter(|r| r.id() == id).collect();
    if found.is_empty() {
        bail!(
            "no quarantined event `{id}` (ids are topic/partition@offset; see `duet quarantine list`)"
        );
    }
    let mut out = String::new();
    for r in found {
        let _ = writeln!(
            out,
            "id:          {}\nsource:      {}\nquarantined: {}\nreason:      {}\npayload:     {}",
            r.id(),
            r.source,
            duet_config::time::iso(r.at_ms),
            r.reason,
            String::from_utf8_lossy(&r.payload)
        );
    }
    Ok(out)
}

/// What `replay` did with one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed {
    /// The record's id.
    pub id: String,
    /// `None` when sent (or would be, in a dry run); why not otherwise.
    pub refused: Option<String>,
}

/// Sends the records named `ids` back to their topic on `bootstrap`, keyed by their id (so
/// a second replay of one record lands in the same partition, where the speed layer drops it
/// as a duplicate once it was counted). Each payload (`payload` replaces it when one record is
/// named) must decode under the current config, else it is not sent and the reason is given.
pub async fn replay(
    cfg: &Config,
    bootstrap: &str,
    records: &[Quarantined],
    ids: &[String],
    payload: Option<Vec<u8>>,
    dry_run: bool,
) -> Result<Vec<Replayed>> {
    if payload.is_some() && ids.len() != 1 {
        bail!("--payload replaces the bytes of one event: name exactly one id");
    }
    let producer = crate::producer::producer(&cfg.kafka, bootstrap)?;
    let mut out = Vec::new();
    for id in ids {
        let Some(r) = records.iter().find(|r| &r.id() == id) else {
            out.push(Replayed {
                id: id.clone(),
                refused: Some("no such quarantined event".into()),
            });
            continue;
        };
        let bytes = payload.clone().unwrap_or_else(|| r.payload.clone());
        let source = cfg
            .source(&r.source)
            .with_context(|| format!("source `{}` is no longer configured", r.source))?;
        if let Err(e) = source.decode_at(&bytes, duet_speed::now_ms()) {
            out.push(Replayed {
                id: id.clone(),
                refused: Some(format!("still refused: {e}")),
            });
            continue;
        }
        if !dry_run {
            crate::producer::send(&producer, &r.topic, id, &bytes)
                .await
                .with_context(|| format!("replay {id}"))?;
        }
        out.push(Replayed {
            id: id.clone(),
            refused: None,
        });
    }
    Ok(out)
}
