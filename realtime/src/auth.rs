//! Client authentication: HS256 JWTs carrying tenant, user and roles.
//!
//! Owns token verification and minting (for the dev tool and tests). Never logs a token
//! or the secret; errors say what is wrong with the token, not what it contains.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use serde::{Deserialize, Serialize};

use crate::config::AuthConfig;
use crate::error::{ClientError, ErrorCode};
use crate::protocol::validate_id;

/// Claims of a client token (SPEC.md §3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    /// User id.
    pub sub: String,
    pub tenant_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
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

/// Verifies tokens against the configured secret, issuer and audience.
#[derive(Clone)]
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier").finish_non_exhaustive()
    }
}

impl Verifier {
    pub fn new(secret: &str, issuer: Option<&str>, audience: Option<&str>) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
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
            key: DecodingKey::from_secret(secret.as_bytes()),
            validation,
        }
    }

    pub fn from_config(cfg: &AuthConfig) -> Option<Self> {
        let secret = cfg.jwt_secret.as_deref().filter(|s| !s.is_empty())?;
        Some(Self::new(
            secret,
            cfg.jwt_issuer.as_deref(),
            cfg.jwt_audience.as_deref(),
        ))
    }

    /// Checks a token and returns the identity it proves.
    pub fn verify(&self, token: &str) -> Result<Identity, ClientError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| unauthorized(describe(e.kind())))?;
        let claims = data.claims;
        validate_id("token claim tenant_id", &claims.tenant_id)
            .and_then(|()| validate_id("token claim sub", &claims.sub))
            .map_err(|e| unauthorized(&e.message))?;
        Ok(Identity {
            tenant_id: claims.tenant_id,
            user_id: claims.sub,
            roles: claims.roles,
        })
    }
}

fn unauthorized(message: &str) -> ClientError {
    ClientError::new(ErrorCode::Unauthorized, message)
}

fn describe(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::ExpiredSignature => "token has expired",
        ErrorKind::InvalidSignature => "token signature is not valid",
        ErrorKind::InvalidIssuer => "token issuer is not accepted",
        ErrorKind::InvalidAudience => "token audience is not accepted",
        ErrorKind::ImmatureSignature => "token is not valid yet",
        ErrorKind::InvalidAlgorithm => "token algorithm is not accepted (HS256 expected)",
        ErrorKind::MissingRequiredClaim(_) => "token lacks a required claim (sub, exp, iss, aud)",
        ErrorKind::Json(_) => "token claims are malformed (tenant_id and sub must be strings)",
        _ => "token is malformed",
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
        let mut bad_tenant = claims(60);
        bad_tenant.tenant_id = "a:b".into();
        let cases = [
            (expired, "expired"),
            (wrong_key, "signature"),
            (mint("s3cret", &other_iss).unwrap(), "issuer"),
            (mint("s3cret", &other_aud).unwrap(), "audience"),
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
