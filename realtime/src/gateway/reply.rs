//! Answering a client event: through its ack callback when it asked for one, otherwise
//! (for failures) with an `error` event, so no refusal goes unnoticed.

use std::convert::Infallible;
use std::sync::Arc;

use serde::Serialize;
use socketioxide::adapter::Adapter;
use socketioxide::extract::AckSender;
use socketioxide::handler::{FromMessageParts, Value};
use socketioxide::socket::Socket;

use crate::error::ClientError;

/// Extractor that knows whether the client is waiting for an acknowledgement.
pub struct Reply<A: Adapter> {
    socket: Arc<Socket<A>>,
    ack: AckSender<A>,
    wants_ack: bool,
}

impl<A: Adapter> FromMessageParts<A> for Reply<A> {
    type Error = Infallible;
    fn from_message_parts(
        s: &Arc<Socket<A>>,
        v: &mut Value,
        ack_id: &Option<i64>,
    ) -> Result<Self, Infallible> {
        let ack = AckSender::from_message_parts(s, v, ack_id)?;
        Ok(Self {
            socket: s.clone(),
            ack,
            wants_ack: ack_id.is_some(),
        })
    }
}

#[derive(Serialize)]
struct ErrorAck<'a> {
    ok: bool,
    error: &'a ClientError,
}

impl<A: Adapter> Reply<A> {
    /// Sends `{ok: true, ...body}` to the ack callback (nothing when there is none).
    pub fn ok(self, body: &impl Serialize) {
        if !self.wants_ack {
            return;
        }
        let value = merged(serde_json::json!({"ok": true}), body);
        if let Err(e) = self.ack.send(&value) {
            tracing::warn!(error = %e, "ack not delivered (socket gone or its buffer is full)");
        }
    }

    /// Sends `{ok: false, error: {code, message}}` to the ack callback, or an `error` event.
    pub fn err(self, error: &ClientError) {
        let sent = if self.wants_ack {
            self.ack
                .send(&ErrorAck { ok: false, error })
                .map_err(|e| e.to_string())
        } else {
            self.socket.emit("error", error).map_err(|e| e.to_string())
        };
        if let Err(e) = sent {
            tracing::warn!(error = %e, code = error.code.as_str(), "error reply not delivered (socket gone or its buffer is full)");
        }
    }

    /// Sends `{ok: false, error, ...body}` to the ack callback, or an `error` event.
    pub fn err_with(self, error: &ClientError, body: &impl Serialize) {
        if !self.wants_ack {
            return self.err(error);
        }
        let value = merged(serde_json::json!({"ok": false, "error": error}), body);
        if let Err(e) = self.ack.send(&value) {
            tracing::warn!(error = %e, code = error.code.as_str(), "error reply not delivered (socket gone or its buffer is full)");
        }
    }

    pub fn send(self, result: Result<impl Serialize, ClientError>) {
        match result {
            Ok(body) => self.ok(&body),
            Err(e) => self.err(&e),
        }
    }
}

/// `head` with the fields of `body` (an object) added.
fn merged(mut head: serde_json::Value, body: &impl Serialize) -> serde_json::Value {
    match serde_json::to_value(body) {
        Ok(serde_json::Value::Object(extra)) => {
            if let Some(target) = head.as_object_mut() {
                target.extend(extra);
            }
        }
        Ok(other) => tracing::error!(body = %other, "an ack body is not an object"),
        Err(e) => tracing::error!(error = %e, "an ack body does not serialize"),
    }
    head
}
