//! Call and recording events on `/webrtc`: admission (the connection's budget; signals
//! have their own), payloads parsed, the caller's standing in the conversation checked,
//! the call service (`calls::Calls`) applied, the ack, its notices emitted to the users'
//! sockets on every gateway, then the recording change (if any) delivered in the
//! background. Also the call sweeper (ring timeouts, consent deadlines, presence checks,
//! enforced by whichever gateway claims them) and the recording outbox worker.

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
use crate::calls::{Call, Effects, Notice, Updated};
use crate::error::{ClientError, ErrorCode};
use crate::keys;
use crate::model::Role;
use crate::rate_limit::EventClass;

/// Deadlines one gateway works on at once.
const SWEEP_INFLIGHT: u32 = 64;
/// Outbox entries one gateway takes over per round.
const OUTBOX_BATCH: usize = 32;

pub(super) fn register<A: Adapter>(s: &SocketRef<A>) {
    s.on("call:start", on_start::<A>);
    s.on("call:accept", on_call::<A>);
    s.on("call:decline", on_call::<A>);
    s.on("call:hangup", on_hangup::<A>);
    s.on("call:signal", on_signal::<A>);
    s.on("recording:request", on_call::<A>);
    s.on("recording:consent", on_recording::<A>);
    s.on("recording:stop", on_recording::<A>);
}

/// Emits each notice to its user's sockets on `/webrtc`, on every gateway.
async fn notify<A: Adapter>(to: impl Fn(String) -> BroadcastOperators<A>, notices: Vec<Notice>) {
    for n in notices {
        if let Err(e) = to(n.user.clone()).emit(n.event, &n.payload).await {
            tracing::warn!(error = %e, event = n.event, "call notice not emitted");
        }
    }
}

/// Emits a stored change's notices to the tenant's users, then delivers its recording
/// change in the background.
async fn publish<A: Adapter>(io: &SocketIo<A>, gw: &Shared, tenant: &str, up: Updated) {
    if let Some(ns) = io.of(WEBRTC_NAMESPACE) {
        notify(
            |u| ns.clone().to(keys::user_room(tenant, &u)),
            up.fx.notices,
        )
        .await;
    }
    gw.calls.deliver_later(up.outbox);
}

/// Acks a stored change, then publishes it (the caller hears first, then the others);
/// or acks the refusal.
async fn answer<A: Adapter>(
    reply: Reply<A>,
    io: &SocketIo<A>,
    gw: &Shared,
    result: Result<(Value, Identity, Updated), ClientError>,
) {
    match result {
        Ok((ack, id, up)) => {
            reply.ok(&ack);
            publish(io, gw, &id.tenant_id, up).await;
        }
        Err(e) => reply.err(&e),
    }
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

/// The call, once the caller's standing in its conversation is checked (a participant,
/// not banned); returns their role too.
async fn call_for(gw: &Shared, id: &Identity, call: &str) -> Result<(Call, Role), ClientError> {
    let call = gw.calls.get(&id.tenant_id, call).await?;
    let access = gw.chat.member(id, &call.conversation).await?;
    Ok((call, access.role))
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

async fn on_start<A: Adapter>(
    s: SocketRef<A>,
    io: SocketIo<A>,
    TryData(data): TryData<Value>,
    reply: Reply<A>,
    State(gw): State<Shared>,
) {
    let result = async {
        let (id, req) = admitted(&s, &gw, EventClass::Other, data, StartRequest::parse).await?;
        gw.chat.member(&id, &req.conversation_id).await?;
        register_socket(&gw, &s, &id).await?;
        let (ack, up) = gw.calls.start(&id, &req).await?;
        Ok((ack, id, up))
    }
    .await;
    answer(reply, &io, &gw, result).await;
}

/// `call:accept`, `call:decline`, `recording:request`: an event on `{callId}` by a
/// participant of the call's conversation.
async fn on_call<A: Adapter>(
    s: SocketRef<A>,
    io: SocketIo<A>,
    socketioxide::extract::Event(event): socketioxide::extract::Event,
    TryData(data): TryData<Value>,
    reply: Reply<A>,
    State(gw): State<Shared>,
) {
    let result = async {
        let (id, req) = admitted(&s, &gw, EventClass::Other, data, |p| {
            CallRequest::parse(&event, p)
        })
        .await?;
        call_for(&gw, &id, &req.call_id).await?;
        let (tenant, user) = (id.tenant_id.as_str(), id.user_id.as_str());
        let up = match event.as_str() {
            "call:accept" => {
                register_socket(&gw, &s, &id).await?;
                gw.calls.accept(&id, &req.call_id).await?
            }
            "call:decline" => {
                gw.calls
                    .update(tenant, &req.call_id, |c, now| c.decline(user, now))
                    .await?
            }
            _ => {
                let timeouts = gw.calls.settings.timeouts;
                let recording = uuid::Uuid::now_v7().to_string();
                gw.calls
                    .update(tenant, &req.call_id, |c, now| {
                        c.request_recording(user, recording.clone(), now, timeouts)
                    })
                    .await?
            }
        };
        let ack = match event.as_str() {
            "call:accept" => up.call.view(),
            "call:decline" => json!({"callId": req.call_id}),
            _ => {
                let rec = up.call.recording.as_ref();
                json!({
                    "recordingId": rec.map(|r| r.id.clone()),
                    "consentDeadline": rec.map(|r| r.deadline),
                    "status": rec.map(|r| r.status.as_str()),
                })
            }
        };
        Ok((ack, id, up))
    }
    .await;
    answer(reply, &io, &gw, result).await;
}

async fn on_hangup<A: Adapter>(
    s: SocketRef<A>,
    io: SocketIo<A>,
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
        if req.for_everyone {
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
        }
        let up = gw
            .calls
            .update(&id.tenant_id, &req.call_id, |c, now| {
                if req.for_everyone {
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
        let ack = json!({"callId": req.call_id, "ended": up.fx.ended.is_some()});
        Ok((ack, id, up))
    }
    .await;
    answer(reply, &io, &gw, result).await;
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
        let n = gw.calls.relay(&id, req).await?;
        // Relayed before the ack: a sender that sees `ok` knows the signal is on its way.
        if let Err(e) = s
            .within(keys::user_room(&id.tenant_id, &n.user))
            .emit(n.event, &n.payload)
            .await
        {
            tracing::warn!(error = %e, "call:signal not relayed");
            return Err(ClientError::unavailable("the signal relay"));
        }
        Ok(json!({}))
    }
    .await;
    reply.send(result);
}

/// `recording:consent`, `recording:stop`: an event on `{recordingId}`, applied to the
/// call the recording belongs to.
async fn on_recording<A: Adapter>(
    s: SocketRef<A>,
    io: SocketIo<A>,
    socketioxide::extract::Event(event): socketioxide::extract::Event,
    TryData(data): TryData<Value>,
    reply: Reply<A>,
    State(gw): State<Shared>,
) {
    let result = async {
        let id = gw.admit(&s, EventClass::Other).await?;
        let data = payload(data);
        let (recording, consent) = if event == "recording:consent" {
            let req = ConsentRequest::parse(data.as_ref())?;
            (req.recording_id, Some(req.consent))
        } else {
            (StopRequest::parse(data.as_ref())?.recording_id, None)
        };
        let call_id = gw
            .calls
            .call_of_recording(&id.tenant_id, &recording)
            .await?;
        call_for(&gw, &id, &call_id).await.map_err(|e| {
            if e.code == ErrorCode::NotFound {
                ClientError::new(
                    ErrorCode::NotFound,
                    format!("recording {recording} is over: its call ended"),
                )
            } else {
                e
            }
        })?;
        let user = id.user_id.as_str();
        let up = gw
            .calls
            .update(
                &id.tenant_id,
                &call_id,
                |c, now| -> Result<Effects, ClientError> {
                    match consent {
                        Some(consent) => c.consent(user, &recording, consent, now),
                        None => c.stop_recording(user, &recording, now),
                    }
                },
            )
            .await?;
        let status = up
            .fx
            .recording
            .as_ref()
            .or(up.call.recording.as_ref().filter(|r| r.id == recording))
            .map(|r| r.status.as_str());
        let ack = json!({"recordingId": recording, "status": status});
        Ok((ack, id, up))
    }
    .await;
    answer(reply, &io, &gw, result).await;
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
        Ok(Some(up)) => publish(io, gw, tenant, up).await,
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "a removed participant was not taken out of the call"),
    }
}

/// A `/webrtc` socket went: when it was its user's last, they are absent from their
/// calls from now on.
pub(super) async fn on_disconnect<A: Adapter>(s: SocketRef<A>, State(gw): State<Shared>) {
    let Ok(id) = identity(&s) else { return };
    if let Err(e) = gw.calls.socket_disconnected(&id, &s.id.to_string()).await {
        tracing::warn!(error = %e, "a /webrtc disconnect was not recorded; the periodic presence check covers it");
    }
}

/// Claims due call deadlines and handles them (bounded), until `cancel` fires; samples
/// the active calls and the recording outbox every second. The outbox worker runs beside
/// it (a slow database or broker holds up no deadline).
pub async fn run_call_sweeper<A: Adapter>(gw: Shared, io: SocketIo<A>, cancel: CancellationToken) {
    let outbox = tokio::spawn(run_outbox(gw.clone(), cancel.clone()));
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
            if let Ok(n) = gw.calls.outbox_len().await {
                gw.metrics
                    .recording_outbox
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
                    Ok((notices, outbox)) => {
                        if let Some(ns) = io.of(WEBRTC_NAMESPACE) {
                            let tenant = due.tenant();
                            notify(|u| ns.clone().to(keys::user_room(tenant, &u)), notices).await;
                        }
                        gw.calls.deliver_later(outbox);
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
    let _ = outbox.await;
}

/// Delivers the changes of recordings whose gateway did not (it failed, or died), each
/// recording's in order, until `cancel` fires.
async fn run_outbox(gw: Shared, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        let claimed = match gw.calls.claim_outbox(OUTBOX_BATCH).await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "claiming the recording outbox failed");
                continue;
            }
        };
        for member in claimed {
            if cancel.is_cancelled() {
                break;
            }
            // A failure leaves the rest queued (logged and counted by `drain`).
            let _ = gw.calls.drain(&member).await;
        }
    }
}
