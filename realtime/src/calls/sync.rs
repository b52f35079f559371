//! Storing a call's change and everything that follows from it in one Redis script: the
//! compare-and-set of the call and, only when it succeeds, the commands that keep the
//! indexes (the conversation's call, each member's calls, the active calls), the
//! deadlines and the recording outbox in line with the stored state. Nothing can run
//! between the two, so a gateway that stored an older version can never undo the
//! deadlines of a newer one, and a gateway that dies after the script leaves nothing
//! half-done. (The script touches keys it does not declare: standalone Redis only.)

use serde_json::{Value, json};

use super::deadlines::Due;
use super::outbox::OUTBOX_TTL_MS;
use super::outbox::OutboxEntry;
use super::state::{Call, Effects, MemberState};
use super::{CALL_TTL, ms_duration};
use crate::keys;

/// Runs the commands of a [`Batch`], flattened into `ARGV` from `first`. `DELIFEQ key
/// value` deletes the key if it holds the value.
const RUN_BATCH: &str = r"
local function run_batch(first)
  local i = first
  while i <= #ARGV do
    local n = tonumber(ARGV[i])
    if ARGV[i + 1] == 'DELIFEQ' then
      if redis.call('GET', ARGV[i + 2]) == ARGV[i + 3] then redis.call('DEL', ARGV[i + 2]) end
    else
      redis.call(unpack(ARGV, i + 1, i + n))
    end
    i = i + n + 1
  end
end
";

/// Stores `ARGV[2]` (deletes the call when empty) if `KEYS[1]` still holds `ARGV[1]`,
/// then runs the batch from `ARGV[4]`.
const CAS: &str = r"
local cur = redis.call('GET', KEYS[1])
if cur ~= ARGV[1] then return 0 end
if ARGV[2] == '' then redis.call('DEL', KEYS[1])
else redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) end
run_batch(4)
return 1
";

/// Creates a call (`KEYS[1]`, `ARGV[1]`) as the conversation's call (`KEYS[2]`, id
/// `ARGV[3]`) and runs the batch — unless the conversation has a call already, whose id
/// it returns.
const START: &str = r"
local existing = redis.call('GET', KEYS[2])
if existing then return existing end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[2])
run_batch(4)
return ARGV[3]
";

pub(super) fn cas_script() -> redis::Script {
    redis::Script::new(&format!("{RUN_BATCH}{CAS}"))
}

pub(super) fn start_script() -> redis::Script {
    redis::Script::new(&format!("{RUN_BATCH}{START}"))
}

/// Redis commands run after a stored change, in the same script.
#[derive(Debug, Default, Clone, PartialEq)]
pub(super) struct Batch(Vec<Vec<String>>);

impl Batch {
    fn cmd<const N: usize>(&mut self, args: [&dyn ToString; N]) {
        self.0.push(args.iter().map(|a| a.to_string()).collect());
    }

    /// The commands as script arguments: each one's length, then its words.
    pub(super) fn args(&self) -> Vec<String> {
        let mut out = Vec::new();
        for cmd in &self.0 {
            out.push(cmd.len().to_string());
            out.extend(cmd.iter().cloned());
        }
        out
    }
}

/// What a stored change brings along: the batch, and the outbox entry (its member in the
/// outbox) when the recording changed.
pub(super) fn follow_up(
    call: &Call,
    fx: &Effects,
    now: i64,
    grace_ms: i64,
) -> (Batch, Option<String>) {
    let tenant = &call.tenant;
    let ttl = ms_duration(CALL_TTL);
    let due = |d: Due| d.member();
    let ring = due(Due::Ring {
        tenant: tenant.clone(),
        call: call.id.clone(),
    });
    let consent = due(Due::Consent {
        tenant: tenant.clone(),
        call: call.id.clone(),
    });
    let active = format!("{tenant}|{}", call.id);
    let absent = keys::call_absent(tenant, &call.id);
    let mut b = Batch::default();
    let ended = fx.ended.is_some();
    for (user, member) in &call.members {
        let presence = due(Due::Presence {
            tenant: tenant.clone(),
            call: call.id.clone(),
            user: user.clone(),
        });
        let calls_of_user = keys::user_calls(tenant, user);
        if !ended && member.state == MemberState::Joined {
            b.cmd([
                &"ZADD",
                &keys::CALL_DEADLINES,
                &"NX",
                &(now + grace_ms),
                &presence,
            ]);
            b.cmd([&"SADD", &calls_of_user, &call.id]);
            b.cmd([&"PEXPIRE", &calls_of_user, &ttl]);
        } else {
            b.cmd([&"ZREM", &keys::CALL_DEADLINES, &presence]);
            b.cmd([&"SREM", &calls_of_user, &call.id]);
            b.cmd([&"HDEL", &absent, user]);
        }
    }
    if ended {
        b.cmd([&"ZREM", &keys::CALL_DEADLINES, &ring, &consent]);
        b.cmd([&"ZREM", &keys::ACTIVE_CALLS, &active]);
        b.cmd([
            &"DELIFEQ",
            &keys::conversation_call(tenant, &call.conversation),
            &call.id,
        ]);
        b.cmd([&"DEL", &absent]);
    } else {
        b.cmd([&"ZADD", &keys::ACTIVE_CALLS, &now, &active]);
        match call
            .in_state(MemberState::Ringing)
            .next()
            .map(|_| call.ring_deadline)
        {
            Some(at) => b.cmd([&"ZADD", &keys::CALL_DEADLINES, &at, &ring]),
            None => b.cmd([&"ZREM", &keys::CALL_DEADLINES, &ring]),
        }
        match call.consent_deadline() {
            Some(at) => b.cmd([&"ZADD", &keys::CALL_DEADLINES, &at, &consent]),
            None => b.cmd([&"ZREM", &keys::CALL_DEADLINES, &consent]),
        }
        b.cmd([
            &"PEXPIRE",
            &keys::conversation_call(tenant, &call.conversation),
            &ttl,
        ]);
    }
    let mut outbox = None;
    if let Some(rec) = fx.recording.as_ref().or(call.recording.as_ref()) {
        b.cmd([
            &"SET",
            &keys::recording_call(tenant, &rec.id),
            &call.id,
            &"PX",
            &ttl,
        ]);
    }
    if let Some(rec) = &fx.recording {
        let events: Vec<Value> = fx
            .changes
            .iter()
            .map(|change| {
                let mut event = json!({
                    "type": change.kind,
                    "tenantId": tenant,
                    "recordingId": rec.id,
                    "callId": call.id,
                    "conversationId": call.conversation,
                    "at": now,
                    "status": change.status.as_str(),
                    "version": rec.version,
                });
                if let (Some(into), Some(extra)) = (event.as_object_mut(), change.extra.as_object())
                {
                    into.extend(extra.clone());
                }
                event
            })
            .collect();
        let entry = OutboxEntry {
            tenant: tenant.clone(),
            call_id: call.id.clone(),
            conversation: call.conversation.clone(),
            at: now,
            recording: rec.clone(),
            events,
        };
        if let Ok(json) = serde_json::to_string(&entry) {
            // In the recording's own queue, in the order of the changes; the recording is
            // due for delivery now (unless a gateway is at it already).
            let queue = keys::recording_outbox(tenant, &rec.id);
            let member = format!("{tenant}|{}", rec.id);
            b.cmd([&"RPUSH", &queue, &json]);
            b.cmd([&"PEXPIRE", &queue, &OUTBOX_TTL_MS]);
            b.cmd([&"ZADD", &keys::RECORDING_OUTBOX, &"NX", &now, &member]);
            outbox = Some(member);
        }
    }
    (b, outbox)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calls::state::{Media, Timeouts};

    const T: Timeouts = Timeouts {
        ring_ms: 30_000,
        consent_ms: 10_000,
    };

    fn words(b: &Batch) -> Vec<String> {
        b.0.iter().map(|c| c.join(" ")).collect()
    }

    #[test]
    fn a_ringing_call_has_its_deadlines_and_indexes() {
        let users = ["a".to_owned(), "b".to_owned()];
        let (call, fx) = Call::start("k".into(), "t", "c", Media::Audio, "a", &users, 100, T);
        let (b, outbox) = follow_up(&call, &fx, 100, 20_000);
        let w = words(&b);
        assert!(
            w.contains(&"ZADD rt:#:calls:due NX 20100 presence|t|k|a".to_owned()),
            "{w:?}"
        );
        assert!(
            w.contains(&"ZREM rt:#:calls:due presence|t|k|b".to_owned()),
            "b only rings"
        );
        assert!(w.contains(&"ZADD rt:#:calls:due 30100 ring|t|k".to_owned()));
        assert!(w.contains(&"ZREM rt:#:calls:due consent|t|k".to_owned()));
        assert!(w.contains(&"SADD rt:t:usercalls:a k".to_owned()));
        assert!(w.contains(&"ZADD rt:#:calls:active 100 t|k".to_owned()));
        assert_eq!(outbox, None, "no recording");
        let args = b.args();
        assert_eq!(
            args[0],
            b.0[0].len().to_string(),
            "each command is led by its length"
        );
    }

    #[test]
    fn an_ended_call_leaves_nothing_behind_and_a_recording_goes_to_the_outbox() {
        let users = ["a".to_owned(), "b".to_owned()];
        let (mut call, _) = Call::start("k".into(), "t", "c", Media::Audio, "a", &users, 0, T);
        call.accept("b", 1, T);
        call.request_recording("a", "r".into(), 2, T).unwrap();
        let fx = call.leave("b", 3);
        assert_eq!(fx.ended, Some("hangup"));
        let (b, outbox) = follow_up(&call, &fx, 3, 20_000);
        let w = words(&b);
        for expected in [
            "ZREM rt:#:calls:due ring|t|k consent|t|k",
            "ZREM rt:#:calls:active t|k",
            "DELIFEQ rt:t:convcall:c k",
            "ZREM rt:#:calls:due presence|t|k|a",
            "SREM rt:t:usercalls:b k",
        ] {
            assert!(w.contains(&expected.to_owned()), "{expected} in {w:?}");
        }
        assert_eq!(outbox.as_deref(), Some("t|r"));
        let pushed = b.0.iter().find(|c| c[0] == "RPUSH").unwrap();
        assert_eq!(pushed[1], "rt:t:recoutbox:r");
        let entry: OutboxEntry = serde_json::from_str(&pushed[2]).unwrap();
        assert_eq!(entry.recording.reason.as_deref(), Some("call_ended"));
        let types: Vec<&str> = entry
            .events
            .iter()
            .filter_map(|e| e["type"].as_str())
            .collect();
        // b left before consenting: everyone left had consented, then the call ended.
        assert_eq!(
            types,
            [
                "recording.updated",
                "recording.started",
                "recording.stopped"
            ]
        );
        assert_eq!(entry.events[0]["version"], entry.recording.version);
    }
}
