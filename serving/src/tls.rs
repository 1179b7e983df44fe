//! Optional TLS on both serving ports (`[serving.tls] cert`, `key`), with rustls and its
//! `ring` provider.
//!
//! The PostgreSQL port offers TLS to clients that ask for it (`sslmode=require`), as
//! PostgreSQL does. The HTTP port speaks only HTTPS once TLS is configured: [`TlsListener`]
//! accepts TCP connections and finishes each handshake in a task of its own, so a client that
//! stalls in its handshake delays no other (a handshake has [`HANDSHAKE_TIMEOUT`]).

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::server::TlsStream;

use crate::error::{Error, Result};

/// Longest a client may take over its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes finished but not yet taken by the server.
const QUEUE: usize = 256;

/// The acceptor of the PEM certificate chain `cert` and private key `key` (PKCS#8, PKCS#1 or
/// SEC1). Errors name the config key and the file.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor> {
    let bad = |k: &'static str, file: &Path, reason: String| Error::Tls {
        key: k,
        file: file.to_path_buf(),
        reason,
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad("serving.tls.cert", cert, e.to_string()))?
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| bad("serving.tls.cert", cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(bad(
            "serving.tls.cert",
            cert,
            "expected a PEM certificate (-----BEGIN CERTIFICATE-----), found none".into(),
        ));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        bad(
            "serving.tls.key",
            key,
            format!("expected a PEM private key: {e}"),
        )
    })?;
    let config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| bad("serving.tls.cert", cert, e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| {
            bad(
                "serving.tls.key",
                key,
                format!("does not fit the certificate: {e}"),
            )
        })?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A listener whose connections are TLS streams, for `axum::serve`.
#[derive(Debug)]
pub struct TlsListener {
    local: SocketAddr,
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    accepting: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    /// Accepts on `listener`, handshaking with `acceptor`. Failed handshakes are logged at
    /// debug level and dropped.
    pub fn new(listener: TcpListener, acceptor: TlsAcceptor) -> io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let (tx, ready) = mpsc::channel(QUEUE);
        let accepting = tokio::spawn(async move {
            loop {
                let (socket, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(%local, error = %e, "Accepting an HTTPS connection failed.");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let (acceptor, ready) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(socket)).await {
                        Ok(Ok(stream)) => {
                            let _ = ready.send((stream, peer)).await;
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "A TLS handshake failed.");
                        }
                        Err(_) => tracing::debug!(%peer, "A TLS handshake timed out."),
                    }
                });
                if tx.is_closed() {
                    return;
                }
            }
        });
        Ok(TlsListener {
            local,
            ready,
            accepting,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // the accepting task is gone only once the listener is dropped
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{certificate, fixture};

    /// `curl`'s exit code, status line and body for `url`, trusting `cert`.
    async fn curl(url: String, cert: &Path) -> (i32, String) {
        let cert = cert.to_path_buf();
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new("curl")
                .args(["-sS", "--max-time", "10", "--cacert"])
                .arg(&cert)
                .arg(&url)
                .output()
                .expect("curl runs")
        })
        .await
        .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    }

    #[tokio::test]
    async fn https_serves_the_api_and_a_stalled_handshake_delays_no_one() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = certificate(dir.path());
        let (state, _) = fixture(dir.path()).await;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (_stop, rx) = tokio::sync::watch::channel(false);
        let acceptor = acceptor(&cert, &key).unwrap();
        tokio::spawn(crate::serve(listener, state, Some(acceptor), rx));
        // a client that connects and never says hello
        let _stalled = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let (code, out) = curl(
            format!("https://localhost:{port}/v1/views/gmv?from=0&to=7200000&grain=2h"),
            &cert,
        )
        .await;
        assert_eq!(code, 0, "{out}");
        assert!(out.contains("\"city\":\"Shanghai\"},\"source\":\"speed\",\"values\":{\"gmv\":\"15.10\",\"n\":25}"), "{out}");
        // plain HTTP gets no answer from an HTTPS port
        let (code, out) = curl(format!("http://127.0.0.1:{port}/health"), &cert).await;
        assert_ne!(code, 0, "{out}");
        // and a client that does not trust the certificate stops at the handshake
        let elsewhere = dir.path().join("other");
        std::fs::create_dir(&elsewhere).unwrap();
        let (other, _) = certificate(&elsewhere);
        let (code, out) = curl(format!("https://localhost:{port}/health"), &other).await;
        assert_eq!(code, 60, "{out}"); // curl: peer certificate cannot be authenticated
    }

    fn refused(cert: &Path, key: &Path) -> String {
        match acceptor(cert, key) {
            Ok(_) => panic!("{} and {} were accepted", cert.display(), key.display()),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn unreadable_or_mismatched_files_are_named_with_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = certificate(dir.path());
        let missing = dir.path().join("missing.pem");
        let e = refused(&missing, &key);
        assert!(e.starts_with("TLS: serving.tls.cert = "), "{e}");
        assert!(e.contains("missing.pem"), "{e}");
        let e = refused(&key, &key);
        assert!(e.contains("expected a PEM certificate"), "{e}");
        let e = refused(&cert, &cert);
        assert!(e.starts_with("TLS: serving.tls.key = "), "{e}");
        let elsewhere = dir.path().join("other");
        std::fs::create_dir(&elsewhere).unwrap();
        let (_, other_key) = certificate(&elsewhere);
        let e = refused(&cert, &other_key);
        assert!(e.contains("does not fit the certificate"), "{e}");
    }
}
