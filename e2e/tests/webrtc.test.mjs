// Call signalling on /webrtc between two real gateways sharing Redis, MongoDB and the
// broker (SPEC.md §3 "Calls on /webrtc"), driven by the official socket.io-client: a
// caller on one gateway, the callee on the other; every event and its refusals; ring
// timeout, decline, hang-up, the grace period of a member who lost their sockets; the
// call surviving a gateway killed with SIGKILL (its deadlines enforced by the other one);
// signal floods; tenant isolation.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import * as h from "../lib/harness.mjs";
import { inCall, next, ok, refused, rtc, send } from "../lib/calls.mjs";

const s = h.suite("webrtc", 12);
const tenant = `acme-${s.id}`;
const other = `globex-${s.id}`;
const GRACE_S = 2;
const env = {
  CALL_RING_TIMEOUT_SECONDS: "2",
  CALL_LEAVE_GRACE_SECONDS: String(GRACE_S),
  KAFKA_RECORDING_TOPIC: `${s.topicPrefix}.webrtc.recording.events`,
  CONNECTION_EVENT_LIMITS: "read:20/200,join:50/500,other:50/200,signal:20/20",
  CALL_MAX_MEMBERS: "3",
};
let gw1, gw2, db, client;

const startGateway = (port) => h.startRealtime({ role: "gateway", ...s, env, port });

before(async () => {
  ({ client, db } = await h.mongo(s.db));
  for (const c of ["one", "decline", "ring", "refuse", "flood", "grace", "restart", "group"]) {
    await h.seedConversation(db, tenant, c, ["alice", "bob", "carol"]);
  }
  await h.seedConversation(db, tenant, "pair", ["alice", "bob"]);
  await h.seedConversation(db, tenant, "kick", ["alice", "bob", "carol"]);
  await h.seedConversation(db, tenant, "alone", ["alice"]);
  await h.seedConversation(db, tenant, "crowd", ["alice", "bob", "carol", "dave"]);
  await h.seedConversation(db, tenant, "carols", ["carol", "dave"]);
  // Same ids in another tenant: nothing may cross.
  await h.seedConversation(db, other, "one", ["alice", "bob"]);
  gw1 = await startGateway();
  gw2 = await startGateway();
});

after(async () => {
  h.closeAllSockets();
  await h.stopAll();
  await client?.close();
});

test("a call between two gateways: incoming, accept, signals relayed both ways, hang-up", async () => {
  const alice = await rtc(gw1, tenant, "alice");
  const bob = await rtc(gw2, tenant, "bob");
  const since = Date.now();
  const start = ok(await send(alice, "call:start", { conversationId: "pair", media: "video" }));
  assert.equal(start.from, "alice");
  assert.deepEqual(start.members, ["alice"]);
  assert.deepEqual(start.ringing, ["bob"]);
  const incoming = await next(bob, "call:incoming", { callId: start.callId, since });
  assert.deepEqual(
    { ...incoming, ringDeadline: undefined },
    { callId: start.callId, conversationId: "pair", from: "alice", media: "video", ringDeadline: undefined },
  );
  const accepted = ok(await send(bob, "call:accept", { callId: start.callId }));
  assert.deepEqual(accepted.members, ["alice", "bob"]);
  const joined = await next(alice, "call:participant-joined", { callId: start.callId });
  assert.equal(joined.userId, "bob");

  const offer = { type: "offer", sdp: "v=0\r\no=alice 1 1 IN IP4 127.0.0.1\r\n" };
  ok(await send(alice, "call:signal", { callId: start.callId, to: "bob", signal: offer }));
  const got = await next(bob, "call:signal", { callId: start.callId });
  assert.deepEqual(got, { callId: start.callId, from: "alice", signal: offer });
  const candidate = { type: "candidate", candidate: { candidate: "candidate:1 1 udp 1 127.0.0.1 40000 typ relay", sdpMid: "0", sdpMLineIndex: 0 } };
  ok(await send(bob, "call:signal", { callId: start.callId, to: "alice", signal: { type: "answer", sdp: "v=0\r\n" } }));
  ok(await send(bob, "call:signal", { callId: start.callId, to: "alice", signal: candidate }));
  await next(alice, "call:signal", { callId: start.callId, pred: (p) => p.signal.type === "candidate" && p.from === "bob" });
  const answers = alice.received("call:signal").map((p) => p.signal.type);
  assert.deepEqual(answers, ["answer", "candidate"], "in order");
  assert.ok((await h.metric(gw1, 'realtime_call_signals_relayed_total{kind="offer"}')) >= 1);
  assert.ok((await h.metric(gw2, 'realtime_call_signals_relayed_total{kind="candidate"}')) >= 1);
  assert.ok((await h.metric(gw2, "realtime_call_setup_seconds_count")) >= 1);
  await h.waitFor(async () => (await h.metric(gw1, "realtime_calls_active")) >= 1, { what: "calls_active gauge" });

  const hang = ok(await send(alice, "call:hangup", { callId: start.callId }));
  assert.equal(hang.ended, true);
  assert.equal((await next(bob, "call:participant-left", { callId: start.callId })).userId, "alice");
  assert.equal((await next(bob, "call:ended", { callId: start.callId })).reason, "hangup");
  refused(await send(bob, "call:signal", { callId: start.callId, to: "alice", signal: offer }), "not_found");
  alice.close();
  bob.close();
});

test("a decline by everyone ends an unanswered call: call:declined, then call:ended declined", async () => {
  const alice = await rtc(gw1, tenant, "alice");
  const bob = await rtc(gw2, tenant, "bob");
  const carol = await rtc(gw2, tenant, "carol");
  const since = Date.now();
  const { callId } = ok(await send(alice, "call:start", { conversationId: "decline", media: "audio" }));
  await next(bob, "call:incoming", { callId, since });
  ok(await send(bob, "call:decline", { callId }));
  assert.equal((await next(alice, "call:declined", { callId })).userId, "bob");
  ok(await send(carol, "call:decline", { callId }));
  assert.equal((await next(alice, "call:ended", { callId })).reason, "declined");
  // Every socket of a decliner hears it (another device stops ringing).
  assert.equal((await next(carol, "call:declined", { callId })).userId, "carol");
  assert.ok((await h.metric(gw2, 'realtime_calls_ended_total{reason="declined"}')) >= 1);
  for (const s of [alice, bob, carol]) s.close();
});

test("refusals: payloads, strangers, unknown calls, oversize signals (connection stays), roles", async () => {
  const alice = await rtc(gw1, tenant, "alice");
  const bob = await rtc(gw2, tenant, "bob");
  const carol = await rtc(gw1, tenant, "carol");
  const dave = await rtc(gw1, tenant, "dave");
  refused(await send(alice, "call:start", { conversationId: "refuse" }), "invalid_payload");
  refused(await send(alice, "call:start", { conversationId: "refuse", media: "screen" }), "invalid_payload");
  refused(await send(alice, "call:start", "refuse"), "invalid_payload");
  refused(await send(alice, "call:start", { conversationId: "a:b", media: "audio" }), "invalid_payload");
  refused(await send(dave, "call:start", { conversationId: "refuse", media: "audio" }), "forbidden");
  refused(await send(alice, "call:start", { conversationId: "nowhere", media: "audio" }), "forbidden");
  refused(await send(alice, "call:accept", { callId: "no-such-call" }), "not_found");
  const crowd = refused(await send(alice, "call:start", { conversationId: "crowd", media: "audio" }), "too_large");
  assert.match(crowd.message, /CALL_MAX_MEMBERS/);
  refused(await send(alice, "call:accept", {}), "invalid_payload");

  const callId = await inCall("refuse", alice, [bob], "audio");
  refused(await send(dave, "call:accept", { callId }), "forbidden");
  refused(await send(dave, "call:signal", { callId, to: "bob", signal: { type: "offer", sdp: "x" } }), "forbidden");
  // carol is a participant who rings but has not joined: no signals to or from her.
  refused(await send(carol, "call:signal", { callId, to: "bob", signal: { type: "offer", sdp: "x" } }), "forbidden");
  refused(await send(alice, "call:signal", { callId, to: "carol", signal: { type: "offer", sdp: "x" } }), "forbidden");
  refused(await send(alice, "call:signal", { callId, to: "bob", signal: { type: "offer" } }), "invalid_payload");
  refused(await send(alice, "call:signal", { callId, to: "bob", signal: { type: "bye" } }), "invalid_payload");
  refused(await send(alice, "call:signal", { callId, to: "bob", signal: { type: "candidate" } }), "invalid_payload");
  const huge = refused(
    await send(alice, "call:signal", { callId, to: "bob", signal: { type: "offer", sdp: "a".repeat(40_000) } }),
    "too_large",
  );
  assert.match(huge.message, /MAX_SIGNAL_BYTES/);
  assert.ok(alice.connected, "a refused signal leaves the connection open");
  ok(await send(alice, "call:signal", { callId, to: "bob", signal: { type: "offer", sdp: "v=0" } }));
  refused(await send(bob, "call:decline", { callId }), "conflict");
  refused(await send(bob, "call:hangup", { callId, forEveryone: true }), "forbidden");
  refused(await send(bob, "call:accept", { callId, forEveryone: true }), "invalid_payload");
  // A second call:start in the conversation joins the call going on.
  const again = ok(await send(carol, "call:start", { conversationId: "refuse", media: "audio" }));
  assert.equal(again.callId, callId);
  assert.equal(again.joined, true);
  assert.equal((await next(alice, "call:participant-joined", { callId, pred: (p) => p.userId === "carol" })).userId, "carol");
  // The owner of the conversation ends it for everyone.
  ok(await send(alice, "call:hangup", { callId, forEveryone: true }));
  for (const sock of [bob, carol]) {
    assert.equal((await next(sock, "call:ended", { callId })).reason, "ended_by_owner");
  }
  const unknown = await send(alice, "call:teleport", {});
  assert.equal(unknown.error.code, "unknown_event");
  for (const sock of [alice, bob, carol, dave]) sock.close();
});

test("a participant kicked or banned from the conversation is taken out of its call; nobody calls themselves", async () => {
  const alice = await rtc(gw1, tenant, "alice");
  const bob = await rtc(gw2, tenant, "bob");
  const carol = await rtc(gw2, tenant, "carol");
  refused(await send(alice, "call:start", { conversationId: "alone", media: "audio" }), "conflict");
  const callId = await inCall("kick", alice, [bob, carol]);
  const chat = await h.connect(gw1, h.mintToken({ tenant, user: "alice" }));
  ok(await chat.emitWithAck("room:join", { conversationId: "kick" }));
  ok(await chat.emitWithAck("moderation:kick", { conversationId: "kick", userId: "bob" }));
  assert.equal((await next(alice, "call:participant-left", { callId, pred: (p) => p.userId === "bob" })).userId, "bob");
  assert.equal((await next(bob, "call:participant-left", { callId })).userId, "bob", "the kicked user hears it too");
  refused(await send(bob, "call:signal", { callId, to: "alice", signal: { type: "offer", sdp: "x" } }), "forbidden");
  ok(await chat.emitWithAck("moderation:ban", { conversationId: "kick", userId: "carol" }));
  assert.equal((await next(alice, "call:ended", { callId })).reason, "hangup", "alone: the call ends");
  refused(await send(carol, "call:accept", { callId }), "not_found");
  for (const sock of [alice, bob, carol, chat]) sock.close();
});

test("a signal flood is rate_limited with a retry hint; the call goes on", async () => {
  const alice = await rtc(gw1, tenant, "alice");
  const bob = await rtc(gw2, tenant, "bob");
  const callId = await inCall("flood", alice, [bob]);
  const signal = { type: "candidate", candidate: { candidate: "candidate:1 1 udp 1 127.0.0.1 1 typ relay", sdpMid: "0" } };
  const acks = await Promise.all(
    Array.from({ length: 40 }, () => send(alice, "call:signal", { callId, to: "bob", signal })),
  );
  const limited = acks.filter((a) => a.ok === false);
  assert.ok(limited.length >= 15, `${limited.length} of 40 limited (burst 20)`);
  for (const a of limited) {
    assert.equal(a.error.code, "rate_limited");
    assert.ok(a.error.retryAfterMs > 0);
  }
  const relayed = acks.filter((a) => a.ok).length;
  await h.waitFor(() => bob.received("call:signal").length >= relayed, { what: `${relayed} signals at bob` });
  assert.equal(bob.received("call:signal").length, relayed, "exactly the admitted signals are relayed");
  ok(await send(alice, "call:hangup", { callId }));
  alice.close();
  bob.close();
});

test("a member whose sockets all go leaves after the grace period; one who reconnects stays", async () => {
  const alice = await rtc(gw1, tenant, "alice");
  const bob = await rtc(gw2, tenant, "bob");
  const callId = await inCall("grace", alice, [bob]);
  // Bob drops and comes back on the other gateway at once; alice drops for good.
  bob.close();
  const bob2 = await rtc(gw1, tenant, "bob");
  const dropped = Date.now();
  alice.close();
  const left = await next(bob2, "call:participant-left", { callId, timeoutMs: 20_000 });
  const elapsed = Date.now() - dropped;
  assert.equal(left.userId, "alice");
  assert.ok(elapsed >= GRACE_S * 1000 - 200, `alice left after ${elapsed} ms, not before the grace period`);
  assert.equal((await next(bob2, "call:ended", { callId })).reason, "hangup");
  assert.deepEqual(
    bob2.received("call:participant-left").map((p) => p.userId),
    ["alice"],
    "bob reconnected in time: he never left",
  );
  bob2.close();
});

test("tenant isolation: same conversation and user ids in another tenant see nothing and reach nothing", async () => {
  const alice = await rtc(gw1, tenant, "alice");
  const bob = await rtc(gw2, tenant, "bob");
  const otherAlice = await rtc(gw1, other, "alice");
  const otherBob = await rtc(gw2, other, "bob");
  const callId = await inCall("one", alice, [bob]);
  refused(await send(otherBob, "call:accept", { callId }), "not_found");
  refused(await send(otherBob, "call:signal", { callId, to: "alice", signal: { type: "offer", sdp: "x" } }), "not_found");
  refused(await send(otherBob, "call:hangup", { callId, forEveryone: true }), "not_found");
  // The other tenant's own call in its "one": its bob's first incoming call is that one.
  const theirs = ok(await send(otherAlice, "call:start", { conversationId: "one", media: "audio" }));
  assert.notEqual(theirs.callId, callId, "a separate call: no sharing across tenants");
  const first = await next(otherBob, "call:incoming");
  assert.equal(first.callId, theirs.callId);
  assert.deepEqual(
    otherBob.received("call:incoming").map((p) => p.callId),
    [theirs.callId],
  );
  ok(await send(otherAlice, "call:hangup", { callId: theirs.callId }));
  ok(await send(alice, "call:hangup", { callId }));
  for (const sock of [alice, bob, otherAlice, otherBob]) sock.close();
});

test("ring timeout: no_answer, enforced by the other gateway after the caller's gateway is killed; state survives", async () => {
  const bob = await rtc(gw2, tenant, "bob");
  const carol = await rtc(gw2, tenant, "carol");
  const alice = await rtc(gw1, tenant, "alice", { reconnection: false });
  const since = Date.now();
  const { callId } = ok(await send(alice, "call:start", { conversationId: "ring", media: "audio" }));
  await next(bob, "call:incoming", { callId, since });
  await h.stop(gw1, "SIGKILL");
  const ended = await next(bob, "call:ended", { callId, timeoutMs: 15_000 });
  assert.equal(ended.reason, "no_answer");
  assert.ok(Date.now() - since >= 1800, "not before the ring deadline");
  assert.equal((await next(carol, "call:ended", { callId })).reason, "no_answer");

  // An answered call goes on through a gateway's death: its member reconnects to the
  // other gateway and signals still flow.
  gw1 = await startGateway(gw1.port);
  const alice2 = await rtc(gw1, tenant, "alice");
  const bob2 = await rtc(gw2, tenant, "bob");
  const active = await inCall("restart", alice2, [bob2]);
  await h.stop(gw1, "SIGKILL");
  const alice3 = await rtc(gw2, tenant, "alice");
  ok(await send(bob2, "call:signal", { callId: active, to: "alice", signal: { type: "offer", sdp: "v=0" } }));
  assert.equal((await next(alice3, "call:signal", { callId: active })).from, "bob");
  gw1 = await startGateway(gw1.port);
  ok(await send(alice3, "call:hangup", { callId: active }));
  assert.equal((await next(bob2, "call:ended", { callId: active })).reason, "hangup");
  for (const sock of [bob, carol, alice, alice2, bob2, alice3]) sock.close();
});
