//! Deadlines of calls, in one Redis sorted set every gateway's call sweeper claims from
//! (a claim leases the deadline; one a gateway dies holding comes back after the lease):
//! the ring deadline, the earliest open consent deadline, and a presence check per joined
//! member.
//!
//! Presence: a member whose `/webrtc` sockets are all gone (none registered on a live
//! gateway) is marked absent, with the time; one absent for a whole
//! `CALL_LEAVE_GRACE_SECONDS` leaves the call. A socket of theirs anywhere clears the
//! mark. A present member's check also keeps the call's keys alive and puts back a ring
//! or consent deadline the stored state has but the set lost.

use super::state::MemberState;
use super::{CALL_TTL, Calls, internal, ms_duration};
use crate::error::{ClientError, ErrorCode, Result};
use crate::keys;
use crate::protocol::now_ms;

use super::Notice;

/// A deadline of the sorted set, parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum Due {
    Ring {
        tenant: String,
        call: String,
    },
    Consent {
        tenant: String,
        call: String,
    },
    Presence {
        tenant: String,
        call: String,
        user: String,
    },
}

impl Due {
    pub fn member(&self) -> String {
        match self {
            Due::Ring { tenant, call } => format!("ring|{tenant}|{call}"),
            Due::Consent { tenant, call } => format!("consent|{tenant}|{call}"),
            Due::Presence { tenant, call, user } => format!("presence|{tenant}|{call}|{user}"),
        }
    }

    fn parse(member: &str) -> Option<Self> {
        let parts: Vec<&str> = member.split('|').collect();
        let (tenant, call) = ((*parts.get(1)?).to_owned(), (*parts.get(2)?).to_owned());
        match (parts[0], parts.len()) {
            ("ring", 3) => Some(Due::Ring { tenant, call }),
            ("consent", 3) => Some(Due::Consent { tenant, call }),
            ("presence", 4) => Some(Due::Presence {
                tenant,
                call,
                user: parts[3].to_owned(),
            }),
            _ => None,
        }
    }

    /// The tenant it belongs to.
    pub fn tenant(&self) -> &str {
        match self {
            Due::Ring { tenant, .. }
            | Due::Consent { tenant, .. }
            | Due::Presence { tenant, .. } => tenant,
        }
    }

    fn call(&self) -> &str {
        match self {
            Due::Ring { call, .. } | Due::Consent { call, .. } | Due::Presence { call, .. } => call,
        }
    }
}

impl Calls {
    /// Claims up to `limit` due deadlines (each leased to this gateway for a while).
    pub async fn claim_due(&self, limit: usize) -> Result<Vec<Due>> {
        let now = now_ms();
        let members: Vec<String> = self
            .claim
            .key(keys::CALL_DEADLINES)
            .arg(now)
            .arg(limit)
            .arg(now + super::CLAIM_LEASE_MS)
            .invoke_async(&mut self.redis.clone())
            .await?;
        let mut due = Vec::with_capacity(members.len());
        for m in members {
            match Due::parse(&m) {
                Some(d) => due.push(d),
                None => {
                    tracing::warn!(member = %m, "unreadable call deadline dropped");
                    self.drop_deadline(&m).await;
                }
            }
        }
        Ok(due)
    }

    async fn drop_deadline(&self, member: &str) {
        let dropped: std::result::Result<(), _> = redis::cmd("ZREM")
            .arg(keys::CALL_DEADLINES)
            .arg(member)
            .query_async(&mut self.redis.clone())
            .await;
        if let Err(e) = dropped {
            tracing::debug!(error = %e, "a call deadline not dropped; its lease runs out");
        }
    }

    /// Handles one due deadline; returns the notices to emit (to users of its tenant)
    /// and the recording outbox entry to deliver, if any.
    pub async fn on_due(&self, due: &Due) -> Result<(Vec<Notice>, Option<String>), ClientError> {
        let (tenant, call) = (due.tenant(), due.call());
        let outcome = match due {
            Due::Ring { .. } => {
                self.update(tenant, call, |c, now| Ok(c.ring_timeout(now)))
                    .await
            }
            Due::Consent { .. } => {
                self.update(tenant, call, |c, now| Ok(c.consent_timeout(now)))
                    .await
            }
            Due::Presence { user, .. } => match self.presence(due, user).await? {
                Some(leave) if leave => {
                    self.update(tenant, call, |c, now| Ok(c.leave(user, now)))
                        .await
                }
                _ => return Ok((Vec::new(), None)),
            },
        };
        match outcome {
            Ok(up) => {
                if up.fx == super::Effects::default() {
                    // Nothing to do after all (handled already, or not due): set the
                    // deadline back from the stored state.
                    self.settle_deadline(due).await;
                }
                Ok((up.fx.notices, up.outbox))
            }
            Err(e) if e.code == ErrorCode::NotFound => {
                self.drop_deadline(&due.member()).await;
                Ok((Vec::new(), None))
            }
            Err(e) => Err(e),
        }
    }

    /// A member's presence check; `Some(true)`: absent for a whole grace period, leave.
    async fn presence(&self, due: &Due, user: &str) -> Result<Option<bool>, ClientError> {
        let (tenant, call) = (due.tenant(), due.call());
        let grace = ms_duration(self.settings.leave_grace);
        let now = now_ms();
        let absent = keys::call_absent(tenant, call);
        let live = self
            .live_sockets(tenant, user)
            .await
            .map_err(|e| internal(&e))?;
        let mut pipe = redis::pipe();
        if live > 0 {
            self.present(due, user, now, &mut pipe)
                .await
                .map_err(|e| internal(&e))?;
        } else {
            let since: Option<i64> = redis::cmd("HGET")
                .arg(&absent)
                .arg(user)
                .query_async(&mut self.redis.clone())
                .await
                .map_err(|e| internal(&e.into()))?;
            match since {
                Some(since) if now - since >= grace => return Ok(Some(true)),
                Some(since) => {
                    pipe.zadd(keys::CALL_DEADLINES, due.member(), since + grace)
                        .ignore();
                }
                None => {
                    pipe.hset_nx(&absent, user, now)
                        .ignore()
                        .pexpire(&absent, ms_duration(CALL_TTL))
                        .ignore()
                        .zadd(keys::CALL_DEADLINES, due.member(), now + grace)
                        .ignore();
                }
            }
        }
        pipe.query_async::<()>(&mut self.redis.clone())
            .await
            .map_err(|e| internal(&e.into()))?;
        Ok(Some(false))
    }

    /// A present member: clear the absence mark, check again one grace period on, keep
    /// the call's keys alive and put back deadlines the set lost.
    async fn present(
        &self,
        due: &Due,
        user: &str,
        now: i64,
        pipe: &mut redis::Pipeline,
    ) -> Result<()> {
        let (tenant, call_id) = (due.tenant(), due.call());
        let Some((call, _)) = self.load(tenant, call_id).await? else {
            pipe.zrem(keys::CALL_DEADLINES, due.member()).ignore();
            return Ok(());
        };
        if !call.is_joined(user) {
            pipe.zrem(keys::CALL_DEADLINES, due.member()).ignore();
            return Ok(());
        }
        let ttl = ms_duration(CALL_TTL);
        let grace = ms_duration(self.settings.leave_grace);
        pipe.hdel(keys::call_absent(tenant, call_id), user)
            .ignore()
            .zadd(keys::CALL_DEADLINES, due.member(), now + grace)
            .ignore()
            .zadd(keys::ACTIVE_CALLS, format!("{tenant}|{call_id}"), now)
            .ignore();
        for key in [
            keys::call(tenant, call_id),
            keys::conversation_call(tenant, &call.conversation),
            keys::user_calls(tenant, user),
            keys::call_sockets(tenant, user),
        ] {
            pipe.pexpire(key, ttl).ignore();
        }
        let restore = [
            (
                Due::Ring {
                    tenant: tenant.to_owned(),
                    call: call_id.to_owned(),
                },
                call.in_state(MemberState::Ringing)
                    .next()
                    .map(|_| call.ring_deadline),
            ),
            (
                Due::Consent {
                    tenant: tenant.to_owned(),
                    call: call_id.to_owned(),
                },
                call.consent_deadline(),
            ),
        ];
        for (d, at) in restore {
            if let Some(at) = at {
                pipe.cmd("ZADD")
                    .arg(keys::CALL_DEADLINES)
                    .arg("NX")
                    .arg(at)
                    .arg(d.member())
                    .ignore();
            }
        }
        Ok(())
    }

    /// Sets a deadline that fired without effect back from the stored call.
    async fn settle_deadline(&self, due: &Due) {
        let Ok(Some((c, _))) = self.load(due.tenant(), due.call()).await else {
            return;
        };
        let next = match due {
            Due::Ring { .. } => c
                .in_state(MemberState::Ringing)
                .next()
                .map(|_| c.ring_deadline),
            Due::Consent { .. } => c.consent_deadline(),
            Due::Presence { user, .. } => c
                .is_joined(user)
                .then(|| now_ms() + ms_duration(self.settings.leave_grace)),
        };
        let mut pipe = redis::pipe();
        match next {
            Some(at) => pipe.zadd(keys::CALL_DEADLINES, due.member(), at).ignore(),
            None => pipe.zrem(keys::CALL_DEADLINES, due.member()).ignore(),
        };
        if let Err(e) = pipe.query_async::<()>(&mut self.redis.clone()).await {
            tracing::warn!(error = %e, "call deadline not set again");
        }
    }

    /// Calls seen alive lately (every tenant), for the gauge; forgets the others (ended
    /// by expiry, or by a gateway that died mid-way).
    pub async fn active(&self) -> Result<u64> {
        let stale_before =
            now_ms() - 2 * ms_duration(self.settings.leave_grace) - 2 * super::CLAIM_LEASE_MS;
        let (n,): (u64,) = redis::pipe()
            .zrembyscore(keys::ACTIVE_CALLS, "-inf", stale_before)
            .ignore()
            .zcard(keys::ACTIVE_CALLS)
            .query_async(&mut self.redis.clone())
            .await?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_round_trip() {
        for due in [
            Due::Ring {
                tenant: "t".into(),
                call: "c".into(),
            },
            Due::Consent {
                tenant: "t".into(),
                call: "c".into(),
            },
            Due::Presence {
                tenant: "t".into(),
                call: "c".into(),
                user: "u@x".into(),
            },
        ] {
            assert_eq!(Due::parse(&due.member()), Some(due.clone()));
            assert_eq!(due.tenant(), "t");
        }
        assert_eq!(Due::parse("ring|t"), None);
        assert_eq!(Due::parse("other|t|c"), None);
    }
}
