//! Payloads of the `/webrtc` call and recording events (SPEC.md §3), parsed and checked:
//! a `serde_json::Value` goes in, a typed request or a [`ClientError`] naming the faulty
//! field comes out.

use serde::Deserialize;
use serde_json::Value;

use super::state::Media;
use crate::error::{ClientError, ErrorCode};
use crate::protocol::{decode, invalid, validate_id};

/// `call:start`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StartRequest {
    pub conversation_id: String,
    pub media: Media,
}

impl StartRequest {
    pub fn parse(payload: Option<&Value>) -> Result<Self, ClientError> {
        let req: Self = decode("call:start", payload)?;
        validate_id("conversationId", &req.conversation_id)?;
        Ok(req)
    }
}

/// `call:accept`, `call:decline`, `call:hangup` (`forEveryone`: end it for everyone,
/// allowed to the caller and the conversation's owners and admins), `recording:request`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CallRequest {
    pub call_id: String,
    #[serde(default)]
    pub for_everyone: bool,
}

impl CallRequest {
    pub fn parse(event: &str, payload: Option<&Value>) -> Result<Self, ClientError> {
        let req: Self = decode(event, payload)?;
        validate_id("callId", &req.call_id)?;
        if req.for_everyone && event != "call:hangup" {
            return Err(invalid(format!(
                "{event}: forEveryone belongs to call:hangup"
            )));
        }
        Ok(req)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SignalType {
    Offer,
    Answer,
    Candidate,
}

impl SignalType {
    pub fn as_str(self) -> &'static str {
        match self {
            SignalType::Offer => "offer",
            SignalType::Answer => "answer",
            SignalType::Candidate => "candidate",
        }
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawSignal {
    call_id: String,
    to: String,
    signal: Value,
}

#[derive(Deserialize)]
struct SignalShape {
    #[serde(rename = "type")]
    kind: SignalType,
    sdp: Option<Value>,
}

/// `call:signal`: relayed as it came (the signal object is the peers' business), once
/// its shape and size are checked.
#[derive(Debug, Clone, PartialEq)]
pub struct SignalRequest {
    pub call_id: String,
    pub to: String,
    pub kind: SignalType,
    pub signal: Value,
}

impl SignalRequest {
    pub fn parse(payload: Option<&Value>, max_bytes: usize) -> Result<Self, ClientError> {
        let raw: RawSignal = decode("call:signal", payload)?;
        validate_id("callId", &raw.call_id)?;
        validate_id("to", &raw.to)?;
        let size = serde_json::to_vec(&raw.signal).map_or(usize::MAX, |v| v.len());
        if size > max_bytes {
            return Err(ClientError::new(
                ErrorCode::TooLarge,
                format!("signal is {size} bytes; the limit is {max_bytes} (MAX_SIGNAL_BYTES)"),
            ));
        }
        if !raw.signal.is_object() {
            return Err(invalid(
                "signal must be an object {type, sdp?, candidate?}".into(),
            ));
        }
        let shape = SignalShape::deserialize(&raw.signal)
            .map_err(|e| invalid(format!("call:signal: signal: {e}")))?;
        match shape.kind {
            SignalType::Offer | SignalType::Answer => {
                if !shape.sdp.as_ref().is_some_and(Value::is_string) {
                    return Err(invalid(format!(
                        "a signal of type {} needs sdp (a string)",
                        shape.kind.as_str()
                    )));
                }
            }
            SignalType::Candidate => {
                // An RTCIceCandidateInit object, its `candidate` string, or null for the
                // end of candidates.
                if !raw
                    .signal
                    .get("candidate")
                    .is_some_and(|c| c.is_object() || c.is_string() || c.is_null())
                {
                    return Err(invalid(
                        "a signal of type candidate needs candidate (an RTCIceCandidateInit object)"
                            .into(),
                    ));
                }
            }
        }
        Ok(Self {
            call_id: raw.call_id,
            to: raw.to,
            kind: shape.kind,
            signal: raw.signal,
        })
    }
}

/// `recording:consent`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsentRequest {
    pub recording_id: String,
    pub consent: bool,
}

impl ConsentRequest {
    pub fn parse(payload: Option<&Value>) -> Result<Self, ClientError> {
        let req: Self = decode("recording:consent", payload)?;
        validate_id("recordingId", &req.recording_id)?;
        Ok(req)
    }
}

/// `recording:stop`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StopRequest {
    pub recording_id: String,
}

impl StopRequest {
    pub fn parse(payload: Option<&Value>) -> Result<Self, ClientError> {
        let req: Self = decode("recording:stop", payload)?;
        validate_id("recordingId", &req.recording_id)?;
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn code<T: std::fmt::Debug>(r: Result<T, ClientError>) -> ErrorCode {
        r.unwrap_err().code
    }

    #[test]
    fn start_needs_a_conversation_and_a_media() {
        let ok = StartRequest::parse(Some(&json!({"conversationId": "c", "media": "video"})));
        assert_eq!(ok.unwrap().media, Media::Video);
        for bad in [
            json!({"conversationId": "c"}),
            json!({"conversationId": "c", "media": "screen"}),
            json!({"conversationId": "a:b", "media": "audio"}),
            json!({"conversationId": "c", "media": "audio", "extra": 1}),
            json!("c"),
        ] {
            assert_eq!(
                code(StartRequest::parse(Some(&bad))),
                ErrorCode::InvalidPayload,
                "{bad}"
            );
        }
        assert_eq!(code(StartRequest::parse(None)), ErrorCode::InvalidPayload);
    }

    #[test]
    fn signals_are_checked_by_type_and_size() {
        let offer = json!({"callId": "k", "to": "b", "signal": {"type": "offer", "sdp": "v=0"}});
        let req = SignalRequest::parse(Some(&offer), 1000).unwrap();
        assert_eq!((req.kind, req.to.as_str()), (SignalType::Offer, "b"));
        assert_eq!(req.signal, json!({"type": "offer", "sdp": "v=0"}));
        let candidate = json!({"callId": "k", "to": "b", "signal": {"type": "candidate",
            "candidate": {"candidate": "candidate:1 1 udp 1 1.2.3.4 5 typ relay", "sdpMid": "0"}}});
        assert!(SignalRequest::parse(Some(&candidate), 1000).is_ok());
        let end =
            json!({"callId": "k", "to": "b", "signal": {"type": "candidate", "candidate": null}});
        assert!(SignalRequest::parse(Some(&end), 1000).is_ok());
        for bad in [
            json!({"callId": "k", "to": "b", "signal": {"type": "offer"}}),
            json!({"callId": "k", "to": "b", "signal": {"type": "answer", "sdp": 5}}),
            json!({"callId": "k", "to": "b", "signal": {"type": "candidate"}}),
            json!({"callId": "k", "to": "b", "signal": {"type": "bye"}}),
            json!({"callId": "k", "to": "b", "signal": "offer"}),
            json!({"callId": "k", "signal": {"type": "offer", "sdp": ""}}),
        ] {
            assert_eq!(
                code(SignalRequest::parse(Some(&bad), 1000)),
                ErrorCode::InvalidPayload,
                "{bad}"
            );
        }
        let big =
            json!({"callId": "k", "to": "b", "signal": {"type": "offer", "sdp": "x".repeat(2000)}});
        assert_eq!(
            code(SignalRequest::parse(Some(&big), 1000)),
            ErrorCode::TooLarge
        );
    }

    #[test]
    fn call_and_recording_requests() {
        let hang = CallRequest::parse(
            "call:hangup",
            Some(&json!({"callId": "k", "forEveryone": true})),
        );
        assert!(hang.unwrap().for_everyone);
        assert_eq!(
            code(CallRequest::parse(
                "call:accept",
                Some(&json!({"callId": "k", "forEveryone": true}))
            )),
            ErrorCode::InvalidPayload
        );
        assert_eq!(
            code(CallRequest::parse("call:accept", Some(&json!({})))),
            ErrorCode::InvalidPayload
        );
        assert!(
            ConsentRequest::parse(Some(&json!({"recordingId": "r", "consent": false}))).is_ok()
        );
        assert_eq!(
            code(ConsentRequest::parse(Some(
                &json!({"recordingId": "r", "consent": "yes"})
            ))),
            ErrorCode::InvalidPayload
        );
        assert!(StopRequest::parse(Some(&json!({"recordingId": "r"}))).is_ok());
    }
}
