// Recording with per-member consent on /webrtc (SPEC.md §3 "Recording on /webrtc"), on two
// real gateways: every consent and state change checked in MongoDB `call_recordings` and
// on the broker's recording topic (read with kafkajs, a client independent of the
// server's librdkafka). Consent deadlines are enforced by the server — also by the other
// gateway when the requester's gateway is killed — never by a client timer.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import * as h from "../lib/harness.mjs";
import { inCall, next, ok, refused, rtc, send } from "../lib/calls.mjs";

const s = h.suite("recording", 13);
const tenant = `acme-${s.id}`;
const other = `globex-${s.id}`;
const topic = `${s.topicPrefix}.webrtc.recording.events`;
const CONSENT_S = 2;
const env = {
  RECORDING_CONSENT_TIMEOUT_SECONDS: String(CONSENT_S),
  CALL_LEAVE_GRACE_SECONDS: "5",
  KAFKA_RECORDING_TOPIC: topic,
};
let gw1, gw2, db, client;
const startGateway = (port) => h.startRealtime({ role: "gateway", ...s, env, port });

before(async () => {
  ({ client, db } = await h.mongo(s.db));
  for (const c of ["yes", "no", "late", "joiner", "refuse"]) {
    await h.seedConversation(db, tenant, c, ["alice", "bob", "carol"]);
  }
  await h.seedConversation(db, tenant, "withdraw", ["alice", "bob"]);
  await h.seedConversation(db, other, "yes", ["alice", "bob"]);
  gw1 = await startGateway();
  gw2 = await startGateway();
});

after(async () => {
  h.closeAllSockets();
  await h.stopAll();
  await client?.close();
});

/** The recording's document once it satisfies `pred` (it is written just after the change). */
const stored = (recordingId, pred) =>
  h.waitFor(
    async () => {
      const doc = await db.collection("call_recordings").findOne({ tenant_id: tenant, recording_id: recordingId });
      return doc && pred(doc) ? doc : null;
    },
    { what: `call_recordings ${recordingId}` },
  );

/** The types of the broker events of one recording, in order, once `count` are there. */
async function eventsOf(recordingId, count) {
  const records = await h.readTopic(topic, (rs) => rs.filter((r) => r.value.recordingId === recordingId).length >= count);
  const mine = records.filter((r) => r.value.recordingId === recordingId);
  for (const r of mine) {
    assert.equal(r.key, `${tenant}:${recordingId}`, "keyed tenantId:recordingId");
    assert.equal(r.value.tenantId, tenant);
    assert.equal(typeof r.value.at, "number");
    assert.ok(r.value.callId && r.value.conversationId);
  }
  assert.equal(new Set(mine.map((r) => r.partition)).size, 1, "one partition: in order");
  const versions = mine.map((r) => r.value.version);
  assert.deepEqual(versions, [...versions].sort((a, b) => a - b), "in the order of the changes");
  return mine.map((r) => r.value);
}

test("everyone consents → started; stop → stopped; every step stored and published", async () => {
  const alice = await rtc(gw1, tenant, "alice");
  const bob = await rtc(gw2, tenant, "bob");
  const callId = await inCall("yes", alice, [bob]);
  const req = ok(await send(alice, "recording:request", { callId }));
  assert.equal(req.status, "pending_consent");
  const deadline = req.consentDeadline;
  assert.ok(Math.abs(deadline - (Date.now() + CONSENT_S * 1000)) < 1500, `deadline ${deadline}`);
  for (const sock of [alice, bob]) {
    const ask = await next(sock, "recording:consent-request", { pred: (p) => p.recordingId === req.recordingId });
    assert.deepEqual(ask, { recordingId: req.recordingId, callId, requestedBy: "alice", deadline });
  }
  let doc = await stored(req.recordingId, (d) => d.status === "pending_consent");
  assert.deepEqual(doc.pending_consents.map((p) => p.user_id), ["bob"]);
  const consent = ok(await send(bob, "recording:consent", { recordingId: req.recordingId, consent: true }));
  assert.equal(consent.status, "recording");
  for (const sock of [alice, bob]) {
    assert.deepEqual(await next(sock, "recording:started", { callId }), { recordingId: req.recordingId, callId });
  }
  ok(await send(bob, "recording:stop", { recordingId: req.recordingId }));
  for (const sock of [alice, bob]) {
    const stopped = await next(sock, "recording:stopped", { callId });
    assert.deepEqual(stopped, { recordingId: req.recordingId, callId, reason: "stopped" });
  }
  doc = await stored(req.recordingId, (d) => d.status === "stopped");
  assert.equal(doc.reason, "stopped");
  assert.equal(doc.call_id, callId);
  assert.equal(doc.conversation_id, "yes");
  assert.equal(doc.requested_by, "alice");
  assert.deepEqual(doc.consents.map((c) => [c.user_id, c.consent]), [["alice", true], ["bob", true]]);
  for (const c of doc.consents) assert.ok(c.at instanceof Date);
  assert.equal(doc.consent_deadline.getTime(), deadline);
  assert.ok(doc.started_at <= doc.stopped_at);
  assert.ok(doc.created_at instanceof Date && doc.updated_at >= doc.created_at);
  const events = await eventsOf(req.recordingId, 5);
  assert.deepEqual(events.map((e) => e.type), [
    "recording.requested", "recording.consent", "recording.consent", "recording.started", "recording.stopped",
  ]);
  assert.deepEqual(events.slice(1, 3).map((e) => [e.userId, e.consent]), [["alice", true], ["bob", true]], "every consent, the requester's too");
  assert.equal(events[4].reason, "stopped");
  // Nothing more to stop, and another tenant cannot see it.
  refused(await send(alice, "recording:stop", { recordingId: req.recordingId }), "not_found");
  const stranger = await rtc(gw1, other, "alice");
  refused(await send(stranger, "recording:consent", { recordingId: req.recordingId, consent: false }), "not_found");
  ok(await send(alice, "call:hangup", { callId }));
  for (const sock of [alice, bob, stranger]) sock.close();
});

test("a refusal cancels (declined); nobody is recorded", async () => {
  const alice = await rtc(gw1, tenant, "alice");
  const bob = await rtc(gw2, tenant, "bob");
  const carol = await rtc(gw2, tenant, "carol");
  const callId = await inCall("no", alice, [bob, carol]);
  const req = ok(await send(alice, "recording:request", { callId }));
  refused(await send(bob, "recording:request", { callId }), "conflict");
  ok(await send(bob, "recording:consent", { recordingId: req.recordingId, consent: true }));
  const answer = ok(await send(carol, "recording:consent", { recordingId: req.recordingId, consent: false }));
  assert.equal(answer.status, "cancelled");
  for (const sock of [alice, bob, carol]) {
    assert.deepEqual(await next(sock, "recording:cancelled", { callId }), { recordingId: req.recordingId, callId, reason: "declined" });
  }
  assert.equal(alice.received("recording:started").length, 0);
  const doc = await stored(req.recordingId, (d) => d.status === "cancelled");
  assert.deepEqual([doc.status, doc.reason, doc.started_at], ["cancelled", "declined", null]);
  assert.deepEqual(doc.consents.map((c) => [c.user_id, c.consent]), [["alice", true], ["bob", true], ["carol", false]]);
  const events = await eventsOf(req.recordingId, 5);
  assert.deepEqual(events.map((e) => e.type), [
    "recording.requested", "recording.consent", "recording.consent", "recording.consent", "recording.cancelled",
  ]);
  assert.equal(events[4].reason, "declined");
  ok(await send(alice, "call:hangup", { callId, forEveryone: true }));
  for (const sock of [alice, bob, carol]) sock.close();
});

test("the deadline cancels (timeout), enforced by the other gateway after the requester's is killed", async () => {
  const bob = await rtc(gw2, tenant, "bob");
  const alice = await rtc(gw1, tenant, "alice", { reconnection: false });
  const callId = await inCall("late", alice, [bob]);
  const req = ok(await send(alice, "recording:request", { callId }));
  await h.stop(gw1, "SIGKILL");
  const cancelled = await next(bob, "recording:cancelled", { callId, timeoutMs: 15_000 });
  assert.deepEqual(cancelled, { recordingId: req.recordingId, callId, reason: "timeout" });
  assert.ok(Date.now() >= req.consentDeadline - 50, "not before the deadline");
  const doc = await stored(req.recordingId, (d) => d.status === "cancelled");
  assert.deepEqual([doc.status, doc.reason], ["cancelled", "timeout"]);
  const events = await eventsOf(req.recordingId, 3);
  assert.deepEqual(events.map((e) => e.type), ["recording.requested", "recording.consent", "recording.cancelled"]);
  gw1 = await startGateway(gw1.port);
  ok(await send(bob, "call:hangup", { callId }));
  bob.close();
});

test("a member who joins a running recording must consent in time, or it stops (consent_withdrawn)", async () => {
  const alice = await rtc(gw1, tenant, "alice");
  const bob = await rtc(gw2, tenant, "bob");
  const carol = await rtc(gw2, tenant, "carol");
  const since = Date.now();
  const callId = await inCall("joiner", alice, [bob]);
  const req = ok(await send(alice, "recording:request", { callId }));
  ok(await send(bob, "recording:consent", { recordingId: req.recordingId, consent: true }));
  await next(alice, "recording:started", { callId });
  await next(carol, "call:incoming", { callId, since });
  ok(await send(carol, "call:accept", { callId }));
  const ask = await next(carol, "recording:consent-request", { callId });
  assert.equal(ask.recordingId, req.recordingId);
  // Carol says nothing: at her deadline the recording stops for everyone.
  for (const sock of [alice, bob, carol]) {
    const stopped = await next(sock, "recording:stopped", { callId, timeoutMs: 15_000 });
    assert.equal(stopped.reason, "consent_withdrawn");
  }
  assert.ok(Date.now() >= ask.deadline - 50);
  const doc = await stored(req.recordingId, (d) => d.status === "stopped");
  assert.deepEqual([doc.status, doc.reason], ["stopped", "consent_withdrawn"]);
  assert.ok(!doc.consents.some((c) => c.user_id === "carol"), "carol never consented");
  const events = await eventsOf(req.recordingId, 6);
  assert.deepEqual(events.map((e) => e.type), [
    "recording.requested", "recording.consent", "recording.consent", "recording.started", "recording.updated", "recording.stopped",
  ]);
  assert.equal(events[4].consentRequestedFrom, "carol");
  ok(await send(alice, "call:hangup", { callId, forEveryone: true }));
  for (const sock of [alice, bob, carol]) sock.close();
});

test("a later refusal stops a running recording; the end of the call stops it too", async () => {
  const alice = await rtc(gw1, tenant, "alice");
  const bob = await rtc(gw2, tenant, "bob");
  const callId = await inCall("withdraw", alice, [bob]);
  const first = ok(await send(alice, "recording:request", { callId }));
  ok(await send(bob, "recording:consent", { recordingId: first.recordingId, consent: true }));
  await next(alice, "recording:started", { callId });
  ok(await send(bob, "recording:consent", { recordingId: first.recordingId, consent: false }));
  assert.equal((await next(alice, "recording:stopped", { callId })).reason, "consent_withdrawn");

  const second = ok(await send(bob, "recording:request", { callId }));
  ok(await send(alice, "recording:consent", { recordingId: second.recordingId, consent: true }));
  await next(bob, "recording:started", { callId, pred: (p) => p.recordingId === second.recordingId });
  ok(await send(alice, "call:hangup", { callId }));
  assert.equal((await next(bob, "call:ended", { callId })).reason, "hangup");
  const stopped = await next(bob, "recording:stopped", { callId, pred: (p) => p.recordingId === second.recordingId });
  assert.equal(stopped.reason, "call_ended");
  const doc = await stored(second.recordingId, (d) => d.status === "stopped");
  assert.deepEqual([doc.status, doc.reason], ["stopped", "call_ended"]);
  for (const sock of [alice, bob]) sock.close();
});

test("refusals: not in the call, unknown recordings, bad payloads", async () => {
  const alice = await rtc(gw1, tenant, "alice");
  const bob = await rtc(gw2, tenant, "bob");
  const carol = await rtc(gw2, tenant, "carol");
  const callId = await inCall("refuse", alice, [bob]);
  refused(await send(carol, "recording:request", { callId }), "forbidden");
  refused(await send(alice, "recording:request", {}), "invalid_payload");
  refused(await send(alice, "recording:consent", { recordingId: "nope", consent: true }), "not_found");
  refused(await send(alice, "recording:consent", { recordingId: "nope", consent: "yes" }), "invalid_payload");
  refused(await send(alice, "recording:stop", { recording: "x" }), "invalid_payload");
  const req = ok(await send(alice, "recording:request", { callId }));
  refused(await send(carol, "recording:consent", { recordingId: req.recordingId, consent: true }), "forbidden");
  refused(await send(carol, "recording:stop", { recordingId: req.recordingId }), "forbidden");
  // Stopping a request nobody answered yet: recording:stopped (stopped), and it never ran.
  ok(await send(alice, "recording:stop", { recordingId: req.recordingId }));
  assert.deepEqual(await next(bob, "recording:stopped", { callId }), { recordingId: req.recordingId, callId, reason: "stopped" });
  const doc = await stored(req.recordingId, (d) => d.status !== "pending_consent");
  assert.deepEqual([doc.status, doc.reason, doc.started_at], ["cancelled", "stopped", null]);
  // The end of the call cancels a pending request.
  const again = ok(await send(alice, "recording:request", { callId }));
  ok(await send(alice, "call:hangup", { callId, forEveryone: true }));
  const cancelled = await next(bob, "recording:cancelled", { callId });
  assert.deepEqual(cancelled, { recordingId: again.recordingId, callId, reason: "call_ended" });
  for (const sock of [alice, bob, carol]) sock.close();
});
