//! The serving layer: one query API over both layers. Per bucket, sealed buckets come from
//! the batch table and open ones from the speed store, never both; every row says which.
//! Read-only: serving never writes state.

pub mod auth;
pub mod error;
pub mod health;
pub mod http;
pub mod metrics;
pub mod openapi;
pub mod pg;
pub mod query;
pub mod request;
pub mod rollup;
pub mod sql_limits;
pub mod table;
#[cfg(test)]
mod testkit;
pub mod tls;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

pub use error::{Error, Result};
pub use http::{AppState, router};

/// Serves the API on `listener` until `shutdown` turns true: HTTPS when `tls` is given
/// ([`tls::TlsListener`]), else plain HTTP.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    tls: Option<TlsAcceptor>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let stop = async move {
        let _ = shutdown.wait_for(|s| *s).await;
    };
    let served = match tls {
        Some(acceptor) => {
            let listener =
                tls::TlsListener::new(listener, acceptor).map_err(|source| Error::Serve {
                    addr: addr.clone(),
                    source,
                })?;
            axum::serve(listener, router(state))
                .with_graceful_shutdown(stop)
                .await
        }
        None => {
            axum::serve(listener, router(state))
                .with_graceful_shutdown(stop)
                .await
        }
    };
    served.map_err(|source| Error::Serve { addr, source })
}
