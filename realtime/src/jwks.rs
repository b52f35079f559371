//! Keys of an identity provider, from its JWKS endpoint (`JWT_JWKS_URL`), for RS256 and
//! ES256 tokens.
//!
//! The set is fetched when first needed and cached. It is fetched again when a token
//! names a key id the cache lacks (the provider rotated its keys) — at most once per
//! `JWT_JWKS_MIN_REFRESH_SECONDS`, however many such tokens arrive, so forged key ids
//! cannot turn into a flood of requests to the provider — and when the cache is older
//! than `JWT_JWKS_REFRESH_SECONDS` (a key the provider withdrew stops being accepted).
//! One fetch at a time; a failed fetch keeps the keys cached before it.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::Jwk;

const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_BODY: usize = 1024 * 1024;

type Https = hyper_rustls::HttpsConnector<HttpConnector>;

/// A JWKS endpoint and the keys last read from it.
pub struct JwksSource {
    url: hyper::Uri,
    client: Client<Https, Empty<Bytes>>,
    keys: RwLock<Arc<Vec<Jwk>>>,
    /// When the keys were last fetched (or a fetch last failed).
    fetched: Mutex<Option<Instant>>,
    single_flight: tokio::sync::Mutex<()>,
    min_refresh: Duration,
    max_age: Duration,
    fetches: std::sync::atomic::AtomicU64,
    /// A background refresh is under way.
    background: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for JwksSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwksSource")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl JwksSource {
    pub fn new(url: &str, min_refresh: Duration, max_age: Duration) -> anyhow::Result<Self> {
        let url: hyper::Uri = url
            .parse()
            .map_err(|e| anyhow::anyhow!("JWT_JWKS_URL is not a URL: {e}"))?;
        if !matches!(url.scheme_str(), Some("https" | "http")) {
            anyhow::bail!("JWT_JWKS_URL must be an https:// (or http://) URL");
        }
        if min_refresh < Duration::from_secs(1) {
            anyhow::bail!("JWT_JWKS_MIN_REFRESH_SECONDS must be at least 1");
        }
        let loopback = matches!(
            url.host(),
            Some("127.0.0.1" | "localhost" | "[::1]" | "::1")
        );
        if url.scheme_str() == Some("http") && !loopback {
            // In-cluster identity providers are often plain HTTP behind a Service; whoever
            // can change that traffic can mint tokens.
            tracing::warn!(url = %url, "JWT_JWKS_URL is plain http: keys can be tampered with on the way; prefer https");
        }
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(|e| anyhow::anyhow!("no TLS root certificates for JWT_JWKS_URL: {e}"))?
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Self {
            url,
            client: Client::builder(TokioExecutor::new()).build(https),
            keys: RwLock::new(Arc::new(Vec::new())),
            fetched: Mutex::new(None),
            single_flight: tokio::sync::Mutex::new(()),
            min_refresh,
            max_age,
            fetches: std::sync::atomic::AtomicU64::new(0),
            background: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The keys cached now.
    pub fn keys(&self) -> Arc<Vec<Jwk>> {
        self.keys
            .read()
            .map(|k| k.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Fetches made so far (tests, metrics).
    pub fn fetches(&self) -> u64 {
        self.fetches.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn last_fetch(&self) -> Option<Instant> {
        *self.fetched.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True when the cache is older than `JWT_JWKS_REFRESH_SECONDS` (or empty and never
    /// fetched).
    pub fn stale(&self) -> bool {
        self.last_fetch()
            .is_none_or(|at| at.elapsed() >= self.max_age)
    }

    /// Fetches the keys again unless that was done less than `JWT_JWKS_MIN_REFRESH_SECONDS`
    /// ago; true when the keys were fetched by this call or a concurrent one.
    pub async fn refresh(&self) -> bool {
        let asked = Instant::now();
        let _guard = self.single_flight.lock().await;
        if let Some(at) = self.last_fetch() {
            if at >= asked {
                return true; // another caller fetched while this one waited
            }
            if at.elapsed() < self.min_refresh {
                return false;
            }
        }
        // The attempt counts from its start: a request cancelled mid-fetch (its client
        // gone) has still used the slot, so dropped requests cannot multiply fetches.
        *self.fetched.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        let result = self.fetch().await;
        self.fetches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match result {
            Ok(keys) => {
                tracing::info!(keys = keys.len(), "JWKS keys fetched");
                *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(keys);
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, url = %self.url, "JWKS fetch failed; keeping the cached keys");
                false
            }
        }
    }

    /// Refreshes stale keys without making the caller wait: tokens are checked against
    /// the cached keys meanwhile (one background fetch at a time).
    pub fn refresh_in_background(self: &Arc<Self>) {
        if self
            .background
            .swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            me.refresh().await;
            me.background
                .store(false, std::sync::atomic::Ordering::Release);
        });
    }

    async fn fetch(&self) -> anyhow::Result<Vec<Jwk>> {
        let request = hyper::Request::get(self.url.clone())
            .header(hyper::header::ACCEPT, "application/json")
            .body(Empty::new())?;
        let response = tokio::time::timeout(FETCH_TIMEOUT, self.client.request(request))
            .await
            .map_err(|_| anyhow::anyhow!("no answer within {FETCH_TIMEOUT:?}"))??;
        if !response.status().is_success() {
            anyhow::bail!("answered {}", response.status());
        }
        let body = tokio::time::timeout(
            FETCH_TIMEOUT,
            Limited::new(response.into_body(), MAX_BODY).collect(),
        )
        .await
        .map_err(|_| anyhow::anyhow!("the body did not arrive within {FETCH_TIMEOUT:?}"))?
        .map_err(|e| anyhow::anyhow!("reading the body: {e}"))?
        .to_bytes();
        parse_set(&body)
    }
}

/// Reads a JWK set, skipping keys this verifier cannot use (other key types, private
/// parameters it does not need are ignored by the parser).
pub fn parse_set(body: &[u8]) -> anyhow::Result<Vec<Jwk>> {
    #[derive(serde::Deserialize)]
    struct Set {
        keys: Vec<serde_json::Value>,
    }
    let set: Set = serde_json::from_slice(body)
        .map_err(|e| anyhow::anyhow!("not a JWK set ({{\"keys\": [...]}}): {e}"))?;
    Ok(set
        .keys
        .into_iter()
        .filter_map(|k| serde_json::from_value::<Jwk>(k).ok())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_skip_entries_that_are_not_keys() {
        let body = serde_json::json!({"keys": [
            {"kty": "RSA", "kid": "r1", "alg": "RS256", "use": "sig", "n": "sXch", "e": "AQAB"},
            {"kty": "EC", "kid": "e1", "crv": "P-256", "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            3,
            {"kid": "no key type"},
        ]});
        let keys = parse_set(body.to_string().as_bytes()).unwrap_or_default();
        let kids: Vec<_> = keys
            .iter()
            .filter_map(|k| k.common.key_id.clone())
            .collect();
        // `3` is no key; a key of no known type is kept (no algorithm ever fits it).
        assert_eq!(kids, ["r1", "e1", "no key type"]);
        assert!(parse_set(b"[]").is_err());
        assert!(parse_set(b"{\"keys\": 3}").is_err());
    }

    #[test]
    fn only_http_urls() {
        let d = Duration::from_secs(1);
        assert!(JwksSource::new("ftp://idp/keys", d, d).is_err());
        assert!(JwksSource::new("not a url", d, d).is_err());
        assert!(
            JwksSource::new("https://idp/keys", Duration::ZERO, d).is_err(),
            "a refresh floor of 0 would lift the rate limit"
        );
    }
}
