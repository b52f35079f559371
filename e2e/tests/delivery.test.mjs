// Delivery guarantees under faults (issue 9, items 1–3 and 9–16): every test drives real
// gateways and persisters with the official client and breaks a real dependency — a
// broker of the test's own that is paused (SIGSTOP) or killed, a Redis kept busy, a
// MongoDB write concern it cannot meet, a collection validator — then checks that what
// was acknowledged is stored exactly once and that the sender learns every outcome.
import { after, afterEach, before, test } from "node:test";
import assert from "node:assert/strict";
import * as h from "../lib/harness.mjs";

const s = h.suite("delivery", 10);
const tenant = `acme-${s.id}`;
const fast = { RATE_LIMIT_PER_SECOND: "100000", RATE_LIMIT_BURST: "100000" };
let store;
let nextDb = 10;

before(async () => {
  store = await h.mongo(s.db);
  for (const c of ["one", "two", "inflight", "timeout", "lost-reply", "delayed", "failed", "status", "burst", "concern", "poison", "join", "shared", "shutdown"]) {
    await h.seedConversation(store.db, tenant, c, ["alice", "bob"]);
  }
});

// Each test starts its own processes; none outlives it (the machine has two cores).
afterEach(async () => {
  h.closeAllSockets();
  await h.stopAll();
});

after(async () => {
  await store?.client.close();
});

const token = (user) => h.mintToken({ tenant, user });
const messages = () => store.db.collection("messages");
const send = (socket, conversationId, clientMessageId, text = clientMessageId) =>
  socket.emitWithAck("message:send", { conversationId, clientMessageId, content: h.text(text) });

/** A private corner of the stack for one test: own topics and Redis database, same MongoDB. */
function own(name) {
  return { ...s, topicPrefix: `${s.topicPrefix}.${name}`, redisDb: nextDb++ };
}

async function joined(proc, user, conversationId) {
  const socket = await h.connect(proc, token(user));
  const r = await socket.emitWithAck("room:join", { conversationId });
  assert.equal(r.ok, true, JSON.stringify(r));
  return socket;
}

async function stored(conversationId) {
  return messages().find({ tenant_id: tenant, conversation_id: conversationId, tombstone: { $ne: true } }).toArray();
}

async function storedOnce(conversationId, messageId) {
  await h.waitFor(async () => (await stored(conversationId)).some((d) => d.message_id === messageId), {
    timeoutMs: 30_000,
    what: `message ${messageId} in MongoDB`,
  });
  const docs = await stored(conversationId);
  assert.equal(docs.filter((d) => d.message_id === messageId).length, 1, "stored once");
  return docs;
}

test("a clientMessageId reused in another conversation is a new message there (item 1)", async () => {
  const env = own("reuse");
  const [gw] = await Promise.all([h.startRealtime({ role: "gateway", ...env, env: fast }), h.startRealtime({ role: "persister", ...env })]);
  const alice = await h.connect(gw, token("alice"));
  for (const c of ["one", "two"]) assert.equal((await alice.emitWithAck("room:join", { conversationId: c })).ok, true);
  const a = await send(alice, "one", "same-id", "in one");
  const b = await send(alice, "two", "same-id", "in two");
  assert.equal(a.ok && b.ok, true, JSON.stringify([a, b]));
  assert.equal(b.duplicate, false);
  assert.notEqual(b.messageId, a.messageId);
  assert.equal(b.seq, 1, "the first message of conversation two");
  const [doc] = await storedOnce("two", b.messageId);
  assert.deepEqual(doc.content, h.text("in two"));
});

test("a resend while the first send is in flight waits for the broker, and both get its answer (item 2)", async () => {
  const broker = await h.startBroker();
  const env = own("inflight");
  const [gw] = await Promise.all([
    h.startRealtime({ role: "gateway", ...env, env: h.onBroker(broker, { ...fast, KAFKA_MESSAGE_TIMEOUT_MS: "20000" }) }),
    h.startRealtime({ role: "persister", ...env, env: h.onBroker(broker) }),
  ]);
  const alice = await joined(gw, "alice", "inflight");
  broker.pause();
  const first = send(alice, "inflight", "k1");
  const resend = send(alice, "inflight", "k1");
  let answered = 0;
  first.then(() => answered++);
  resend.then(() => answered++);
  await h.waitFor(async () => (await h.metric(gw, "realtime_resend_waits_total")) >= 1, { what: "the resend waiting on the first send" });
  assert.equal(answered, 0, "no answer while the broker has not acknowledged the message");
  broker.resume();
  const [a, b] = await Promise.all([first, resend]);
  assert.ok(a.ok && b.ok, JSON.stringify([a, b]));
  assert.equal(b.messageId, a.messageId);
  // The two sends race to the gateway: whichever came second is the duplicate.
  assert.deepEqual([a.duplicate, b.duplicate].sort(), [false, true]);
  await storedOnce("inflight", a.messageId);
});

test("a produce that timed out in flight is resent with the same id and stored once (item 10)", async () => {
  const broker = await h.startBroker();
  const env = own("timeout");
  const [gw] = await Promise.all([
    h.startRealtime({ role: "gateway", ...env, env: h.onBroker(broker, { ...fast, KAFKA_MESSAGE_TIMEOUT_MS: "1500" }) }),
    h.startRealtime({ role: "persister", ...env, env: h.onBroker(broker) }),
  ]);
  const alice = await joined(gw, "alice", "timeout");
  broker.pause();
  const refused = await send(alice, "timeout", "t1");
  assert.equal(refused.ok, false);
  assert.equal(refused.error.code, "unavailable");
  assert.match(refused.messageId, /^[0-9a-f-]{36}$/, "the answer names the message it kept");
  // The produce request sat in the paused broker's socket: it is written when it resumes.
  broker.resume();
  const again = await send(alice, "timeout", "t1");
  assert.equal(again.ok, true, JSON.stringify(again));
  assert.equal(again.messageId, refused.messageId, "same message, never a second id");
  await storedOnce("timeout", refused.messageId);
  await h.waitFor(() => alice.received("message:persisted").some((p) => p.messageId === refused.messageId), { what: "message:persisted" });
  const docs = await stored("timeout");
  assert.equal(docs.length, 1, "stored exactly once");
});

test("an allocation whose Redis reply was lost is finished by the resend, not acked empty (item 9)", async () => {
  const env = own("lost-reply");
  const [gw] = await Promise.all([
    h.startRealtime({ role: "gateway", ...env, env: { ...fast, KAFKA_MESSAGE_TIMEOUT_MS: "2000" } }),
    h.startRealtime({ role: "persister", ...env }),
  ]);
  const alice = await joined(gw, "alice", "lost-reply");
  // Redis answers after the gateway's 500 ms response timeout: the allocation runs, the
  // gateway sees an error.
  const stall = h.stallRedis(env.redisDb, 900);
  await h.sleep(100);
  const lost = await send(alice, "lost-reply", "r1");
  await stall;
  assert.equal(lost.ok, false, JSON.stringify(lost));
  assert.equal(lost.error.code, "unavailable");
  const again = await send(alice, "lost-reply", "r1");
  assert.equal(again.ok, true, JSON.stringify(again));
  await storedOnce("lost-reply", again.messageId);
  await h.waitFor(() => alice.received("message:persisted").some((p) => p.messageId === again.messageId), { what: "message:persisted" });
});

test("a message the broker has is reported delayed, never failed, and confirmed once stored (item 11)", async () => {
  const env = own("delayed");
  const gw = await h.startRealtime({
    role: "gateway",
    ...env,
    env: { ...fast, PERSISTENCE_CONFIRMATION_TIMEOUT_MS: "300", PERSISTENCE_CONFIRMATION_RETRIES: "2" },
  });
  const alice = await joined(gw, "alice", "delayed");
  const r = await send(alice, "delayed", "d1");
  assert.equal(r.ok, true);
  const delayed = await h.nextEvent(alice, "message:delayed", { timeoutMs: 20_000 });
  assert.equal(delayed.payload.messageId, r.messageId);
  assert.equal(delayed.payload.clientMessageId, "d1");
  assert.match(delayed.payload.reason, /will be stored/);
  await h.startRealtime({ role: "persister", ...env });
  await h.nextEvent(alice, "message:persisted", { timeoutMs: 30_000, pred: (p) => p.messageId === r.messageId });
  assert.equal(alice.received("message:failed").length, 0, "a message that is stored is never called failed");
  assert.equal(alice.received("message:delayed").length, 1, "delayed is said once");
  await storedOnce("delayed", r.messageId);
});

test("a message the broker never took fails only after it is fenced off, and stays unstored (items 10, 11)", async () => {
  const broker = await h.startBroker();
  const env = own("failed");
  const gw = await h.startRealtime({
    role: "gateway",
    ...env,
    env: h.onBroker(broker, { ...fast, KAFKA_MESSAGE_TIMEOUT_MS: "1500", PERSISTENCE_CONFIRMATION_RETRIES: "1" }),
  });
  const alice = await joined(gw, "alice", "failed");
  broker.pause();
  const refused = await send(alice, "failed", "f1");
  assert.equal(refused.ok, false);
  const failed = await h.nextEvent(alice, "message:failed", { timeoutMs: 30_000, pred: (p) => p.messageId === refused.messageId });
  assert.equal(failed.payload.clientMessageId, "f1");
  assert.match(failed.payload.reason, /will not be stored/);
  const tombstone = await messages().findOne({ message_id: refused.messageId });
  assert.equal(tombstone?.tombstone, true, "the id is fenced in MongoDB before the verdict");
  // The paused broker now writes whatever it was sent; a persister stores nothing of it.
  broker.resume();
  await h.startRealtime({ role: "persister", ...env, env: h.onBroker(broker) });
  const resent = await send(alice, "failed", "f1");
  assert.equal(resent.ok, false);
  assert.equal(resent.error.code, "delivery_failed");
  assert.equal(resent.messageId, refused.messageId);
  // A new message goes through once the producer is back (a client resends until acked).
  const next = await h.waitFor(async () => {
    const r = await send(alice, "failed", "f2");
    return r.ok && r;
  }, { timeoutMs: 30_000, what: "a new message accepted after the broker resumed" });
  await storedOnce("failed", next.messageId);
  assert.deepEqual((await stored("failed")).map((d) => d.message_id), [next.messageId], "the failed message was never stored");
  const history = await alice.emitWithAck("messages:history", { conversationId: "failed" });
  assert.deepEqual(history.messages.map((m) => m.messageId), [next.messageId], "history skips the tombstone");
});

test("a sender who was away learns the outcome with message:status, and a resend answers it (item 12)", async () => {
  const env = own("status");
  const gw = await h.startRealtime({ role: "gateway", ...env, env: fast });
  let alice = await joined(gw, "alice", "status");
  const r = await send(alice, "status", "s1");
  assert.equal(r.ok, true);
  const before = await alice.emitWithAck("message:status", { conversationId: "status", clientMessageIds: ["s1", "never-sent"] });
  assert.deepEqual(before.messages, [
    { clientMessageId: "s1", status: "accepted", messageId: r.messageId, seq: r.seq, reason: null },
    { clientMessageId: "never-sent", status: "unknown" },
  ]);
  alice.close();
  await h.startRealtime({ role: "persister", ...env });
  await storedOnce("status", r.messageId);
  alice = await h.connect(gw, token("alice"));
  await h.waitFor(
    async () => (await alice.emitWithAck("message:status", { conversationId: "status", clientMessageIds: ["s1"] })).messages[0].status === "persisted",
    { what: "status persisted" },
  );
  const bob = await h.connect(gw, token("bob"));
  const foreign = await bob.emitWithAck("message:status", { conversationId: "status", clientMessageIds: ["s1"] });
  assert.equal(foreign.messages[0].status, "unknown", "only the sender's own messages are visible");
  assert.equal((await alice.emitWithAck("message:status", { conversationId: "status", clientMessageIds: [] })).error.code, "invalid_payload");
});

test("with the broker stalled the sweeper retries every overdue message at once and loses none (item 13)", async () => {
  const broker = await h.startBroker();
  const env = own("burst");
  const gw = await h.startRealtime({
    role: "gateway",
    ...env,
    env: h.onBroker(broker, { ...fast, PERSISTENCE_CONFIRMATION_TIMEOUT_MS: "300", PERSISTENCE_CONFIRMATION_RETRIES: "50", KAFKA_MESSAGE_TIMEOUT_MS: "4000" }),
  });
  const alice = await joined(gw, "alice", "burst");
  const ids = [];
  for (let i = 0; i < 30; i++) {
    const r = await send(alice, "burst", `b${i}`);
    assert.equal(r.ok, true);
    ids.push(r.messageId);
  }
  const retriesBefore = await h.metric(gw, "realtime_delivery_retries_total");
  broker.pause();
  // Every overdue message gets a copy in flight within a couple of sweeps, not one per
  // producer timeout.
  await h.waitFor(async () => (await h.metric(gw, "realtime_delivery_retries_total")) - retriesBefore >= 30, {
    timeoutMs: 3_000,
    what: "30 retries in flight at once",
  });
  broker.resume();
  await h.startRealtime({ role: "persister", ...env, env: h.onBroker(broker) });
  await h.waitFor(() => new Set(alice.received("message:persisted").map((p) => p.messageId)).size === ids.length, {
    timeoutMs: 60_000,
    what: "all 30 confirmed",
  });
  assert.equal(await h.metric(gw, "realtime_delivery_lost_total"), 0);
  assert.equal((await stored("burst")).length, 30, "stored once each");
});

test("a write the database cannot confirm at the write concern is not confirmed to the sender (item 14)", async () => {
  const env = own("concern");
  const gw = await h.startRealtime({ role: "gateway", ...env, env: fast });
  const strict = await h.startRealtime({ role: "persister", ...env, env: { MONGODB_WRITE_CONCERN: "5", MONGODB_WRITE_TIMEOUT_MS: "200" } });
  const alice = await joined(gw, "alice", "concern");
  const r = await send(alice, "concern", "c1");
  assert.equal(r.ok, true);
  await h.waitFor(async () => (await h.metric(strict, 'realtime_persist_errors_total{category="mongodb"}')) >= 2, {
    what: "writes refused for the unmet write concern",
  });
  assert.equal(alice.received("message:persisted").length, 0, "no confirmation for a write that may be rolled back");
  await h.stop(strict);
  await h.startRealtime({ role: "persister", ...env });
  await h.nextEvent(alice, "message:persisted", { timeoutMs: 30_000, pred: (p) => p.messageId === r.messageId });
  await storedOnce("concern", r.messageId);
});

test("a message the database refuses for good is dead-lettered and does not hold up the others (item 16)", async (t) => {
  const env = own("poison");
  const poisonStore = await h.mongo(`${s.db}_poison`);
  t.after(() => poisonStore.client.close());
  const db = poisonStore.db;
  await db.createCollection("messages", { validator: { "content.text": { $not: { $regex: "^poison" } } } });
  await h.seedConversation(db, tenant, "poison", ["alice", "bob"]);
  const gw = await h.startRealtime({ role: "gateway", ...env, db: `${s.db}_poison`, env: fast });
  const persister = await h.startRealtime({ role: "persister", ...env, db: `${s.db}_poison` });
  const alice = await joined(gw, "alice", "poison");
  const bad = await send(alice, "poison", "p1", "poison pill");
  const good = await send(alice, "poison", "p2", "fine");
  assert.equal(bad.ok && good.ok, true);
  await h.nextEvent(alice, "message:persisted", { timeoutMs: 30_000, pred: (p) => p.messageId === good.messageId });
  const failed = await h.nextEvent(alice, "message:failed", { timeoutMs: 30_000, pred: (p) => p.messageId === bad.messageId });
  assert.match(failed.payload.reason, /refused/);
  assert.equal(await h.metric(persister, "realtime_dead_lettered_messages_total"), 1);
  assert.deepEqual((await db.collection("messages").find({}).toArray()).map((d) => d.message_id), [good.messageId]);
});

test("a socket that closes during room:join leaves no ghost in presence (item 16)", async () => {
  const env = own("join");
  const gw = await h.startRealtime({ role: "gateway", ...env, env: fast });
  const bob = await joined(gw, "bob", "join");
  const alice = await h.connect(gw, token("alice"));
  // The membership read waits on a busy Redis while the client goes away.
  const stall = h.stallRedis(env.redisDb, 400);
  await h.sleep(50);
  alice.emit("room:join", { conversationId: "join" });
  await h.sleep(50);
  alice.close();
  await stall;
  await h.waitFor(async () => (await h.metric(gw, 'realtime_room_joins_total{outcome="gone"}')) >= 1, { what: "the join noticing the closed socket" });
  const presence = await bob.emitWithAck("presence:get", { conversationId: "join" });
  assert.deepEqual(presence.online, ["bob"]);
  assert.equal(await h.redisCommand(env.redisDb, "EXISTS", `rt:${tenant}:room:join:members`), ":0", "no ever-growing members hash");
});

test("two installations sharing topics on one broker do not store each other's messages (item 3)", async (t) => {
  const env = own("shared");
  const dbA = `${s.db}_a`;
  const dbB = `${s.db}_b`;
  const [storeA, storeB] = await Promise.all([h.mongo(dbA), h.mongo(dbB)]);
  t.after(() => Promise.all([storeA.client.close(), storeB.client.close()]));
  const a = storeA.db;
  await h.seedConversation(a, tenant, "shared", ["alice", "bob"]);
  const gwA = await h.startRealtime({ role: "gateway", ...env, db: dbA, groupPrefix: "install-a", env: fast });
  await h.startRealtime({ role: "persister", ...env, db: dbA, groupPrefix: "install-a" });
  const persisterB = await h.startRealtime({ role: "persister", ...env, db: dbB, groupPrefix: "install-b", redisDb: nextDb++ });
  const alice = await joined(gwA, "alice", "shared");
  const r = await send(alice, "shared", "x1");
  assert.equal(r.ok, true);
  await h.nextEvent(alice, "message:persisted", { timeoutMs: 30_000, pred: (p) => p.messageId === r.messageId });
  await h.waitFor(async () => (await h.metric(persisterB, "realtime_foreign_records_total")) >= 1, { what: "installation B skipping A's record" });
  assert.equal(await storeB.db.collection("messages").countDocuments({}), 0, "B stored nothing of A's");
});

test("SIGTERM with the broker stalled exits within the grace period (item 16)", async () => {
  const broker = await h.startBroker();
  const env = own("shutdown");
  const gw = await h.startRealtime({
    role: "all",
    ...env,
    env: h.onBroker(broker, { ...fast, SHUTDOWN_GRACE_SECONDS: "3", KAFKA_MESSAGE_TIMEOUT_MS: "30000" }),
  });
  const alice = await joined(gw, "alice", "shutdown");
  broker.pause();
  send(alice, "shutdown", "z1").catch(() => {});
  await h.waitFor(async () => (await fetch(`${gw.url}/metrics`)).ok, { what: "gateway alive" });
  const started = Date.now();
  gw.child.kill("SIGTERM");
  await gw.exited;
  const took = Date.now() - started;
  assert.ok(took < 4_500, `stopped after ${took} ms; the grace period is 3 s`);
  broker.resume();
});
