// Connection benchmark (issue 15): N idle Socket.IO connections on ONE server process, ours
// (a release gateway, ROLE=gateway) against a plain Node Socket.IO 4 server with the
// official Redis adapter (baseline/socketio-server.mjs), measured in the same run with the
// same load generator (socket.io-client, websocket transport only) and the same Redis.
//
//   cargo build --release --bins && scripts/stack.sh up && eval "$(scripts/stack.sh env)" && \
//   ulimit -n 65536 && REALTIME_BIN=target/release/realtime node e2e/bench/connections.mjs
//
// (`ulimit -n`: the server holds one descriptor per connection and is started from this
// shell; the client sockets are spread over BENCH_WORKERS child processes.)
//
// Knobs (environment): BENCH_CONNECTIONS (10000), BENCH_ROOMS (100), BENCH_WORKERS (4),
// BENCH_CONCURRENCY (32 handshakes or joins in flight per worker), BENCH_BROADCASTS (5).
//
// What happens, per system:
// 1. the server starts; its RSS (VmRSS of /proc/<pid>/status) once idle is "before";
// 2. connect: N sockets to `/chat`, each with its own user's token, spread over the
//    workers; connections/s = N / (first handshake started → last one connected);
// 3. join: every socket joins ONE room, socket i room i mod BENCH_ROOMS (100 rooms of 100
//    at the defaults; every user is a participant of its room in MongoDB); joins/s likewise.
//    Ours does more per join than the baseline: the participant's standing (MongoDB, then
//    cached in Redis), the room-state script, and a `presence` broadcast to the room — so a
//    room of K costs O(K²) presence deliveries to fill (BENCH_ROOMS=1 would put all N in one
//    room: N²/2 presence events, not practical at 10,000);
//    (RSS is also read between 2. and 3., once the server is quiet: "connected")
// 4. settle (server CPU quiet), RSS "joined"; per connection = (RSS − before) / N, both
//    for "connected" and "joined" (the join phase's peak — ours: the presence broadcasts —
//    can stay in the allocator and count here);
//    and the server's CPU over 5 s of idleness, before step 2 and here;
// 5. broadcast: one more socket per room (the sender, in this process, not counted in N)
//    sends one `message:send` into each room at the same moment; time = first send → the
//    last of the N idle sockets has `message:new` (all processes read the same wall clock,
//    performance.timeOrigin + now), BENCH_BROADCASTS rounds. Ours goes through the broker
//    (the gateway emits once the broker has the message) and the Redis adapter; the
//    baseline emits at once and publishes on Redis.
// Ours runs with a persister (so that no confirmation timeout makes the gateway retry; its
// memory and CPU are not counted), the send budget lifted (RATE_LIMIT_PER_SECOND/BURST)
// and Redis database 8 (the benchmarks' own: calls.mjs, fanout.mjs, connections.mjs — not
// run at the same time).
import { fork } from "node:child_process";
import { fileURLToPath } from "node:url";
import { io as ioClient } from "socket.io-client";
import * as h from "../lib/harness.mjs";
import { cpuSeconds, fmt, pct, ratio, rssKb, startNodeServer, stopNodeServers } from "./baseline/lib.mjs";

const N = Number(process.env.BENCH_CONNECTIONS ?? 10000);
const ROOMS = Number(process.env.BENCH_ROOMS ?? 100);
const WORKERS = Number(process.env.BENCH_WORKERS ?? 4);
const CONCURRENCY = Number(process.env.BENCH_CONCURRENCY ?? 32);
const BROADCASTS = Number(process.env.BENCH_BROADCASTS ?? 5);
const REDIS_DB = 8;

const wallNow = () => performance.timeOrigin + performance.now();

/** Runs `fn` over `items` with at most `limit` at a time. */
async function pool(items, limit, fn) {
  let next = 0;
  await Promise.all(
    Array.from({ length: Math.min(limit, items.length) }, async () => {
      while (next < items.length) await fn(items[next++]);
    }),
  );
}

// ---------------------------------------------------------------- worker (child process)

async function worker() {
  let sockets = [];
  let expect = null;
  const reply = (msg) => process.send(msg);
  process.on("disconnect", () => process.exit(0));
  process.on("message", async (m) => {
    try {
      if (m.cmd === "connect") {
        const errors = {};
        const started = wallNow();
        await pool(m.users, m.concurrency, async ({ user, room }) => {
          const token = h.mintToken({ tenant: m.tenant, user, secret: m.secret });
          const socket = ioClient(`${m.url}/chat`, { auth: { token }, transports: ["websocket"], reconnection: false, forceNew: true, ackTimeout: 120_000, timeout: 120_000 });
          socket.room = room;
          socket.on("message:new", (msg) => {
            if (expect && msg.clientMessageId.startsWith(expect.tag)) {
              expect.count++;
              expect.last = wallNow();
              if (expect.count === expect.want) expect.done();
            }
          });
          const ok = await new Promise((done) => {
            socket.once("connect", () => done(true));
            socket.once("connect_error", (e) => ((errors[e.message] = (errors[e.message] ?? 0) + 1), done(false)));
          });
          if (ok) sockets.push(socket);
          else socket.close();
        });
        reply({ cmd: "connected", started, ended: wallNow(), connected: sockets.length, errors });
      } else if (m.cmd === "join") {
        const errors = {};
        const started = wallNow();
        let joined = 0;
        await pool(sockets, m.concurrency, async (socket) => {
          try {
            const r = await socket.emitWithAck("room:join", { conversationId: socket.room });
            if (r.ok) joined++;
            else errors[r.error?.code] = (errors[r.error?.code] ?? 0) + 1;
          } catch {
            errors.ack_timeout = (errors.ack_timeout ?? 0) + 1;
          }
        });
        reply({ cmd: "joined", started, ended: wallNow(), joined, errors });
      } else if (m.cmd === "expect") {
        const state = { tag: m.tag, want: sockets.length, count: 0, last: 0 };
        const finished = new Promise((ok) => (state.done = ok));
        expect = state;
        reply({ cmd: "armed" });
        await Promise.race([finished, h.sleep(m.timeoutMs)]);
        expect = null;
        reply({ cmd: "received", count: state.count, want: state.want, last: state.last });
      } else if (m.cmd === "close") {
        for (const s of sockets) s.close();
        sockets = [];
        reply({ cmd: "closed" });
      }
    } catch (e) {
      reply({ cmd: "error", message: String(e?.stack ?? e) });
    }
  });
  reply({ cmd: "ready" });
}

// ---------------------------------------------------------------- parent

const s = h.suite("bench-conns", REDIS_DB);
const tenant = `bench-${s.id}`;
const room = (i) => `room${i % ROOMS}`;
const workers = [];

function startWorker() {
  const child = fork(fileURLToPath(import.meta.url), ["--worker"], { stdio: ["ignore", "inherit", "inherit", "ipc"] });
  const w = { child, waiting: [] };
  child.on("message", (m) => {
    if (m.cmd === "error") console.error(`worker ${child.pid}: ${m.message}`);
    const i = w.waiting.findIndex((x) => x.cmd === m.cmd || m.cmd === "error");
    if (i >= 0) w.waiting.splice(i, 1)[0].ok(m);
  });
  w.next = (cmd) => new Promise((ok) => w.waiting.push({ cmd, ok }));
  w.exited = new Promise((ok) => child.on("exit", ok));
  workers.push(w);
  return w;
}

/** Sends `msg` to every worker and resolves with their `reply` answers. */
async function all(msg, reply, perWorker = () => ({})) {
  const answers = workers.map((w) => w.next(reply));
  workers.forEach((w, i) => w.child.send({ ...msg, ...perWorker(i) }));
  const out = await Promise.all(answers);
  const bad = out.find((a) => a.cmd === "error");
  if (bad) throw new Error(bad.message);
  return out;
}

const mergeErrors = (answers) => {
  const e = {};
  for (const a of answers) for (const [k, v] of Object.entries(a.errors ?? {})) e[k] = (e[k] ?? 0) + v;
  return e;
};

/** Waits until `pid` has used at most 5 % of a core over a second (at most `timeoutMs`). */
async function quiet(pid, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const c0 = cpuSeconds(pid);
    await h.sleep(1000);
    if (cpuSeconds(pid) - c0 <= 0.05 || Date.now() > deadline) return;
  }
}

/** The share of one core `pid` uses over `ms`, in %. */
async function cpuPercent(pid, ms = 5000) {
  const c0 = cpuSeconds(pid);
  await h.sleep(ms);
  return (100 * (cpuSeconds(pid) - c0)) / (ms / 1000);
}

async function measure(name, server, pid) {
  await quiet(pid, 10_000);
  const rssBefore = rssKb(pid);
  const idleBefore = await cpuPercent(pid);
  const secret = h.SECRET;
  const users = Array.from({ length: N }, (_, i) => ({ user: `c${i}`, room: room(i) }));
  const cpu0 = cpuSeconds(pid);
  const connected = await all({ cmd: "connect", url: server.url, tenant, secret, concurrency: CONCURRENCY }, "connected", (w) => ({
    users: users.filter((_, i) => i % WORKERS === w),
  }));
  const cpu1 = cpuSeconds(pid);
  await quiet(pid, 10_000);
  const rssConnected = rssKb(pid);
  const nConnected = connected.reduce((n, a) => n + a.connected, 0);
  const connectSeconds = (Math.max(...connected.map((a) => a.ended)) - Math.min(...connected.map((a) => a.started))) / 1000;
  const cpu1b = cpuSeconds(pid);
  const joined = await all({ cmd: "join", concurrency: CONCURRENCY }, "joined");
  const cpu2 = cpuSeconds(pid);
  const nJoined = joined.reduce((n, a) => n + a.joined, 0);
  const joinSeconds = (Math.max(...joined.map((a) => a.ended)) - Math.min(...joined.map((a) => a.started))) / 1000;
  await quiet(pid);
  const rssAfter = rssKb(pid);
  const idleAfter = await cpuPercent(pid);

  // One sender per room, in this process.
  const senders = [];
  await pool(Array.from({ length: ROOMS }, (_, r) => r), 16, async (r) => {
    const so = await h.connect(server, h.mintToken({ tenant, user: `sender${r}` }), { ackTimeout: 60_000 });
    so.offAny();
    const j = await so.emitWithAck("room:join", { conversationId: `room${r}` });
    if (!j.ok) throw new Error(`sender join: ${JSON.stringify(j)}`);
    senders.push({ so, conversationId: `room${r}` });
  });
  await quiet(pid, 10_000);
  const rounds = [];
  const missing = [];
  for (let b = 0; b < BROADCASTS; b++) {
    const tag = `${name}-b${b}-`;
    await all({ cmd: "expect", tag, timeoutMs: 60_000 }, "armed");
    const results = workers.map((w) => w.next("received"));
    const t0 = wallNow();
    const acks = await Promise.all(senders.map((x, r) => x.so.emitWithAck("message:send", { conversationId: x.conversationId, clientMessageId: `${tag}${r}`, content: h.text("broadcast") })));
    const refused = acks.filter((a) => !a.ok);
    if (refused.length) throw new Error(`broadcast refused: ${JSON.stringify(refused[0])}`);
    const got = await Promise.all(results);
    const count = got.reduce((n, a) => n + a.count, 0);
    if (count < nJoined) missing.push(`round ${b + 1}: ${nJoined - count} of ${nJoined} missing after 60 s`);
    rounds.push(Math.max(...got.map((a) => a.last)) - t0);
    await h.sleep(500);
  }
  for (const x of senders) x.so.close();
  await all({ cmd: "close" }, "closed");
  return {
    name,
    rssBefore,
    rssConnected,
    rssAfter,
    idleBefore,
    idleAfter,
    perConnIdle: (rssConnected - rssBefore) / nConnected,
    perConn: (rssAfter - rssBefore) / nConnected,
    connected: nConnected,
    connectRate: nConnected / connectSeconds,
    connectCpu: cpu1 - cpu0,
    joined: nJoined,
    joinRate: nJoined / joinSeconds,
    joinCpu: cpu2 - cpu1b,
    errors: { ...mergeErrors(connected), ...mergeErrors(joined) },
    broadcast: rounds,
    missing,
  };
}

async function main() {
  const store = await h.mongo(s.db);
  const perRoom = Array.from({ length: ROOMS }, (_, r) => [`sender${r}`]);
  for (let i = 0; i < N; i++) perRoom[i % ROOMS].push(`c${i}`);
  for (let r = 0; r < ROOMS; r++) await h.seedConversation(store.db, tenant, `room${r}`, perRoom[r]);
  for (let i = 0; i < WORKERS; i++) startWorker();
  await Promise.all(workers.map((w) => w.next("ready")));
  const results = [];
  try {
    const gateway = await h.startRealtime({
      role: "gateway",
      ...s,
      env: { RATE_LIMIT_PER_SECOND: "1000000", RATE_LIMIT_BURST: "1000000", PERSISTENCE_CONFIRMATION_TIMEOUT_MS: "600000", RUST_LOG: process.env.RUST_LOG ?? "warn" },
    });
    const persister = await h.startRealtime({ role: "persister", ...s, env: { RUST_LOG: process.env.RUST_LOG ?? "warn" } });
    // Warm-up of the send path (producer, topics) before anything is measured.
    const warm = await h.connect(gateway, h.mintToken({ tenant, user: "sender0" }));
    await warm.emitWithAck("room:join", { conversationId: "room0" });
    await warm.emitWithAck("message:send", { conversationId: "room0", clientMessageId: "warm", content: h.text("warm") });
    warm.close();
    results.push(await measure("ours", gateway, gateway.child.pid));
    await h.stop(gateway);
    await h.stop(persister);
    const node = await startNodeServer({ key: `bench-conns-${s.id}`, redisDb: REDIS_DB });
    results.push(await measure("node", node, node.child.pid));
  } finally {
    for (const w of workers) w.child.kill("SIGKILL");
    await Promise.all(workers.map((w) => w.exited));
    h.closeAllSockets();
    await stopNodeServers();
    await h.stopAll();
    await store.db.dropDatabase().catch(() => {});
    await store.client.close();
  }
  const [o, n] = results;
  const cell = (x, fn) => fn(x);
  const rows = [
    ["connections held", (x) => `${x.connected} of ${N}`, () => ""],
    ["server RSS before / connected / joined (MiB)", (x) => `${fmt(x.rssBefore / 1024)} / ${fmt(x.rssConnected / 1024)} / ${fmt(x.rssAfter / 1024)}`, () => ""],
    ["memory per connection, connected, no room (KiB, RSS delta / N)", (x) => fmt(x.perConnIdle, 2), (a, b) => ratio(a.perConnIdle, b.perConnIdle)],
    ["memory per connection, joined to its room (KiB, RSS delta / N)", (x) => fmt(x.perConn, 2), (a, b) => ratio(a.perConn, b.perConn)],
    ["server CPU while idle, no connections / all joined (% of a core, 5 s)", (x) => `${fmt(x.idleBefore)} / ${fmt(x.idleAfter)}`, () => ""],
    ["connect rate (connections/s)", (x) => fmt(x.connectRate, 0), (a, b) => ratio(a.connectRate, b.connectRate)],
    ["server CPU-s per 1,000 connects", (x) => fmt((1000 * x.connectCpu) / x.connected, 3), (a, b) => ratio(a.connectCpu / a.connected, b.connectCpu / b.connected)],
    ["join rate (joins/s)", (x) => fmt(x.joinRate, 0), (a, b) => ratio(a.joinRate, b.joinRate)],
    ["server CPU-s per 1,000 joins", (x) => fmt((1000 * x.joinCpu) / x.joined, 3), (a, b) => ratio(a.joinCpu / a.joined, b.joinCpu / b.joined)],
    [`broadcast to all ${N} (${ROOMS} sends at once), median of ${BROADCASTS} (ms)`, (x) => fmt(pct(x.broadcast, 50)), (a, b) => ratio(pct(a.broadcast, 50), pct(b.broadcast, 50))],
    ["broadcast, slowest round (ms)", (x) => fmt(Math.max(...x.broadcast)), (a, b) => ratio(Math.max(...a.broadcast), Math.max(...b.broadcast))],
  ];
  const lines = [
    `${N} idle connections (websocket) on one server process, over ${WORKERS} client processes; each joined one of ${ROOMS} rooms; node ${process.version}.`,
    "",
    "| measurement | ours (gateway) | node (socket.io + redis adapter) | ours / node |",
    "|---|---|---|---|",
    ...rows.map(([label, f, r]) => `| ${label} | ${cell(o, f)} | ${cell(n, f)} | ${r(o, n)} |`),
  ];
  for (const x of results) {
    if (Object.keys(x.errors).length) lines.push(`- ${x.name}: errors ${JSON.stringify(x.errors)}`);
    for (const m of x.missing) lines.push(`- ${x.name}: ${m}`);
  }
  console.log(lines.join("\n"));
}

if (process.argv[2] === "--worker") {
  worker();
} else {
  main().catch(async (e) => {
    console.error(e);
    for (const w of workers) w.child.kill("SIGKILL");
    await stopNodeServers();
    await h.stopAll();
    process.exit(1);
  });
}
