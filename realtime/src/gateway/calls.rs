//! Call and recording events on `/webrtc`: admission (the connection's budget; signals
//! have their own), payloads parsed, the caller's standing in the conversation checked,
//! the call service (`calls::Calls`) applied, the ack, and its notices emitted to the
//! users' sockets on every gateway. Also the call sweeper: ring timeouts, consent
//! deadlines and presence checks, enforced by whichever gateway claims them.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use socketioxide::SocketIo;
use socketioxide::adapter::Adapter;
use socketioxide::extract::{SocketRef, State, TryData};
use socketioxide::operators::BroadcastOperators;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::reply::Reply;
use super::{Shared, WEBRTC_NAMESPACE, identity, payload};
use crate::auth::Identity;
use crate::calls::protocol::{
    CallRequest, ConsentRequest, SignalRequest, StartRequest, StopRequest,
};
use crate::calls::{Call, Notice};
use crate::error::{ClientError, ErrorCode};
use crate::keys;
use crate::model::Role;
use crate::rate_limit::EventClass;

/// Deadlines one gateway works on at once.
const SWEEP_INFLIGHT: u32 = 64;

pub(super) fn register<A: Adapter>(s: &SocketRef<A>) {
    s.on("call:start", on_start::<A>);
    s.on("call:accept", on_accept::<A>);
    s.on("call:decline", on_decline::<A>);
    s.on("call:hangup", on_hangup::<A>);
    s.on("call:signal", on_signal::<A>);
    s.on("recording:request", on_recording_request::<A>);
    s.on("recording:consent", on_consent::<A>);
    s.on("recording:stop", on_recording_stop::<A>);
}

/// Emits each notice to its user's sockets on `/webrtc`, on every gateway.
async fn notify<A: Adapter>(to: impl Fn(String) -> BroadcastOperators<A>, notices: Vec<Notice>) {
    for n in notices {
        if let Err(e) = to(n.user.clone()).emit(n.event, &n.payload).await {
            tracing::warn!(error = %e, event = n.event, "call notice not emitted");
        }
    }
}

async fn notify_from<A: Adapter>(s: &SocketRef<A>, id: &Identity, notices: Vec<Notice>) {
    notify(|u| s.within(keys::user_room(&id.tenant_id, &u)), notices).await;
}

/// Admits an event of `class`, parses its payload.
async fn admitted<A: Adapter, R>(
    s: &SocketRef<A>,
    gw: &Shared,
    class: EventClass,
    data: Result<Value, impl std::fmt::Display>,
    parse: impl FnOnce(Option<&Value>) -> Result<R, ClientError>,
) -> Result<(Identity, R), ClientError> {
    let id = gw.admit(s, class).await?;
    let req = parse(payload(data).as_ref())?;
    Ok((id, req))
}

/// Registers the socket for call presence (again) before its user joins a call.
async fn register_socket<A: Adapter>(
    gw: &Shared,
    s: &SocketRef<A>,
    id: &Identity,
) -> Result<(), ClientError> {
    gw.calls
        .socket_connected(id, &s.id.to_string())
        .await
        .map_err(|e| e.to_client())
}

/// Takes a kicked or banned user out of the conversation's call, on every gateway.
pub(super) async fn remove_from_call<A: Adapter>(
    io: &SocketIo<A>,
    gw: &Shared,
    tenant: &str,
    conversation: &str,
    user: &str,
) {
    match gw
        .calls
        .remove_from_conversation_call(tenant, conversation, user)
        .await
    {
        Ok(notices) => {
            if let Some(ns) = io.of(WEBRTC_NAMESPACE) {
                notify(|u| ns.clone().to(keys::user_room(tenant, &u)), notices).await;
            }
        }
        Err(e) => tracing::warn!(error = %e, "a removed participant was not taken out of the call"),
    }
}

/// The call, once the caller's standing in its conversation is checked (a participant,
/// not banned); returns their role too.
async fn call_for(gw: &Shared, id: &Identity, call: &str) -> Result<(Call, Role), ClientError> {
    let call = gw.calls.get(&id.tenant_id, call).await?;
    let access = gw.chat.member(id, &call.conversation).await?;
    Ok((call, access.role))
}

async fn on_start<A: Adapter>(
    s: SocketRef<A>,
    TryData(data): TryData<Value>,
    reply: Reply<A>,
    State(gw): State<Shared>,
) {
    let result = async {
        let (id, req) = admitted(&s, &gw, EventClass::Other, data, StartRequest::parse).await?;
        gw.chat.member(&id, &req.conversation_id).await?;
        register_socket(&gw, &s, &id).await?;
        let (ack, notices) = gw.calls.start(&id, &req).await?;
        notify_from(&s, &id, notices).await;
        Ok(ack)
    }
    .await;
    reply.send(result);
}

async fn on_accept<A: Adapter>(
    s: SocketRef<A>,
    TryData(data): TryData<Value>,
    reply: Reply<A>,
    State(gw): State<Shared>,
) {
    let result = async {
        let (id, req) = admitted(&s, &gw, EventClass::Other, data, |p| {
            CallRequest::parse("call:accept", p)
        })
        .await?;
        call_for(&gw, &id, &req.call_id).await?;
        register_socket(&gw, &s, &id).await?;
        let timeouts = gw.calls.settings.timeouts;
        let (call, fx) = gw
            .calls
            .update(&id.tenant_id, &req.call_id, |c, now| {
                Ok(c.accept(&id.user_id, now, timeouts))
            })
            .await?;
        notify_from(&s, &id, fx.notices).await;
        Ok(call.view())
    }
    .await;
    reply.send(result);
}

async fn on_decline<A: Adapter>(
    s: SocketRef<A>,
    TryData(data): TryData<Value>,
    reply: Reply<A>,
    State(gw): State<Shared>,
) {
    let result = async {
        let (id, req) = admitted(&s, &gw, EventClass::Other, data, |p| {
            CallRequest::parse("call:decline", p)
        })
        .await?;
        call_for(&gw, &id, &req.call_id).await?;
        let (_, fx) = gw
            .calls
            .update(&id.tenant_id, &req.call_id, |c, now| {
                c.decline(&id.user_id, now)
            })
            .await?;
        notify_from(&s, &id, fx.notices).await;
        Ok(json!({"callId": req.call_id}))
    }
    .await;
    reply.send(result);
}

async fn on_hangup<A: Adapter>(
    s: SocketRef<A>,
    TryData(data): TryData<Value>,
    reply: Reply<A>,
    State(gw): State<Shared>,
) {
    let result = async {
        let (id, req) = admitted(&s, &gw, EventClass::Other, data, |p| {
            CallRequest::parse("call:hangup", p)
        })
        .await?;
        let call = gw.calls.get(&id.tenant_id, &req.call_id).await?;
        let for_everyone = if req.for_everyone {
            let role = gw.chat.member(&id, &call.conversation).await?.role;
            if call.from != id.user_id && role < Role::Admin {
                return Err(ClientError::new(
                    ErrorCode::Forbidden,
                    format!(
                        "only the caller or a conversation owner or admin ends call {} for everyone; you are {}",
                        req.call_id,
                        role.with_article()
                    ),
                ));
            }
            true
        } else {
            false
        };
        let (_, fx) = gw
            .calls
            .update(&id.tenant_id, &req.call_id, |c, now| {
                if for_everyone {
                    return Ok(c.end_for_everyone(now));
                }
                if !c.members.contains_key(&id.user_id) {
                    return Err(ClientError::new(
                        ErrorCode::Forbidden,
                        format!("you are not in call {}", c.id),
                    ));
                }
                Ok(c.leave(&id.user_id, now))
            })
            .await?;
        notify_from(&s, &id, fx.notices).await;
        Ok(json!({"callId": req.call_id, "ended": fx.ended.is_some()}))
    }
    .await;
    reply.send(result);
}

async fn on_signal<A: Adapter>(
    s: SocketRef<A>,
    TryData(data): TryData<Value>,
    reply: Reply<A>,
    State(gw): State<Shared>,
) {
    let result = async {
        let max = gw.calls.settings.max_signal_bytes;
        let (id, req) = admitted(&s, &gw, EventClass::Signal, data, |p| {
            SignalRequest::parse(p, max)
        })
        .await?;
        let notice = gw.calls.relay(&id, req).await?;
        notify_from(&s, &id, vec![notice]).await;
        Ok(json!({}))
    }
    .await;
    reply.send(result);
}

async fn on_recording_request<A: Adapter>(
    s: SocketRef<A>,
    TryData(data): TryData<Value>,
    reply: Reply<A>,
    State(gw): State<Shared>,
) {
    let result = async {
        let (id, req) = admitted(&s, &gw, EventClass::Other, data, |p| {
            CallRequest::parse("recording:request", p)
        })
        .await?;
        call_for(&gw, &id, &req.call_id).await?;
        let timeouts = gw.calls.settings.timeouts;
        let recording_id = uuid::Uuid::now_v7().to_string();
        let (_, fx) = gw
            .calls
            .update(&id.tenant_id, &req.call_id, |c, now| {
                c.request_recording(&id.user_id, recording_id.clone(), now, timeouts)
            })
            .await?;
        notify_from(&s, &id, fx.notices).await;
        let rec = fx.recording.as_ref();
        Ok(json!({
            "recordingId": recording_id,
            "consentDeadline": rec.map(|r| r.deadline),
            "status": rec.map(|r| r.status.as_str()),
        }))
    }
    .await;
    reply.send(result);
}

/// Runs a recording transition on the call the recording belongs to.
async fn on_recording<A: Adapter>(
    s: &SocketRef<A>,
    gw: &Shared,
    id: &Identity,
    recording: &str,
    change: impl Fn(&mut Call, i64) -> Result<crate::calls::Effects, ClientError>,
) -> Result<Value, ClientError> {
    let call_id = gw.calls.call_of_recording(&id.tenant_id, recording).await?;
    call_for(gw, id, &call_id).await.map_err(|e| {
        if e.code == ErrorCode::NotFound {
            ClientError::new(
                ErrorCode::NotFound,
                format!("recording {recording} is over: its call ended"),
            )
        } else {
            e
        }
    })?;
    let (call, fx) = gw
        .calls
        .update(&id.tenant_id, &call_id, |c, now| change(c, now))
        .await?;
    notify_from(s, id, fx.notices).await;
    let status = fx
        .recording
        .as_ref()
        .or(call.recording.as_ref().filter(|r| r.id == recording))
        .map(|r| r.status.as_str());
    Ok(json!({"recordingId": recording, "status": status}))
}

async fn on_consent<A: Adapter>(
    s: SocketRef<A>,
    TryData(data): TryData<Value>,
    reply: Reply<A>,
    State(gw): State<Shared>,
) {
    let result = async {
        let (id, req) = admitted(&s, &gw, EventClass::Other, data, ConsentRequest::parse).await?;
        on_recording(&s, &gw, &id, &req.recording_id, |c, now| {
            c.consent(&id.user_id, &req.recording_id, req.consent, now)
        })
        .await
    }
    .await;
    reply.send(result);
}

async fn on_recording_stop<A: Adapter>(
    s: SocketRef<A>,
    TryData(data): TryData<Value>,
    reply: Reply<A>,
    State(gw): State<Shared>,
) {
    let result = async {
        let (id, req) = admitted(&s, &gw, EventClass::Other, data, StopRequest::parse).await?;
        on_recording(&s, &gw, &id, &req.recording_id, |c, now| {
            c.stop_recording(&id.user_id, &req.recording_id, now)
        })
        .await
    }
    .await;
    reply.send(result);
}

/// A `/webrtc` socket went: its user's calls check their presence one grace period on.
pub(super) async fn on_disconnect<A: Adapter>(s: SocketRef<A>, State(gw): State<Shared>) {
    let Ok(id) = identity(&s) else { return };
    if let Err(e) = gw.calls.socket_disconnected(&id, &s.id.to_string()).await {
        tracing::warn!(error = %e, "a /webrtc disconnect was not recorded; the periodic presence check covers it");
    }
}

/// Claims due call deadlines and handles them (bounded), until `cancel` fires; samples
/// the active calls gauge every second.
pub async fn run_call_sweeper<A: Adapter>(gw: Shared, io: SocketIo<A>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let slots = Arc::new(Semaphore::new(SWEEP_INFLIGHT as usize));
    let mut sampled = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        if sampled.elapsed() >= Duration::from_secs(1) {
            sampled = tokio::time::Instant::now();
            if let Ok(n) = gw.calls.active().await {
                gw.metrics
                    .calls_active
                    .set(i64::try_from(n).unwrap_or(i64::MAX));
            }
        }
        let free = slots.available_permits();
        if free == 0 {
            continue;
        }
        let claimed = match gw.calls.claim_due(free).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "claiming call deadlines failed");
                continue;
            }
        };
        for due in claimed {
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let (gw, io) = (gw.clone(), io.clone());
            tokio::spawn(async move {
                match gw.calls.on_due(&due).await {
                    Ok(notices) => {
                        if let Some(ns) = io.of(WEBRTC_NAMESPACE) {
                            let tenant = crate::calls::Calls::tenant_of(&due);
                            notify(
                                |user| ns.clone().to(keys::user_room(tenant, &user)),
                                notices,
                            )
                            .await;
                        }
                    }
                    // The claim's lease runs out and the deadline is claimed again.
                    Err(e) => {
                        tracing::warn!(error = %e, "call deadline not handled; retried later")
                    }
                }
                drop(permit);
            });
        }
    }
    if slots.acquire_many(SWEEP_INFLIGHT).await.is_err() {
        tracing::warn!("call sweeper semaphore closed before shutdown");
    }
}
