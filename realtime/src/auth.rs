//! Client authentication: HS256 JWTs carrying tenant, user and roles.
//!
//! Owns token verification and minting (for the dev tool and tests). Never logs a token
//! or the secret; errors name the claim that is wrong, never what it contains. Checked as
//! RFC 7519 says: `exp` and `nbf` (with the same 5 s leeway), `iss` and `aud` when
//! configured (`aud` may be a string or an array that contains the expected audience).

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};

use std::sync::Arc;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm};

use crate::config::AuthConfig;
use crate::error::{ClientError, ErrorCode};
use crate::jwks::JwksSource;
use crate::protocol::validate_id;

/// Claims of a client token (SPEC.md §3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    /// User id.
    pub sub: String,
    pub tenant_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// One audience or several (RFC 7519 §4.1.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<serde_json::Value>,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Not before, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
}

/// Who is on the other end of a socket or request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub tenant_id: String,
    pub user_id: String,
    pub roles: Vec<String>,
}

/// Verifies tokens: HS256 against `JWT_SECRET`, RS256/ES256 against the identity
/// provider's keys (`JWT_JWKS_URL`), with the configured issuer and audience.
#[derive(Clone)]
pub struct Verifier {
    secret: Option<DecodingKey>,
    jwks: Option<Arc<JwksSource>>,
    validation: Validation,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").finish_non_exhaustive()
    }
}

/// Why a token was refused, and whether fresh keys could change that.
struct Refusal {
    error: ClientError,
    unknown_key: bool,
}

impl From<ClientError> for Refusal {
    fn from(error: ClientError) -> Self {
        Self {
            error,
            unknown_key: false,
        }
    }
}

impl Verifier {
    /// An HS256 verifier (the dev tool, tests).
    pub fn new(secret: &str, issuer: Option<&str>, audience: Option<&str>) -> Self {
        Self::build(Some(secret), None, issuer, audience)
    }

    fn build(
        secret: Option<&str>,
        jwks: Option<Arc<JwksSource>>,
        issuer: Option<&str>,
        audience: Option<&str>,
    ) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        if let Some(iss) = issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        match audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        Self {
            secret: secret.map(|s| DecodingKey::from_secret(s.as_bytes())),
            jwks,
            validation,
        }
    }

    /// The verifier `JWT_SECRET` and/or `JWT_JWKS_URL` describe (at least one is needed).
    pub fn from_config(cfg: &AuthConfig) -> anyhow::Result<Self> {
        let secret = cfg.jwt_secret.as_deref().filter(|s| !s.is_empty());
        let jwks = match cfg.jwt_jwks_url.as_deref().filter(|u| !u.is_empty()) {
            Some(url) => Some(Arc::new(JwksSource::new(
                url,
                cfg.jwks_min_refresh,
                cfg.jwks_refresh,
            )?)),
            None => None,
        };
        if secret.is_none() && jwks.is_none() {
            anyhow::bail!("JWT_SECRET or JWT_JWKS_URL is required to verify tokens");
        }
        Ok(Self::build(
            secret,
            jwks,
            cfg.jwt_issuer.as_deref(),
            cfg.jwt_audience.as_deref(),
        ))
    }

    /// The JWKS source, when tokens may be signed by an identity provider.
    pub fn jwks(&self) -> Option<&Arc<JwksSource>> {
        self.jwks.as_ref()
    }

    /// Checks a token against the keys at hand and returns the identity it proves.
    pub fn verify(&self, token: &str) -> Result<Identity, ClientError> {
        self.check(token).map_err(|r| r.error)
    }

    /// [`Self::verify`], fetching the provider's keys first when the cache is old, and
    /// again when the token names a key the cache lacks (rate-limited: see `jwks`).
    pub async fn authenticate(&self, token: &str) -> Result<Identity, ClientError> {
        let Some(jwks) = &self.jwks else {
            return self.verify(token);
        };
        let signed_by_provider = jsonwebtoken::decode_header(token)
            .is_ok_and(|h| matches!(h.alg, Algorithm::RS256 | Algorithm::ES256));
        if signed_by_provider && jwks.stale() {
            if jwks.keys().is_empty() {
                jwks.refresh().await; // nothing to check against yet
            } else {
                jwks.refresh_in_background();
            }
        }
        match self.check(token) {
            Err(r) if r.unknown_key => {
                if jwks.refresh().await {
                    self.verify(token)
                } else {
                    Err(r.error)
                }
            }
            other => other.map_err(|r| r.error),
        }
    }

    /// The key a token's header asks for.
    fn key_for(&self, header: &Header) -> Result<DecodingKey, Refusal> {
        match header.alg {
            Algorithm::HS256 => self.secret.clone().ok_or_else(|| {
                unauthorized(
                    "HS256 tokens are not accepted here: sign with the identity provider's key",
                )
                .into()
            }),
            Algorithm::RS256 | Algorithm::ES256 => {
                let Some(jwks) = &self.jwks else {
                    return Err(
                        unauthorized("token algorithm is not accepted (HS256 expected)").into(),
                    );
                };
                let keys = jwks.keys();
                let fits = |k: &&Jwk| key_fits(k, header.alg);
                let key = match &header.kid {
                    Some(kid) => {
                        let found = keys
                            .iter()
                            .find(|k| k.common.key_id.as_deref() == Some(kid.as_str()));
                        match found {
                            Some(k) if fits(&k) => k,
                            Some(_) => {
                                return Err(unauthorized(
                                    "token key (kid) does not fit the token's algorithm",
                                )
                                .into());
                            }
                            None => {
                                return Err(Refusal {
                                    error: unauthorized(
                                        "token key (kid) is not among the identity provider's keys",
                                    ),
                                    unknown_key: true,
                                });
                            }
                        }
                    }
                    None => {
                        let mut candidates = keys.iter().filter(fits);
                        match (candidates.next(), candidates.next()) {
                            (Some(k), None) => k,
                            (None, _) => {
                                return Err(Refusal {
                                    error: unauthorized(
                                        "no key of the identity provider fits the token",
                                    ),
                                    unknown_key: true,
                                });
                            }
                            (Some(_), Some(_)) => {
                                return Err(unauthorized(
                                    "token has no kid and the identity provider has several keys",
                                )
                                .into());
                            }
                        }
                    }
                };
                DecodingKey::from_jwk(key).map_err(|_| {
                    unauthorized("the identity provider's key for this token is unusable").into()
                })
            }
            _ => {
                Err(unauthorized("token algorithm is not accepted (HS256, RS256 or ES256)").into())
            }
        }
    }

    fn check(&self, token: &str) -> Result<Identity, Refusal> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|_| Refusal::from(unauthorized("token is malformed")))?;
        let key = self.key_for(&header)?;
        let mut validation = self.validation.clone();
        validation.algorithms = vec![header.alg];
        // Decoded loosely, so a claim of the wrong type is named in the refusal.
        let data = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
            token,
            &key,
            &validation,
        )
        .map_err(|e| match e.kind() {
            // The claims could not be read as the verifier expects them: say which.
            ErrorKind::Json(_) => unauthorized(&misshapen_claim(token)),
            kind => unauthorized(&describe(kind)),
        })?;
        let claims = data.claims;
        let tenant_id = string_claim(&claims, "tenant_id")?;
        let user_id = string_claim(&claims, "sub")?;
        validate_id("token claim tenant_id", &tenant_id)
            .and_then(|()| validate_id("token claim sub", &user_id))
            .map_err(|e| unauthorized(&e.message))?;
        let roles = match claims.get("roles") {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(serde_json::Value::Array(items)) => items
                .iter()
                .map(|r| r.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| unauthorized("token claim roles must be an array of strings"))?,
            Some(_) => {
                return Err(unauthorized("token claim roles must be an array of strings").into());
            }
        };
        Ok(Identity {
            tenant_id,
            user_id,
            roles,
        })
    }
}

/// True when `key` can verify a token signed with `alg` (RS256: an RSA key; ES256: a
/// P-256 key; a key that names its algorithm must name this one).
fn key_fits(key: &Jwk, alg: Algorithm) -> bool {
    let family = match (&key.algorithm, alg) {
        (AlgorithmParameters::RSA(_), Algorithm::RS256) => true,
        (AlgorithmParameters::EllipticCurve(p), Algorithm::ES256) => p.curve == EllipticCurve::P256,
        _ => false,
    };
    if matches!(
        key.common.public_key_use,
        Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)
    ) {
        return false; // an encryption key never verifies a signature
    }
    let named = match key.common.key_algorithm {
        None => true,
        Some(KeyAlgorithm::RS256) => alg == Algorithm::RS256,
        Some(KeyAlgorithm::ES256) => alg == Algorithm::ES256,
        Some(_) => false,
    };
    family && named
}

fn unauthorized(message: &str) -> ClientError {
    ClientError::new(ErrorCode::Unauthorized, message)
}

fn string_claim(
    claims: &serde_json::Map<String, serde_json::Value>,
    name: &str,
) -> Result<String, ClientError> {
    match claims.get(name) {
        Some(serde_json::Value::String(v)) => Ok(v.clone()),
        None | Some(serde_json::Value::Null) => {
            Err(unauthorized(&format!("token lacks the {name} claim")))
        }
        Some(_) => Err(unauthorized(&format!(
            "token claim {name} must be a string"
        ))),
    }
}

/// Names the registered claim of `token` whose JSON type is wrong (the token is not
/// trusted here: this only explains a refusal to its own sender).
fn misshapen_claim(token: &str) -> String {
    use base64::Engine;
    let claims: Option<serde_json::Map<String, serde_json::Value>> = token
        .split('.')
        .nth(1)
        .and_then(|p| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(p)
                .ok()
        })
        .and_then(|b| serde_json::from_slice(&b).ok());
    let Some(claims) = claims else {
        return "token claims are not a JSON object".into();
    };
    let is_str = |v: &serde_json::Value| v.is_string();
    type Check = (&'static str, &'static str, fn(&serde_json::Value) -> bool);
    let checks: [Check; 6] = [
        ("sub", "a string", is_str),
        ("tenant_id", "a string", is_str),
        ("iss", "a string", is_str),
        ("exp", "a number", serde_json::Value::is_number),
        ("nbf", "a number", serde_json::Value::is_number),
        ("aud", "a string or an array of strings", |v| {
            v.is_string()
                || v.as_array()
                    .is_some_and(|a| a.iter().all(serde_json::Value::is_string))
        }),
    ];
    checks
        .iter()
        .find(|(name, _, ok)| claims.get(*name).is_some_and(|v| !v.is_null() && !ok(v)))
        .map_or_else(
            || "token claims are malformed".into(),
            |(name, kind, _)| format!("token claim {name} must be {kind}"),
        )
}

fn describe(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::ExpiredSignature => "token has expired (claim exp)".into(),
        ErrorKind::InvalidSignature => "token signature is not valid".into(),
        ErrorKind::InvalidIssuer => "token issuer is not accepted (claim iss)".into(),
        ErrorKind::InvalidAudience => "token audience is not accepted (claim aud)".into(),
        ErrorKind::InvalidSubject => "token subject is not accepted (claim sub)".into(),
        ErrorKind::ImmatureSignature => {
            "token is not valid yet (claim nbf is in the future)".into()
        }
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => {
            "token algorithm is not accepted".into()
        }
        ErrorKind::MissingRequiredClaim(claim) => format!("token lacks the {claim} claim"),
        ErrorKind::InvalidClaimFormat(claim) => {
            format!("token claim {claim} has the wrong type")
        }
        ErrorKind::Json(_) => "token claims are not a JSON object".into(),
        _ => "token is malformed".into(),
    }
}

/// Extracts the token from a Socket.IO auth payload `{ "token": … }`.
pub fn token_from_auth(auth: Option<&serde_json::Value>) -> Option<&str> {
    auth?.get("token")?.as_str().filter(|t| !t.is_empty())
}

/// Extracts the token from an `Authorization: Bearer …` header.
pub fn token_from_headers(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
        .filter(|t| !t.is_empty())
}

/// Signs a token; used by the dev tool and tests.
pub fn mint(secret: &str, claims: &Claims) -> Result<String, jsonwebtoken::errors::Error> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp_offset: i64) -> Claims {
        let now = crate::protocol::now_ms() / 1000;
        Claims {
            sub: "alice".into(),
            tenant_id: "acme".into(),
            iss: Some("issuer".into()),
            aud: Some("chat".into()),
            exp: u64::try_from(now + exp_offset).unwrap(),
            nbf: None,
            roles: vec!["admin".into()],
        }
    }

    fn verifier() -> Verifier {
        Verifier::new("s3cret", Some("issuer"), Some("chat"))
    }

    #[test]
    fn valid_token_gives_identity() {
        let token = mint("s3cret", &claims(60)).unwrap();
        let id = verifier().verify(&token).unwrap();
        assert_eq!(id.tenant_id, "acme");
        assert_eq!(id.user_id, "alice");
        assert_eq!(id.roles, vec!["admin".to_string()]);
    }

    #[test]
    fn bad_tokens_are_refused_with_reasons() {
        let expired = mint("s3cret", &claims(-120)).unwrap();
        let wrong_key = mint("other", &claims(60)).unwrap();
        let mut other_iss = claims(60);
        other_iss.iss = Some("evil".into());
        let mut other_aud = claims(60);
        other_aud.aud = Some("admin-api".into());
        let mut other_auds = claims(60);
        other_auds.aud = Some(serde_json::json!(["admin-api", "billing"]));
        let mut early = claims(60);
        early.nbf = Some(u64::try_from(crate::protocol::now_ms() / 1000 + 120).unwrap());
        let mut bad_tenant = claims(60);
        bad_tenant.tenant_id = "a:b".into();
        let cases = [
            (expired, "expired"),
            (wrong_key, "signature"),
            (mint("s3cret", &other_iss).unwrap(), "issuer"),
            (mint("s3cret", &other_aud).unwrap(), "audience"),
            (mint("s3cret", &other_auds).unwrap(), "claim aud"),
            (mint("s3cret", &early).unwrap(), "claim nbf"),
            (mint("s3cret", &bad_tenant).unwrap(), "tenant_id"),
            ("not-a-jwt".to_string(), "malformed"),
        ];
        for (token, needle) in cases {
            let err = verifier().verify(&token).unwrap_err();
            assert_eq!(err.code, ErrorCode::Unauthorized);
            assert!(err.message.contains(needle), "{needle}: {}", err.message);
            assert!(!err.message.contains("s3cret"));
        }
    }

    #[test]
    fn audience_may_be_an_array_and_nbf_in_the_past_is_fine() {
        let mut c = claims(60);
        c.aud = Some(serde_json::json!(["billing", "chat"]));
        c.nbf = Some(u64::try_from(crate::protocol::now_ms() / 1000 - 10).unwrap());
        let id = verifier().verify(&mint("s3cret", &c).unwrap()).unwrap();
        assert_eq!(id.user_id, "alice");
    }

    #[test]
    fn every_refusal_names_the_claim() {
        let raw = |claims: serde_json::Value| {
            jsonwebtoken::encode(
                &Header::new(Algorithm::HS256),
                &claims,
                &EncodingKey::from_secret(b"s3cret"),
            )
            .unwrap()
        };
        let exp = crate::protocol::now_ms() / 1000 + 60;
        let base = serde_json::json!({"sub": "a", "tenant_id": "t", "exp": exp, "iss": "issuer", "aud": "chat"});
        let with = |k: &str, v: serde_json::Value| {
            let mut c = base.clone();
            c[k] = v;
            raw(c)
        };
        let without = |k: &str| {
            let mut c = base.clone();
            c.as_object_mut().unwrap().remove(k);
            raw(c)
        };
        for (token, needle) in [
            (
                with("tenant_id", serde_json::json!(5)),
                "claim tenant_id must be a string",
            ),
            (
                with("sub", serde_json::json!({"id": 1})),
                "claim sub must be a string",
            ),
            (with("roles", serde_json::json!("admin")), "claim roles"),
            (with("exp", serde_json::json!("tomorrow")), "exp"),
            (without("tenant_id"), "lacks the tenant_id claim"),
            (without("exp"), "lacks the exp claim"),
            (without("aud"), "lacks the aud claim"),
        ] {
            let err = verifier().verify(&token).unwrap_err();
            assert!(err.message.contains(needle), "{needle}: {}", err.message);
        }
    }

    #[test]
    fn missing_tenant_claim_is_refused() {
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"sub": "a", "exp": u64::MAX / 2, "iss": "issuer", "aud": "chat"}),
            &EncodingKey::from_secret(b"s3cret"),
        )
        .unwrap();
        assert_eq!(
            verifier().verify(&token).unwrap_err().code,
            ErrorCode::Unauthorized
        );
    }

    #[test]
    fn token_extraction() {
        let auth = serde_json::json!({"token": "abc"});
        assert_eq!(token_from_auth(Some(&auth)), Some("abc"));
        assert_eq!(
            token_from_auth(Some(&serde_json::json!({"token": 5}))),
            None
        );
        assert_eq!(token_from_auth(None), None);
        let mut headers = axum::http::HeaderMap::new();
        headers.insert("authorization", "Bearer xyz".parse().unwrap());
        assert_eq!(token_from_headers(&headers), Some("xyz"));
        headers.insert("authorization", "Basic xyz".parse().unwrap());
        assert_eq!(token_from_headers(&headers), None);
    }
}
