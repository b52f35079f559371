// Fan-out benchmark (issue 15): chat rooms spread over two server processes, against a
// plain Node Socket.IO 4 server with the official Redis adapter (baseline/socketio-server.mjs)
// measured in the same run, with the same load generator (socket.io-client, this process)
// and the same Redis.
//
//   cargo build --release --bins && scripts/stack.sh up && eval "$(scripts/stack.sh env)" && \
//   REALTIME_BIN=target/release/realtime node e2e/bench/fanout.mjs
//
// Knobs (environment): BENCH_SHAPES ("10x4,100x1": members × rooms), BENCH_INFLIGHT ("1,4,16":
// sends in flight per room), BENCH_SECONDS (8, per step), BENCH_DRAIN_TIMEOUT (60 s, the
// longest wait for our persister to catch up after a step). Defaults run in about 4 minutes.
//
// Shapes: each room's members alternate between process A and process B (member i on A
// when i is even), so a message crosses the Redis adapter for about half of its
// recipients. Ours: two release gateways (ROLE=gateway) and one persister on the stack's
// broker and MongoDB, Redis database 8 (used by the benchmarks only: calls.mjs, fanout.mjs,
// connections.mjs — not run at the same time); the send budget is lifted
// (RATE_LIMIT_PER_SECOND/RATE_LIMIT_BURST = 1,000,000) and the persistence confirmation
// timeout is 10 minutes, so that a persister behind under saturation does not make the
// gateways retry (and re-deliver). Node: two baseline processes, one adapter channel prefix of
// the run (pub/sub channels are server-wide, so the prefix keeps other runs out).
//
// Each step (shape, in-flight level, system): for BENCH_SECONDS every room keeps that many
// `message:send` in flight, the sender rotating over the room's members; every other
// member must get `message:new` (the sender's socket is left out by both systems).
// - deliveries/s: `message:new` received, first send to last arrival;
// - latency: send → arrival on each member (the send time travels in the text; one clock);
// - deliveries per server CPU-second: utime+stime (/proc/<pid>/stat) of the server
//   processes. Node: its two processes, first send → last arrival. Ours "gateways": the two
//   gateways over the same window; ours "all": gateways + persister, first send → the
//   persister has stored every message of the step (the whole pipeline's cost);
// - Redis CPU-seconds over the delivery window (shared infrastructure, shown for fairness;
//   anything else using the same redis-server counts too). The broker and MongoDB are not
//   counted (only ours uses them);
// - load generator CPU %: this process's CPU time / wall time; near 100 % means the client,
//   not the server, set the pace.
// The two systems alternate within each (shape, in-flight) pair, first one then the other.
import * as h from "../lib/harness.mjs";
import { cpuOf, cpuSeconds, fmt, pct, ratio, redisPid, startNodeServer, stopNodeServers } from "./baseline/lib.mjs";

const SECONDS = Number(process.env.BENCH_SECONDS ?? 8);
const SHAPES = (process.env.BENCH_SHAPES ?? "10x4,100x1").split(",").map((x) => {
  const [members, rooms] = x.split("x").map(Number);
  if (!(members >= 2 && rooms >= 1)) throw new Error(`bad shape ${x}: want MEMBERSxROOMS, e.g. 10x4`);
  return { label: x, members, rooms };
});
const INFLIGHT = (process.env.BENCH_INFLIGHT ?? "1,4,16").split(",").map(Number);
const DRAIN_TIMEOUT = Number(process.env.BENCH_DRAIN_TIMEOUT ?? 60) * 1000;
const REDIS_DB = 8;

const s = h.suite("bench-fanout", REDIS_DB);
const tenant = `bench-${s.id}`;
const conv = (shape, k) => `f${shape.label}-${k}`;
const user = (shape, k, i) => `${conv(shape, k)}-u${i}`;

/** The step being measured; `message:new` handlers count into it when the tag matches. */
let current = null;

async function connectRoom(servers, shape, k) {
  const conversationId = conv(shape, k);
  const sockets = [];
  for (let i = 0; i < shape.members; i++) {
    const socket = await h.connect(servers[i % 2], h.mintToken({ tenant, user: user(shape, k, i) }), { ackTimeout: 30_000 });
    socket.offAny(); // the harness records every event; millions would pile up
    const r = await socket.emitWithAck("room:join", { conversationId });
    if (!r.ok) throw new Error(`join ${conversationId} failed: ${JSON.stringify(r)}`);
    socket.on("message:new", (m) => {
      const step = current;
      if (!step || !m.clientMessageId.startsWith(step.tag)) return;
      const now = performance.now();
      step.deliveries++;
      step.latencies.push(now - Number(m.content.text));
      step.last = now;
    });
    sockets.push(socket);
  }
  return { conversationId, sockets, next: 0 };
}

let stepNo = 0;
async function step(sys, rooms, shape, inflight, seconds) {
  const step = { tag: `s${++stepNo}-`, deliveries: 0, latencies: [], last: 0, sent: 0, errors: {} };
  const persistedBefore = sys.persister ? await h.metric(sys.persister, "realtime_persisted_messages_total") : 0;
  const redis0 = cpuSeconds(sys.redis);
  const gw0 = cpuOf(sys.gateways);
  const all0 = cpuOf(sys.all);
  const client0 = process.cpuUsage();
  current = step;
  const t0 = performance.now();
  const until = t0 + seconds * 1000;
  let n = 0;
  await Promise.all(
    rooms.flatMap((room) =>
      Array.from({ length: inflight }, async () => {
        while (performance.now() < until) {
          const sender = room.sockets[room.next++ % room.sockets.length];
          const sentAt = performance.now();
          try {
            const r = await sender.emitWithAck("message:send", { conversationId: room.conversationId, clientMessageId: `${step.tag}${n++}`, content: { type: "text", text: String(sentAt) } });
            if (r.ok) step.sent++;
            else step.errors[r.error?.code ?? "?"] = (step.errors[r.error?.code ?? "?"] ?? 0) + 1;
          } catch {
            step.errors.ack_timeout = (step.errors.ack_timeout ?? 0) + 1;
          }
        }
      }),
    ),
  );
  const sendEnd = performance.now();
  const expected = step.sent * (shape.members - 1);
  // Every delivery in, or none for 5 s.
  let seen = -1;
  let quietSince = performance.now();
  while (step.deliveries < expected && performance.now() - quietSince < 5000) {
    if (step.deliveries !== seen) (seen = step.deliveries), (quietSince = performance.now());
    await h.sleep(10);
  }
  const end = step.last || performance.now();
  const gw1 = cpuOf(sys.gateways);
  const redis1 = cpuSeconds(sys.redis);
  const client1 = process.cpuUsage(client0);
  const clientPct = (100 * (client1.user + client1.system)) / 1e6 / ((performance.now() - t0) / 1000);
  current = null;
  const wall = (end - t0) / 1000;
  let allCpu = cpuOf(sys.all) - all0;
  let drained = true;
  let stored;
  let inMongo;
  if (sys.persister) {
    drained = await h
      .waitFor(async () => (await h.metric(sys.persister, "realtime_persisted_messages_total")) >= persistedBefore + step.sent, { timeoutMs: DRAIN_TIMEOUT, intervalMs: 100, what: "persisted" })
      .then(() => true, () => false);
    stored = (await h.metric(sys.persister, "realtime_persisted_messages_total")) - persistedBefore;
    if (!drained) {
      // The counter is short: are the messages missing from MongoDB, or only from the count?
      inMongo = await sys.store
        .collection("messages")
        .countDocuments({ tenant_id: tenant, client_message_id: { $regex: `^${step.tag}` } })
        .catch(() => NaN);
    }
    allCpu = cpuOf(sys.all) - all0;
  }
  return {
    system: sys.name,
    sendRate: step.sent / ((sendEnd - t0) / 1000),
    deliveries: step.deliveries,
    expected,
    rate: step.deliveries / wall,
    p50: pct(step.latencies, 50),
    p99: pct(step.latencies, 99),
    serverCpu: gw1 - gw0,
    allCpu,
    drained,
    stored,
    inMongo,
    sent: step.sent,
    redisCpu: redis1 - redis0,
    clientPct,
    errors: step.errors,
  };
}

async function main() {
  const store = await h.mongo(s.db);
  for (const shape of SHAPES) {
    for (let k = 0; k < shape.rooms; k++) {
      await h.seedConversation(store.db, tenant, conv(shape, k), Array.from({ length: shape.members }, (_, i) => user(shape, k, i)));
    }
  }
  const env = {
    RATE_LIMIT_PER_SECOND: "1000000",
    RATE_LIMIT_BURST: "1000000",
    PERSISTENCE_CONFIRMATION_TIMEOUT_MS: "600000",
    RUST_LOG: process.env.RUST_LOG ?? "warn",
  };
  const gwA = await h.startRealtime({ role: "gateway", ...s, env });
  const gwB = await h.startRealtime({ role: "gateway", ...s, env });
  const persister = await h.startRealtime({ role: "persister", ...s, env });
  const key = `bench-fanout-${s.id}`;
  const nodeA = await startNodeServer({ key, redisDb: REDIS_DB });
  const nodeB = await startNodeServer({ key, redisDb: REDIS_DB });
  const redis = redisPid();
  if (!redis) throw new Error("cannot find the redis-server process (by its port in REDIS_URL)");
  const ours = { name: "ours", servers: [gwA, gwB], gateways: [gwA.child.pid, gwB.child.pid], all: [gwA.child.pid, gwB.child.pid, persister.child.pid], persister, store: store.db, redis };
  const node = { name: "node", servers: [nodeA, nodeB], gateways: [nodeA.child.pid, nodeB.child.pid], all: [nodeA.child.pid, nodeB.child.pid], redis };

  const lines = [
    `Steps of ${SECONDS} s; two server processes per system, members alternating between them; node ${process.version}; load generator: this process (socket.io-client).`,
    "",
    "| shape (members × rooms) | in flight per room | system | sends/s | deliveries/s | p50 ms | p99 ms | server CPU-s | deliveries per server CPU-s | Redis CPU-s | load gen CPU | ours / node |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|",
  ];
  const notes = [];
  const best = [];
  try {
    for (const shape of SHAPES) {
      const rooms = {};
      for (const sys of [ours, node]) {
        rooms[sys.name] = [];
        for (let k = 0; k < shape.rooms; k++) rooms[sys.name].push(await connectRoom(sys.servers, shape, k));
        // Warm-up: producer, consumer groups, caches, JIT.
        await step(sys, rooms[sys.name], shape, 1, Math.min(2, SECONDS));
      }
      const top = { ours: 0, node: 0 };
      for (const [i, inflight] of INFLIGHT.entries()) {
        const r = {};
        for (const sys of i % 2 ? [node, ours] : [ours, node]) {
          r[sys.name] = await step(sys, rooms[sys.name], shape, inflight, SECONDS);
          top[sys.name] = Math.max(top[sys.name], r[sys.name].rate);
        }
        const o = r.ours;
        const n = r.node;
        const per = (x, cpu) => x.deliveries / cpu;
        const row = (label, x, cpu, cmp) =>
          `| ${shape.label} | ${inflight} | ${label} | ${fmt(x.sendRate, 0)} | ${fmt(x.rate, 0)} | ${fmt(x.p50, 2)} | ${fmt(x.p99, 2)} | ${fmt(cpu, 2)} | ${fmt(per(x, cpu), 0)} | ${fmt(x.redisCpu, 2)} | ${fmt(x.clientPct, 0)} % | ${cmp} |`;
        lines.push(row("node (2 processes)", n, n.serverCpu, "—"));
        lines.push(row("ours, gateways", o, o.serverCpu, `deliveries/s ${ratio(o.rate, n.rate)}, p99 ${ratio(o.p99, n.p99)}, per CPU-s ${ratio(per(o, o.serverCpu), per(n, n.serverCpu))}`));
        lines.push(row("ours, gateways + persister", o, o.allCpu, `per CPU-s ${ratio(per(o, o.allCpu), per(n, n.serverCpu))}`));
        for (const x of [o, n]) {
          if (x.deliveries < x.expected) notes.push(`${shape.label} × ${inflight}, ${x.system}: ${x.expected - x.deliveries} of ${x.expected} deliveries missing after 5 s of quiet`);
          if (Object.keys(x.errors).length) notes.push(`${shape.label} × ${inflight}, ${x.system}: refused sends ${JSON.stringify(x.errors)}`);
        }
        if (!o.drained) notes.push(`${shape.label} × ${inflight}: after ${DRAIN_TIMEOUT / 1000} s the persister had counted ${o.stored} of the ${o.sent} accepted messages as stored (realtime_persisted_messages_total), and MongoDB held ${o.inMongo} of them (its CPU is counted up to then)`);
      }
      best.push(`| ${shape.label} | ${fmt(top.ours, 0)} | ${fmt(top.node, 0)} | ${ratio(top.ours, top.node)} |`);
      for (const list of Object.values(rooms)) for (const room of list) for (const so of room.sockets) so.close();
      await h.sleep(300);
    }
    lines.push("", "Saturation (highest deliveries/s over the in-flight levels):", "", "| shape | ours | node | ours / node |", "|---|---|---|---|", ...best);
    if (notes.length) lines.push("", ...notes.map((x) => `- ${x}`));
    console.log(lines.join("\n"));
  } finally {
    current = null;
    h.closeAllSockets();
    await stopNodeServers();
    await h.stopAll();
    await store.db.dropDatabase().catch(() => {});
    await store.client.close();
  }
}

main().catch(async (e) => {
  console.error(e);
  await stopNodeServers();
  await h.stopAll();
  process.exit(1);
});
