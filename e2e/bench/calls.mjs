// Call benchmark: signalling relay latency through two gateways and call setup time,
// against the chat message round trip measured in the same run on the same gateways.
//
//   cargo build --release --bins && eval "$(scripts/stack.sh env)" && \
//   REALTIME_BIN=target/release/realtime node e2e/bench/calls.mjs
//
// Every client lives in this process, so one-way latencies are read on one clock:
// - relay: alice (gateway 1) sends `call:signal` to bob (gateway 2): send → bob's
//   `call:signal` (one way), and send → alice's ack; one at a time, BENCH_SIGNALS of them;
// - chat (the baseline): alice (gateway 1) sends `message:send` in a conversation bob
//   (gateway 2) has joined: send → bob's `message:new` (one way), and send → ack (the
//   broker has it); one at a time, as many; blocks of 100 alternate with the relay's so
//   both see the same machine;
// - signalling setup: `call:start` → bob's `call:incoming` → `call:accept` → alice's
//   `call:participant-joined` → offer → answer back at alice, BENCH_CALLS times;
// - browser setup: two headless Chromium pages (alice on gateway 1, bob on gateway 2),
//   relay-only through a coturn of the run: `call:start` → both RTCPeerConnections
//   `connected`, BENCH_BROWSER_CALLS times (0 skips it).
import * as h from "../lib/harness.mjs";
import { inCall, next, rtc, send } from "../lib/calls.mjs";

const SIGNALS = Number(process.env.BENCH_SIGNALS ?? 2000);
const CALLS = Number(process.env.BENCH_CALLS ?? 30);
const BROWSER_CALLS = Number(process.env.BENCH_BROWSER_CALLS ?? 5);
const BLOCK = 100;

const s = h.suite("callbench", 8);
const tenant = `bench-${s.id}`;

function pct(values, p) {
  if (!values.length) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}
const fmt = (n, d = 2) => (Number.isFinite(n) ? n.toFixed(d) : "n/a");
const summary = (xs) => `p50 ${fmt(pct(xs, 50))} ms, p99 ${fmt(pct(xs, 99))} ms, max ${fmt(Math.max(...xs))} ms (n=${xs.length})`;

/** Resolves with the time `socket` receives the next `event` matching `pred`. */
function arrival(socket, event, pred) {
  return new Promise((ok) => {
    const on = (payload) => {
      if (!pred(payload)) return;
      socket.off(event, on);
      ok(performance.now());
    };
    socket.on(event, on);
  });
}

async function relayBlock(alice, bob, callId, n, oneWay, acks) {
  for (let i = 0; i < n; i++) {
    const tag = `${callId}-${i}-${performance.now()}`;
    const got = arrival(bob, "call:signal", (p) => p.signal.candidate?.sdpMid === tag);
    const t0 = performance.now();
    const ack = await send(alice, "call:signal", { callId, to: "bob", signal: { type: "candidate", candidate: { candidate: "candidate:1 1 udp 2122260223 127.0.0.1 40000 typ relay", sdpMid: tag } } });
    if (!ack.ok) throw new Error(JSON.stringify(ack));
    acks.push(performance.now() - t0);
    oneWay.push((await got) - t0);
  }
}

async function chatBlock(alice, bob, n, oneWay, acks) {
  for (let i = 0; i < n; i++) {
    const id = `m-${performance.now()}-${i}`;
    const got = arrival(bob, "message:new", (m) => m.clientMessageId === id || m.content?.text === id);
    const t0 = performance.now();
    const ack = await alice.emitWithAck("message:send", { conversationId: "chat", clientMessageId: id, content: h.text(id) });
    if (!ack.ok) throw new Error(JSON.stringify(ack));
    acks.push(performance.now() - t0);
    oneWay.push((await got) - t0);
  }
}

async function signallingSetups(gw1, gw2) {
  const alice = await rtc(gw1, tenant, "alice");
  const bob = await rtc(gw2, tenant, "bob");
  const times = [];
  const steps = { "start ack": [], "incoming at bob": [], "accept ack": [], "joined at alice": [], "offer at bob": [], "answer at alice": [] };
  for (let i = 0; i < CALLS; i++) {
    const conversationId = "setup";
    const t0 = performance.now();
    let last = t0;
    const step = (name) => {
      const now = performance.now();
      steps[name].push(now - last);
      last = now;
    };
    const incoming = arrival(bob, "call:incoming", () => true);
    const { callId } = await send(alice, "call:start", { conversationId, media: "video" });
    step("start ack");
    await incoming;
    step("incoming at bob");
    const joined = arrival(alice, "call:participant-joined", (p) => p.userId === "bob");
    await send(bob, "call:accept", { callId });
    step("accept ack");
    await joined;
    step("joined at alice");
    const offer = arrival(bob, "call:signal", (p) => p.signal.type === "offer");
    await send(alice, "call:signal", { callId, to: "bob", signal: { type: "offer", sdp: "v=0" } });
    await offer;
    step("offer at bob");
    const answer = arrival(alice, "call:signal", (p) => p.signal.type === "answer");
    await send(bob, "call:signal", { callId, to: "alice", signal: { type: "answer", sdp: "v=0" } });
    await answer;
    step("answer at alice");
    times.push(performance.now() - t0);
    await send(alice, "call:hangup", { callId });
    await next(bob, "call:ended", { callId });
  }
  alice.close();
  bob.close();
  times.steps = steps;
  return times;
}

async function browserSetups(gw1, gw2, coturn) {
  const { launchBrowser, openPage, servePages } = await import("../lib/browser.mjs");
  const browser = await launchBrowser();
  const pages = await servePages();
  const times = [];
  try {
    for (let i = 0; i < BROWSER_CALLS; i++) {
      // Fresh pages per call: no peer connection of an earlier call competes.
      const alice = await openPage(browser, pages.url, "alice");
      const bob = await openPage(browser, pages.url, "bob");
      await alice.rt((rt, url, token) => rt.connect(url, token), gw1.url, h.mintToken({ tenant, user: "alice" }));
      await bob.rt((rt, url, token) => rt.connect(url, token), gw2.url, h.mintToken({ tenant, user: "bob" }));
      const accepted = bob.rt((rt) => rt.acceptNext(20_000));
      const t0 = performance.now();
      await alice.rt((rt) => rt.call("browser", "video"));
      await accepted;
      await h.waitFor(
        async () => {
          const [a, b] = await Promise.all([alice.rt((rt) => rt.state()), bob.rt((rt) => rt.state())]);
          return a?.connectionState === "connected" && b?.connectionState === "connected";
        },
        { timeoutMs: 30_000, intervalMs: 10, what: "both peer connections connected" },
      );
      times.push(performance.now() - t0);
      await alice.rt((rt) => rt.hangup());
      await alice.close();
      await bob.close();
    }
  } finally {
    await browser.close();
    await pages.close();
  }
  return { times, turn: coturn.urls };
}

async function main() {
  const store = await h.mongo(s.db);
  for (const c of ["relay", "chat", "setup", "browser"]) await h.seedConversation(store.db, tenant, c, ["alice", "bob"]);
  let coturn = null;
  // Budgets out of the way: this measures latency, one event at a time.
  const env = {
    KAFKA_RECORDING_TOPIC: `${s.topicPrefix}.webrtc.recording.events`,
    CALL_RING_TIMEOUT_SECONDS: "60",
    RATE_LIMIT_PER_SECOND: "100000",
    RATE_LIMIT_BURST: "100000",
    USER_EVENT_LIMIT: "100000/100000",
    CONNECTION_EVENT_LIMITS: "read:100000/100000,join:100000/100000,other:100000/100000,signal:100000/100000",
  };
  if (BROWSER_CALLS > 0) {
    const { startCoturn } = await import("../lib/browser.mjs");
    coturn = await startCoturn({ secret: `turn-${s.id}` });
    Object.assign(env, { TURN_URLS: coturn.urls.join(","), TURN_SECRET: `turn-${s.id}` });
  }
  const gw1 = await h.startRealtime({ role: "gateway", ...s, env });
  const gw2 = await h.startRealtime({ role: "gateway", ...s, env });
  await h.startRealtime({ role: "persister", ...s, env });
  try {
    const alice = await rtc(gw1, tenant, "alice");
    const bob = await rtc(gw2, tenant, "bob");
    const callId = await inCall("relay", alice, [bob]);
    const chatAlice = await h.connect(gw1, h.mintToken({ tenant, user: "alice" }));
    const chatBob = await h.connect(gw2, h.mintToken({ tenant, user: "bob" }));
    await chatAlice.emitWithAck("room:join", { conversationId: "chat" });
    await chatBob.emitWithAck("room:join", { conversationId: "chat" });
    // Warm-up (connections, scripts loaded, JIT), not measured.
    await relayBlock(alice, bob, callId, 50, [], []);
    await chatBlock(chatAlice, chatBob, 50, [], []);
    const relay = { oneWay: [], acks: [] };
    const chat = { oneWay: [], acks: [] };
    for (let done = 0; done < SIGNALS; done += BLOCK) {
      await relayBlock(alice, bob, callId, BLOCK, relay.oneWay, relay.acks);
      await chatBlock(chatAlice, chatBob, BLOCK, chat.oneWay, chat.acks);
    }
    await send(alice, "call:hangup", { callId });
    for (const sock of [alice, bob, chatAlice, chatBob]) sock.close();
    const setups = await signallingSetups(gw1, gw2);
    const browser = BROWSER_CALLS > 0 ? await browserSetups(gw1, gw2, coturn) : { times: [] };

    const ratio = (a, b) => fmt(pct(a, 50) / pct(b, 50));
    console.log(`signal relay, one way (gateway 1 → gateway 2):   ${summary(relay.oneWay)}`);
    console.log(`chat message:new, one way (gateway 1 → gateway 2): ${summary(chat.oneWay)}`);
    console.log(`  relay / chat, p50: ${ratio(relay.oneWay, chat.oneWay)}×`);
    console.log(`call:signal ack:   ${summary(relay.acks)}`);
    console.log(`message:send ack:  ${summary(chat.acks)}`);
    console.log(`  signal ack / send ack, p50: ${ratio(relay.acks, chat.acks)}×`);
    console.log(`signalling setup (start → answer at the caller): ${summary(setups)}`);
    console.log(`  setup / chat one-way, p50: ${ratio(setups, chat.oneWay)}×`);
    for (const [name, xs] of Object.entries(setups.steps)) console.log(`    ${name.padEnd(16)} p50 ${fmt(pct(xs, 50))} ms`);
    if (browser.times.length) {
      console.log(`browser setup (start → both RTCPeerConnections connected, relay via ${browser.turn[0]}): ${summary(browser.times)}`);
    }
  } finally {
    h.closeAllSockets();
    await h.stopAll();
    await coturn?.stop();
    await store.client.close();
  }
}

main().catch((e) => {
  console.error(e);
  process.exitCode = 1;
});
