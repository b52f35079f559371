// Rooms benchmark: latency of room:join and of a moderation decision with the standing
// cache warm and cold, and the cost of presence fan-out, each against a baseline measured
// in the same run on the same gateway (release build).
//
//   cargo build --release --bins && eval "$(scripts/stack.sh env)" && \
//   REALTIME_BIN=target/release/realtime node e2e/bench/rooms.mjs
//
// Knobs (environment): BENCH_SAMPLES (400), BENCH_ROOM_SIZES (1,10,50,100).
import * as h from "../lib/harness.mjs";

const SAMPLES = Number(process.env.BENCH_SAMPLES ?? 400);
const SIZES = (process.env.BENCH_ROOM_SIZES ?? "1,10,50,100").split(",").map(Number);
const s = h.suite("bench-rooms", 7);
const tenant = `bench-${s.id}`;

function pct(values, p) {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}
const fmt = (n) => n.toFixed(2);
const row = (name, v, base) =>
  `| ${name} | ${fmt(pct(v, 50))} | ${fmt(pct(v, 99))} | ${base ? `${(pct(v, 99) / pct(base, 99)).toFixed(1)}×` : "1.0× (baseline)"} |`;

async function timed(n, before, op) {
  const out = [];
  for (let i = 0; i < n; i++) {
    if (before) await before(i);
    const t0 = performance.now();
    await op(i);
    out.push(performance.now() - t0);
  }
  return out;
}

async function main() {
  const store = await h.mongo(s.db);
  const maxSize = Math.max(...SIZES);
  const members = Array.from({ length: maxSize }, (_, i) => `u${i}`);
  await h.seedConversation(store.db, tenant, "lobby", ["owner", "member", "target"]);
  for (const size of SIZES) await h.seedConversation(store.db, tenant, `room${size}`, ["owner", ...members.slice(0, size)]);
  const rt = await h.startRealtime({
    role: "all",
    ...s,
    env: { RATE_LIMIT_PER_SECOND: "100000", RATE_LIMIT_BURST: "100000", RUST_LOG: "warn" },
  });
  const token = (user) => h.mintToken({ tenant, user });
  const member = await h.connect(rt, token("member"));
  const dropStanding = (...users) => Promise.all(users.map((u) => h.redisCommand(s.redisDb, "DEL", `rt:${tenant}:authz:lobby:${u}`)));

  // Baseline: a round trip the gateway answers without any I/O (an unknown event).
  const warmup = await timed(100, null, () => member.emitWithAck("bench:noop", {}));
  const noop = await timed(SAMPLES, null, () => member.emitWithAck("bench:noop", {}));
  void warmup;
  const join = async () => {
    const r = await member.emitWithAck("room:join", { conversationId: "lobby" });
    if (!r.ok) throw new Error(JSON.stringify(r));
  };
  const leave = () => member.emitWithAck("room:leave", { conversationId: "lobby" });
  const joinWarm = await timed(SAMPLES, leave, join);
  const joinCold = await timed(SAMPLES, async () => {
    await leave();
    await dropStanding("member");
  }, join);
  // A moderation decision: a member trying to kick is refused by the matrix after both
  // standings (actor and target) are looked up.
  const kick = async () => {
    const r = await member.emitWithAck("moderation:kick", { conversationId: "lobby", userId: "target" });
    if (r.error?.code !== "forbidden") throw new Error(JSON.stringify(r));
  };
  const modWarm = await timed(SAMPLES, null, kick);
  const modCold = await timed(SAMPLES, () => dropStanding("member", "target"), kick);

  const lines = [
    `Samples per row: ${SAMPLES}. Latencies in ms, seen by the client (emit → ack).`,
    "",
    "| operation | p50 | p99 | p99 vs baseline |",
    "|---|---|---|---|",
    row("no-op round trip (baseline)", noop),
    row("room:join, standing cached (warm)", joinWarm, noop),
    row("room:join, standing from MongoDB (cold)", joinCold, noop),
    row("moderation decision, warm", modWarm, noop),
    row("moderation decision, cold", modCold, noop),
  ];

  // Presence fan-out: K members sit in a room; one more socket joins. Time until every
  // member has the new presence list, against the time until every member has a
  // message:new sent into the same room (the same broadcast path without presence).
  lines.push("", "| room size K | presence: join → all K have it, p50 / p99 | message:new → all K, p50 / p99 (baseline) | p99 ratio |", "|---|---|---|---|");
  const rounds = Math.max(20, Math.floor(SAMPLES / 10));
  for (const size of SIZES) {
    const conversationId = `room${size}`;
    const sockets = [];
    for (const u of members.slice(0, size)) {
      const so = await h.connect(rt, token(u));
      const r = await so.emitWithAck("room:join", { conversationId });
      if (!r.ok) throw new Error(JSON.stringify(r));
      sockets.push(so);
    }
    const owner = await h.connect(rt, token("owner"));
    const everyone = (event, pred) =>
      Promise.all(sockets.map((so) => new Promise((ok) => {
        const f = (p) => { if (pred(p)) { so.off(event, f); ok(); } };
        so.on(event, f);
      })));
    const presence = await timed(rounds, () => owner.emitWithAck("room:leave", { conversationId }).then(() => h.sleep(20)), async () => {
      const all = everyone("presence", (p) => p.online.includes("owner"));
      await owner.emitWithAck("room:join", { conversationId });
      await all;
    });
    let k = 0;
    const fanout = await timed(rounds, null, async () => {
      const id = `f${size}-${++k}`;
      const all = everyone("message:new", (m) => m.clientMessageId === id);
      const r = await owner.emitWithAck("message:send", { conversationId, clientMessageId: id, content: h.text("x") });
      if (!r.ok) throw new Error(JSON.stringify(r));
      await all;
    });
    lines.push(`| ${size} | ${fmt(pct(presence, 50))} / ${fmt(pct(presence, 99))} | ${fmt(pct(fanout, 50))} / ${fmt(pct(fanout, 99))} | ${(pct(presence, 99) / pct(fanout, 99)).toFixed(1)}× |`);
    owner.close();
    for (const so of sockets) so.close();
    await h.sleep(200);
  }
  console.log(lines.join("\n"));
  h.closeAllSockets();
  await h.stopAll();
  await store.client.close();
}

main().catch(async (e) => {
  console.error(e);
  await h.stopAll();
  process.exit(1);
});
