// Durability of the pipeline with two gateways and a separate persister:
// cross-gateway delivery, persister crash, gateway crash and retries. Faults of the
// broker, Redis and MongoDB, delays and failures are in delivery.test.mjs.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import * as h from "../lib/harness.mjs";

const s = h.suite("pipeline", 3);
const tenant = `acme-${s.id}`;
const fast = { RATE_LIMIT_PER_SECOND: "100000", RATE_LIMIT_BURST: "100000" };
let gwA, gwB, persister, store;

before(async () => {
  store = await h.mongo(s.db);
  for (const c of ["general", "crash-persister", "handover", "crash-gateway", "retry", "fail"]) {
    await h.seedConversation(store.db, tenant, c, ["alice", "bob"]);
  }
  const gatewayEnv = { ...fast, PERSISTENCE_CONFIRMATION_TIMEOUT_MS: "8000" };
  [gwA, gwB, persister] = await Promise.all([
    h.startRealtime({ role: "gateway", ...s, env: gatewayEnv }),
    h.startRealtime({ role: "gateway", ...s, env: gatewayEnv }),
    h.startRealtime({ role: "persister", ...s }),
  ]);
  gwA.env = gatewayEnv;
});

after(async () => {
  h.closeAllSockets();
  await h.stopAll();
  await store?.client.close();
});

const token = (user) => h.mintToken({ tenant, user });
const messages = () => store.db.collection("messages");

async function joined(proc, user, conversationId) {
  const socket = await h.connect(proc, token(user));
  // Remembers what was sent, for the status check of assertConfirmedOnce.
  socket.sent = {};
  const emitWithAck = socket.emitWithAck.bind(socket);
  socket.emitWithAck = (event, payload) => {
    if (event === "message:send") (socket.sent[payload.conversationId] ??= []).push(payload.clientMessageId);
    return emitWithAck(event, payload);
  };
  const r = await socket.emitWithAck("room:join", { conversationId });
  assert.equal(r.ok, true, JSON.stringify(r));
  return socket;
}

async function assertStoredExactly(conversationId, ids) {
  await h.waitFor(async () => (await messages().countDocuments({ tenant_id: tenant, conversation_id: conversationId })) >= ids.length, {
    timeoutMs: 45_000,
    what: `${ids.length} messages of ${conversationId} in MongoDB`,
  });
  const docs = await messages().find({ tenant_id: tenant, conversation_id: conversationId }).toArray();
  assert.equal(docs.length, ids.length, "stored once each");
  assert.deepEqual(new Set(docs.map((d) => d.message_id)), new Set(ids));
  const seqs = docs.map((d) => d.seq).sort((a, b) => a - b);
  assert.deepEqual(seqs, ids.map((_, i) => i + 1), "sequence numbers are 1..n without gaps");
}

async function assertConfirmedOnce(socket, ids, conversationId, timeoutMs = 45_000) {
  await h.waitFor(() => socket.received("message:persisted").length >= ids.length, {
    timeoutMs,
    what: `${ids.length} message:persisted`,
  });
  // Every message has reached its final state in the delivery ledger, which confirms
  // each one once: no further message:persisted can be on its way.
  const keys = socket.sent[conversationId] ?? [];
  for (let i = 0; i < keys.length; i += 100) {
    const r = await socket.emitWithAck("message:status", { conversationId, clientMessageIds: keys.slice(i, i + 100) });
    assert.deepEqual([...new Set(r.messages.map((m) => m.status))], ["persisted"], JSON.stringify(r));
  }
  const confirmed = socket.received("message:persisted").map((p) => p.messageId);
  assert.equal(confirmed.length, ids.length, "one confirmation per message");
  assert.deepEqual(new Set(confirmed), new Set(ids));
}

test("a message sent through gateway A reaches a member on gateway B, is stored once and confirmed", async () => {
  const alice = await joined(gwA, "alice", "general");
  const bob = await joined(gwB, "bob", "general");
  const ack = await alice.emitWithAck("message:send", { conversationId: "general", clientMessageId: "x1", content: h.text("across gateways") });
  assert.equal(ack.ok, true);
  const [got] = await h.waitFor(() => bob.received("message:new").length && bob.received("message:new"), { what: "message:new on gateway B" });
  assert.equal(got.messageId, ack.messageId);
  await assertConfirmedOnce(alice, [ack.messageId], "general");
  await assertStoredExactly("general", [ack.messageId]);
});

test("killing the persister mid-stream and restarting it loses and duplicates nothing", async () => {
  const alice = await joined(gwA, "alice", "crash-persister");
  const ids = [];
  const total = 150;
  for (let i = 0; i < total; i++) {
    if (i === 50) {
      await h.waitFor(() => alice.received("message:persisted").length > 10, { what: "persister busy before the crash" });
      await h.stop(persister, "SIGKILL");
    }
    if (i === 100) persister = await h.startRealtime({ role: "persister", ...s });
    const r = await alice.emitWithAck("message:send", { conversationId: "crash-persister", clientMessageId: `p${i}`, content: h.text(`m${i}`) });
    assert.equal(r.ok, true, JSON.stringify(r));
    ids.push(r.messageId);
  }
  await assertStoredExactly("crash-persister", ids);
  await assertConfirmedOnce(alice, ids, "crash-persister");
});

test("a rolling replacement (new persister and gateway ready first, old ones SIGTERMed) hands the consumer groups over", async () => {
  // As a Deployment rolls: the new process is started, counts as ready only once its
  // consumer groups have taken it in (/readyz), then the old one gets SIGTERM. The old one
  // leaves its groups only after the rebalance it is part of has finished — leaving in
  // the middle wedged the group for good on the tansu broker (its departed leader kept).
  const gwC = await h.startRealtime({ role: "gateway", ...s, env: gwA.env });
  const next = await h.startRealtime({ role: "persister", ...s });
  const ready = await (await fetch(`${next.url}/readyz`)).json();
  assert.deepEqual(Object.values(ready.consumerGroups), [true], JSON.stringify(ready));
  await h.stop(persister, "SIGTERM");
  persister = next;
  const alice = await joined(gwC, "alice", "handover");
  const ids = [];
  for (let i = 0; i < 20; i++) {
    const r = await alice.emitWithAck("message:send", { conversationId: "handover", clientMessageId: `h${i}`, content: h.text(`m${i}`) });
    assert.equal(r.ok, true, JSON.stringify(r));
    ids.push(r.messageId);
    if (i === 5) await h.stop(gwB, "SIGTERM");
  }
  await assertStoredExactly("handover", ids);
  await assertConfirmedOnce(alice, ids, "handover");
  gwB = gwC;
});

test("a gateway restart does not lose pending confirmations", async () => {
  await h.stop(persister, "SIGTERM");
  const alice = await joined(gwA, "alice", "crash-gateway");
  const ids = [];
  for (let i = 0; i < 20; i++) {
    const r = await alice.emitWithAck("message:send", { conversationId: "crash-gateway", clientMessageId: `g${i}`, content: h.text(`m${i}`) });
    assert.equal(r.ok, true);
    ids.push(r.messageId);
  }
  assert.equal(alice.received("message:persisted").length, 0, "nothing can be confirmed while the persister is down");
  const port = gwA.port;
  await h.stop(gwA, "SIGKILL");
  gwA = await h.startRealtime({ role: "gateway", ...s, port, env: gwA.env });
  // The client reconnects to the restarted gateway; the persister comes back.
  const aliceAgain = await h.connect(gwA, token("alice"));
  persister = await h.startRealtime({ role: "persister", ...s });
  await assertStoredExactly("crash-gateway", ids);
  aliceAgain.sent = alice.sent;
  await assertConfirmedOnce(aliceAgain, ids, "crash-gateway");
});

test("a late confirmation is retried with the same message id and confirmed once", async () => {
  // A gateway and persister on their own topics, so this persister can be held back.
  const own = { ...s, topicPrefix: `${s.topicPrefix}.retry`, redisDb: 4 };
  const gw = await h.startRealtime({ role: "gateway", ...own, env: { ...fast, PERSISTENCE_CONFIRMATION_TIMEOUT_MS: "400", PERSISTENCE_CONFIRMATION_RETRIES: "20" } });
  const alice = await joined(gw, "alice", "retry");
  const r = await alice.emitWithAck("message:send", { conversationId: "retry", clientMessageId: "late", content: h.text("late") });
  assert.equal(r.ok, true);
  await h.waitFor(async () => /realtime_delivery_retries_total [2-9]/.test(await (await fetch(`${gw.url}/metrics`)).text()), { what: "two retries" });
  const p = await h.startRealtime({ role: "persister", ...own });
  await assertConfirmedOnce(alice, [r.messageId], "retry");
  await assertStoredExactly("retry", [r.messageId]);
  assert.equal(alice.received("message:failed").length, 0);
  await h.stop(p);
  await h.stop(gw);
});
