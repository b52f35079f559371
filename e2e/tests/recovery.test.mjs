// Recovery after reconnect: a client that was away while 100 messages were sent gets
// exactly those, in order, once each — also when the gateway it was connected to died —
// and a clear `too_far_behind` past the recovery window.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import * as h from "../lib/harness.mjs";

const s = h.suite("recovery", 6);
const tenant = `acme-${s.id}`;
const env = { RATE_LIMIT_PER_SECOND: "100000", RATE_LIMIT_BURST: "100000", RECOVERY_WINDOW: "150" };
let gwA, gwB, persister, store;

before(async () => {
  store = await h.mongo(s.db);
  for (const c of ["calm", "crash", "far", "jump"]) await h.seedConversation(store.db, tenant, c, ["alice", "bob"]);
  [gwA, gwB, persister] = await Promise.all([
    h.startRealtime({ role: "gateway", ...s, env }),
    h.startRealtime({ role: "gateway", ...s, env }),
    h.startRealtime({ role: "persister", ...s }),
  ]);
});

after(async () => {
  h.closeAllSockets();
  await h.stopAll();
  await store?.client.close();
});

const token = (user) => h.mintToken({ tenant, user });

async function joined(proc, user, conversationId) {
  const socket = await h.connect(proc, token(user));
  const r = await socket.emitWithAck("room:join", { conversationId });
  assert.equal(r.ok, true, JSON.stringify(r));
  return socket;
}

async function sendMany(socket, conversationId, count, tag) {
  const acks = [];
  for (let i = 0; i < count; i++) {
    const ack = await socket.emitWithAck("message:send", { conversationId, clientMessageId: `${tag}-${i}`, content: h.text(`${tag} ${i}`) });
    assert.equal(ack.ok, true, JSON.stringify(ack));
    acks.push(ack);
  }
  return acks;
}

function assertExactly(recovered, acks) {
  assert.equal(recovered.ok, true, JSON.stringify(recovered).slice(0, 300));
  assert.equal(recovered.complete, true);
  const got = recovered.messages.map((m) => [m.seq, m.messageId]);
  assert.deepEqual(got, acks.map((a) => [a.seq, a.messageId]), "exactly the missed messages, in order, once each");
}

test("a client away while 100 messages are sent recovers exactly those after reconnecting", async () => {
  const alice = await joined(gwB, "alice", "calm");
  let bob = await joined(gwA, "bob", "calm");
  const before = await sendMany(alice, "calm", 5, "seen");
  await h.waitFor(() => bob.received("message:new").length === 5, { what: "bob sees the first 5" });
  const lastSeen = Math.max(...bob.received("message:new").map((m) => m.seq));
  assert.equal(lastSeen, before.at(-1).seq);
  bob.close();
  const missed = await sendMany(alice, "calm", 100, "missed");
  bob = await joined(gwA, "bob", "calm");
  const recovered = await bob.emitWithAck("messages:recover", { conversationId: "calm", afterSeq: lastSeen });
  assertExactly(recovered, missed);
  assert.equal(recovered.latestSeq, missed.at(-1).seq);
  // With the recovery window gone from Redis (flushed, restarted), MongoDB answers.
  await h.waitFor(async () => (await store.db.collection("messages").countDocuments({ tenant_id: tenant, conversation_id: "calm" })) === 105, {
    timeoutMs: 30_000,
    what: "105 stored messages",
  });
  assert.equal(await h.redisCommand(s.redisDb, "DEL", `rt:${tenant}:recent:calm`), ":1");
  assertExactly(await bob.emitWithAck("messages:recover", { conversationId: "calm", afterSeq: lastSeen }), missed);
  const metrics = await (await fetch(`${gwA.url}/metrics`)).text();
  assert.match(metrics, /realtime_recoveries_total\{outcome="from_database"\} 1/);
  // Asking again from the newest number is an empty, complete answer.
  const nothing = await bob.emitWithAck("messages:recover", { conversationId: "calm", afterSeq: recovered.latestSeq });
  assert.deepEqual([nothing.complete, nothing.messages.length], [true, 0]);
});

test("a client whose gateway was killed recovers the missed messages through another gateway", async () => {
  const alice = await joined(gwB, "alice", "crash");
  const bob = await joined(gwA, "bob", "crash");
  await sendMany(alice, "crash", 3, "pre");
  await h.waitFor(() => bob.received("message:new").length === 3, { what: "bob sees 3" });
  const lastSeen = Math.max(...bob.received("message:new").map((m) => m.seq));
  await h.stop(gwA, "SIGKILL");
  const missed = await sendMany(alice, "crash", 100, "during");
  const again = await joined(gwB, "bob", "crash");
  assertExactly(await again.emitWithAck("messages:recover", { conversationId: "crash", afterSeq: lastSeen }), missed);
  // Everything is also stored once, so history agrees with recovery.
  await h.waitFor(async () => (await store.db.collection("messages").countDocuments({ tenant_id: tenant, conversation_id: "crash" })) === 103, {
    timeoutMs: 30_000,
    what: "103 stored messages",
  });
  gwA = await h.startRealtime({ role: "gateway", ...s, env });
});

test("past the recovery window the answer is too_far_behind, and history pages the rest", async () => {
  const alice = await joined(gwA, "alice", "far");
  const acks = await sendMany(alice, "far", 160, "far");
  const r = await alice.emitWithAck("messages:recover", { conversationId: "far", afterSeq: 0 });
  assert.equal(r.ok, false);
  assert.equal(r.complete, false);
  assert.deepEqual(r.messages, []);
  assert.equal(r.error.code, "too_far_behind");
  assert.match(r.error.message, /160 messages were missed.*messages:history/);
  const within = await alice.emitWithAck("messages:recover", { conversationId: "far", afterSeq: 10 });
  assertExactly(within, acks.slice(10));
  const bad = await alice.emitWithAck("messages:recover", { conversationId: "far", afterSeq: "ten" });
  assert.equal(bad.error.code, "invalid_payload");
});

test("across a repaired counter's jump, recovery counts messages, not numbers — also when Redis lost the newest ones", async () => {
  const alice = await joined(gwA, "alice", "jump");
  const early = await sendMany(alice, "jump", 5, "early");
  await h.waitFor(async () => (await store.db.collection("messages").countDocuments({ tenant_id: tenant, conversation_id: "jump" })) === 5, {
    timeoutMs: 30_000,
    what: "5 stored messages",
  });
  // Redis comes back without its newest writes (an older snapshot, a failover): the
  // counter and the recovery window end at seq 3, the verification mark is another
  // server's. MongoDB has 4 and 5.
  assert.deepEqual(early.map((a) => a.seq), [1, 2, 3, 4, 5]);
  await h.redisCommand(s.redisDb, "SET", `rt:${tenant}:seq:jump`, "3");
  await h.redisCommand(s.redisDb, "ZREMRANGEBYSCORE", `rt:${tenant}:recent:jump`, "4", "5");
  await h.redisCommand(s.redisDb, "SET", `rt:${tenant}:seqv:jump`, "another-server");
  const late = await sendMany(alice, "jump", 3, "late");
  assert.ok(late[0].seq > 5 + 150, `the counter jumped past the window (${late[0].seq})`);
  // A client that saw seq 2: numbers span more than RECOVERY_WINDOW (150), messages do
  // not; 4 and 5 come from MongoDB although the window still reaches back to 2.
  assertExactly(await alice.emitWithAck("messages:recover", { conversationId: "jump", afterSeq: 2 }), [...early.slice(2), ...late]);
  const metrics = await (await fetch(`${gwA.url}/metrics`)).text();
  assert.match(metrics, /realtime_recoveries_total\{outcome="across_gap"\} 1/);
});
