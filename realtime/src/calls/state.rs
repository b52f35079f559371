//! One call and its recording, and every transition of them, as pure functions: a
//! transition takes the call, the actor and the time, changes the call and returns the
//! [`Effects`] (events for users, recording changes, whether the call ended). Nothing here
//! does I/O; `calls::Calls` loads the call from Redis, applies a transition and stores the
//! result with a compare-and-set, then performs the effects.
//!
//! Rules (SPEC.md §3 "Calls" and "Recording"):
//! - `start`: the caller is `joined`, every other participant `ringing` until the ring
//!   deadline. `accept` joins (also a participant who left or declined, or one added to
//!   the conversation later); `decline` stops one ringing member.
//! - The call ends when nobody is joined; or, when nobody is ringing any more, as soon as
//!   at most one member is left (a call is between at least two people): `hangup` (a
//!   member left), `declined` (everyone declined before anyone answered), `no_answer`
//!   (ring deadline passed, nobody answered), `ended_by_owner` (`call:hangup` with
//!   `forEveryone` by the caller or a conversation owner/admin).
//! - A recording needs the consent of every joined member: the requester's is recorded
//!   with the request, every other member has until the consent deadline. All consent →
//!   `recording`; a refusal → `cancelled/declined`; the deadline → `cancelled/timeout`. A
//!   member who joins while a recording is pending or running must consent within the
//!   consent timeout too; while it runs, a refusal or a missed deadline stops it
//!   (`stopped/consent_withdrawn`). `recording:stop` → `stopped/stopped` (a pending one is
//!   `cancelled/stopped`); the end of the call ends it (`call_ended`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::error::{ClientError, ErrorCode};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Media {
    Audio,
    Video,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberState {
    Ringing,
    Joined,
    Declined,
    /// Rang until the ring deadline without an answer.
    Missed,
    Left,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    pub state: MemberState,
    /// When the member reached this state (ms since the epoch).
    pub since: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordingStatus {
    PendingConsent,
    Recording,
    Cancelled,
    Stopped,
}

impl RecordingStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordingStatus::PendingConsent => "pending_consent",
            RecordingStatus::Recording => "recording",
            RecordingStatus::Cancelled => "cancelled",
            RecordingStatus::Stopped => "stopped",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Consent {
    pub user_id: String,
    pub consent: bool,
    pub at: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recording {
    pub id: String,
    pub requested_by: String,
    pub status: RecordingStatus,
    /// The consent deadline of the request (ms since the epoch).
    pub deadline: i64,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub stopped_at: Option<i64>,
    pub reason: Option<String>,
    /// Every consent given or refused, in order.
    pub consents: Vec<Consent>,
    /// Members whose consent is still awaited, with their deadline.
    pub pending: BTreeMap<String, i64>,
    /// Bumped at every change; stored writes of older versions are ignored.
    pub version: u64,
}

impl Recording {
    fn is_over(&self) -> bool {
        matches!(
            self.status,
            RecordingStatus::Cancelled | RecordingStatus::Stopped
        )
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Call {
    pub id: String,
    pub tenant: String,
    pub conversation: String,
    pub media: Media,
    /// Who started it.
    pub from: String,
    pub created_at: i64,
    pub ring_deadline: i64,
    /// When the first member other than the caller joined.
    pub answered_at: Option<i64>,
    pub members: BTreeMap<String, Member>,
    pub recording: Option<Recording>,
}

/// An event for every socket of one user on `/webrtc`.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    pub user: String,
    pub event: &'static str,
    pub payload: Value,
}

/// Every `type` of `webrtc.recording.events` the data plane publishes.
pub const RECORDING_EVENT_TYPES: [&str; 6] = [
    "recording.requested",
    "recording.consent",
    "recording.started",
    "recording.cancelled",
    "recording.stopped",
    "recording.updated",
];

/// One change of a recording: its type on `webrtc.recording.events` and the event's
/// fields beyond the common ones.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordingChange {
    pub kind: &'static str,
    /// The recording's status right after this change.
    pub status: RecordingStatus,
    pub extra: Value,
}

/// What a transition asks the service to do.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Effects {
    pub notices: Vec<Notice>,
    /// The recording after the transition (also when it just ended), when it changed.
    pub recording: Option<Recording>,
    /// Its changes, in order.
    pub changes: Vec<RecordingChange>,
    /// The call ended, with this reason.
    pub ended: Option<&'static str>,
    /// A member other than the caller joined for the first time (setup time).
    pub answered: bool,
}

/// Timeouts the transitions apply.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timeouts {
    pub ring_ms: i64,
    pub consent_ms: i64,
}

fn conflict(message: impl Into<String>) -> ClientError {
    ClientError::new(ErrorCode::Conflict, message)
}

impl Call {
    /// A new call by `from` in `conversation`, ringing every other participant.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        id: String,
        tenant: &str,
        conversation: &str,
        media: Media,
        from: &str,
        participants: &[String],
        now: i64,
        t: Timeouts,
    ) -> (Self, Effects) {
        let mut members = BTreeMap::new();
        members.insert(
            from.to_owned(),
            Member {
                state: MemberState::Joined,
                since: now,
            },
        );
        for p in participants.iter().filter(|p| *p != from) {
            members.insert(
                p.clone(),
                Member {
                    state: MemberState::Ringing,
                    since: now,
                },
            );
        }
        let call = Call {
            id,
            tenant: tenant.to_owned(),
            conversation: conversation.to_owned(),
            media,
            from: from.to_owned(),
            created_at: now,
            ring_deadline: now + t.ring_ms,
            answered_at: None,
            members,
            recording: None,
        };
        let incoming = json!({
            "callId": call.id, "conversationId": call.conversation, "from": from,
            "media": media, "ringDeadline": call.ring_deadline,
        });
        let notices = call
            .in_state(MemberState::Ringing)
            .map(|u| notice(u, "call:incoming", incoming.clone()))
            .collect();
        (
            call,
            Effects {
                notices,
                ..Effects::default()
            },
        )
    }

    pub fn in_state(&self, state: MemberState) -> impl Iterator<Item = &String> {
        self.members
            .iter()
            .filter(move |(_, m)| m.state == state)
            .map(|(u, _)| u)
    }

    pub fn is_joined(&self, user: &str) -> bool {
        self.members
            .get(user)
            .is_some_and(|m| m.state == MemberState::Joined)
    }

    /// Refuses unless `user` is in the call.
    pub fn require_joined(&self, user: &str, doing: &str) -> Result<(), ClientError> {
        if self.is_joined(user) {
            Ok(())
        } else {
            Err(ClientError::new(
                ErrorCode::Forbidden,
                format!("you are not in call {}; accept it before {doing}", self.id),
            ))
        }
    }

    fn set(&mut self, user: &str, state: MemberState, now: i64) {
        self.members
            .insert(user.to_owned(), Member { state, since: now });
    }

    /// Notices of `event` for the joined members (and `also`, once).
    fn to_joined(&self, event: &'static str, payload: &Value, also: &[&str]) -> Vec<Notice> {
        let mut users: Vec<&str> = self
            .in_state(MemberState::Joined)
            .map(String::as_str)
            .collect();
        for u in also {
            if !users.contains(u) {
                users.push(u);
            }
        }
        users
            .into_iter()
            .map(|u| notice(u, event, payload.clone()))
            .collect()
    }

    /// A summary for acks: who is in the call and the recording, if any.
    pub fn view(&self) -> Value {
        json!({
            "callId": self.id,
            "conversationId": self.conversation,
            "media": self.media,
            "from": self.from,
            "members": self.in_state(MemberState::Joined).collect::<Vec<_>>(),
            "ringing": self.in_state(MemberState::Ringing).collect::<Vec<_>>(),
            "recording": self.recording.as_ref().map(|r| json!({
                "recordingId": r.id, "status": r.status.as_str(),
            })),
        })
    }

    pub fn accept(&mut self, user: &str, now: i64, t: Timeouts) -> Effects {
        if self.is_joined(user) {
            return Effects::default();
        }
        self.set(user, MemberState::Joined, now);
        let mut fx = Effects::default();
        if user != self.from && self.answered_at.is_none() {
            self.answered_at = Some(now);
            fx.answered = true;
        }
        let joined = json!({"callId": self.id, "userId": user});
        fx.notices = self.to_joined("call:participant-joined", &joined, &[]);
        if let Some(rec) = self.recording.as_mut() {
            // Nobody is recorded without their consent: the joiner is asked, and a
            // running recording stops if the answer does not come in time.
            if !rec.is_over() {
                let deadline = now + t.consent_ms;
                rec.pending.insert(user.to_owned(), deadline);
                fx.notices.push(notice(
                    user,
                    "recording:consent-request",
                    json!({"recordingId": rec.id, "callId": self.id,
                           "requestedBy": rec.requested_by, "deadline": deadline}),
                ));
                fx.changes.push(RecordingChange {
                    kind: "recording.updated",
                    status: rec.status,
                    extra: json!({"consentRequestedFrom": user, "deadline": deadline}),
                });
            }
        }
        self.settle(fx)
    }

    /// Stamps a changed recording with a new version and puts it in the effects.
    fn settle(&mut self, mut fx: Effects) -> Effects {
        if !fx.changes.is_empty()
            && let Some(rec) = self.recording.as_mut()
        {
            rec.version += 1;
            fx.recording = Some(rec.clone());
        }
        fx
    }

    pub fn decline(&mut self, user: &str, now: i64) -> Result<Effects, ClientError> {
        match self.members.get(user).map(|m| m.state) {
            Some(MemberState::Ringing | MemberState::Missed) => {}
            Some(MemberState::Declined) => return Ok(Effects::default()),
            Some(MemberState::Joined) => {
                return Err(conflict(format!(
                    "you are in call {}; leave it with call:hangup",
                    self.id
                )));
            }
            Some(MemberState::Left) | None => {
                return Err(conflict(format!("call {} is not ringing for you", self.id)));
            }
        }
        self.set(user, MemberState::Declined, now);
        let mut fx = Effects {
            notices: self.to_joined(
                "call:declined",
                &json!({"callId": self.id, "userId": user}),
                &[user],
            ),
            ..Effects::default()
        };
        self.end_if_over(now, &mut fx);
        Ok(self.settle(fx))
    }

    /// `user` leaves (hangs up, or lost every socket past the grace period); a ringing
    /// member who hangs up declines.
    pub fn leave(&mut self, user: &str, now: i64) -> Effects {
        match self.members.get(user).map(|m| m.state) {
            Some(MemberState::Joined) => {}
            Some(MemberState::Ringing) => return self.decline(user, now).unwrap_or_default(),
            _ => return Effects::default(),
        }
        self.set(user, MemberState::Left, now);
        let mut fx = Effects {
            notices: self.to_joined(
                "call:participant-left",
                &json!({"callId": self.id, "userId": user}),
                &[user],
            ),
            ..Effects::default()
        };
        if let Some(rec) = self.recording.as_mut()
            && rec.pending.remove(user).is_some()
        {
            fx.changes.push(RecordingChange {
                kind: "recording.updated",
                status: rec.status,
                extra: json!({"left": user}),
            });
            self.start_if_consented(now, &mut fx);
        }
        self.end_if_over(now, &mut fx);
        self.settle(fx)
    }

    /// Ends the call for everyone (`call:hangup` with `forEveryone`).
    pub fn end_for_everyone(&mut self, now: i64) -> Effects {
        let mut fx = Effects::default();
        self.end("ended_by_owner", now, &mut fx);
        self.settle(fx)
    }

    /// The ring deadline passed: ringing members missed the call; with nobody but the
    /// caller in it, the call ends (`no_answer`).
    pub fn ring_timeout(&mut self, now: i64) -> Effects {
        let mut fx = Effects::default();
        if now < self.ring_deadline || self.in_state(MemberState::Ringing).next().is_none() {
            return fx;
        }
        if self.answered_at.is_none() {
            self.end("no_answer", now, &mut fx);
            return self.settle(fx);
        }
        let missed: Vec<String> = self.in_state(MemberState::Ringing).cloned().collect();
        for u in missed {
            fx.notices.push(notice(
                &u,
                "call:ended",
                json!({"callId": self.id, "reason": "no_answer"}),
            ));
            self.set(&u, MemberState::Missed, now);
        }
        self.end_if_over(now, &mut fx);
        self.settle(fx)
    }

    /// Ends the call when it is over: nobody joined, or nobody ringing and at most one
    /// member left.
    fn end_if_over(&mut self, now: i64, fx: &mut Effects) {
        let joined = self.in_state(MemberState::Joined).count();
        let ringing = self.in_state(MemberState::Ringing).count();
        if joined == 0 || (ringing == 0 && joined <= 1) {
            let reason = if self.answered_at.is_some() {
                "hangup"
            } else if self.in_state(MemberState::Declined).next().is_some() {
                "declined"
            } else {
                "hangup"
            };
            self.end(reason, now, fx);
        }
    }

    fn end(&mut self, reason: &'static str, now: i64, fx: &mut Effects) {
        if self.recording.as_ref().is_some_and(|r| !r.is_over()) {
            self.finish_recording("call_ended", now, fx);
        }
        let ended = json!({"callId": self.id, "reason": reason});
        let ringing: Vec<String> = self.in_state(MemberState::Ringing).cloned().collect();
        let ringing: Vec<&str> = ringing.iter().map(String::as_str).collect();
        fx.notices
            .extend(self.to_joined("call:ended", &ended, &ringing));
        fx.ended = Some(reason);
    }

    // --- recording ---

    pub fn request_recording(
        &mut self,
        user: &str,
        recording_id: String,
        now: i64,
        t: Timeouts,
    ) -> Result<Effects, ClientError> {
        self.require_joined(user, "recording it")?;
        if let Some(rec) = &self.recording
            && !rec.is_over()
        {
            return Err(conflict(format!(
                "recording {} of this call is already {}",
                rec.id,
                rec.status.as_str()
            )));
        }
        let deadline = now + t.consent_ms;
        let pending = self
            .in_state(MemberState::Joined)
            .filter(|u| *u != user)
            .map(|u| (u.clone(), deadline))
            .collect();
        let rec = Recording {
            id: recording_id,
            requested_by: user.to_owned(),
            status: RecordingStatus::PendingConsent,
            deadline,
            created_at: now,
            started_at: None,
            stopped_at: None,
            reason: None,
            consents: vec![Consent {
                user_id: user.to_owned(),
                consent: true,
                at: now,
            }],
            pending,
            version: 0,
        };
        let request = json!({"recordingId": rec.id, "callId": self.id,
                             "requestedBy": user, "deadline": deadline});
        let mut fx = Effects {
            notices: self.to_joined("recording:consent-request", &request, &[]),
            ..Effects::default()
        };
        fx.changes.push(RecordingChange {
            kind: "recording.requested",
            status: RecordingStatus::PendingConsent,
            extra: json!({"requestedBy": user, "consentDeadline": deadline,
                          "members": self.in_state(MemberState::Joined).collect::<Vec<_>>()}),
        });
        fx.changes.push(RecordingChange {
            kind: "recording.consent",
            status: RecordingStatus::PendingConsent,
            extra: json!({"userId": user, "consent": true}),
        });
        self.recording = Some(rec);
        self.start_if_consented(now, &mut fx);
        Ok(self.settle(fx))
    }

    /// The recording of this call with `id`, if it is pending or running.
    fn live_recording(&self, id: &str) -> Result<&Recording, ClientError> {
        self.recording
            .as_ref()
            .filter(|r| r.id == id && !r.is_over())
            .ok_or_else(|| {
                ClientError::new(
                    ErrorCode::NotFound,
                    format!("recording {id} is not pending or running"),
                )
            })
    }

    pub fn consent(
        &mut self,
        user: &str,
        recording_id: &str,
        consent: bool,
        now: i64,
    ) -> Result<Effects, ClientError> {
        self.require_joined(user, "answering a consent request")?;
        let rec = self.live_recording(recording_id)?;
        if rec
            .pending
            .get(user)
            .is_some_and(|deadline| *deadline <= now)
        {
            // Too late, even if the server has not enforced the deadline yet: it counts
            // as no consent.
            return Ok(self.consent_timeout(now));
        }
        let last = rec.consents.iter().rev().find(|c| c.user_id == user);
        if !rec.pending.contains_key(user) && last.is_some_and(|c| c.consent == consent) {
            return Ok(Effects::default());
        }
        let mut fx = Effects::default();
        fx.changes.push(RecordingChange {
            kind: "recording.consent",
            status: rec.status,
            extra: json!({"userId": user, "consent": consent}),
        });
        if let Some(rec) = self.recording.as_mut() {
            rec.pending.remove(user);
            rec.consents.push(Consent {
                user_id: user.to_owned(),
                consent,
                at: now,
            });
        }
        if consent {
            self.start_if_consented(now, &mut fx);
        } else {
            let running = self
                .recording
                .as_ref()
                .is_some_and(|r| r.status == RecordingStatus::Recording);
            let reason = if running {
                "consent_withdrawn"
            } else {
                "declined"
            };
            self.finish_recording(reason, now, &mut fx);
        }
        Ok(self.settle(fx))
    }

    pub fn stop_recording(
        &mut self,
        user: &str,
        recording_id: &str,
        now: i64,
    ) -> Result<Effects, ClientError> {
        self.require_joined(user, "stopping its recording")?;
        self.live_recording(recording_id)?;
        let mut fx = Effects::default();
        self.finish_recording("stopped", now, &mut fx);
        Ok(self.settle(fx))
    }

    /// Consent deadlines that passed: a pending recording is cancelled (`timeout`), a
    /// running one stops (`consent_withdrawn`: a joiner did not consent).
    pub fn consent_timeout(&mut self, now: i64) -> Effects {
        let mut fx = Effects::default();
        let overdue = self
            .recording
            .as_ref()
            .filter(|r| !r.is_over())
            .is_some_and(|r| r.pending.values().any(|d| *d <= now));
        if overdue {
            let running = self
                .recording
                .as_ref()
                .is_some_and(|r| r.status == RecordingStatus::Recording);
            let reason = if running {
                "consent_withdrawn"
            } else {
                "timeout"
            };
            self.finish_recording(reason, now, &mut fx);
        }
        self.settle(fx)
    }

    /// The earliest consent deadline still open.
    pub fn consent_deadline(&self) -> Option<i64> {
        self.recording
            .as_ref()
            .filter(|r| !r.is_over())
            .and_then(|r| r.pending.values().min().copied())
    }

    fn start_if_consented(&mut self, now: i64, fx: &mut Effects) {
        let Some(rec) = self.recording.as_mut() else {
            return;
        };
        if rec.status != RecordingStatus::PendingConsent || !rec.pending.is_empty() {
            return;
        }
        rec.status = RecordingStatus::Recording;
        rec.started_at = Some(now);
        fx.changes.push(RecordingChange {
            kind: "recording.started",
            status: rec.status,
            extra: json!({"startedAt": now}),
        });
        let started = json!({"recordingId": rec.id, "callId": self.id});
        fx.notices
            .extend(self.to_joined("recording:started", &started, &[]));
    }

    /// Cancels a pending recording or stops a running one, with `reason`.
    fn finish_recording(&mut self, reason: &str, now: i64, fx: &mut Effects) {
        let Some(rec) = self.recording.as_mut() else {
            return;
        };
        let (status, kind) = if rec.status == RecordingStatus::Recording {
            (RecordingStatus::Stopped, "recording.stopped")
        } else {
            (RecordingStatus::Cancelled, "recording.cancelled")
        };
        // `recording:stop` is answered with `recording:stopped` (SPEC.md §3) also before
        // the recording started; its status says it never did.
        let event = if status == RecordingStatus::Stopped || reason == "stopped" {
            "recording:stopped"
        } else {
            "recording:cancelled"
        };
        rec.status = status;
        rec.stopped_at = Some(now);
        rec.reason = Some(reason.to_owned());
        rec.pending.clear();
        fx.changes.push(RecordingChange {
            kind,
            status,
            extra: json!({"reason": reason}),
        });
        let payload = json!({"recordingId": rec.id, "callId": self.id, "reason": reason});
        fx.notices.extend(self.to_joined(event, &payload, &[]));
    }
}

fn notice(user: &str, event: &'static str, payload: Value) -> Notice {
    Notice {
        user: user.to_owned(),
        event,
        payload,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timeouts = Timeouts {
        ring_ms: 30_000,
        consent_ms: 10_000,
    };

    fn call(users: &[&str]) -> Call {
        let users: Vec<String> = users.iter().map(|u| (*u).to_owned()).collect();
        Call::start("c1".into(), "t", "conv", Media::Video, "a", &users, 0, T).0
    }

    fn events(fx: &Effects) -> Vec<(String, &'static str)> {
        fx.notices
            .iter()
            .map(|n| (n.user.clone(), n.event))
            .collect()
    }

    fn ev(pairs: &[(&str, &'static str)]) -> Vec<(String, &'static str)> {
        pairs.iter().map(|(u, e)| ((*u).to_owned(), *e)).collect()
    }

    #[test]
    fn start_rings_everyone_else() {
        let users = ["a".to_owned(), "b".to_owned(), "c".to_owned()];
        let (c, fx) = Call::start("c1".into(), "t", "conv", Media::Audio, "a", &users, 5, T);
        assert_eq!(
            events(&fx),
            ev(&[("b", "call:incoming"), ("c", "call:incoming")])
        );
        assert_eq!(fx.notices[0].payload["from"], "a");
        assert_eq!(fx.notices[0].payload["media"], "audio");
        assert!(c.is_joined("a"));
        assert_eq!(c.ring_deadline, 30_005);
    }

    #[test]
    fn accept_then_hangup_ends_a_two_party_call() {
        let mut c = call(&["a", "b"]);
        let fx = c.accept("b", 10, T);
        assert!(fx.answered);
        assert_eq!(
            events(&fx),
            ev(&[
                ("a", "call:participant-joined"),
                ("b", "call:participant-joined")
            ])
        );
        assert!(
            c.accept("b", 11, T).notices.is_empty(),
            "accept is idempotent"
        );
        let fx = c.leave("b", 20);
        assert_eq!(fx.ended, Some("hangup"));
        assert_eq!(
            events(&fx),
            ev(&[
                ("a", "call:participant-left"),
                ("b", "call:participant-left"),
                ("a", "call:ended")
            ])
        );
    }

    #[test]
    fn a_group_call_goes_on_until_one_is_left() {
        let mut c = call(&["a", "b", "d"]);
        c.accept("b", 1, T);
        c.accept("d", 2, T);
        assert_eq!(c.leave("a", 3).ended, None);
        assert_eq!(c.leave("b", 4).ended, Some("hangup"));
    }

    #[test]
    fn every_decline_before_an_answer_ends_it() {
        let mut c = call(&["a", "b", "d"]);
        let fx = c.decline("b", 1).unwrap();
        assert_eq!(
            events(&fx),
            ev(&[("a", "call:declined"), ("b", "call:declined")])
        );
        assert_eq!(fx.ended, None, "d still rings");
        let fx = c.decline("d", 2).unwrap();
        assert_eq!(fx.ended, Some("declined"));
        assert_eq!(
            c.decline("a", 3).unwrap_err().code,
            ErrorCode::Conflict,
            "the caller is in the call"
        );
    }

    #[test]
    fn ring_timeout_ends_an_unanswered_call_or_stops_the_ringing() {
        let mut c = call(&["a", "b"]);
        assert_eq!(c.ring_timeout(29_999), Effects::default(), "not yet due");
        let fx = c.ring_timeout(30_000);
        assert_eq!(fx.ended, Some("no_answer"));
        assert_eq!(events(&fx), ev(&[("a", "call:ended"), ("b", "call:ended")]));

        let mut c = call(&["a", "b", "d"]);
        c.accept("b", 1, T);
        let fx = c.ring_timeout(30_000);
        assert_eq!(fx.ended, None);
        assert_eq!(events(&fx), ev(&[("d", "call:ended")]));
        assert_eq!(fx.notices[0].payload["reason"], "no_answer");
        assert_eq!(c.members["d"].state, MemberState::Missed);
        assert!(
            c.accept("d", 40_000, T).notices.len() == 3,
            "a missed member may still join"
        );
    }

    #[test]
    fn the_owner_ends_it_for_everyone() {
        let mut c = call(&["a", "b", "d"]);
        c.accept("b", 1, T);
        let fx = c.end_for_everyone(2);
        assert_eq!(fx.ended, Some("ended_by_owner"));
        assert_eq!(
            events(&fx),
            ev(&[
                ("a", "call:ended"),
                ("b", "call:ended"),
                ("d", "call:ended")
            ])
        );
    }

    #[test]
    fn recording_starts_when_everyone_consents() {
        let mut c = call(&["a", "b", "d"]);
        c.accept("b", 1, T);
        c.accept("d", 1, T);
        let fx = c.request_recording("a", "r1".into(), 100, T).unwrap();
        assert_eq!(
            events(&fx),
            ev(&[
                ("a", "recording:consent-request"),
                ("b", "recording:consent-request"),
                ("d", "recording:consent-request")
            ])
        );
        let (rec, changes) = (fx.recording.clone().unwrap(), fx.changes.clone());
        assert_eq!(rec.status, RecordingStatus::PendingConsent);
        assert_eq!(rec.deadline, 10_100);
        assert_eq!(rec.consents.len(), 1, "the requester's consent is recorded");
        assert_eq!(changes[0].kind, "recording.requested");
        assert_eq!(changes[1].kind, "recording.consent", "and published");
        assert_eq!(changes[1].extra["userId"], "a");
        assert_eq!(
            c.request_recording("b", "r2".into(), 101, T)
                .unwrap_err()
                .code,
            ErrorCode::Conflict
        );
        let fx = c.consent("b", "r1", true, 200).unwrap();
        assert!(fx.notices.is_empty());
        assert_eq!(c.consent_deadline(), Some(10_100));
        let fx = c.consent("d", "r1", true, 300).unwrap();
        assert_eq!(
            events(&fx),
            ev(&[
                ("a", "recording:started"),
                ("b", "recording:started"),
                ("d", "recording:started")
            ])
        );
        let (rec, changes) = (fx.recording.clone().unwrap(), fx.changes.clone());
        assert_eq!(rec.status, RecordingStatus::Recording);
        assert_eq!(rec.started_at, Some(300));
        let kinds: Vec<_> = changes.iter().map(|c| c.kind).collect();
        assert_eq!(kinds, ["recording.consent", "recording.started"]);
        let statuses: Vec<_> = changes.iter().map(|c| c.status).collect();
        assert_eq!(
            statuses,
            [RecordingStatus::PendingConsent, RecordingStatus::Recording],
            "each change carries the status right after it"
        );
        assert_eq!(c.consent_deadline(), None);
        let fx = c.stop_recording("b", "r1", 400).unwrap();
        assert_eq!(fx.notices[0].payload["reason"], "stopped");
        assert_eq!(fx.recording.unwrap().status, RecordingStatus::Stopped);
        assert_eq!(
            c.stop_recording("b", "r1", 401).unwrap_err().code,
            ErrorCode::NotFound
        );
    }

    #[test]
    fn a_refusal_or_the_deadline_cancels() {
        let mut c = call(&["a", "b"]);
        c.accept("b", 1, T);
        c.request_recording("a", "r1".into(), 0, T).unwrap();
        let fx = c.consent("b", "r1", false, 5).unwrap();
        assert_eq!(
            events(&fx),
            ev(&[("a", "recording:cancelled"), ("b", "recording:cancelled")])
        );
        assert_eq!(fx.notices[0].payload["reason"], "declined");

        c.request_recording("a", "r2".into(), 10, T).unwrap();
        assert_eq!(c.consent_timeout(10_009), Effects::default());
        let mut late = c.clone();
        let fx = late.consent("b", "r2", true, 10_010).unwrap();
        assert_eq!(
            fx.recording.unwrap().reason.as_deref(),
            Some("timeout"),
            "a consent past the deadline counts as none, enforced or not"
        );
        let fx = c.consent_timeout(10_010);
        let rec = fx.recording.clone().unwrap();
        assert_eq!(rec.status, RecordingStatus::Cancelled);
        assert_eq!(rec.reason.as_deref(), Some("timeout"));
        assert_eq!(
            c.consent("b", "r2", true, 10_011).unwrap_err().code,
            ErrorCode::NotFound,
            "too late"
        );
    }

    #[test]
    fn a_joiner_must_consent_to_a_running_recording() {
        let mut c = call(&["a", "b", "d"]);
        c.accept("b", 1, T);
        c.request_recording("a", "r1".into(), 2, T).unwrap();
        c.consent("b", "r1", true, 3).unwrap();
        assert_eq!(
            c.recording.as_ref().unwrap().status,
            RecordingStatus::Recording
        );
        let fx = c.accept("d", 100, T);
        assert!(events(&fx).contains(&("d".to_owned(), "recording:consent-request")));
        assert_eq!(c.consent_deadline(), Some(10_100));
        let fx = c.consent_timeout(10_100);
        assert_eq!(fx.notices[0].event, "recording:stopped");
        assert_eq!(fx.notices[0].payload["reason"], "consent_withdrawn");

        // A consent in time keeps it running; a later refusal stops it.
        let mut c = call(&["a", "b", "d"]);
        c.accept("b", 1, T);
        c.request_recording("a", "r1".into(), 2, T).unwrap();
        c.consent("b", "r1", true, 3).unwrap();
        c.accept("d", 100, T);
        let fx = c.consent("d", "r1", true, 200).unwrap();
        assert!(fx.notices.is_empty());
        assert_eq!(c.consent_deadline(), None);
        let fx = c.consent("b", "r1", false, 300).unwrap();
        assert_eq!(fx.notices[0].payload["reason"], "consent_withdrawn");
    }

    #[test]
    fn leaving_settles_a_pending_consent_and_ending_stops_the_recording() {
        let mut c = call(&["a", "b", "d"]);
        c.accept("b", 1, T);
        c.accept("d", 1, T);
        c.request_recording("a", "r1".into(), 2, T).unwrap();
        c.consent("b", "r1", true, 3).unwrap();
        let fx = c.leave("d", 4);
        let rec = fx.recording.clone().unwrap();
        assert_eq!(
            rec.status,
            RecordingStatus::Recording,
            "everyone left consented"
        );
        let fx = c.leave("b", 5);
        assert_eq!(fx.ended, Some("hangup"));
        let (rec, changes) = (fx.recording.clone().unwrap(), fx.changes.clone());
        assert_eq!(rec.status, RecordingStatus::Stopped);
        assert_eq!(rec.reason.as_deref(), Some("call_ended"));
        assert_eq!(changes.last().unwrap().kind, "recording.stopped");
    }

    #[test]
    fn stopping_a_request_nobody_answered_is_answered_stopped_and_stored_cancelled() {
        let mut c = call(&["a", "b"]);
        c.accept("b", 1, T);
        c.request_recording("a", "r".into(), 2, T).unwrap();
        let fx = c.stop_recording("b", "r", 3).unwrap();
        assert_eq!(
            events(&fx),
            ev(&[("a", "recording:stopped"), ("b", "recording:stopped")])
        );
        assert_eq!(fx.notices[0].payload["reason"], "stopped");
        let rec = fx.recording.unwrap();
        assert_eq!(
            (rec.status, rec.started_at),
            (RecordingStatus::Cancelled, None),
            "it never ran"
        );
        assert_eq!(fx.changes[0].kind, "recording.cancelled");
    }

    #[test]
    fn only_members_act() {
        let mut c = call(&["a", "b"]);
        assert_eq!(
            c.request_recording("b", "r".into(), 1, T).unwrap_err().code,
            ErrorCode::Forbidden,
            "b only rings"
        );
        c.accept("b", 1, T);
        c.request_recording("a", "r".into(), 2, T).unwrap();
        assert_eq!(
            c.consent("x", "r", true, 3).unwrap_err().code,
            ErrorCode::Forbidden
        );
        assert_eq!(
            c.consent("b", "other", true, 3).unwrap_err().code,
            ErrorCode::NotFound
        );
    }
}
