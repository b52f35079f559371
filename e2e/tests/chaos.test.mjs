// Chaos under load: senders keep writing through two gateways while, one after another,
// a gateway is killed (-9), the persister is killed (-9), Redis is killed (-9) and
// restarted from its append-only file, the MongoDB-compatible server is killed (-9) and
// restarted from its on-disk store, and the broker is paused (SIGSTOP/SIGCONT). Then:
//
// - every message acked `ok` is in MongoDB exactly once, and its sender learns that it is
//   persisted (`message:persisted`, at most once per socket, or `message:status` for what
//   happened while it was disconnected); a message is reported failed only with its
//   tombstone stored (never silently dropped);
// - per conversation, numbers are unique, each sender's messages are in the order it sent
//   them, and the numbers are contiguous but for the documented jump
//   (SEQUENCE_REPAIR_GAP) when Redis restarts;
// - listeners on both gateways that reconnect recover what they missed
//   (`messages:recover`), so each ends with every stored message once.
//
// Real parts throughout: the test's own Redis (AOF, appendfsync always), SecantusDB (on
// disk, sync on commit), tansu broker, two gateways and a persister (release or dev
// build), the official socket.io-client. Bounded: about 90 s.
import { test, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { appendFileSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { io as ioClient } from "socket.io-client";
import { MongoClient } from "mongodb";
import * as h from "../lib/harness.mjs";

const SEQUENCE_REPAIR_GAP = 1000;
const CONVERSATIONS = ["c0", "c1"];
const SENDERS_PER_CONVERSATION = 3;
// Each sender waits this long after an ack: about 10 messages/s each, 60/s in all, which
// the Python MongoDB-compatible server stores as fast as they come.
const PACE_MS = 100;
const s = h.suite("chaos", 0);
const tenant = `chaos-${s.id}`;
const dir = mkdtempSync(join(tmpdir(), "rt-chaos-"));
const servers = new Set();
let store; // the test's MongoDB client
let progress; // the trace timer

after(async () => {
  clearInterval(progress);
  await store?.close();
  for (const c of clients) c.socket.close();
  await h.stopAll();
  for (const p of servers) p.kill("SIGKILL");
  rmSync(dir, { recursive: true, force: true });
});

/** A server process of the test's own, restartable on the same port and data. */
function server(name, cmd, args, port) {
  const proc = { name, port, child: null, log: [] };
  proc.start = async () => {
    const child = spawn(cmd, args, { stdio: ["ignore", "pipe", "pipe"] });
    child.stdout.on("data", (c) => proc.log.push(c.toString()));
    child.stderr.on("data", (c) => proc.log.push(c.toString()));
    proc.child = child;
    servers.add(child);
    child.on("exit", () => servers.delete(child));
    await h.waitForPort(port, name);
  };
  proc.kill = async () => {
    const gone = new Promise((ok) => proc.child.once("exit", ok));
    proc.child.kill("SIGKILL");
    await gone;
  };
  return proc;
}

// CHAOS_TRACE=<file>: progress of the run (phases, per-sender state every second).
const trace = (line) => process.env.CHAOS_TRACE && appendFileSync(process.env.CHAOS_TRACE, `${new Date().toISOString()} ${line}\n`);
const clients = [];
const events = []; // { at, what } for the report

/**
 * A client as a careful app writes it: reconnects, joins again, recovers after the last
 * `seq` it saw, resends an unanswered message with the same `clientMessageId`.
 */
function client(gateway, user, conversation) {
  const token = h.mintToken({ tenant, user });
  const socket = ioClient(`${gateway.url}/chat`, {
    auth: { token },
    transports: ["websocket"],
    reconnectionDelay: 100,
    reconnectionDelayMax: 500,
    forceNew: true,
  });
  const c = {
    user,
    conversation,
    socket,
    seen: new Map(), // seq -> messageId (live or recovered)
    duplicates: 0,
    lastSeq: 0,
    joined: null,
    connects: 0,
    persisted: new Map(), // messageId -> times announced
    failed: new Map(),
    recovered: { reconnect: 0, gap: 0, end: 0 },
    paged: 0, // too_far_behind answered by paging messages:history
  };
  // Every message after `afterSeq`, into `seen` (counted by why it was asked).
  // Where a careful app resumes: before its first hole, not after the newest number it saw
  // (a message can reach it after a later one, or not at all while its gateway restarts).
  // Jumps of SEQUENCE_REPAIR_GAP or more are numbers no message has.
  c.resumeFrom = () => {
    const seqs = [...c.seen.keys()].sort((a, b) => a - b);
    for (let i = 1; i < seqs.length; i++) {
      const step = seqs[i] - seqs[i - 1];
      if (step > 1 && step < SEQUENCE_REPAIR_GAP) return seqs[i - 1];
    }
    return c.lastSeq;
  };
  c.recover = async (why, afterSeq = c.resumeFrom()) => {
    for (;;) {
      try {
        const r = await socket.timeout(5_000).emitWithAck("messages:recover", { conversationId: conversation, afterSeq });
        if (r.ok) {
          const before = c.seen.size;
          for (const m of r.messages) see(m, true);
          c.recovered[why] += c.seen.size - before;
          return;
        }
        if (r.error?.code === "too_far_behind") {
          // As the README tells apps: page the history back to where it left off.
          trace(`${c.user} ${why} after ${afterSeq} (newest seen ${c.lastSeq}): ${r.error.message}`);
          c.paged++;
          const before = c.seen.size;
          for (let beforeSeq; ; ) {
            const page = await socket.timeout(5_000).emitWithAck("messages:history", { conversationId: conversation, beforeSeq, limit: 100 });
            assert.ok(page.ok, JSON.stringify(page));
            for (const m of page.messages) if (m.seq > afterSeq) see(m, true);
            const oldest = page.messages.at(-1)?.seq;
            if (!page.hasMore || oldest === undefined || oldest <= afterSeq + 1) break;
            beforeSeq = oldest;
          }
          c.recovered[why] += c.seen.size - before;
          return;
        }
      } catch (e) {
        if (e instanceof assert.AssertionError) throw e;
      }
      if (!socket.connected) return; // the next connect recovers
      await h.sleep(200);
    }
  };
  // Numbers skipped (a broadcast lost while Redis was away, or only reordered): asked for
  // one after another.
  const holes = [];
  let recovering = false;
  const fill = async () => {
    if (recovering) return;
    recovering = true;
    while (holes.length) await c.recover("gap", holes.shift());
    recovering = false;
  };
  const see = (m, recovered = false) => {
    if (m.conversationId !== conversation) return;
    if (!recovered && c.joined && m.seq > c.lastSeq + 1) {
      holes.push(c.lastSeq);
      fill();
    }
    if (c.seen.has(m.seq)) {
      if (c.seen.get(m.seq) !== m.messageId) c.conflicts = (c.conflicts ?? 0) + 1;
      return;
    }
    c.seen.set(m.seq, m.messageId);
    c.lastSeq = Math.max(c.lastSeq, m.seq);
  };
  c.see = see;
  socket.on("message:new", see);
  socket.on("message:persisted", (m) => c.persisted.set(m.messageId, (c.persisted.get(m.messageId) ?? 0) + 1));
  socket.on("message:failed", (m) => c.failed.set(m.messageId, (c.failed.get(m.messageId) ?? 0) + 1));
  c.ready = new Promise((ok) => (c.markReady = ok));
  socket.on("connect", async () => {
    c.connects++;
    c.joined = null;
    for (;;) {
      try {
        const r = await socket.timeout(5_000).emitWithAck("room:join", { conversationId: conversation });
        if (r.ok) break;
      } catch {
        // not answered: the gateway is going away or Redis is down; try again
      }
      if (!socket.connected) return; // the next connect joins
      await h.sleep(200);
    }
    // What was missed while away: everything after the last seq seen.
    if (c.connects > 1) await c.recover("reconnect");
    c.joined = Date.now();
    c.markReady();
  });
  clients.push(c);
  return c;
}

/** One sender's loop: messages `${user}-${n}`, one at a time, each until it has an outcome. */
async function sendLoop(c, stopAt, stats) {
  const outcomes = [];
  for (let n = 0; Date.now() < stopAt(); n++) {
    const clientMessageId = `${c.user}-${n}`;
    c.current = clientMessageId;
    for (;;) {
      if (!c.joined) {
        await h.sleep(50);
        continue;
      }
      let r;
      try {
        r = await c.socket.timeout(12_000).emitWithAck("message:send", {
          conversationId: c.conversation,
          clientMessageId,
          content: h.text(`m ${clientMessageId}`),
        });
      } catch {
        stats.phase().unanswered++;
        await h.sleep(100);
        continue; // resend, same clientMessageId
      }
      if (r.ok) {
        await h.sleep(PACE_MS);
        outcomes.push({ n, clientMessageId, messageId: r.messageId, seq: r.seq, duplicate: r.duplicate, status: r.status, phase: stats.phase().name, at: Date.now() });
        stats.phase().ok++;
        if (r.duplicate) stats.phase().duplicateAcks++;
        break;
      }
      const code = r.error?.code;
      stats.phase().errors[code] = (stats.phase().errors[code] ?? 0) + 1;
      if (code === "delivery_failed") {
        outcomes.push({ n, clientMessageId, failed: true });
        break;
      }
      if (code === "forbidden") c.joined = null; // the gateway restarted: join first
      assert.ok(["unavailable", "rate_limited", "forbidden"].includes(code), `unexpected refusal ${JSON.stringify(r.error)}`);
      await h.sleep(code === "rate_limited" ? (r.error.retryAfterMs ?? 100) : 150);
    }
  }
  return outcomes;
}

test("nothing acked is lost or stored twice through gateway, persister, Redis, MongoDB and broker faults", { timeout: 240_000 }, async () => {
  // The test's own Redis (AOF on every write), MongoDB (on disk) and broker.
  const redisPort = await h.freePort();
  const redis = server("redis", "redis-server", [
    "--bind", "127.0.0.1", "--port", String(redisPort), "--dir", dir, "--save", "",
    "--appendonly", "yes", "--appendfsync", "always", "--protected-mode", "yes",
  ], redisPort);
  const secantus = process.env.SECANTUS_BIN;
  assert.ok(secantus, "SECANTUS_BIN not set: eval \"$(scripts/stack.sh env)\"");
  const mongoPort = await h.freePort();
  const mongo = server("mongo", secantus, [
    "--host", "127.0.0.1", "--port", String(mongoPort), "--storage-path", join(dir, "mongo"), "--sync-on-commit",
  ], mongoPort);
  await redis.start();
  await mongo.start();
  const broker = await h.startBroker();
  const mongoUri = `mongodb://127.0.0.1:${mongoPort}/?directConnection=true`;
  store = new MongoClient(mongoUri);
  await store.connect();
  const db = store.db(s.db);

  const users = {};
  for (const conv of CONVERSATIONS) {
    users[conv] = Array.from({ length: SENDERS_PER_CONVERSATION }, (_, i) => `${conv}-u${i}`);
    await db.collection("conversations").insertOne({
      tenant_id: tenant,
      conversation_id: conv,
      participants: [...users[conv], `${conv}-la`, `${conv}-lb`, `${conv}-lc`].map((u, i) => ({ user_id: u, role: i === 0 ? "owner" : "member" })),
    });
  }

  const env = {
    REDIS_URL: `redis://127.0.0.1:${redisPort}/0?protocol=resp3`,
    MONGODB_URI: mongoUri,
    KAFKA_BROKERS: broker.brokers,
    RATE_LIMIT_PER_SECOND: "1000",
    RATE_LIMIT_BURST: "1000",
    PERSISTENCE_CONFIRMATION_TIMEOUT_MS: "2000",
    PERSISTENCE_MAX_RETRY_INTERVAL_MS: "3000",
    KAFKA_MESSAGE_TIMEOUT_MS: "5000",
    RUST_LOG: "warn",
  };
  const start = (role, port) => h.startRealtime({ role, db: s.db, redisDb: 0, topicPrefix: s.topicPrefix, env, port });
  let gwA = await start("gateway");
  const gwB = await start("gateway");
  // A gateway whose clients only listen: it publishes nothing, so only the adapter's own
  // renewal brings its subscriptions back after a long Redis outage.
  const gwC = await start("gateway");
  let persister = await start("persister");

  // Senders alternate between the gateways; one listener per conversation on each.
  const senders = [];
  for (const conv of CONVERSATIONS) {
    users[conv].forEach((u, i) => senders.push(client(i % 2 ? gwB : gwA, u, conv)));
    client(gwA, `${conv}-la`, conv);
    client(gwB, `${conv}-lb`, conv);
    client(gwC, `${conv}-lc`, conv);
  }
  await Promise.all(clients.map((c) => c.ready));

  const phases = [];
  let current;
  const phase = (name) => {
    current = { name, ok: 0, duplicateAcks: 0, unanswered: 0, errors: {}, at: Date.now() };
    trace(`phase ${name}`);
    phases.push(current);
  };
  const stats = { phase: () => current };
  phase("warm-up");
  let stopping = false;
  const loops = senders.map((c) => sendLoop(c, () => (stopping ? 0 : Infinity), stats));
  progress = setInterval(() => trace(`${JSON.stringify(current)} ${senders.map((c) => `${c.user}:${c.joined ? "j" : "-"}${c.socket.connected ? "c" : "-"}:${c.current ?? ""}`).join(" ")}`), 1000);
  await h.sleep(3_000);

  phase("gateway A killed (-9), restarted");
  await h.stop(gwA, "SIGKILL");
  await h.sleep(1_500);
  gwA = await start("gateway", gwA.port);
  await h.sleep(3_000);

  phase("persister killed (-9), restarted");
  await h.stop(persister, "SIGKILL");
  await h.sleep(2_000);
  persister = await start("persister");
  await h.sleep(4_000);

  phase("Redis killed (-9), restarted from AOF");
  await redis.kill();
  await h.sleep(8_000); // a listen-only gateway (C) must reconnect and subscribe again by itself
  await redis.start();
  await h.sleep(5_000);

  phase("MongoDB killed (-9), restarted from disk");
  await mongo.kill();
  await h.sleep(2_000);
  await mongo.start();
  await h.sleep(5_000);

  phase("broker paused 5 s (SIGSTOP/SIGCONT)");
  broker.pause();
  await h.sleep(5_000);
  broker.resume();
  await h.sleep(4_000);

  phase("drain");
  stopping = true;
  const sent = await Promise.all(loops);
  clearInterval(progress);

  // Every acked message reaches MongoDB; its sender can learn so.
  const acked = sent.flatMap((o, i) => o.filter((m) => !m.failed).map((m) => ({ ...m, sender: senders[i] })));
  const failedAcks = sent.flatMap((o) => o.filter((m) => m.failed));
  assert.ok(acked.length > 100, `only ${acked.length} messages acked: the load did not run`);
  const listeners = clients.filter((c) => /-l[abc]$/.test(c.user));
  // After every fault the live paths work again: a new message reaches the listeners on
  // both gateways as message:new, and its sender hears message:persisted.
  for (const conv of CONVERSATIONS) {
    const sender = senders.find((c) => c.conversation === conv);
    const since = Date.now();
    const r = await sender.socket.timeout(10_000).emitWithAck("message:send", { conversationId: conv, clientMessageId: `${sender.user}-last`, content: h.text("after the faults") });
    assert.ok(r.ok, JSON.stringify(r));
    acked.push({ clientMessageId: `${sender.user}-last`, messageId: r.messageId, seq: r.seq, sender, phase: "after" });
    await h.waitFor(() => sender.persisted.has(r.messageId), { timeoutMs: 15_000, what: `message:persisted live to ${sender.user}` });
    for (const c of listeners.filter((l) => l.conversation === conv)) {
      await h.waitFor(() => c.seen.get(r.seq) === r.messageId, { timeoutMs: 20_000, what: `message:new live to ${c.user}` });
    }
    trace(`live after the faults in ${conv}: ${Date.now() - since} ms`);
  }
  const ackedIds = new Set(acked.map((m) => m.messageId));
  const storedIds = async () =>
    new Set((await db.collection("messages").find({ tenant_id: tenant, tombstone: { $ne: true } }).project({ message_id: 1 }).toArray()).map((d) => d.message_id));
  trace(`drained: ${acked.length} acked, ${failedAcks.length} failed`);
  try {
    await h.waitFor(
      async () => {
        const have = await storedIds();
        const missing = [...ackedIds].filter((id) => !have.has(id)).length;
        trace(`stored ${have.size}, acked missing ${missing}`);
        return missing === 0;
      },
      { timeoutMs: 60_000, intervalMs: 1_000, what: "every acked message in MongoDB" },
    );
  } catch (e) {
    const have = await storedIds();
    const missing = acked.filter((m) => !have.has(m.messageId));
    const show = missing.slice(0, 20).map(({ sender, ...m }) => ({ ...m, t: m.at - phases[0].at }));
    console.log("missing", missing.length, JSON.stringify(show, null, 1));
    console.log("phases", phases.map((p) => `${p.name} +${p.at - phases[0].at}`).join("; "));
    console.log("gateway A log:", gwA.log.join("").slice(-4000));
    console.log("persister log:", persister.log.join("").slice(-4000));
    throw e;
  }
  for (const c of senders) {
    const mine = acked.filter((m) => m.sender === c);
    const unannounced = mine.filter((m) => !c.persisted.has(m.messageId)).map((m) => m.clientMessageId);
    for (let i = 0; i < unannounced.length; i += 100) {
      // The record says persisted once a gateway has the persister's event (shortly after
      // MongoDB has the message).
      let last;
      await h.waitFor(
        async () => {
          last = await c.socket.timeout(10_000).emitWithAck("message:status", { conversationId: c.conversation, clientMessageIds: unannounced.slice(i, i + 100) });
          assert.ok(last.ok, JSON.stringify(last));
          return last.messages.every((m) => m.status === "persisted");
        },
        { timeoutMs: 20_000, intervalMs: 500, what: "message:status to say persisted" },
      ).catch((e) => {
        const not = last.messages.filter((m) => m.status !== "persisted").map((m) => `${m.clientMessageId}: ${m.status}`);
        throw new Error(`${e.message}: ${not.join(", ")}`);
      });
    }
    c.asked = unannounced.length;
    for (const [id, times] of c.persisted) assert.equal(times, 1, `message:persisted for ${id} ${times} times on one socket`);
    for (const m of mine) assert.ok(!c.failed.has(m.messageId), `${m.clientMessageId} acked ok yet reported failed`);
  }

  trace("outcomes checked");
  // MongoDB: exactly once, numbers unique and in each sender's order, contiguous but for
  // the documented jump at the Redis restart.
  const docs = await db.collection("messages").find({ tenant_id: tenant }).sort({ conversation_id: 1, seq: 1 }).toArray();
  const stored = docs.filter((d) => !d.tombstone);
  const byId = new Map();
  for (const d of stored) byId.set(d.message_id, (byId.get(d.message_id) ?? 0) + 1);
  for (const [id, times] of byId) assert.equal(times, 1, `message ${id} stored ${times} times`);
  for (const m of acked) assert.equal(byId.get(m.messageId), 1, `${m.clientMessageId} (${m.messageId}) not stored once`);
  const byClientId = new Set(stored.map((d) => `${d.sender_id}/${d.client_message_id}`));
  assert.equal(byClientId.size, stored.length, "one stored message per clientMessageId");
  for (const f of failedAcks) {
    assert.ok(!byClientId.has(`${f.clientMessageId.replace(/-\d+$/, "")}/${f.clientMessageId}`), `${f.clientMessageId} reported failed yet stored`);
  }
  const jumps = {};
  for (const conv of CONVERSATIONS) {
    const seqs = docs.filter((d) => d.conversation_id === conv).map((d) => d.seq);
    assert.equal(new Set(seqs).size, seqs.length, `${conv}: a sequence number used twice`);
    jumps[conv] = [];
    for (let i = 1; i < seqs.length; i++) {
      const step = seqs[i] - seqs[i - 1];
      if (step !== 1) {
        assert.ok(step >= SEQUENCE_REPAIR_GAP, `${conv}: gap ${seqs[i - 1]} → ${seqs[i]} is not the documented repair jump`);
        jumps[conv].push(`${seqs[i - 1]}→${seqs[i]}`);
      }
    }
    // Redis restarted once, with a new run id: each counter is repaired exactly once.
    assert.equal(jumps[conv].length, 1, `${conv}: ${jumps[conv].length} jumps for one Redis restart`);
  }
  for (let i = 0; i < senders.length; i++) {
    const seqs = sent[i].filter((m) => !m.failed).map((m) => m.seq);
    for (let j = 1; j < seqs.length; j++) assert.ok(seqs[j] > seqs[j - 1], `${senders[i].user}: message ${j} numbered before its predecessor`);
  }

  // Listeners: every stored message once, live or recovered (after a reconnect, on a
  // skipped number, and once at the end as an app does when it resumes).
  for (const c of listeners) await c.recover("end");
  for (const c of listeners) {
    const want = stored.filter((d) => d.conversation_id === c.conversation);
    await h.waitFor(() => want.every((d) => c.seen.get(d.seq) === d.message_id) || undefined, {
      timeoutMs: 10_000,
      what: `${c.user} to have all ${want.length} messages`,
    }).catch((e) => {
      const lost = want.filter((d) => c.seen.get(d.seq) !== d.message_id);
      const when = (d) => phases.findLast((p) => p.at <= d.created_at)?.name;
      throw new Error(`${e.message}: missing ${lost.map((d) => `seq ${d.seq} (${d.sender_id}/${d.client_message_id}, sent during "${when(d)}", seen ${c.seen.get(d.seq)})`).join(", ")}`);
    });
    assert.equal(c.conflicts ?? 0, 0, `${c.user}: one seq with two messages`);
  }

  const report = phases.map((p) => ({
    phase: p.name,
    acked: p.ok,
    duplicateAcks: p.duplicateAcks,
    unanswered: p.unanswered,
    refusals: JSON.stringify(p.errors),
  }));
  console.log(`chaos: ${acked.length} acked, ${failedAcks.length} reported failed, ${docs.length - stored.length} tombstones, ` +
    `${senders.reduce((n, c) => n + c.persisted.size, 0)} persisted events, ${senders.reduce((n, c) => n + c.asked, 0)} asked by message:status, ` +
    `reconnects ${clients.reduce((n, c) => n + c.connects - 1, 0)}, jumps ${JSON.stringify(jumps)}`);
  for (const c of listeners) {
    console.log(`chaos: listener ${c.user}: ${c.seen.size} messages, recovered after reconnect ${c.recovered.reconnect}, on a gap ${c.recovered.gap}, at the end ${c.recovered.end}; history paged ${c.paged} times`);
  }
  console.table(report);
});
