//! The OpenAPI 3.1 description of the HTTP API, served at `/v1/openapi.json`.

use serde_json::{Value, json};

fn error_response(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

/// The document: every path, and on the routes that need a token (all but `/`, `/health`,
/// `/ready`) the answers every such route may give: 401, 403, 414, 429 and 503.
pub fn document() -> Value {
    let mut doc = paths();
    let common = [
        (
            "401",
            "no bearer token, or not one of this deployment's (when tokens are configured)",
        ),
        ("403", "the token may not read this view"),
        ("414", "the path and query are longer than 8 KiB"),
        (
            "429",
            "the token is over its request rate; Retry-After says when to come back",
        ),
        ("503", "the answer took longer than 30 s"),
    ];
    if let Some(paths) = doc["paths"].as_object_mut() {
        for (path, item) in paths.iter_mut() {
            if matches!(path.as_str(), "/" | "/health" | "/ready") {
                continue;
            }
            item["get"]["security"] = json!([{"bearer": []}]);
            for (code, what) in common {
                item["get"]["responses"][code] = error_response(what);
            }
        }
    }
    doc["components"]["securitySchemes"] = json!({"bearer": {"type": "http", "scheme": "bearer",
        "description": "a token of [[serving.tokens]] (`duet token new`); not needed when none are configured (the API then listens on loopback only)"}});
    doc
}

fn paths() -> Value {
    let time_param = |name: &str, what: &str| {
        json!({"name": name, "in": "query", "required": false, "description": what,
               "schema": {"type": "string", "examples": ["2026-11-25T10:00:00Z", "1796032800000"]}})
    };
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Duet serving API", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Views kept by a speed and a batch layer, merged per bucket: sealed buckets from batch, open ones from speed."},
        "paths": {
            "/": {"get": {"summary": "The reference deployment's live page: orders, GMV, active users, hot products, freshness, sealed-until (HTML; data from this API, a token from the page's #token= fragment)",
                "responses": {"200": {"description": "the page", "content": {"text/html": {"schema": {"type": "string"}}}}}}},
            "/health": {"get": {"summary": "Liveness", "responses": {"200": {"description": "ok",
                "content": {"application/json": {"schema": {"type": "object", "properties": {"status": {"const": "ok"}}}}}}}}},
            "/ready": {"get": {"summary": "Readiness: 200 when the speed store and the lake's seal ledger can be read, else 503 with the reason",
                "responses": {"200": {"description": "ready", "content": {"application/json": {"schema": {"type": "object", "properties": {"ready": {"const": true}}}}}},
                              "503": {"description": "not ready", "content": {"application/json": {"schema": {"type": "object", "properties": {
                                  "ready": {"const": false}, "store": {"type": ["string", "null"]}, "lake": {"type": ["string", "null"]}}}}}}}}},
            "/v1/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3.1"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics: speed-layer totals, parts, seal checks, source watermarks, the last complete bucket of views without dimensions, serving's requests and rows",
                "responses": {"200": {"description": "Prometheus text format 0.0.4", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/v1/views": {"get": {"summary": "The declared views and their specs", "responses": {
                "200": {"description": "views", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Views"}}}}}}},
            "/v1/views/{view}": {"get": {
                "summary": "Rows of a view merged from batch and speed, rolled up to a grain, grouped, filtered, ordered and paged, with provenance",
                "parameters": [
                    {"name": "view", "in": "path", "required": true, "schema": {"type": "string"}},
                    time_param("from", "first bucket (RFC 3339 or epoch ms); default 60 buckets before `to`"),
                    time_param("to", "end, exclusive (RFC 3339 or epoch ms); default the end of the current bucket"),
                    {"name": "layer", "in": "query", "required": false, "description": "`merged` (default) or `speed`: every bucket as the speed layer holds it, sealed or not",
                     "schema": {"enum": ["merged", "speed"]}},
                    {"name": "grain", "in": "query", "required": false,
                     "description": "output bucket width, a whole multiple of the view's bucket (`1h`, `1d`); states are merged with the measure algebra (a day's distinct count is merged from its minutes' states, not summed)",
                     "schema": {"type": "string", "examples": ["1h", "1d"]}},
                    {"name": "group_by", "in": "query", "required": false,
                     "description": "comma-separated dimensions to keep (the others are merged away); empty for totals; default all",
                     "schema": {"type": "string", "examples": ["city", ""]}},
                    {"name": "where", "in": "query", "required": false,
                     "description": "SQL condition on dimensions: `=`, `<>` and `IN` with quoted values, joined by AND",
                     "schema": {"type": "string", "examples": ["city = 'Hangzhou' AND channel IN ('app', 'web')"]}},
                    {"name": "order", "in": "query", "required": false,
                     "description": "`bucket` (default), a measure or a grouped dimension, then `asc` or `desc` (or a leading `-`); ties by bucket, then dimensions; nulls last ascending, first descending",
                     "schema": {"type": "string", "examples": ["gmv desc", "-bucket"]}},
                    {"name": "limit", "in": "query", "required": false, "description": "rows per answer; more rows are reached with `cursor`",
                     "schema": {"type": "integer", "minimum": 1, "maximum": crate::request::MAX_LIMIT, "default": crate::request::DEFAULT_LIMIT}},
                    {"name": "cursor", "in": "query", "required": false,
                     "description": "the `next_cursor` of the previous page, with every other parameter as on the first page but `limit` and `format`",
                     "schema": {"type": "string"}},
                    {"name": "format", "in": "query", "required": false,
                     "description": "answer format; without it the `Accept` header decides (text/csv, application/vnd.apache.arrow.stream), else JSON",
                     "schema": {"enum": ["json", "csv", "arrow"]}},
                ],
                "responses": {
                    "200": {"description": "rows; provenance also in headers (and, for Arrow, in the schema's metadata as duet.batch.version, …)",
                        "headers": {
                            "Duet-Batch-Version": {"description": "version of the view's batch table read", "schema": {"type": "integer"}},
                            "Duet-Sealed-Until": {"description": "end of the view's last sealed range", "schema": {"type": "string", "format": "date-time"}},
                            "Duet-Speed-Watermark": {"description": "highest event time the speed layer applied", "schema": {"type": "string", "format": "date-time"}},
                            "Duet-Freshness-Ms": {"description": "ms since the speed layer's last commit", "schema": {"type": "integer"}},
                            "Duet-Next-Cursor": {"description": "cursor of the next page, when rows follow", "schema": {"type": "string"}},
                        },
                        "content": {
                            "application/json": {"schema": {"$ref": "#/components/schemas/ViewAnswer"}},
                            "text/csv": {"schema": {"type": "string"},
                                "description": "header row: bucket, the grouped dimensions, the measures, _source, _batch_version"},
                            "application/vnd.apache.arrow.stream": {"schema": {"type": "string", "format": "binary"}},
                        }},
                    "400": error_response("bad parameter"),
                    "404": error_response("unknown view"),
                    "500": error_response("internal error"),
                }}},
            "/v1/views/{view}/live": {"get": {
                "summary": "Server-Sent Events: the view's newest buckets, as an event `rows` (the JSON answer) whenever they change",
                "parameters": [
                    {"name": "view", "in": "path", "required": true, "schema": {"type": "string"}},
                    {"name": "grain", "in": "query", "required": false, "description": "as for /v1/views/{view}", "schema": {"type": "string"}},
                    {"name": "group_by", "in": "query", "required": false, "description": "as for /v1/views/{view}", "schema": {"type": "string"}},
                    {"name": "where", "in": "query", "required": false, "description": "as for /v1/views/{view}", "schema": {"type": "string"}},
                    {"name": "buckets", "in": "query", "required": false, "description": "output buckets up to the current one",
                     "schema": {"type": "integer", "minimum": 1, "maximum": 1440, "default": 5}},
                    {"name": "every", "in": "query", "required": false, "description": "how often the answer is checked for changes (100ms to 1h)",
                     "schema": {"type": "string", "default": "1s"}},
                ],
                "responses": {
                    "200": {"description": "an event stream: `event: rows` with a ViewAnswer as data; `event: error` when a query failed (the stream goes on)",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}}},
                    "400": error_response("bad parameter"),
                    "404": error_response("unknown view"),
                }}},
            "/v1/quarantine": {"get": {
                "summary": "The newest quarantined (malformed) events",
                "parameters": [{"name": "limit", "in": "query", "required": false,
                                "schema": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 100}}],
                "responses": {
                    "200": {"description": "records", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Quarantine"}}}},
                    "400": error_response("bad parameter"),
                }}},
        },
        "components": {"schemas": {
            "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "object",
                "required": ["code", "message"], "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}}},
            "Views": {"type": "object", "properties": {"views": {"type": "array", "items": {"type": "object", "properties": {
                "name": {"type": "string"}, "description": {"type": ["string", "null"]}, "source": {"type": "string"},
                "filter": {"type": ["string", "null"]}, "time": {"type": "string"}, "bucket": {"type": "string"},
                "bucket_ms": {"type": "integer"}, "explode": {"type": ["string", "null"]},
                "dimensions": {"type": "array", "items": {"type": "string"}},
                "measures": {"type": "array", "items": {"type": "object", "properties": {
                    "name": {"type": "string"}, "kind": {"enum": ["count", "sum", "min", "max", "avg", "distinct_count", "top_k"]},
                    "field": {"type": ["string", "null"]}, "by": {"type": ["string", "null"]}}}}}}}}},
            "ViewAnswer": {"type": "object", "required": ["view", "from", "to", "bucket", "grain", "dimensions", "rows", "next_cursor", "provenance"], "properties": {
                "view": {"type": "string"}, "from": {"type": "string"}, "to": {"type": "string"}, "bucket": {"type": "string"},
                "grain": {"type": "string"}, "dimensions": {"type": "array", "items": {"type": "string"}},
                "next_cursor": {"type": ["string", "null"]},
                "default_range": {"type": "string"}, "hint": {"type": "string"},
                "rows": {"type": "array", "items": {"type": "object", "required": ["bucket", "bucket_ms", "dims", "values", "source"], "properties": {
                    "bucket": {"type": "string", "format": "date-time"}, "bucket_ms": {"type": "integer"},
                    "dims": {"type": "object", "additionalProperties": {"type": ["string", "null"]}},
                    "values": {"type": "object"},
                    "source": {"enum": ["batch", "speed", "mixed"]},
                    "batch_version": {"type": ["integer", "null"]},
                    "late_pending": {"type": "integer"},
                    "errors": {"type": "object", "additionalProperties": {"type": "string"}}}}},
                "provenance": {"type": "object", "properties": {
                    "batch_version": {"type": ["integer", "null"]},
                    "sealed": {"type": "array", "items": {"type": "object", "properties": {"from": {"type": "string"}, "to": {"type": "string"}}}},
                    "sealed_until": {"type": ["string", "null"]},
                    "late_pending": {"type": "array", "items": {"type": "object", "properties": {"bucket": {"type": "string"}, "events": {"type": "integer"}}}},
                    "speed_watermark": {"type": ["string", "null"]},
                    "event_time_lag_ms": {"type": ["integer", "null"]},
                    "last_applied": {"type": ["string", "null"]},
                    "freshness_ms": {"type": ["integer", "null"]}}}}},
            "Quarantine": {"type": "object", "properties": {"quarantine": {"type": "array", "items": {"type": "object", "properties": {
                "source": {"type": "string"}, "topic": {"type": "string"}, "partition": {"type": "integer"},
                "offset": {"type": "integer"}, "reason": {"type": "string"}, "payload": {"type": "string"},
                "at": {"type": "string"}}}}}},
        }},
    })
}
