// Helpers of the /webrtc tests: connecting, acks, and bringing members into a call.
import assert from "node:assert/strict";
import * as h from "./harness.mjs";

/** A /webrtc socket of `user` (tenant `tenant`) on `proc`, recording every event. */
export async function rtc(proc, tenant, user, opts = {}) {
  const socket = await h.connect(proc, h.mintToken({ tenant, user }), { namespace: "/webrtc", ...opts });
  socket.user = user;
  return socket;
}

/** The ack of a successful event. */
export function ok(r) {
  assert.equal(r?.ok, true, JSON.stringify(r));
  return r;
}

/** The ack of a refused event, with its code. */
export function refused(r, code) {
  assert.equal(r?.ok, false, JSON.stringify(r));
  assert.equal(r.error.code, code, JSON.stringify(r));
  assert.ok(r.error.message.length > 0);
  return r.error;
}

/** Emits `event` and returns its ack. */
export const send = (socket, event, payload) => socket.emitWithAck(event, payload);

/** The payload of the next `event` on `socket` for `callId` (or matching `pred`) since `since`. */
export async function next(socket, event, { callId, since = 0, pred = () => true, timeoutMs = 10_000 } = {}) {
  const found = await h.nextEvent(socket, event, {
    since,
    timeoutMs,
    pred: (p) => (callId === undefined || p.callId === callId) && pred(p),
  });
  return found.payload;
}

/**
 * `caller` starts a call in `conversation` and every socket of `callees` accepts it;
 * returns the callId once the caller has seen each of them join.
 */
export async function inCall(conversation, caller, callees, media = "audio") {
  const since = Date.now();
  const { callId } = ok(await send(caller, "call:start", { conversationId: conversation, media }));
  for (const callee of callees) {
    await next(callee, "call:incoming", { callId, since });
    ok(await send(callee, "call:accept", { callId }));
  }
  for (const callee of callees) {
    await next(caller, "call:participant-joined", { callId, since, pred: (p) => p.userId === callee.user });
  }
  return callId;
}
