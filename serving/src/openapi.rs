//! The OpenAPI 3.1 description of the HTTP API, served at `/v1/openapi.json`.

use serde_json::{Value, json};

fn error_response(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

/// The document.
pub fn document() -> Value {
    let time_param = |name: &str, what: &str| {
        json!({"name": name, "in": "query", "required": false, "description": what,
               "schema": {"type": "string", "examples": ["2026-11-25T10:00:00Z", "1796032800000"]}})
    };
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Duet serving API", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Views kept by a speed and a batch layer, merged per bucket: sealed buckets from batch, open ones from speed."},
        "paths": {
            "/health": {"get": {"summary": "Liveness", "responses": {"200": {"description": "ok",
                "content": {"application/json": {"schema": {"type": "object", "properties": {"status": {"const": "ok"}}}}}}}}},
            "/v1/openapi.json": {"get": {"summary": "This document", "responses": {"200": {"description": "OpenAPI 3.1"}}}},
            "/metrics": {"get": {"summary": "Prometheus metrics: speed-layer totals and source watermarks",
                "responses": {"200": {"description": "Prometheus text format 0.0.4", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
            "/v1/views": {"get": {"summary": "The declared views and their specs", "responses": {
                "200": {"description": "views", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Views"}}}}}}},
            "/v1/views/{view}": {"get": {
                "summary": "Rows of a view per bucket and dimensions, merged from batch and speed, with provenance",
                "parameters": [
                    {"name": "view", "in": "path", "required": true, "schema": {"type": "string"}},
                    time_param("from", "first bucket (RFC 3339 or epoch ms); default 60 buckets before `to`"),
                    time_param("to", "end, exclusive (RFC 3339 or epoch ms); default the end of the current bucket"),
                ],
                "responses": {
                    "200": {"description": "rows", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ViewAnswer"}}}},
                    "400": error_response("bad parameter"),
                    "404": error_response("unknown view"),
                    "500": error_response("internal error"),
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
            "ViewAnswer": {"type": "object", "required": ["view", "from", "to", "bucket", "rows", "provenance"], "properties": {
                "view": {"type": "string"}, "from": {"type": "string"}, "to": {"type": "string"}, "bucket": {"type": "string"},
                "rows": {"type": "array", "items": {"type": "object", "required": ["bucket", "bucket_ms", "dims", "values", "source"], "properties": {
                    "bucket": {"type": "string", "format": "date-time"}, "bucket_ms": {"type": "integer"},
                    "dims": {"type": "object", "additionalProperties": {"type": ["string", "null"]}},
                    "values": {"type": "object"},
                    "source": {"enum": ["batch", "speed"]},
                    "batch_version": {"type": ["integer", "null"]}}}},
                "provenance": {"type": "object", "properties": {
                    "batch_version": {"type": ["integer", "null"]},
                    "sealed": {"type": "array", "items": {"type": "object", "properties": {"from": {"type": "string"}, "to": {"type": "string"}}}},
                    "speed_watermark": {"type": ["string", "null"]},
                    "freshness_ms": {"type": ["integer", "null"]}}}}},
            "Quarantine": {"type": "object", "properties": {"quarantine": {"type": "array", "items": {"type": "object", "properties": {
                "source": {"type": "string"}, "topic": {"type": "string"}, "partition": {"type": "integer"},
                "offset": {"type": "integer"}, "reason": {"type": "string"}, "payload": {"type": "string"},
                "at": {"type": "string"}}}}}},
        }},
    })
}
