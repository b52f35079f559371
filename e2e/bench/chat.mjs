// Chat pipeline benchmark: N concurrent socket.io-client connections against a gateway
// and a persister (release build), compared with the raw bulk-insert rate of the same
// MongoDB server measured in the same run.
//
//   cargo build --release --bins && eval "$(scripts/stack.sh env)" && \
//   REALTIME_BIN=target/release/realtime node e2e/bench/chat.mjs
//
// Knobs (environment): BENCH_CLIENTS (50), BENCH_RATE (1000 msg/s, fixed-rate phase),
// BENCH_SECONDS (10), BENCH_INFLIGHT (8 per client, saturation phase),
// BENCH_BASELINE_DOCS (30000).
import * as h from "../lib/harness.mjs";

const CLIENTS = Number(process.env.BENCH_CLIENTS ?? 50);
const RATE = Number(process.env.BENCH_RATE ?? 1000);
const SECONDS = Number(process.env.BENCH_SECONDS ?? 10);
const INFLIGHT = Number(process.env.BENCH_INFLIGHT ?? 8);
const BASELINE_DOCS = Number(process.env.BENCH_BASELINE_DOCS ?? 30000);
const MEMBERS = 5;

const s = h.suite("bench", 6);
const tenant = `bench-${s.id}`;

function pct(values, p) {
  if (!values.length) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

const fmt = (n, d = 1) => (Number.isFinite(n) ? n.toFixed(d) : "n/a");

async function baseline(db) {
  // Same document shape and batch size as the persister writes.
  const coll = db.collection("baseline_messages");
  await coll.createIndex({ message_id: 1 }, { unique: true, sparse: true });
  const batch = 100;
  const started = performance.now();
  for (let i = 0; i < BASELINE_DOCS; i += batch) {
    const docs = [];
    for (let j = i; j < Math.min(i + batch, BASELINE_DOCS); j++) {
      docs.push({ tenant_id: tenant, conversation_id: `c${j % 10}`, message_id: `b-${s.id}-${j}`, seq: j, sender_id: "u", client_message_id: `k${j}`, content: { type: "text", text: "benchmark message of realistic size ".repeat(2) }, created_at: new Date() });
    }
    await coll.insertMany(docs, { ordered: false });
  }
  const seconds = (performance.now() - started) / 1000;
  await coll.drop();
  return BASELINE_DOCS / seconds;
}

async function setup() {
  const store = await h.mongo(s.db);
  const conversations = Math.ceil(CLIENTS / MEMBERS);
  for (let c = 0; c < conversations; c++) {
    const users = [];
    for (let m = 0; m < MEMBERS && c * MEMBERS + m < CLIENTS; m++) users.push(`u${c * MEMBERS + m}`);
    await h.seedConversation(store.db, tenant, `conv${c}`, users);
  }
  const env = { RATE_LIMIT_PER_SECOND: "1000000", RATE_LIMIT_BURST: "1000000", RUST_LOG: "warn" };
  const gateway = await h.startRealtime({ role: "gateway", ...s, env });
  const persister = await h.startRealtime({ role: "persister", ...s, env });
  const clients = [];
  for (let i = 0; i < CLIENTS; i++) {
    const socket = await h.connect(gateway, h.mintToken({ tenant, user: `u${i}` }), { ackTimeout: 30_000 });
    socket.conversation = `conv${Math.floor(i / MEMBERS)}`;
    const r = await socket.emitWithAck("room:join", { conversationId: socket.conversation });
    if (!r.ok) throw new Error(`join failed: ${JSON.stringify(r)}`);
    socket.sentAt = new Map();
    socket.confirmLatencies = [];
    socket.confirmedAt = [];
    socket.on("message:persisted", (p) => {
      const t0 = socket.sentAt.get(p.messageId);
      const now = performance.now();
      if (t0 !== undefined) socket.confirmLatencies.push(now - t0);
      socket.confirmedAt.push(now);
    });
    clients.push(socket);
  }
  return { store, gateway, persister, clients };
}

let counter = 0;
async function sendOne(socket, ackLatencies) {
  const t0 = performance.now();
  const r = await socket.emitWithAck("message:send", {
    conversationId: socket.conversation,
    clientMessageId: `m${counter++}`,
    content: { type: "text", text: "benchmark message of realistic size ".repeat(2) },
  });
  if (!r.ok) throw new Error(`send refused: ${JSON.stringify(r)}`);
  socket.sentAt.set(r.messageId, t0);
  ackLatencies.push(performance.now() - t0);
}

function resetConfirmations(clients) {
  for (const c of clients) {
    c.sentAt.clear();
    c.confirmLatencies = [];
    c.confirmedAt = [];
  }
}

async function waitConfirmed(clients, expected, timeoutMs = 60_000) {
  const count = () => clients.reduce((n, c) => n + c.confirmedAt.length, 0);
  await h.waitFor(() => count() >= expected, { timeoutMs, what: `${expected} confirmations (got ${count()})` }).catch((e) => console.error(e.message));
  return count();
}

async function fixedRate(clients) {
  resetConfirmations(clients);
  const ackLatencies = [];
  const total = RATE * SECONDS;
  const interval = 1000 / RATE;
  const started = performance.now();
  const pending = [];
  for (let i = 0; i < total; i++) {
    const due = started + i * interval;
    const wait = due - performance.now();
    if (wait > 1) await h.sleep(wait);
    pending.push(sendOne(clients[i % clients.length], ackLatencies));
  }
  await Promise.all(pending);
  const sendSeconds = (performance.now() - started) / 1000;
  const confirmed = await waitConfirmed(clients, total);
  const confirmLatencies = clients.flatMap((c) => c.confirmLatencies);
  return { total, offeredRate: total / sendSeconds, ackLatencies, confirmLatencies, confirmed };
}

async function saturation(clients) {
  resetConfirmations(clients);
  const ackLatencies = [];
  const started = performance.now();
  const until = started + SECONDS * 1000;
  let accepted = 0;
  await Promise.all(
    clients.flatMap((c) =>
      Array.from({ length: INFLIGHT }, async () => {
        while (performance.now() < until) {
          await sendOne(c, ackLatencies);
          accepted++;
        }
      }),
    ),
  );
  const acceptSeconds = (performance.now() - started) / 1000;
  const confirmed = await waitConfirmed(clients, accepted);
  const lastConfirm = Math.max(...clients.flatMap((c) => c.confirmedAt));
  const confirmSeconds = (lastConfirm - started) / 1000;
  const confirmLatencies = clients.flatMap((c) => c.confirmLatencies);
  return { accepted, acceptRate: accepted / acceptSeconds, confirmed, confirmRate: confirmed / confirmSeconds, ackLatencies, confirmLatencies };
}

const { store, clients } = await setup();
try {
  const baseRate = await baseline(store.db);
  // Warm-up: consumer groups join and caches fill before anything is measured.
  const warm = await fixedRate(clients.slice(0, 5)).catch((e) => e);
  void warm;
  const fixed = await fixedRate(clients);
  const sat = await saturation(clients);
  const baseAfter = await baseline(store.db);
  const stored = await store.db.collection("messages").countDocuments({ tenant_id: tenant });

  const lines = [
    `clients: ${CLIENTS} (${MEMBERS} per conversation), phase length ${SECONDS} s, node ${process.version}`,
    "",
    "| measurement | value |",
    "|---|---|",
    `| MongoDB raw bulk insert (insertMany ×100), before / after | ${fmt(baseRate, 0)} / ${fmt(baseAfter, 0)} docs/s |`,
    `| fixed rate: offered | ${fmt(fixed.offeredRate, 0)} msg/s (${fixed.total} messages) |`,
    `| fixed rate: ack latency p50 / p99 | ${fmt(pct(fixed.ackLatencies, 50))} / ${fmt(pct(fixed.ackLatencies, 99))} ms |`,
    `| fixed rate: confirmation latency p50 / p99 | ${fmt(pct(fixed.confirmLatencies, 50))} / ${fmt(pct(fixed.confirmLatencies, 99))} ms |`,
    `| fixed rate: confirmed | ${fixed.confirmed} of ${fixed.total} |`,
    `| saturation (${INFLIGHT} in flight per client): accepted | ${fmt(fixed.total ? sat.acceptRate : 0, 0)} msg/s |`,
    `| saturation: confirmed (persisted) | ${fmt(sat.confirmRate, 0)} msg/s (${sat.confirmed} of ${sat.accepted}) |`,
    `| saturation: ack latency p50 / p99 | ${fmt(pct(sat.ackLatencies, 50))} / ${fmt(pct(sat.ackLatencies, 99))} ms |`,
    `| saturation: confirmation latency p50 / p99 | ${fmt(pct(sat.confirmLatencies, 50))} / ${fmt(pct(sat.confirmLatencies, 99))} ms |`,
    `| confirmed throughput / raw insert baseline | ${fmt((100 * sat.confirmRate) / Math.max(baseRate, baseAfter), 1)} % |`,
    `| messages stored (all phases) | ${stored} |`,
  ];
  console.log(lines.join("\n"));
} finally {
  h.closeAllSockets();
  await h.stopAll();
  await store.db.dropDatabase();
  await store.client.close();
}
