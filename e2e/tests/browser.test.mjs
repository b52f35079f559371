// WebRTC calls in a real browser: two headless Chromium pages (alice on gateway 1, bob on
// gateway 2 of one suite) call each other through /webrtc only (offer, answer and trickled
// candidates relayed by the gateways across Redis) and get a connected RTCPeerConnection
// whose audio and video flow through a coturn of the test's own, with the credentials the
// gateway handed out (iceTransportPolicy "relay"). Then recording consent in a call: a
// refusal cancels the request (declined), consent starts it, recording:stop stops it; both
// recordings are read back with independent clients from MongoDB (call_recordings) and
// from the broker (the recording topic, kafkajs).
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import * as h from "../lib/harness.mjs";
import { launchBrowser, openPage, servePages, startCoturn } from "../lib/browser.mjs";

const s = h.suite("browser", 11);
const tenant = `acme-${s.id}`;
// One conversation per test: a call left over by a failed test does not leak into the next.
const conversations = { call: `call-${s.id}`, consent: `consent-${s.id}` };
const turnSecret = `turn-${s.id}`;
const recordingTopic = `${s.topicPrefix}.webrtc.recording.events`;
const CONNECTED_MS = 30_000; // ICE through TURN and DTLS on a busy machine
const EVENT_MS = 15_000;

let coturn, gw1, gw2, mongo, browser, pages, alice, bob;

function dumpLogs() {
  for (const [label, page] of [["alice (gateway 1)", alice], ["bob (gateway 2)", bob]]) page?.dumpLogs(label);
  for (const [label, proc] of [["gateway 1", gw1], ["gateway 2", gw2], ["coturn", coturn]]) {
    if (proc) console.error(`--- ${label} :${proc.port}\n${proc.log.join("")}`);
  }
}

/** Opens alice's page on gateway 1 and bob's on gateway 2, connected to /webrtc. */
async function openPages() {
  alice = await openPage(browser, pages.url, "alice");
  bob = await openPage(browser, pages.url, "bob");
  await alice.rt((rt, url, token) => rt.connect(url, token), gw1.url, h.mintToken({ tenant, user: "alice" }));
  await bob.rt((rt, url, token) => rt.connect(url, token), gw2.url, h.mintToken({ tenant, user: "bob" }));
}

/**
 * Runs `fn`; on failure dumps the pages' consoles and the processes' logs, and gives the
 * next test fresh pages (no call, no queued call:incoming), then rethrows.
 */
async function dumping(fn) {
  try {
    return await fn();
  } catch (e) {
    dumpLogs();
    if (browser) {
      await Promise.all([alice, bob].map((p) => p?.close().catch(() => {})));
      alice = bob = null;
      await openPages().catch((err) => console.error(`pages not reopened: ${err.message}`));
    }
    throw e;
  }
}

before(
  () =>
    dumping(async () => {
      coturn = await startCoturn({ secret: turnSecret });
      const env = {
        TURN_URLS: coturn.urls.join(","),
        TURN_SECRET: turnSecret,
        TURN_CREDENTIAL_TTL: "600",
        KAFKA_RECORDING_TOPIC: recordingTopic,
        CALL_RING_TIMEOUT_SECONDS: "60",
        RECORDING_CONSENT_TIMEOUT_SECONDS: "60",
        CALL_LEAVE_GRACE_SECONDS: "20",
      };
      gw1 = await h.startRealtime({ role: "gateway", ...s, env });
      gw2 = await h.startRealtime({ role: "gateway", ...s, env });
      mongo = await h.mongo(s.db);
      for (const c of Object.values(conversations)) await h.seedConversation(mongo.db, tenant, c, ["alice", "bob"]);
      browser = await launchBrowser();
      pages = await servePages();
      await openPages();
    }),
  { timeout: 120_000 },
);

after(async () => {
  await alice?.close().catch(() => {});
  await bob?.close().catch(() => {});
  await browser?.close().catch(() => {});
  await pages?.close();
  h.closeAllSockets();
  await h.stopAll();
  await coturn?.stop();
  await mongo?.client.close();
});

/** Page events of `event` whose payload has every field of `match`. */
const eventsOf = (page, event, match = {}) =>
  page.rt(
    (rt, event, match) =>
      rt.events
        .filter((e) => e.event === event && Object.entries(match).every(([k, v]) => JSON.stringify(e.payload?.[k]) === JSON.stringify(v)))
        .map((e) => e.payload),
    event,
    match,
  );

/** Waits until `page` has received `event` matching `match`; its payload. */
const seen = (page, who, event, match = {}, timeoutMs = EVENT_MS) =>
  h.waitFor(async () => (await eventsOf(page, event, match))[0], { timeoutMs, intervalMs: 100, what: `${event} ${JSON.stringify(match)} at ${who}` });

/** The ack of the last `event` the page emitted. */
const lastAck = (page, event) => page.rt((rt, event) => rt.acks.filter((a) => a.event === event).at(-1)?.ack, event);

const pageErrors = (page) => page.rt((rt) => rt.errors);

/** Bob accepts the next incoming call while alice starts one; both sides' callId. */
async function startCall(conversation, media) {
  const accepted = bob.rt((rt) => rt.acceptNext(20_000));
  accepted.catch(() => {}); // awaited below, unless alice's start fails first
  const callId = await alice.rt((rt, c, m) => rt.call(c, m), conversation, media);
  assert.equal(await accepted, callId, "bob accepted alice's call");
  return callId;
}

/** Alice hangs up; bob sees her leave and the call end. */
async function hangUp(callId) {
  const ack = await alice.rt((rt) => rt.hangup());
  assert.deepEqual(ack, { ok: true, callId, ended: true });
  await seen(bob, "bob", "call:participant-left", { callId, userId: "alice" });
  await seen(bob, "bob", "call:ended", { callId, reason: "hangup" });
}

test("a video call across two gateways connects through TURN with signalling only over /webrtc", { timeout: 180_000 }, () =>
  dumping(async () => {
    const handedOut = await alice.rt((rt) => rt.iceServers());
    assert.equal(handedOut.ok, true, JSON.stringify(handedOut));

    const conversation = conversations.call;
    const callId = await startCall(conversation, "video");

    const start = await lastAck(alice, "call:start");
    assert.equal(start.ok, true, JSON.stringify(start));
    assert.deepEqual(
      { ...start, callId: undefined },
      { ok: true, callId: undefined, conversationId: conversation, media: "video", from: "alice", members: ["alice"], ringing: ["bob"], recording: null },
    );
    const incoming = await seen(bob, "bob", "call:incoming", { callId });
    assert.deepEqual({ ...incoming, ringDeadline: undefined }, { callId, conversationId: conversation, from: "alice", media: "video", ringDeadline: undefined });
    assert.ok(incoming.ringDeadline > Date.now(), `ring deadline ${incoming.ringDeadline} is ahead`);
    const accept = await lastAck(bob, "call:accept");
    assert.equal(accept.ok, true, JSON.stringify(accept));
    assert.deepEqual(accept.members.sort(), ["alice", "bob"]);
    assert.deepEqual(accept.ringing, []);
    await seen(alice, "alice", "call:participant-joined", { callId, userId: "bob" });
    await seen(bob, "bob", "call:participant-joined", { callId, userId: "bob" });

    // Connected on both sides (a failed connection fails at once, not at the timeout).
    await h.waitFor(
      async () => {
        const [a, b] = await Promise.all([alice.rt((rt) => rt.state("bob")), bob.rt((rt) => rt.state("alice"))]);
        for (const [who, st] of [["alice", a], ["bob", b]]) {
          if (st?.connectionState === "failed") throw new Error(`${who}'s peer connection failed: ${JSON.stringify(st)}`);
        }
        return a?.connectionState === "connected" && b?.connectionState === "connected";
      },
      { timeoutMs: CONNECTED_MS, intervalMs: 250, what: "both RTCPeerConnections connected" },
    );

    // Audio and video arrive on both sides, over a relayed candidate pair.
    let stats;
    await h.waitFor(
      async () => {
        stats = { alice: await alice.rt((rt) => rt.stats("bob")), bob: await bob.rt((rt) => rt.stats("alice")) };
        return Object.values(stats).every((st) => st.audioBytesReceived > 0 && st.videoBytesReceived > 0 && st.localCandidateType);
      },
      { timeoutMs: CONNECTED_MS, intervalMs: 500, what: "audio and video bytes received on both sides" },
    ).catch((e) => {
      throw new Error(`${e.message}; last stats ${JSON.stringify(stats)}`);
    });
    for (const [who, st] of Object.entries(stats)) {
      assert.equal(st.pairState, "succeeded", `${who}: ${JSON.stringify(st)}`);
      assert.equal(st.localCandidateType, "relay", `${who} sends through TURN: ${JSON.stringify(st)}`);
      assert.equal(st.remoteCandidateType, "relay", `${who}'s peer is relayed too: ${JSON.stringify(st)}`);
      assert.ok(st.audioBytesReceived > 0 && st.videoBytesReceived > 0, `${who} receives audio and video: ${JSON.stringify(st)}`);
    }

    // The peer connections use exactly the servers the gateway handed out, relay only.
    for (const [who, page, peerOf] of [["alice", alice, "bob"], ["bob", bob, "alice"]]) {
      const cfg = await page.rt((rt, p) => {
        const c = rt.peers.get(p).pc.getConfiguration();
        return { policy: c.iceTransportPolicy, servers: c.iceServers.map((x) => ({ urls: x.urls, username: x.username })) };
      }, peerOf);
      assert.equal(cfg.policy, "relay", who);
      assert.equal(cfg.servers.length, 1, `${who}: ${JSON.stringify(cfg)}`);
      const urls = [cfg.servers[0].urls].flat();
      for (const u of coturn.urls) assert.ok(urls.includes(u), `${who} uses ${u}: ${JSON.stringify(cfg)}`);
      assert.match(cfg.servers[0].username, new RegExp(`^\\d+:${who}$`), `${who}'s TURN username`);
    }
    assert.deepEqual([handedOut.iceServers[0].urls].flat().filter((u) => u.startsWith("turn:")), coturn.urls);

    // Offer, answer and candidates went through the gateways (and were acked).
    const signals = async (page) => (await eventsOf(page, "call:signal", { callId })).map((p) => ({ from: p.from, type: p.signal.type, candidate: p.signal.candidate?.candidate }));
    const toBob = await signals(bob);
    const toAlice = await signals(alice);
    assert.ok(toBob.every((x) => x.from === "alice") && toAlice.every((x) => x.from === "bob"));
    assert.deepEqual(toBob.filter((x) => x.type !== "candidate").map((x) => x.type), ["offer"]);
    assert.deepEqual(toAlice.filter((x) => x.type !== "candidate").map((x) => x.type), ["answer"]);
    for (const [who, list] of [["bob", toBob], ["alice", toAlice]]) {
      const candidates = list.filter((x) => x.type === "candidate" && x.candidate);
      assert.ok(candidates.length > 0, `${who} received candidates`);
      assert.ok(candidates.every((c) => / typ relay /.test(c.candidate)), `${who} received relay candidates only: ${JSON.stringify(candidates)}`);
    }
    for (const [who, page] of [["alice", alice], ["bob", bob]]) {
      const refused = await page.rt((rt) => rt.acks.filter((a) => a.event === "call:signal" && !a.ack?.ok));
      assert.deepEqual(refused, [], `${who}'s signals were all acked ok`);
      assert.deepEqual(await pageErrors(page), [], `${who}'s page reported no error`);
    }

    // coturn allocated a relay for each user (TURN REST username <expiry>:<user>).
    const turnLog = coturn.log.join("");
    for (const who of ["alice", "bob"]) {
      assert.match(turnLog, new RegExp(`user <\\d+:${who}>: incoming packet ALLOCATE processed, success`), `coturn allocated for ${who}`);
    }

    await hangUp(callId);
    assert.equal((await bob.rt((rt) => rt.state("alice"))).connectionState, "closed", "bob's peer connection is closed");
  }),
);

test("recording needs everyone's consent: refused → cancelled, given → started, stop → stopped; stored and published", { timeout: 180_000 }, () =>
  dumping(async () => {
    const conversation = conversations.consent;
    const callId = await startCall(conversation, "audio");
    await seen(alice, "alice", "call:participant-joined", { callId, userId: "bob" });

    // Bob refuses: the request is cancelled (declined) for both.
    await bob.rt((rt) => rt.setConsent(false));
    const req1 = await alice.rt((rt) => rt.requestRecording());
    assert.equal(req1.ok, true, JSON.stringify(req1));
    assert.equal(req1.status, "pending_consent");
    assert.ok(req1.consentDeadline > Date.now(), `consent deadline ${req1.consentDeadline} is ahead`);
    const rec1 = req1.recordingId;
    for (const [who, page] of [["alice", alice], ["bob", bob]]) {
      const ask = await seen(page, who, "recording:consent-request", { recordingId: rec1 });
      assert.deepEqual(ask, { recordingId: rec1, callId, requestedBy: "alice", deadline: req1.consentDeadline });
      await seen(page, who, "recording:cancelled", { recordingId: rec1, callId, reason: "declined" });
    }
    assert.deepEqual(await lastAck(bob, "recording:consent"), { ok: true, recordingId: rec1, status: "cancelled" });

    // Bob consents: it starts for both; alice stops it.
    await bob.rt((rt) => rt.setConsent(true));
    const req2 = await alice.rt((rt) => rt.requestRecording());
    assert.equal(req2.ok, true, JSON.stringify(req2));
    assert.equal(req2.status, "pending_consent");
    const rec2 = req2.recordingId;
    assert.notEqual(rec2, rec1);
    for (const [who, page] of [["alice", alice], ["bob", bob]]) {
      await seen(page, who, "recording:consent-request", { recordingId: rec2, callId, requestedBy: "alice" });
      await seen(page, who, "recording:started", { recordingId: rec2, callId });
    }
    assert.deepEqual(await lastAck(bob, "recording:consent"), { ok: true, recordingId: rec2, status: "recording" });
    const stopped = await alice.rt((rt, r) => rt.stopRecording(r), rec2);
    assert.deepEqual(stopped, { ok: true, recordingId: rec2, status: "stopped" });
    for (const [who, page] of [["alice", alice], ["bob", bob]]) {
      await seen(page, who, "recording:stopped", { recordingId: rec2, callId, reason: "stopped" });
      assert.deepEqual(await pageErrors(page), [], `${who}'s page reported no error`);
    }

    await hangUp(callId);

    // MongoDB, read with the driver.
    const coll = mongo.db.collection("call_recordings");
    const docs = await h.waitFor(
      async () => {
        const [d1, d2] = await Promise.all([rec1, rec2].map((r) => coll.findOne({ tenant_id: tenant, recording_id: r })));
        return d1?.status === "cancelled" && d2?.status === "stopped" && [d1, d2];
      },
      { timeoutMs: EVENT_MS, what: "both call_recordings documents in their final state" },
    );
    const [d1, d2] = docs;
    for (const [d, rec, req] of [[d1, rec1, req1], [d2, rec2, req2]]) {
      assert.equal(d.tenant_id, tenant);
      assert.equal(d.recording_id, rec);
      assert.equal(d.call_id, callId);
      assert.equal(d.conversation_id, conversation);
      assert.equal(d.requested_by, "alice");
      assert.deepEqual(d.pending_consents, []);
      assert.ok(d.consent_deadline instanceof Date, `consent_deadline is a Date: ${d.consent_deadline}`);
      assert.equal(d.consent_deadline.getTime(), req.consentDeadline);
      for (const k of ["created_at", "updated_at", "stopped_at"]) assert.ok(d[k] instanceof Date, `${rec}: ${k} is a Date: ${d[k]}`);
      assert.ok(d.version > 0, `version ${d.version}`);
      for (const c of d.consents) {
        assert.ok(c.at instanceof Date, `consent at is a Date: ${JSON.stringify(c)}`);
        assert.ok(c.at.getTime() >= d.created_at.getTime() && c.at.getTime() <= d.stopped_at.getTime(), `consent at within the recording: ${JSON.stringify(d)}`);
      }
    }
    assert.equal(d1.reason, "declined");
    assert.equal(d1.started_at, null);
    assert.deepEqual(d1.consents.map((c) => [c.user_id, c.consent]), [["alice", true], ["bob", false]]);
    assert.equal(d2.reason, "stopped");
    assert.deepEqual(d2.consents.map((c) => [c.user_id, c.consent]), [["alice", true], ["bob", true]]);
    assert.ok(d2.started_at instanceof Date, `started_at is a Date: ${d2.started_at}`);
    assert.ok(d2.created_at <= d2.started_at && d2.started_at <= d2.stopped_at, `created ≤ started ≤ stopped: ${JSON.stringify(d2)}`);

    // The broker, read with kafkajs: every change of each recording, in order, keyed tenant:recordingId.
    const ofRec = (records, r) => records.filter((x) => x.value.recordingId === r);
    const records = await h.readTopic(recordingTopic, (rs) => ofRec(rs, rec1).length >= 4 && ofRec(rs, rec2).length >= 5, { timeoutMs: 30_000 });
    const summary = (r) => {
      const { type, consent, userId, reason } = r.value;
      return { type, ...(consent !== undefined && { userId, consent }), ...(reason !== undefined && { reason }) };
    };
    assert.deepEqual(ofRec(records, rec1).map(summary), [
      { type: "recording.requested" },
      { type: "recording.consent", userId: "alice", consent: true },
      { type: "recording.consent", userId: "bob", consent: false },
      { type: "recording.cancelled", reason: "declined" },
    ]);
    assert.deepEqual(ofRec(records, rec2).map(summary), [
      { type: "recording.requested" },
      { type: "recording.consent", userId: "alice", consent: true },
      { type: "recording.consent", userId: "bob", consent: true },
      { type: "recording.started" },
      { type: "recording.stopped", reason: "stopped" },
    ]);
    for (const [rec, last] of [[rec1, "cancelled"], [rec2, "stopped"]]) {
      const mine = ofRec(records, rec);
      for (const r of mine) {
        assert.equal(r.key, `${tenant}:${rec}`);
        assert.equal(r.value.tenantId, tenant);
        assert.equal(r.value.callId, callId);
        assert.equal(r.value.conversationId, conversation);
        assert.equal(typeof r.value.at, "number");
      }
      assert.equal(mine[0].value.status, "pending_consent");
      assert.equal(mine[0].value.requestedBy, "alice");
      assert.equal(mine.at(-1).value.status, last);
      assert.ok(new Set(mine.map((r) => r.partition)).size === 1, "one key, one partition");
    }
  }),
);
