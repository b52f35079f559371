//! The admin API's JSON shapes (camelCase, times in ms since the epoch, like the
//! Socket.IO payloads and the recording events), read from the stored documents, and
//! the checks of what an admin may write. The OpenAPI schemas are derived from these
//! types, so the document and the checks cannot drift apart.

use mongodb::bson::{Bson, Document, doc};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

use crate::error::{ClientError, ErrorCode};

const MAX_URL_LEN: usize = 2048;
/// Largest integer every JSON reader holds exactly (2^53 - 1).
pub const MAX_SAFE_INTEGER: u64 = 9_007_199_254_740_991;

/// `{error: {code, message}}`.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable code: `unauthorized`, `forbidden`, `not_found`, `invalid_payload`, `unavailable`.
    pub code: String,
    pub message: String,
}

/// The refusals every guarded operation may answer (OpenAPI responses).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)] // a description of responses, never built
pub enum Refused {
    /// A malformed id, an invalid parameter or body (the message names it).
    #[response(status = 400)]
    Invalid(ErrorBody),
    /// No valid token.
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// The token lacks the admin role.
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// MongoDB, Redis or the broker is unavailable; retry.
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// No such object in the token's tenant (also: another tenant's).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub enum Missing {
    #[response(status = 404)]
    NotFound(ErrorBody),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RecordingStatus {
    PendingConsent,
    Recording,
    Cancelled,
    Stopped,
}

impl RecordingStatus {
    pub fn parse(s: &str) -> Option<Self> {
        serde_json::from_value(serde_json::Value::String(s.to_owned())).ok()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConsentView {
    pub user_id: String,
    pub consent: bool,
    pub at: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PendingConsentView {
    pub user_id: String,
    /// When this member's consent is due (ms since the epoch).
    pub deadline: i64,
}

/// Where and how long a recording is (written by the recorder through `PATCH`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Storage {
    #[schema(pattern = "^(s3|gs|https?)://[!-~]+$", max_length = 2048)]
    pub url: String,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "whole"
    )]
    #[schema(minimum = 0, maximum = 9_007_199_254_740_991_u64)]
    pub size_bytes: Option<u64>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "whole"
    )]
    #[schema(minimum = 0, maximum = 9_007_199_254_740_991_u64)]
    pub duration_ms: Option<u64>,
}

/// Quality metrics of a recording, as the recorder measured them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Quality {
    /// Mean opinion score, 1 (bad) to 5 (excellent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 5)]
    pub mos: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 100)]
    pub packet_loss_percent: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 60000)]
    pub jitter_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 60000)]
    pub round_trip_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 10_000_000)]
    pub bitrate_kbps: Option<f64>,
}

/// A recording's metadata (`call_recordings`).
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecordingView {
    pub recording_id: String,
    pub call_id: String,
    pub conversation_id: String,
    pub requested_by: String,
    pub status: String,
    /// Why it was cancelled or stopped (`declined`, `timeout`, `consent_withdrawn`,
    /// `stopped`, `call_ended`).
    pub reason: Option<String>,
    pub consents: Vec<ConsentView>,
    pub pending_consents: Vec<PendingConsentView>,
    pub consent_deadline: Option<i64>,
    pub started_at: Option<i64>,
    pub stopped_at: Option<i64>,
    pub storage: Option<Storage>,
    pub quality: Option<Quality>,
    pub created_at: Option<i64>,
    pub updated_at: Option<i64>,
    /// The version of the recording's last change (ascending; as on the topic).
    pub version: i64,
}

/// A page of recordings, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecordingPage {
    pub items: Vec<RecordingView>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// A non-negative whole number, also written as `12.0` (JSON Schema's `integer` is any
/// number without a fraction).
fn whole<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    use serde::de::Error;
    let Some(n) = Option::<serde_json::Number>::deserialize(d)? else {
        return Ok(None);
    };
    if let Some(v) = n.as_u64() {
        return Ok(Some(v));
    }
    match n.as_f64() {
        Some(f) if f >= 0.0 && f.fract() == 0.0 && f <= MAX_SAFE_INTEGER as f64 => {
            Ok(Some(f as u64))
        }
        _ => Err(D::Error::custom(format!(
            "{n} is not a whole number from 0 to 2^53 - 1"
        ))),
    }
}

fn some<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

/// `PATCH` body: `storage` and/or `quality`; `null` clears one.
#[derive(Debug, Clone, PartialEq, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RecordingPatch {
    #[serde(default, deserialize_with = "some")]
    #[schema(value_type = Option<Storage>)]
    pub storage: Option<Option<Storage>>,
    #[serde(default, deserialize_with = "some")]
    #[schema(value_type = Option<Quality>)]
    pub quality: Option<Option<Quality>>,
}

fn invalid(message: impl Into<String>) -> ClientError {
    ClientError::new(ErrorCode::InvalidPayload, message)
}

fn in_range(field: &str, v: Option<f64>, min: f64, max: f64) -> Result<(), ClientError> {
    match v {
        Some(x) if !(min..=max).contains(&x) => {
            Err(invalid(format!("{field} must be between {min} and {max}")))
        }
        _ => Ok(()),
    }
}

impl Storage {
    fn check(&self) -> Result<(), ClientError> {
        let scheme_ok = ["s3://", "gs://", "http://", "https://"].iter().any(|p| {
            self.url
                .strip_prefix(p)
                .is_some_and(|rest| !rest.is_empty())
        });
        if !scheme_ok {
            return Err(invalid(
                "storage.url must start with s3://, gs://, http:// or https://",
            ));
        }
        if self.url.len() > MAX_URL_LEN {
            return Err(invalid(format!(
                "storage.url is longer than {MAX_URL_LEN} bytes"
            )));
        }
        if !self.url.bytes().all(|b| (b'!'..=b'~').contains(&b)) {
            return Err(invalid(
                "storage.url must be printable ASCII without spaces (percent-encode the rest)",
            ));
        }
        for (field, v) in [
            ("storage.sizeBytes", self.size_bytes),
            ("storage.durationMs", self.duration_ms),
        ] {
            if v.is_some_and(|v| v > MAX_SAFE_INTEGER) {
                return Err(invalid(format!("{field} must be at most 2^53 - 1")));
            }
        }
        Ok(())
    }

    fn to_document(&self) -> Document {
        let n =
            |v: Option<u64>| v.map_or(Bson::Null, |v| Bson::Int64(v.min(MAX_SAFE_INTEGER) as i64));
        doc! {"url": &self.url, "size_bytes": n(self.size_bytes), "duration_ms": n(self.duration_ms)}
    }
}

impl Quality {
    fn check(&self) -> Result<(), ClientError> {
        in_range("quality.mos", self.mos, 1.0, 5.0)?;
        in_range(
            "quality.packetLossPercent",
            self.packet_loss_percent,
            0.0,
            100.0,
        )?;
        in_range("quality.jitterMs", self.jitter_ms, 0.0, 60000.0)?;
        in_range("quality.roundTripMs", self.round_trip_ms, 0.0, 60000.0)?;
        in_range("quality.bitrateKbps", self.bitrate_kbps, 0.0, 10_000_000.0)
    }

    fn to_document(&self) -> Document {
        let n = |v: Option<f64>| v.map_or(Bson::Null, Bson::Double);
        doc! {
            "mos": n(self.mos),
            "packet_loss_percent": n(self.packet_loss_percent),
            "jitter_ms": n(self.jitter_ms),
            "round_trip_ms": n(self.round_trip_ms),
            "bitrate_kbps": n(self.bitrate_kbps),
        }
    }
}

impl RecordingPatch {
    /// Reads and checks a `PATCH` body; the `$set` it makes.
    pub fn parse(body: &[u8]) -> Result<Document, ClientError> {
        let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
            invalid(format!(
                "the body must be a JSON object with storage and/or quality: {e}"
            ))
        })?;
        // serde would also read a struct from an array (`[null, null]`): objects only.
        if !value.is_object() {
            return Err(invalid(
                "the body must be a JSON object with storage and/or quality",
            ));
        }
        for field in ["storage", "quality"] {
            if value
                .get(field)
                .is_some_and(|v| !(v.is_object() || v.is_null()))
            {
                return Err(invalid(format!("{field} must be an object or null")));
            }
        }
        let patch: RecordingPatch = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            if path == "." {
                invalid(format!(
                    "the body must be a JSON object with storage and/or quality: {}",
                    e.inner()
                ))
            } else {
                invalid(format!("{path}: {}", e.inner()))
            }
        })?;
        let mut set = Document::new();
        if let Some(storage) = &patch.storage {
            if let Some(s) = storage {
                s.check()?;
            }
            set.insert(
                "storage",
                storage
                    .as_ref()
                    .map_or(Bson::Null, |s| Bson::Document(s.to_document())),
            );
        }
        if let Some(quality) = &patch.quality {
            if let Some(q) = quality {
                q.check()?;
            }
            set.insert(
                "quality",
                quality
                    .as_ref()
                    .map_or(Bson::Null, |q| Bson::Document(q.to_document())),
            );
        }
        if set.is_empty() {
            return Err(invalid("nothing to change: send storage and/or quality"));
        }
        Ok(set)
    }
}

pub(super) fn ms(d: &Document, key: &str) -> Option<i64> {
    d.get_datetime(key).ok().map(|t| t.timestamp_millis())
}

pub(super) fn text(d: &Document, key: &str) -> String {
    d.get_str(key).unwrap_or_default().to_owned()
}

fn number(d: &Document, key: &str) -> Option<f64> {
    match d.get(key) {
        Some(Bson::Double(v)) => Some(*v),
        Some(Bson::Int32(v)) => Some(f64::from(*v)),
        Some(Bson::Int64(v)) => Some(*v as f64),
        _ => None,
    }
}

fn count(d: &Document, key: &str) -> Option<u64> {
    match d.get(key) {
        Some(Bson::Int64(v)) => u64::try_from(*v).ok(),
        Some(Bson::Int32(v)) => u64::try_from(*v).ok(),
        _ => None,
    }
}

impl RecordingView {
    pub fn from_document(d: &Document) -> Self {
        let list = |key: &str| -> Vec<&Document> {
            d.get_array(key)
                .map(|a| a.iter().filter_map(Bson::as_document).collect())
                .unwrap_or_default()
        };
        Self {
            recording_id: text(d, "recording_id"),
            call_id: text(d, "call_id"),
            conversation_id: text(d, "conversation_id"),
            requested_by: text(d, "requested_by"),
            status: text(d, "status"),
            reason: d.get_str("reason").ok().map(str::to_owned),
            consents: list("consents")
                .into_iter()
                .map(|c| ConsentView {
                    user_id: text(c, "user_id"),
                    consent: c.get_bool("consent").unwrap_or(false),
                    at: ms(c, "at").unwrap_or(0),
                })
                .collect(),
            pending_consents: list("pending_consents")
                .into_iter()
                .map(|c| PendingConsentView {
                    user_id: text(c, "user_id"),
                    deadline: ms(c, "deadline").unwrap_or(0),
                })
                .collect(),
            consent_deadline: ms(d, "consent_deadline"),
            started_at: ms(d, "started_at"),
            stopped_at: ms(d, "stopped_at"),
            storage: d.get_document("storage").ok().map(|s| Storage {
                url: text(s, "url"),
                size_bytes: count(s, "size_bytes"),
                duration_ms: count(s, "duration_ms"),
            }),
            quality: d.get_document("quality").ok().map(|q| Quality {
                mos: number(q, "mos"),
                packet_loss_percent: number(q, "packet_loss_percent"),
                jitter_ms: number(q, "jitter_ms"),
                round_trip_ms: number(q, "round_trip_ms"),
                bitrate_kbps: number(q, "bitrate_kbps"),
            }),
            created_at: ms(d, "created_at"),
            updated_at: ms(d, "updated_at"),
            version: d.get_i64("version").unwrap_or(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Identifiers: 1–128 of letters, digits and `. _ @ + -` (`protocol::validate_id`).
    const ID_PATTERN: &str = "^[A-Za-z0-9._@+-]{1,128}$";
    /// Where a recording is stored: `s3://`, `gs://`, `http(s)://`, printable ASCII.
    const STORAGE_URL_PATTERN: &str = "^(s3|gs|https?)://[!-~]+$";

    /// The patterns the document announces are the ones the checks apply.
    #[test]
    fn the_document_states_the_checks() {
        let doc = super::super::document().to_string();
        assert!(doc.contains(&serde_json::to_string(STORAGE_URL_PATTERN).unwrap_or_default()));
        assert!(doc.contains(&serde_json::to_string(ID_PATTERN).unwrap_or_default()));
        for id in ["a", "A.b_c@d+e-f", &"x".repeat(128)] {
            assert!(crate::protocol::validate_id("id", id).is_ok(), "{id}");
        }
        for id in ["", "a:b", "a b", "a*", &"x".repeat(129)] {
            assert!(crate::protocol::validate_id("id", id).is_err(), "{id}");
        }
    }

    fn parse(v: serde_json::Value) -> Result<Document, ClientError> {
        RecordingPatch::parse(v.to_string().as_bytes())
    }

    #[test]
    fn patches_set_clear_and_refuse() {
        let set = parse(serde_json::json!({"storage": {"url": "s3://b/k", "sizeBytes": 10}}))
            .unwrap_or_default();
        assert_eq!(
            set.get_document("storage").map(|s| s.get_str("url")),
            Ok(Ok("s3://b/k"))
        );
        assert!(!set.contains_key("quality"));
        let whole = parse(serde_json::json!({"storage": {"url": "s3://b/k", "durationMs": 12.0}}))
            .unwrap_or_default();
        assert_eq!(
            whole
                .get_document("storage")
                .map(|s| s.get_i64("duration_ms")),
            Ok(Ok(12))
        );
        let clear = parse(serde_json::json!({"quality": null})).unwrap_or_default();
        assert_eq!(clear.get("quality"), Some(&Bson::Null));
        for (bad, why) in [
            (serde_json::json!({}), "nothing to change"),
            (serde_json::json!({"status": "stopped"}), "unknown field"),
            (
                serde_json::json!({"storage": {"url": "ftp://x"}}),
                "storage.url",
            ),
            (
                serde_json::json!({"storage": {"url": "s3://a b"}}),
                "printable",
            ),
            (
                serde_json::json!({"storage": {"url": "s3://b", "sizeBytes": -1}}),
                "sizeBytes",
            ),
            (serde_json::json!({"quality": {"mos": 7}}), "quality.mos"),
            (
                serde_json::json!({"quality": {"jitterMs": -1}}),
                "quality.jitterMs",
            ),
            (serde_json::json!([1]), "JSON object"),
            (serde_json::json!([null, null]), "JSON object"),
            (
                serde_json::json!({"storage": ["s3://b"]}),
                "storage must be an object",
            ),
            (
                serde_json::json!({"storage": {"url": "s3://b", "sizeBytes": 1.5}}),
                "whole number",
            ),
        ] {
            let err = parse(bad.clone())
                .err()
                .map(|e| e.message)
                .unwrap_or_default();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn views_read_stored_documents() {
        let d = doc! {
            "recording_id": "r", "call_id": "c", "conversation_id": "v", "requested_by": "a",
            "status": "stopped", "reason": "stopped",
            "consents": [{"user_id": "a", "consent": true, "at": mongodb::bson::DateTime::from_millis(5)}],
            "storage": {"url": "s3://x", "size_bytes": 3_i64, "duration_ms": Bson::Null},
            "version": 4_i64,
        };
        let v = RecordingView::from_document(&d);
        assert_eq!(v.consents[0].at, 5);
        assert_eq!(v.storage.as_ref().map(|s| s.size_bytes), Some(Some(3)));
        assert_eq!(v.quality, None);
        assert_eq!(v.version, 4);
        let status = RecordingStatus::parse("pending_consent");
        assert_eq!(status, Some(RecordingStatus::PendingConsent));
        assert_eq!(RecordingStatus::parse("done"), None);
    }
}
