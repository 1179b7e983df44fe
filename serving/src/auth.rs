//! Who may ask what of the serving layer: the clients of `[[serving.tokens]]`, each with an
//! HTTP bearer token (stored as its SHA-256), a PostgreSQL password (stored as its PBKDF2
//! hash, checked by SCRAM-SHA-256 in [`crate::pg`]) or both, the views it may read and a
//! request rate shared by both protocols.
//!
//! A request's token is hashed and compared with every configured hash in constant time
//! (`subtle`), so neither a match nor its position shows in the time taken. With no tokens
//! configured the API and the PostgreSQL port are open, and serving refuses to listen
//! anywhere but on loopback ([`check_exposure`]). `/`, `/health` and `/ready` are always open.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use duet_config::TokenConfig;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::Error;

/// What a request's token allows: its name and the views it may read (`None`: all, and the
/// quarantine and metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The token's name.
    pub name: String,
    /// The views it may read; `None`: every view.
    pub views: Option<BTreeSet<String>>,
}

impl Grant {
    /// Whether the grant covers `view`.
    pub fn allows(&self, view: &str) -> bool {
        self.views.as_ref().is_none_or(|v| v.contains(view))
    }

    /// Refuses unless the grant covers `view`.
    pub fn check(&self, view: &str) -> Result<(), Error> {
        if self.allows(view) {
            Ok(())
        } else {
            Err(Error::Forbidden(format!(
                "token `{}` may not read view `{view}`",
                self.name
            )))
        }
    }

    /// Refuses unless the grant covers every view (the quarantine and metrics need that).
    pub fn check_all(&self, what: &str) -> Result<(), Error> {
        if self.views.is_none() {
            Ok(())
        } else {
            Err(Error::Forbidden(format!(
                "token `{}` may not read {what}: it needs views = [\"*\"]",
                self.name
            )))
        }
    }
}

/// A PostgreSQL password as stored: SCRAM-SHA-256's salt and salted password
/// (PBKDF2-HMAC-SHA-256 of the password, [`PG_ITERATIONS`] rounds). The salted password lets
/// its holder log in: keep the config as secret as the passwords (its `Debug` hides it).
#[derive(Clone, PartialEq, Eq)]
pub struct PgSecret {
    /// The salt, 16 bytes.
    pub salt: Vec<u8>,
    /// The salted password, 32 bytes.
    pub salted: Vec<u8>,
}

/// PBKDF2 rounds of a stored PostgreSQL password (SCRAM's minimum, and PostgreSQL's default).
pub const PG_ITERATIONS: usize = 4096;

/// The `[[serving.tokens]] pg_password` line of `password` with `salt`:
/// `pbkdf2-sha256$4096$<salt hex>$<salted password hex>`.
pub fn pg_password_hash(password: &str, salt: [u8; 16]) -> String {
    let salted = datafusion_postgres::pgwire::api::auth::sasl::scram::gen_salted_password(
        password,
        &salt,
        PG_ITERATIONS,
    );
    format!(
        "pbkdf2-sha256${PG_ITERATIONS}${}${}",
        hex(&salt),
        hex(&salted)
    )
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex_vec(h: &str) -> Option<Vec<u8>> {
    if !h.len().is_multiple_of(2) {
        return None;
    }
    (0..h.len() / 2)
        .map(|i| u8::from_str_radix(h.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

impl std::fmt::Debug for PgSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgSecret(…)")
    }
}

impl PgSecret {
    /// Reads a `pg_password` hash (see [`pg_password_hash`]); `None` if malformed.
    pub fn parse(h: &str) -> Option<PgSecret> {
        if !duet_config::is_pg_password_hash(h) {
            return None;
        }
        let mut parts = h.split('$').skip(2);
        Some(PgSecret {
            salt: unhex_vec(parts.next()?)?,
            salted: unhex_vec(parts.next()?)?,
        })
    }
}

/// One configured client: its credentials, grant and rate bucket.
#[derive(Debug)]
struct Entry {
    /// SHA-256 of its HTTP bearer token, if it has one.
    hash: Option<[u8; 32]>,
    /// Its PostgreSQL password, if it has one.
    pg: Option<PgSecret>,
    grant: Grant,
    rate: f64,
    /// Tokens left and when they were counted (a token bucket of `rate` per second).
    bucket: Mutex<(f64, Instant)>,
}

/// The configured tokens.
#[derive(Debug, Default)]
pub struct Tokens {
    entries: Vec<Entry>,
}

/// SHA-256 of `token`, as 64 lowercase hex digits (what `[[serving.tokens]] sha256` holds).
pub fn hash_hex(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

fn unhex(h: &str) -> Option<[u8; 32]> {
    unhex_vec(h)?.try_into().ok()
}

impl Tokens {
    /// The clients of `[[serving.tokens]]` (validated by the config: a malformed hash counts
    /// as none).
    pub fn new(config: &[TokenConfig]) -> Tokens {
        Tokens {
            entries: config
                .iter()
                .map(|t| {
                    let rate = f64::from(t.rate.max(1));
                    Entry {
                        hash: t
                            .sha256
                            .as_deref()
                            .and_then(|h| unhex(&h.to_ascii_lowercase())),
                        pg: t.pg_password.as_deref().and_then(PgSecret::parse),
                        grant: Grant {
                            name: t.name.clone(),
                            views: (!t.views.iter().any(|v| v == "*"))
                                .then(|| t.views.iter().cloned().collect()),
                        },
                        rate,
                        bucket: Mutex::new((rate, Instant::now())),
                    }
                })
                .collect(),
        }
    }

    /// Whether any token is configured (else the API is open).
    pub fn enabled(&self) -> bool {
        !self.entries.is_empty()
    }

    /// The grant of `token`, checked against every entry in constant time.
    fn find(&self, token: &str) -> Option<&Entry> {
        let hash: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let mut found = None;
        for e in &self.entries {
            if let Some(h) = &e.hash
                && bool::from(h.ct_eq(&hash))
            {
                found = Some(e);
            }
        }
        found
    }

    /// The stored PostgreSQL password of `user`, if it has one.
    pub fn pg_secret(&self, user: &str) -> Option<&PgSecret> {
        self.entries
            .iter()
            .find(|e| e.grant.name == user)
            .and_then(|e| e.pg.as_ref())
    }

    /// Whether any client has a PostgreSQL password.
    pub fn any_pg(&self) -> bool {
        self.entries.iter().any(|e| e.pg.is_some())
    }

    /// What `user` may read, when clients are configured and `user` is one of them.
    pub fn grant_of(&self, user: &str) -> Option<Grant> {
        self.entries
            .iter()
            .find(|e| e.grant.name == user)
            .map(|e| e.grant.clone())
    }

    /// What `user` may read, and one request taken from its rate: `Err` with the reason when
    /// it is unknown or over its rate. With no tokens configured everyone may read all.
    pub fn admit(&self, user: &str) -> Result<Grant, Error> {
        if !self.enabled() {
            return Ok(Grant {
                name: user.to_string(),
                views: None,
            });
        }
        let Some(e) = self.entries.iter().find(|e| e.grant.name == user) else {
            return Err(Error::Unauthorized(format!(
                "`{user}` is not a client of this deployment"
            )));
        };
        e.take().map_err(|wait| Error::TooManyRequests {
            name: e.grant.name.clone(),
            retry_after_s: wait.ceil().max(1.0) as u64,
        })?;
        Ok(e.grant.clone())
    }
}

impl Entry {
    /// Takes one request from the bucket; the seconds to wait when it is empty.
    fn take(&self) -> Result<(), f64> {
        let Ok(mut b) = self.bucket.lock() else {
            return Ok(());
        };
        let now = Instant::now();
        let refilled = (b.0 + now.duration_since(b.1).as_secs_f64() * self.rate).min(self.rate);
        if refilled >= 1.0 {
            *b = (refilled - 1.0, now);
            Ok(())
        } else {
            *b = (refilled, now);
            Err((1.0 - refilled) / self.rate)
        }
    }
}

/// Refuses to serve an open API (no tokens) anywhere but on loopback: the error names the
/// key to change.
pub fn check_exposure(key: &str, addr: &SocketAddr, tokens: &Tokens) -> Result<(), String> {
    if tokens.enabled() || addr.ip().is_loopback() {
        return Ok(());
    }
    Err(format!(
        "{key} = {addr} is not a loopback address and no [[serving.tokens]] are configured: \
         add tokens (`duet token new`) or bind to 127.0.0.1"
    ))
}

/// Axum middleware: with tokens configured, every route but `/`, `/health` and `/ready` needs
/// `Authorization: Bearer <token>` (401 without, 429 over the token's rate); the grant goes
/// into the request's extensions for the handlers' view checks.
pub async fn authorize(
    State(tokens): State<std::sync::Arc<Tokens>>,
    mut req: Request,
    next: Next,
) -> Response {
    // the page at `/` is static: its script sends the token with every request
    if !tokens.enabled() || matches!(req.uri().path(), "/" | "/health" | "/ready") {
        return next.run(req).await;
    }
    let token = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(entry) = token.and_then(|t| tokens.find(t)) else {
        return Error::Unauthorized(
            if token.is_some() {
                "the bearer token is not one of this deployment's"
            } else {
                "this API needs `Authorization: Bearer <token>`"
            }
            .to_string(),
        )
        .into_response();
    };
    if let Err(wait) = entry.take() {
        return Error::TooManyRequests {
            name: entry.grant.name.clone(),
            retry_after_s: wait.ceil().max(1.0) as u64,
        }
        .into_response();
    }
    req.extensions_mut().insert(entry.grant.clone());
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(name: &str, secret: &str, views: &[&str], rate: u32) -> TokenConfig {
        TokenConfig {
            name: name.into(),
            sha256: Some(hash_hex(secret)),
            pg_password: None,
            views: views.iter().map(|v| v.to_string()).collect(),
            rate,
        }
    }

    #[test]
    fn tokens_are_found_by_hash_and_rate_limited() {
        let t = Tokens::new(&[
            token("a", "s3cret", &["*"], 2),
            token("b", "other", &["gmv"], 100),
        ]);
        assert_eq!(t.find("s3cret").unwrap().grant.views, None);
        let b = t.find("other").unwrap();
        assert!(b.grant.allows("gmv") && !b.grant.allows("orders"));
        assert!(b.grant.check_all("the quarantine").is_err());
        assert!(t.find("nope").is_none());
        let a = t.find("s3cret").unwrap();
        assert!(a.take().is_ok() && a.take().is_ok());
        let wait = a.take().unwrap_err();
        assert!(wait > 0.0 && wait <= 0.5, "{wait}");
        assert_eq!(
            hash_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn an_open_api_stays_on_loopback() {
        let open = Tokens::default();
        assert!(
            check_exposure("[serving] bind", &"127.0.0.1:8080".parse().unwrap(), &open).is_ok()
        );
        assert!(check_exposure("[serving] bind", &"[::1]:8080".parse().unwrap(), &open).is_ok());
        let e =
            check_exposure("[serving] bind", &"0.0.0.0:8080".parse().unwrap(), &open).unwrap_err();
        assert!(
            e.starts_with("[serving] bind = 0.0.0.0:8080 is not a loopback address"),
            "{e}"
        );
        let closed = Tokens::new(&[token("a", "x", &["*"], 1)]);
        assert!(
            check_exposure("[serving] bind", &"0.0.0.0:8080".parse().unwrap(), &closed).is_ok()
        );
    }
}
