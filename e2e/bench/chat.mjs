// Chat pipeline benchmark: N concurrent socket.io-client connections against a gateway
// and a persister (release build), compared with the raw bulk-insert rate of the same
// MongoDB server measured in the same run.
//
//   cargo build --release --bins && eval "$(scripts/stack.sh env)" && \
//   REALTIME_BIN=target/release/realtime node e2e/bench/chat.mjs
//
// Knobs (environment): BENCH_CLIENTS (50), BENCH_RATE (1000 msg/s, fixed-rate phase),
// BENCH_SECONDS (10), BENCH_INFLIGHT (8 per client, saturation phase),
// BENCH_BASELINE_DOCS (30000), BENCH_DRAIN (20000 messages for the drain phase).
import * as h from "../lib/harness.mjs";

const CLIENTS = Number(process.env.BENCH_CLIENTS ?? 50);
const RATE = Number(process.env.BENCH_RATE ?? 1000);
const SECONDS = Number(process.env.BENCH_SECONDS ?? 10);
const INFLIGHT = Number(process.env.BENCH_INFLIGHT ?? 8);
const BASELINE_DOCS = Number(process.env.BENCH_BASELINE_DOCS ?? 30000);
const DRAIN = Number(process.env.BENCH_DRAIN ?? 20000);
const MEMBERS = 5;

const s = h.suite("bench", 6);
const tenant = `bench-${s.id}`;

function pct(values, p) {
  if (!values.length) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

const fmt = (n, d = 1) => (Number.isFinite(n) ? n.toFixed(d) : "n/a");

// The raw rate of the same server for the same work: insertMany of 100 documents of the
// persister's shape into the same `messages` collection (same indexes, same size), run
// right before the phase it is compared with. The documents are removed afterwards.
async function baseline(db) {
  const coll = db.collection("messages");
  const batch = 100;
  const baseTenant = `baseline-${s.id}`;
  const started = performance.now();
  for (let i = 0; i < BASELINE_DOCS; i += batch) {
    const docs = [];
    for (let j = i; j < Math.min(i + batch, BASELINE_DOCS); j++) {
      docs.push({ tenant_id: baseTenant, conversation_id: `c${j % 10}`, message_id: `b-${s.id}-${performance.now()}-${j}`, seq: j, sender_id: "u", client_message_id: `k${j}`, content: { type: "text", text: "benchmark message of realistic size ".repeat(2) }, created_at: new Date() });
    }
    await coll.insertMany(docs, { ordered: false });
  }
  const seconds = (performance.now() - started) / 1000;
  await coll.deleteMany({ tenant_id: baseTenant });
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
  // The drain phase holds messages back on purpose: no retries while it does.
  const env = { RATE_LIMIT_PER_SECOND: "1000000", RATE_LIMIT_BURST: "1000000", RUST_LOG: "warn", PERSISTENCE_CONFIRMATION_TIMEOUT_MS: "600000" };
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

// Messages pile up in Kafka while the persister is stopped; then it is started alone and
// the rate from its first to its last confirmation is the pipeline's persistence rate
// (MongoDB write, events, confirmation) without the load generator competing for CPU.
async function drain(clients) {
  await h.stop(persister, "SIGTERM");
  resetConfirmations(clients);
  const ackLatencies = [];
  let sent = 0;
  await Promise.all(
    clients.flatMap((c) =>
      Array.from({ length: INFLIGHT }, async () => {
        while (sent < DRAIN) {
          sent++;
          await sendOne(c, ackLatencies);
        }
      }),
    ),
  );
  persister = await h.startRealtime({ role: "persister", ...s, env: { RUST_LOG: "warn" } });
  const confirmed = await waitConfirmed(clients, sent, 120_000);
  const times = clients.flatMap((c) => c.confirmedAt);
  const first = Math.min(...times);
  const last = Math.max(...times);
  return { sent, confirmed, rate: (confirmed - 1) / ((last - first) / 1000) };
}

/** Estimated percentile (upper bucket bound, ms) from two scrapes of a histogram. */
async function histogram(proc, name) {
  const text = await (await fetch(`${proc.url}/metrics`)).text();
  return text
    .split("\n")
    .filter((l) => l.startsWith(`${name}_bucket{`))
    .map((l) => ({ le: Number(l.match(/le="([^"]+)"/)[1]), n: Number(l.split(" ").pop()) }));
}

function histogramPct(before, after, p) {
  const counts = after.map((b, i) => ({ le: b.le, n: b.n - (before[i]?.n ?? 0) }));
  const total = counts[counts.length - 1].n;
  const bucket = counts.find((b) => b.n >= (p / 100) * total);
  return bucket ? bucket.le * 1000 : NaN;
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

let { store, clients, persister, gateway } = await setup();

async function metric(proc, name) {
  const text = await (await fetch(`${proc.url}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(`${name} `));
  return line ? Number(line.split(" ")[1]) : NaN;
}
try {
  // Warm-up: consumer groups join and caches fill before anything is measured.
  const warm = await fixedRate(clients.slice(0, 5)).catch((e) => e);
  void warm;
  const ackBefore = await histogram(gateway, "realtime_ack_latency_seconds");
  const fixed = await fixedRate(clients);
  const ackAfter = await histogram(gateway, "realtime_ack_latency_seconds");
  fixed.serverAck = [histogramPct(ackBefore, ackAfter, 50), histogramPct(ackBefore, ackAfter, 99)];
  const baseSat = await baseline(store.db);
  const sat = await saturation(clients);
  const baseDrain = await baseline(store.db);
  const drained = await drain(clients);
  const batches = await metric(persister, "realtime_persist_batches_total");
  const persisted = await metric(persister, "realtime_persisted_messages_total");
  const batchSeconds = await metric(persister, "realtime_persist_batch_seconds_sum");
  const stored = await store.db.collection("messages").countDocuments({ tenant_id: tenant });

  const lines = [
    `clients: ${CLIENTS} (${MEMBERS} per conversation), phase length ${SECONDS} s, node ${process.version}`,
    "",
    "| measurement | value |",
    "|---|---|",
    `| MongoDB raw bulk insert (insertMany ×100 into \`messages\`), before saturation / before drain | ${fmt(baseSat, 0)} / ${fmt(baseDrain, 0)} docs/s |`,
    `| fixed rate: offered | ${fmt(fixed.offeredRate, 0)} msg/s (${fixed.total} messages) |`,
    `| fixed rate: ack latency p50 / p99 | ${fmt(pct(fixed.ackLatencies, 50))} / ${fmt(pct(fixed.ackLatencies, 99))} ms |`,
    `| fixed rate: ack latency inside the gateway p50 / p99 (histogram bucket bound) | ≤ ${fmt(fixed.serverAck[0])} / ≤ ${fmt(fixed.serverAck[1])} ms |`,
    `| fixed rate: confirmation latency p50 / p99 | ${fmt(pct(fixed.confirmLatencies, 50))} / ${fmt(pct(fixed.confirmLatencies, 99))} ms |`,
    `| fixed rate: confirmed | ${fixed.confirmed} of ${fixed.total} |`,
    `| saturation (${INFLIGHT} in flight per client): accepted | ${fmt(fixed.total ? sat.acceptRate : 0, 0)} msg/s |`,
    `| saturation: confirmed (persisted) | ${fmt(sat.confirmRate, 0)} msg/s (${sat.confirmed} of ${sat.accepted}) |`,
    `| saturation: ack latency p50 / p99 | ${fmt(pct(sat.ackLatencies, 50))} / ${fmt(pct(sat.ackLatencies, 99))} ms |`,
    `| saturation: confirmation latency p50 / p99 | ${fmt(pct(sat.confirmLatencies, 50))} / ${fmt(pct(sat.confirmLatencies, 99))} ms |`,
    `| saturation: confirmed throughput / raw insert baseline | ${fmt((100 * sat.confirmRate) / baseSat, 1)} % |`,
    `| drain (persister alone, ${drained.sent} queued messages): confirmed | ${fmt(drained.rate, 0)} msg/s (${drained.confirmed} of ${drained.sent}) |`,
    `| drain: confirmed throughput / raw insert baseline | ${fmt((100 * drained.rate) / baseDrain, 1)} % |`,
    `| messages stored (all phases) | ${stored} |`,
    `| drain: persister batches, mean batch time | ${batches}, ${fmt((1000 * batchSeconds) / batches)} ms (${fmt(persisted / batches)} msgs/batch) |`,
  ];
  console.log(lines.join("\n"));
} finally {
  h.closeAllSockets();
  await h.stopAll();
  await store.db.dropDatabase();
  await store.client.close();
}
