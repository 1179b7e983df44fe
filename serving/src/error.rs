//! Errors of the serving layer, and their one mapping to HTTP.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Errors of the `duet-serving` crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No such view.
    #[error("unknown view `{0}`")]
    UnknownView(String),
    /// A query parameter is malformed.
    #[error("query parameter `{name}`: {message}")]
    BadParam {
        /// Parameter.
        name: &'static str,
        /// What is wrong.
        message: String,
    },
    /// A query parameter the endpoint does not take.
    #[error("unknown query parameter `{name}` (expected {expected})")]
    UnknownParam {
        /// The parameter.
        name: String,
        /// The parameters the endpoint takes.
        expected: &'static str,
    },
    /// The query string could not be read at all.
    #[error("malformed query string: {0}")]
    BadQuery(String),
    /// The request carries no valid bearer token.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// The token may not read what was asked.
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// The token made more requests than its rate allows.
    #[error("token `{name}` is over its request rate; retry in {retry_after_s} s")]
    TooManyRequests {
        /// The token's name.
        name: String,
        /// Seconds until a request is allowed again.
        retry_after_s: u64,
    },
    /// The answer would be larger than a query may ask for.
    #[error("{0}")]
    TooCostly(String),
    /// The request is larger than a request may be.
    #[error("{0}")]
    TooLarge(String),
    /// The query took longer than a query may take.
    #[error("the query took longer than {0} s; narrow the range or group by fewer dimensions")]
    Timeout(u64),
    /// No such route.
    #[error("no route for {0}")]
    NotFound(String),
    /// Reading the lake failed.
    #[error(transparent)]
    Lake(Box<duet_lake::Error>),
    /// Reading the speed store failed.
    #[error(transparent)]
    Store(Box<duet_speed::Error>),
    /// Two of a view's states could not be merged (they disagree on a measure's kind).
    #[error("view `{view}`: states could not be merged: {source}")]
    Merge {
        /// View name.
        view: String,
        /// The algebra error.
        #[source]
        source: duet_config::Error,
    },
    /// An answer could not be encoded in its format.
    #[error("encoding the answer as {format}: {source}")]
    Encode {
        /// The format (`csv`, `arrow`).
        format: &'static str,
        /// Arrow's error.
        #[source]
        source: arrow::error::ArrowError,
    },
    /// The SQL session could not be set up.
    #[error("SQL session: {0}")]
    Sql(#[source] Box<datafusion::error::DataFusionError>),
    /// The TLS certificate or key could not be read or used.
    #[error("TLS: {key} = {file}: {reason}")]
    Tls {
        /// The config key that named the file (`serving.tls.cert`, `serving.tls.key`).
        key: &'static str,
        /// The file.
        file: std::path::PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The server could not bind or serve.
    #[error("http server on {addr}: {source}")]
    Serve {
        /// Address.
        addr: String,
        /// I/O error.
        #[source]
        source: std::io::Error,
    },
}

impl From<duet_lake::Error> for Error {
    fn from(e: duet_lake::Error) -> Self {
        Error::Lake(Box::new(e))
    }
}

impl From<duet_speed::Error> for Error {
    fn from(e: duet_speed::Error) -> Self {
        Error::Store(Box::new(e))
    }
}

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, code) = match &self {
            Error::UnknownView(_) => (StatusCode::NOT_FOUND, "unknown_view"),
            Error::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Error::BadParam { .. } | Error::UnknownParam { .. } | Error::BadQuery(_) => {
                (StatusCode::BAD_REQUEST, "bad_request")
            }
            Error::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Error::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            Error::TooManyRequests { .. } => (StatusCode::TOO_MANY_REQUESTS, "rate_limited"),
            Error::TooCostly(_) => (StatusCode::BAD_REQUEST, "too_costly"),
            Error::TooLarge(_) => (StatusCode::URI_TOO_LONG, "too_large"),
            Error::Timeout(_) => (StatusCode::SERVICE_UNAVAILABLE, "timeout"),
            Error::Lake(_)
            | Error::Store(_)
            | Error::Merge { .. }
            | Error::Encode { .. }
            | Error::Sql(_)
            | Error::Tls { .. }
            | Error::Serve { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        let message = if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %self, "Request failed.");
            "internal error; see the server log".to_string()
        } else {
            self.to_string()
        };
        let mut res = (
            status,
            axum::Json(json!({"error": {"code": code, "message": message}})),
        )
            .into_response();
        let headers = res.headers_mut();
        match &self {
            Error::Unauthorized(_) => {
                headers.insert(
                    axum::http::header::WWW_AUTHENTICATE,
                    axum::http::HeaderValue::from_static("Bearer realm=\"duet\""),
                );
            }
            Error::TooManyRequests { retry_after_s, .. } => {
                headers.insert(axum::http::header::RETRY_AFTER, (*retry_after_s).into());
            }
            _ => {}
        }
        res
    }
}
