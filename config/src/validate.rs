//! Loading: TOML → typed sections → resolved sources and views, collecting every problem.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::str::FromStr;

use serde::de::DeserializeOwned;

use crate::Config;
use crate::duration::parse_millis;
use crate::error::{Error, Problem, Result};
use crate::filter::{Filter, Literal};
use crate::measure::MeasureKind;
use crate::model::{JobConfig, MeasureConfig, SourceConfig, ViewConfig};
use crate::types::{FieldType, NumType};
use crate::view::{MeasureSpec, Source, ViewSpec};

#[derive(Default)]
struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, path: impl Into<String>, expected: impl Into<String>) {
        self.0.push(Problem {
            path: path.into(),
            expected: expected.into(),
        });
    }
}

fn join(prefix: &str, inner: &str) -> String {
    if inner.is_empty() || inner == "." {
        prefix.to_string()
    } else if inner.starts_with('[') {
        format!("{prefix}{inner}")
    } else {
        format!("{prefix}.{inner}")
    }
}

fn de<T: DeserializeOwned>(v: toml::Value, path: &str, p: &mut Problems) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(v) {
        Ok(t) => Some(t),
        Err(e) => {
            let inner = e.path().to_string();
            p.add(join(path, &inner), e.into_inner().message().to_string());
            None
        }
    }
}

fn section<T: DeserializeOwned + Default>(t: &mut toml::Table, key: &str, p: &mut Problems) -> T {
    t.remove(key)
        .and_then(|v| de(v, key, p))
        .unwrap_or_default()
}

/// The entries of an array of tables that deserialised, and the names of those that did not
/// (so that what refers to them is not reported twice).
fn array<T: DeserializeOwned>(
    t: &mut toml::Table,
    key: &str,
    p: &mut Problems,
) -> (Vec<(String, T)>, BTreeSet<String>) {
    let mut ok = Vec::new();
    let mut failed = BTreeSet::new();
    match t.remove(key) {
        None => {}
        Some(toml::Value::Array(items)) => {
            for (i, v) in items.into_iter().enumerate() {
                let path = format!("{key}[{i}]");
                let name = v.get("name").and_then(|n| n.as_str()).map(str::to_string);
                match de(v, &path, p) {
                    Some(t) => ok.push((path, t)),
                    None => failed.extend(name),
                }
            }
        }
        Some(_) => p.add(key, format!("expected an array of tables ([[{key}]])")),
    }
    (ok, failed)
}

fn duration(text: &str, path: &str, p: &mut Problems) -> i64 {
    parse_millis(text).unwrap_or_else(|e| {
        p.add(path, e.to_string());
        1
    })
}

/// Whether `h` is a PostgreSQL password hash as `[[serving.tokens]] pg_password` holds it:
/// `pbkdf2-sha256$4096$<salt: 16 bytes hex>$<hash: 32 bytes hex>`.
pub fn is_pg_password_hash(h: &str) -> bool {
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    matches!(
        h.split('$').collect::<Vec<_>>().as_slice(),
        ["pbkdf2-sha256", "4096", salt, hash] if hex(salt, 32) && hex(hash, 64)
    )
}

/// Sections whose keys `DUET_<SECTION>__<KEY>` environment variables may set.
const ENV_SECTIONS: [&str; 6] = ["kafka", "lake", "store", "speed", "batch", "serving"];

/// Applies `DUET_<SECTION>__<KEY>=value` overrides to the parsed file. Values are read as TOML
/// (`5`, `true`, `"x"`) and fall back to plain strings.
fn apply_env(table: &mut toml::Table, env: &[(String, String)], p: &mut Problems) {
    for (name, value) in env {
        let Some(rest) = name.strip_prefix("DUET_") else {
            continue;
        };
        let Some((section, key)) = rest.split_once("__") else {
            continue;
        };
        let (section, key) = (section.to_lowercase(), key.to_lowercase());
        if !ENV_SECTIONS.contains(&section.as_str()) || key.is_empty() || key.contains("__") {
            p.add(
                format!("environment {name}"),
                format!(
                    "expected DUET_<SECTION>__<KEY> with a section among {}",
                    ENV_SECTIONS.join(", ")
                ),
            );
            continue;
        }
        let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| toml::Value::String(value.clone()));
        let entry = table
            .entry(section.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        match entry {
            toml::Value::Table(t) => {
                t.insert(key, parsed);
            }
            _ => p.add(
                format!("environment {name}"),
                format!("`{section}` in the file is not a table"),
            ),
        }
    }
}

pub(crate) fn load(text: &str, file: &Path, env: &[(String, String)]) -> Result<Config> {
    let invalid = |problems: Vec<Problem>| Error::Invalid {
        file: file.to_path_buf(),
        problems,
    };
    let mut table: toml::Table = toml::from_str(text).map_err(|e| {
        invalid(vec![Problem {
            path: String::new(),
            expected: format!("invalid TOML: {}", e.message()),
        }])
    })?;
    let mut p = Problems::default();
    apply_env(&mut table, env, &mut p);
    let kafka: crate::KafkaConfig = section(&mut table, "kafka", &mut p);
    let lake: crate::LakeConfig = section(&mut table, "lake", &mut p);
    let store: crate::StoreConfig = section(&mut table, "store", &mut p);
    let speed: crate::SpeedConfig = section(&mut table, "speed", &mut p);
    let batch: crate::BatchConfig = section(&mut table, "batch", &mut p);
    let serving: crate::ServingConfig = section(&mut table, "serving", &mut p);
    let (raw_sources, mut broken): (Vec<(String, SourceConfig)>, _) =
        array(&mut table, "sources", &mut p);
    let (raw_views, broken_views): (Vec<(String, ViewConfig)>, _) =
        array(&mut table, "views", &mut p);
    let (jobs, _): (Vec<(String, JobConfig)>, _) = array(&mut table, "jobs", &mut p);
    for key in table.keys() {
        p.add(
            key.as_str(),
            "unknown section (expected kafka, lake, store, speed, batch, serving, sources, views, jobs)",
        );
    }

    if lake.url.contains("://") && !lake.url.starts_with("file://") {
        p.add(
            "lake.url",
            format!(
                "expected a local folder or a file:// URL (object stores are not supported in this version), found {:?}",
                lake.url
            ),
        );
    }
    if kafka.partitions < 1 {
        p.add("kafka.partitions", "expected at least 1");
    }
    if lake.flush_records == 0 {
        p.add("lake.flush_records", "expected at least 1");
    }
    if speed.batch_max == 0 {
        p.add("speed.batch_max", "expected at least 1");
    }
    let lake_flush_ms = duration(&lake.flush_interval, "lake.flush_interval", &mut p);
    let lake_idle_ms = duration(&lake.idle_timeout, "lake.idle_timeout", &mut p);
    let speed_batch_ms = duration(&speed.batch_interval, "speed.batch_interval", &mut p);
    let lateness_ms = duration(&batch.lateness, "batch.lateness", &mut p);
    let sealed_retention_ms = duration(&speed.sealed_retention, "speed.sealed_retention", &mut p);
    let store_retention_ms = duration(&store.retention, "store.retention", &mut p);
    let quarantine_retention_ms = duration(
        &speed.quarantine_retention,
        "speed.quarantine_retention",
        &mut p,
    );
    if speed.quarantine_cap == 0 {
        p.add("speed.quarantine_cap", "expected at least 1");
    }
    if let Some(url) = &store.url
        && !(url.starts_with("redis://")
            || url.starts_with("rediss://")
            || url.starts_with("redis-cluster://"))
    {
        p.add(
            "store.url",
            format!("expected a Redis URL such as redis://127.0.0.1:6379/0 (or redis-cluster://host1:6379,host2:6379 for a cluster), found {url:?}"),
        );
    }
    if store.prefix.is_empty()
        || !store
            .prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.:".contains(c))
    {
        p.add(
            "store.prefix",
            format!(
                "expected letters, digits, `_`, `-`, `.` or `:`, found {:?}",
                store.prefix
            ),
        );
    }
    if std::net::SocketAddr::from_str(&serving.bind).is_err() {
        p.add(
            "serving.bind",
            format!(
                "expected an address such as 127.0.0.1:8080, found {:?}",
                serving.bind
            ),
        );
    }
    if let Some(pg) = &serving.pg_bind
        && std::net::SocketAddr::from_str(pg).is_err()
    {
        p.add(
            "serving.pg_bind",
            format!("expected an address such as 127.0.0.1:5433, found {pg:?}"),
        );
    }

    let mut sources = Vec::new();
    let mut names = BTreeSet::new();
    let declared = raw_sources.len() + broken.len();
    for (path, s) in raw_sources {
        if !names.insert(s.name.clone()) {
            p.add(
                format!("{path}.name"),
                format!("source `{}` is declared twice", s.name),
            );
        }
        let name = s.name.clone();
        match resolve_source(&path, s, &mut p) {
            Some(src) => sources.push(src),
            None => {
                broken.insert(name);
            }
        }
    }
    if declared == 0 {
        p.add("sources", "expected at least one [[sources]] entry");
    }

    let mut views = Vec::new();
    let mut names = BTreeSet::new();
    for (path, v) in raw_views {
        if !names.insert(v.name.clone()) {
            p.add(
                format!("{path}.name"),
                format!("view `{}` is declared twice", v.name),
            );
        }
        if broken.contains(&v.source) {
            continue; // the source's own problems are reported
        }
        if let Some(view) = resolve_view(&path, v, &sources, store_retention_ms, &mut p) {
            views.push(view);
        }
    }

    for (path, j) in &jobs {
        let all = j.all_views();
        if all.is_empty() {
            p.add(
                path.as_str(),
                "expected `view` or `views` naming at least one view",
            );
        }
        for v in all {
            if !names.contains(&v) && !broken_views.contains(&v) {
                p.add(format!("{path}.views"), format!("unknown view `{v}`"));
            }
        }
        if let Err(e) = cron::Schedule::from_str(&j.schedule) {
            p.add(
                format!("{path}.schedule"),
                format!("expected a cron expression with seconds such as \"0 * * * * *\": {e}"),
            );
        }
    }

    let mut token_names = BTreeSet::new();
    for (i, t) in serving.tokens.iter().enumerate() {
        let path = format!("serving.tokens[{i}]");
        if t.name.is_empty() || !token_names.insert(t.name.clone()) {
            p.add(
                format!("{path}.name"),
                format!("expected a name no other token has, found {:?}", t.name),
            );
        }
        if let Some(h) = &t.sha256
            && (h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            p.add(
                format!("{path}.sha256"),
                "expected the token's SHA-256 as 64 hex digits (`duet token new` prints a token and its hash)",
            );
        }
        if let Some(h) = &t.pg_password
            && !is_pg_password_hash(h)
        {
            p.add(
                format!("{path}.pg_password"),
                "expected pbkdf2-sha256$4096$<salt: 32 hex digits>$<hash: 64 hex digits> (`duet token new --pg` prints a password and its hash)",
            );
        }
        if t.sha256.is_none() && t.pg_password.is_none() {
            p.add(
                path.as_str(),
                "expected `sha256` (an HTTP bearer token), `pg_password` (a PostgreSQL password) or both",
            );
        }
        for v in &t.views {
            if v != "*" && !names.contains(v) && !broken_views.contains(v) {
                p.add(
                    format!("{path}.views"),
                    format!("unknown view `{v}` (or \"*\" for all)"),
                );
            }
        }
        if t.rate == 0 {
            p.add(
                format!("{path}.rate"),
                "expected requests per second, at least 1",
            );
        }
    }

    if !p.0.is_empty() {
        return Err(invalid(p.0));
    }
    Ok(Config {
        file: file.to_path_buf(),
        kafka,
        lake,
        store,
        speed,
        batch,
        serving,
        sources,
        views,
        jobs: jobs.into_iter().map(|(_, j)| j).collect(),
        lake_flush_ms,
        lake_idle_ms,
        speed_batch_ms,
        lateness_ms,
        sealed_retention_ms,
        quarantine_retention_ms,
    })
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn resolve_source(path: &str, s: SourceConfig, p: &mut Problems) -> Option<Source> {
    let before = p.0.len();
    if !valid_name(&s.name) {
        p.add(
            format!("{path}.name"),
            "expected letters, digits, `_` or `-`",
        );
    }
    let mut fields = BTreeMap::new();
    for (name, text) in &s.fields {
        match FieldType::parse(text) {
            Ok(t) => {
                fields.insert(name.clone(), t);
            }
            Err(e) => p.add(format!("{path}.fields.{name}"), e.to_string()),
        }
    }
    let lookup = |f: &str| field_type(&fields, None, f);
    match lookup(&s.event_time) {
        Ok(FieldType::Int) => {}
        Ok(t) => p.add(
            format!("{path}.event_time"),
            format!(
                "expected an int field (epoch ms), `{}` is {t}",
                s.event_time
            ),
        ),
        Err(e) => p.add(format!("{path}.event_time"), e),
    }
    let event_id = s.event_id.to_vec();
    if event_id.is_empty() {
        p.add(format!("{path}.event_id"), "expected at least one field");
    }
    for f in &event_id {
        match lookup(f) {
            Ok(t) if t.is_key() => {}
            Ok(t) => p.add(
                format!("{path}.event_id"),
                format!("expected string, int or bool fields, `{f}` is {t}"),
            ),
            Err(e) => p.add(format!("{path}.event_id"), e),
        }
    }
    for f in &s.required {
        if let Err(e) = lookup(f) {
            p.add(format!("{path}.required"), e);
        }
    }
    let check = s.check.as_ref().and_then(|text| {
        check_filter(text, &format!("{path}.check"), &|f| lookup(f), p).map(|f| (f, text.clone()))
    });
    let max_future_ms = duration(&s.max_future, &format!("{path}.max_future"), p);
    (p.0.len() == before).then_some(Source {
        max_future_ms,
        name: s.name,
        topic: s.topic,
        event_id,
        event_time: s.event_time,
        fields,
        required: s.required,
        check,
    })
}

/// The type at a dotted path; inside `explode`, the element type of that array.
fn field_type(
    fields: &BTreeMap<String, FieldType>,
    explode: Option<&str>,
    path: &str,
) -> Result<FieldType, String> {
    let mut segs = path.split('.');
    let first = segs.next().unwrap_or_default();
    let mut t = fields.get(first).cloned().ok_or_else(|| {
        format!(
            "unknown field `{first}` (declared: {})",
            fields.keys().cloned().collect::<Vec<_>>().join(", ")
        )
    })?;
    if Some(first) == explode {
        t = match t {
            FieldType::Array(inner) => *inner,
            other => return Err(format!("`{first}` is {other}, not an array")),
        };
    }
    for seg in segs {
        t = match &t {
            FieldType::Struct(fs) => fs
                .iter()
                .find(|(n, _)| n == seg)
                .map(|(_, t)| t.clone())
                .ok_or_else(|| format!("`{path}`: no field `{seg}` in {t}"))?,
            FieldType::Array(_) => {
                return Err(format!(
                    "`{path}` goes inside an array: set `explode` to read its elements"
                ));
            }
            other => return Err(format!("`{path}`: {other} has no field `{seg}`")),
        };
    }
    Ok(t)
}

fn check_filter(
    text: &str,
    path: &str,
    lookup: &dyn Fn(&str) -> Result<FieldType, String>,
    p: &mut Problems,
) -> Option<Filter> {
    let f = match Filter::parse(text) {
        Ok(f) => f,
        Err(e) => {
            p.add(path, e.to_string());
            return None;
        }
    };
    let before = p.0.len();
    for (field, lit) in f.paths() {
        match lookup(field) {
            Ok(t) => {
                let ok = match (&t, lit) {
                    (FieldType::String, Literal::Str(_)) | (FieldType::Bool, Literal::Bool(_)) => {
                        true
                    }
                    (FieldType::Int, Literal::Number(n)) => n.parse::<i64>().is_ok(),
                    (FieldType::Float, Literal::Number(_)) => true,
                    (FieldType::Decimal(s), Literal::Number(n)) => {
                        crate::types::parse_decimal(n, *s).is_some()
                    }
                    _ => false,
                };
                if !ok {
                    p.add(
                        path,
                        format!(
                            "`{field}` is {t}; the literal compared with it must be of that type"
                        ),
                    );
                }
            }
            Err(e) => p.add(path, e),
        }
    }
    (p.0.len() == before).then_some(f)
}

fn resolve_view(
    path: &str,
    v: ViewConfig,
    sources: &[Source],
    default_retention_ms: i64,
    p: &mut Problems,
) -> Option<ViewSpec> {
    let before = p.0.len();
    let retention_ms = match &v.retention {
        Some(r) => duration(r, &format!("{path}.retention"), p),
        None => default_retention_ms,
    };
    if !valid_name(&v.name) {
        p.add(
            format!("{path}.name"),
            "expected letters, digits, `_` or `-`",
        );
    }
    let bucket_ms = duration(&v.bucket, &format!("{path}.bucket"), p);
    let Some(src) = sources.iter().find(|s| s.name == v.source) else {
        p.add(
            format!("{path}.source"),
            format!(
                "unknown source `{}` (declared: {})",
                v.source,
                sources
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        );
        return None;
    };
    let explode = v.explode.as_deref();
    if let Some(x) = explode {
        match src.fields.get(x) {
            Some(FieldType::Array(_)) => {}
            Some(t) => p.add(
                format!("{path}.explode"),
                format!("expected an array field, `{x}` is {t}"),
            ),
            None => p.add(format!("{path}.explode"), format!("unknown field `{x}`")),
        }
    }
    let lookup = |f: &str| field_type(&src.fields, explode, f);
    let time_field = v.time.clone().unwrap_or_else(|| src.event_time.clone());
    match lookup(&time_field) {
        Ok(FieldType::Int) => {}
        Ok(t) => p.add(
            format!("{path}.time"),
            format!("expected an int field (epoch ms), `{time_field}` is {t}"),
        ),
        Err(e) => p.add(format!("{path}.time"), e),
    }
    let filter = v
        .filter
        .as_ref()
        .and_then(|t| check_filter(t, &format!("{path}.filter"), &lookup, p));
    let mut out_names = BTreeSet::from(["bucket".to_string()]);
    for (i, d) in v.dimensions.iter().enumerate() {
        let dp = format!("{path}.dimensions[{i}]");
        match lookup(d) {
            Ok(t) if t.is_key() => {}
            Ok(t) => p.add(
                dp.as_str(),
                format!("expected a string, int or bool field, `{d}` is {t}"),
            ),
            Err(e) => p.add(dp.as_str(), e),
        }
        if !out_names.insert(d.clone()) {
            p.add(dp, format!("`{d}` is used twice"));
        }
    }
    if v.measures.is_empty() {
        p.add(format!("{path}.measures"), "expected at least one measure");
    }
    let mut measures = Vec::new();
    for (i, m) in v.measures.iter().enumerate() {
        let mp = format!("{path}.measures[{i}]");
        if !out_names.insert(m.name.clone()) || !valid_name(&m.name) {
            p.add(
                format!("{mp}.name"),
                format!(
                    "expected a unique name of letters, digits or `_`, found `{}`",
                    m.name
                ),
            );
        }
        if let Some(kind) = resolve_measure(&mp, m, &lookup, p) {
            measures.push(MeasureSpec {
                name: m.name.clone(),
                kind,
                field: m.field.clone(),
                by: m.by.clone(),
            });
        }
    }
    (p.0.len() == before).then_some(ViewSpec {
        name: v.name,
        description: v.description,
        source: v.source,
        filter,
        filter_text: v.filter,
        time_field,
        bucket_ms,
        explode: v.explode,
        dimensions: v.dimensions,
        measures,
        retention_ms,
    })
}

fn resolve_measure(
    path: &str,
    m: &MeasureConfig,
    lookup: &dyn Fn(&str) -> Result<FieldType, String>,
    p: &mut Problems,
) -> Option<MeasureKind> {
    let numeric = |f: &Option<String>, key: &str, p: &mut Problems| -> Option<NumType> {
        let Some(f) = f else {
            p.add(
                format!("{path}.{key}"),
                format!("`{}` needs a numeric `{key}`", m.kind),
            );
            return None;
        };
        match lookup(f) {
            Ok(t) => t.num_type().or_else(|| {
                p.add(
                    format!("{path}.{key}"),
                    format!("expected an int, float or decimal field, `{f}` is {t}"),
                );
                None
            }),
            Err(e) => {
                p.add(format!("{path}.{key}"), e);
                None
            }
        }
    };
    let key = |p: &mut Problems| -> Option<()> {
        let Some(f) = &m.field else {
            p.add(
                format!("{path}.field"),
                format!("`{}` needs a `field`", m.kind),
            );
            return None;
        };
        match lookup(f) {
            Ok(t) if t.is_key() => Some(()),
            Ok(t) => {
                p.add(
                    format!("{path}.field"),
                    format!("expected a string, int or bool field, `{f}` is {t}"),
                );
                None
            }
            Err(e) => {
                p.add(format!("{path}.field"), e);
                None
            }
        }
    };
    if m.kind != "top_k" {
        if m.by.is_some() {
            p.add(format!("{path}.by"), "only top_k takes `by`");
        }
        if m.k.is_some() {
            p.add(format!("{path}.k"), "only top_k takes `k`");
        }
    }
    match m.kind.as_str() {
        "count" => {
            if m.field.is_some() {
                p.add(format!("{path}.field"), "count takes no field");
                return None;
            }
            Some(MeasureKind::Count)
        }
        "sum" => numeric(&m.field, "field", p).map(MeasureKind::Sum),
        "min" => numeric(&m.field, "field", p).map(MeasureKind::Min),
        "max" => numeric(&m.field, "field", p).map(MeasureKind::Max),
        "avg" => numeric(&m.field, "field", p).map(MeasureKind::Avg),
        "distinct_count" => key(p).map(|()| MeasureKind::DistinctCount),
        "top_k" => {
            let k = m.k.unwrap_or(10);
            if k == 0 {
                p.add(format!("{path}.k"), "expected at least 1");
            }
            let weight = match &m.by {
                None => Some(NumType::Int),
                by => numeric(by, "by", p),
            };
            let key = key(p);
            match (key, weight) {
                (Some(()), Some(weight)) if k > 0 => Some(MeasureKind::TopK { k, weight }),
                _ => None,
            }
        }
        other => {
            p.add(
                format!("{path}.kind"),
                format!(
                    "expected count, sum, min, max, avg, distinct_count or top_k, found `{other}`"
                ),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
        [[sources]]
        name = "orders"
        topic = "order-events"
        event_id = ["orderId", "orderStatus"]
        event_time = "createTime"
        check = "totalAmount > 0"
        fields = { orderId = "string", orderStatus = "string", createTime = "int", payTime = "int", totalAmount = "decimal(2)", items = "array<struct<productId: string, quantity: int>>" }

        [[views]]
        name = "gmv_per_minute"
        source = "orders"
        filter = "orderStatus == 'paid'"
        time = "payTime"
        bucket = "1m"
        measures = [{ name = "gmv", kind = "sum", field = "totalAmount" }, { name = "orders", kind = "count" }]

        [[views]]
        name = "hot_products_hourly"
        source = "orders"
        explode = "items"
        bucket = "1h"
        measures = [{ name = "top", kind = "top_k", field = "items.productId", by = "items.quantity", k = 10 }]

        [[jobs]]
        name = "seal"
        views = ["gmv_per_minute"]
        schedule = "0 * * * * *"
    "#;

    fn problems(text: &str) -> Vec<String> {
        match load(text, Path::new("t.toml"), &[]) {
            Ok(_) => Vec::new(),
            Err(Error::Invalid { problems, .. }) => {
                problems.iter().map(|p| p.to_string()).collect()
            }
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn loads_a_good_config() {
        let cfg = load(GOOD, Path::new("t.toml"), &[]).unwrap();
        assert_eq!(cfg.views.len(), 2);
        assert_eq!(cfg.views[0].time_field, "payTime");
        assert_eq!(cfg.views[1].bucket_ms, 3_600_000);
        assert_eq!(
            cfg.views[1].measures[0].kind,
            MeasureKind::TopK {
                k: 10,
                weight: NumType::Int
            }
        );
        assert!(cfg.kafka.bootstrap_servers.is_none());
        assert_eq!(cfg.lake.url, "duet-data/lake");
    }

    #[test]
    fn tokens_and_the_pg_address_are_checked() {
        let good = format!(
            "{GOOD}\n[serving]\npg_bind = \"127.0.0.1:5433\"\n[[serving.tokens]]\nname = \"grafana\"\nsha256 = \"{}\"\nviews = [\"gmv_per_minute\"]\n",
            "ab".repeat(32)
        );
        let cfg = load(&good, Path::new("t.toml"), &[]).unwrap();
        assert_eq!(cfg.serving.tokens[0].rate, 100);
        assert_eq!(cfg.serving.pg_bind.as_deref(), Some("127.0.0.1:5433"));
        // a deployment may keep its tokens out of the file: the whole list, hashed, from the
        // environment
        let pg = format!("pbkdf2-sha256$4096${}${}", "0a".repeat(16), "b1".repeat(32));
        assert!(is_pg_password_hash(&pg));
        let env = vec![(
            "DUET_SERVING__TOKENS".to_string(),
            format!(
                "[{{name = \"bi\", pg_password = \"{pg}\", views = [\"gmv_per_minute\"], rate = 5}}]"
            ),
        )];
        let cfg = load(GOOD, Path::new("t.toml"), &env).unwrap();
        let t = &cfg.serving.tokens[0];
        assert_eq!(
            (
                t.name.as_str(),
                t.sha256.as_deref(),
                t.pg_password.as_deref(),
                t.rate
            ),
            ("bi", None, Some(pg.as_str()), 5)
        );
        let bad = format!(
            "{GOOD}\n[serving]\npg_bind = \"here\"\n[[serving.tokens]]\nname = \"a\"\nsha256 = \"xyz\"\nviews = [\"nope\"]\nrate = 0\n[[serving.tokens]]\nname = \"a\"\nsha256 = \"{}\"\n[[serving.tokens]]\nname = \"b\"\npg_password = \"pbkdf2-sha256$1000$00$11\"\n[[serving.tokens]]\nname = \"c\"\n",
            "00".repeat(32)
        );
        let p = problems(&bad);
        for e in [
            "serving.pg_bind: expected an address such as 127.0.0.1:5433, found \"here\"",
            "serving.tokens[0].sha256: expected the token's SHA-256 as 64 hex digits",
            "serving.tokens[0].views: unknown view `nope`",
            "serving.tokens[0].rate: expected requests per second, at least 1",
            "serving.tokens[1].name: expected a name no other token has, found \"a\"",
            "serving.tokens[2].pg_password: expected pbkdf2-sha256$4096$",
            "serving.tokens[3]: expected `sha256` (an HTTP bearer token), `pg_password`",
        ] {
            assert!(
                p.iter().any(|x| x.starts_with(e)),
                "missing {e:?} in {p:#?}"
            );
        }
    }

    #[test]
    fn reports_every_problem_with_its_path() {
        let bad = GOOD
            .replace("bucket = \"1m\"", "bucket = \"1 minute\"")
            .replace("kind = \"count\"", "kind = \"counts\"")
            .replace("by = \"items.quantity\"", "by = \"items.productId\"")
            .replace("orderStatus == 'paid'", "orderStatus == 5")
            .replace("views = [\"gmv_per_minute\"]", "views = [\"nope\"]")
            .replace("0 * * * * *", "every minute")
            + "\n[serving]\nbind = \"nowhere\"\nport = 1\n";
        let p = problems(&bad);
        let expect = [
            "serving.port: unknown field `port`",
            "views[0].bucket: duration `1 minute`",
            "views[0].filter: `orderStatus` is string",
            "views[0].measures[1].kind: expected count, sum",
            "views[1].measures[0].by: expected an int, float or decimal field, `items.productId` is string",
            "jobs[0].views: unknown view `nope`",
            "jobs[0].schedule: expected a cron expression",
        ];
        for e in expect {
            assert!(
                p.iter().any(|x| x.starts_with(e)),
                "missing {e:?} in {p:#?}"
            );
        }
        assert_eq!(p.len(), expect.len(), "{p:#?}");
    }

    #[test]
    fn store_and_retention_settings_are_checked() {
        let cfg = load(
            &(GOOD.to_string()
                + "\n[store]\nurl = \"redis://127.0.0.1:6379/0\"\nretention = \"2d\"\n"),
            Path::new("t.toml"),
            &[],
        )
        .unwrap();
        assert_eq!(cfg.store.url.as_deref(), Some("redis://127.0.0.1:6379/0"));
        assert_eq!(cfg.views[0].retention_ms, 2 * 86_400_000);
        let bad = GOOD.replacen(
            "bucket = \"1m\"",
            "bucket = \"1m\"\nretention = \"forever\"",
            1,
        ) + "\n[store]\nurl = \"localhost:6379\"\nprefix = \"duet{x}\"\n";
        let p = problems(&bad);
        for e in [
            "store.url: expected a Redis URL such as redis://127.0.0.1:6379/0",
            "store.prefix: expected letters, digits",
            "views[0].retention: duration `forever`",
        ] {
            assert!(
                p.iter().any(|x| x.starts_with(e)),
                "missing {e:?} in {p:#?}"
            );
        }
        assert_eq!(p.len(), 3, "{p:#?}");
    }

    #[test]
    fn reports_type_errors_inside_array_elements() {
        let bad = GOOD.replace("topic = \"order-events\"", "topic = 5");
        let p = problems(&bad);
        assert_eq!(p.len(), 1, "{p:#?}");
        assert!(
            p[0].starts_with("sources[0].topic: invalid type: integer `5`"),
            "{p:#?}"
        );
    }

    #[test]
    fn rejects_bad_fields_and_paths() {
        let bad = GOOD
            .replace("totalAmount = \"decimal(2)\"", "totalAmount = \"money\"")
            .replace("field = \"items.productId\"", "field = \"items.nope\"");
        let p = problems(&bad);
        assert!(
            p[0].starts_with("sources[0].fields.totalAmount: field type `money`"),
            "{p:#?}"
        );
        let bad = GOOD.replace("explode = \"items\"", "");
        let p = problems(&bad);
        assert!(p.iter().any(|x| x.contains("set `explode`")), "{p:#?}");
    }

    #[test]
    fn environment_overrides_the_file() {
        let env = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let cfg = load(
            GOOD,
            Path::new("t.toml"),
            &env(&[
                ("DUET_LAKE__URL", "/data/lake"),
                ("DUET_SPEED__BATCH_MAX", "50"),
                ("DUET_LOG", "debug"),
            ]),
        )
        .unwrap();
        assert_eq!(cfg.lake.url, "/data/lake");
        assert_eq!(cfg.speed.batch_max, 50);
        let e = load(
            GOOD,
            Path::new("t.toml"),
            &env(&[
                ("DUET_SPEED__BATCH_MAX", "many"),
                ("DUET_VIEWS__X", "1"),
                ("DUET_LAKE__NOPE", "1"),
            ]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("environment DUET_VIEWS__X: expected DUET_<SECTION>__<KEY>"),
            "{e}"
        );
        assert!(
            e.contains("speed.batch_max: invalid type: string \"many\", expected usize"),
            "{e}"
        );
        assert!(e.contains("lake.nope: unknown field `nope`"), "{e}");
        let e = load(
            GOOD,
            Path::new("t.toml"),
            &env(&[("DUET_LAKE__URL", "s3://bucket/lake")]),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("lake.url: expected a local folder or a file:// URL"),
            "{e}"
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(500))]

        /// Arbitrary text: a config or a list of problems, never a panic.
        #[test]
        fn any_text_loads_or_is_refused(text in "\\PC{0,200}") {
            let _ = load(&text, Path::new("fuzz.toml"), &[]);
        }

        /// The reference config with one span replaced by arbitrary text: reaches the
        /// validation of every section (types, filters, durations, cron, paths).
        #[test]
        fn mutated_configs_load_or_are_refused(
            at in 0usize..2_000,
            len in 0usize..12,
            with in "\\PC{0,12}",
        ) {
            let chars: Vec<char> = GOOD.chars().collect();
            let at = at.min(chars.len());
            let end = (at + len).min(chars.len());
            let text: String = chars[..at]
                .iter()
                .chain(with.chars().collect::<Vec<_>>().iter())
                .chain(chars[end..].iter())
                .collect();
            if let Err(Error::Invalid { problems, .. }) = load(&text, Path::new("fuzz.toml"), &[]) {
                proptest::prop_assert!(!problems.is_empty());
            }
        }

        /// Environment overrides with arbitrary names and values.
        #[test]
        fn any_environment_loads_or_is_refused(key in "[A-Z_]{0,20}", value in "\\PC{0,20}") {
            let env = vec![(format!("DUET_{key}"), value)];
            let _ = load(GOOD, Path::new("fuzz.toml"), &env);
        }
    }

    #[test]
    fn hostile_values_are_refused_with_a_path() {
        for (find, replace, needle) in [
            ("orderStatus == 'paid'", "orderStatus\u{a0}== 'paid'", ""),
            (
                "bucket = \"1m\"",
                "bucket = \"99999999999999d\"",
                "views[0].bucket",
            ),
            (
                "bucket = \"1m\"",
                "bucket = \"1\u{661}m\"",
                "views[0].bucket",
            ),
            (
                "orderStatus == 'paid'",
                "((((orderStatus == 'paid'",
                "views[0].filter",
            ),
            (
                "\"decimal(2)\"",
                "\"decimal(\u{a0}2)\"",
                "sources[0].fields.totalAmount",
            ),
        ] {
            assert!(GOOD.contains(find), "{find}");
            let text = GOOD.replace(find, replace);
            let p = problems(&text);
            if needle.is_empty() {
                assert!(p.is_empty(), "{p:?}");
            } else {
                assert!(p.iter().any(|x| x.starts_with(needle)), "{needle}: {p:?}");
            }
        }
    }

    #[test]
    fn the_error_names_the_file() {
        let e = load("[kafka]\npartitions = 0\n", Path::new("conf/x.toml"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("conf/x.toml has 2 problems:"), "{e}");
        assert!(
            e.contains("conf/x.toml: kafka.partitions: expected at least 1"),
            "{e}"
        );
        let e = load("[kafka\n", Path::new("x.toml"), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid TOML"), "{e}");
    }
}

#[cfg(test)]
mod reference {
    use crate::Config;

    #[test]
    fn the_reference_config_loads() {
        // found at run time: a test binary may be reused from another checkout
        let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
        let path = std::path::Path::new(&dir).join("examples/ecommerce.toml");
        let cfg = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(cfg.sources.len(), 2);
        for v in [
            "orders_per_minute",
            "gmv_per_minute",
            "active_users_hourly",
            "hot_products_hourly",
        ] {
            assert!(cfg.view(v).is_some(), "{v}");
        }
    }
}
