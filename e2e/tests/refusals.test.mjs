// Bad input is refused with a specific error, nothing is stored, and the
// server (and the offending connection, where it is authenticated) stays up.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import * as h from "../lib/harness.mjs";

const s = h.suite("refusals", 2);
const tenant = `acme-${s.id}`;
const otherTenant = `globex-${s.id}`;
let rt, store;

before(async () => {
  store = await h.mongo(s.db);
  await h.seedConversation(store.db, tenant, "general", ["alice", "bob"]);
  await h.seedConversation(store.db, tenant, "private", ["bob"]);
  // Same conversation id in another tenant, where alice is a participant.
  await h.seedConversation(store.db, otherTenant, "general", ["alice"]);
  rt = await h.startRealtime({
    role: "all",
    ...s,
    env: { MAX_MESSAGE_BYTES: "1024", RATE_LIMIT_PER_SECOND: "1", RATE_LIMIT_BURST: "5" },
  });
});

after(async () => {
  h.closeAllSockets();
  await h.stopAll();
  await store?.client.close();
});

const stored = () => store.db.collection("messages").countDocuments({});

async function refusedWith(token, pattern) {
  await assert.rejects(h.connect(rt, token), (err) => {
    assert.match(err.message, pattern);
    return true;
  });
}

test("connections without a valid token are refused", async () => {
  const refusedBefore = await h.metric(rt, "realtime_connections_refused_total");
  await refusedWith(undefined, /^unauthorized: no token/);
  await refusedWith("", /^unauthorized: no token/);
  await refusedWith("garbage", /^unauthorized: token is malformed/);
  await refusedWith(h.mintToken({ tenant, user: "alice", expIn: -120 }), /^unauthorized: token has expired/);
  await refusedWith(h.mintToken({ tenant, user: "alice", secret: "not-the-secret" }), /^unauthorized: token signature is not valid/);
  await refusedWith(h.mintToken({ tenant, user: "alice", iss: "someone-else" }), /^unauthorized: token issuer/);
  await refusedWith(h.mintToken({ tenant, user: "alice", aud: "admin" }), /^unauthorized: token audience/);
  await refusedWith(h.mintToken({ tenant: "a:b", user: "alice" }), /^unauthorized: token claim tenant_id/);
  await refusedWith(h.mintToken({ tenant, user: "alice", nbfIn: 120 }), /^unauthorized: token is not valid yet \(claim nbf/);
  await refusedWith(h.mintToken({ tenant, user: "alice", aud: ["admin", "billing"] }), /^unauthorized: token audience .*claim aud/);
  assert.equal(await h.metric(rt, "realtime_connections_refused_total"), refusedBefore + 10, "each refusal counted once");
  // RFC 7519: aud may be an array; it is accepted when it holds the configured audience.
  const multi = await h.connect(rt, h.mintToken({ tenant, user: "alice", aud: ["billing", h.AUDIENCE], nbfIn: -10 }));
  assert.equal(multi.connected, true);
});

test("joining another tenant's or a foreign conversation is forbidden", async () => {
  const alice = await h.connect(rt, h.mintToken({ tenant, user: "alice" }));
  const notMember = await alice.emitWithAck("room:join", { conversationId: "private" });
  assert.equal(notMember.ok, false);
  assert.equal(notMember.error.code, "forbidden");
  const missing = await alice.emitWithAck("room:join", { conversationId: "does-not-exist" });
  assert.equal(missing.error.code, "forbidden");
  // bob of `tenant` guesses the id of globex's conversation where only alice@globex is.
  await h.seedConversation(store.db, otherTenant, "globex-only", ["bob-globex"]);
  const bob = await h.connect(rt, h.mintToken({ tenant, user: "bob" }));
  assert.equal((await bob.emitWithAck("room:join", { conversationId: "globex-only" })).error.code, "forbidden");
  // Sending to a conversation without joining it is refused too.
  const send = await bob.emitWithAck("message:send", { conversationId: "private", clientMessageId: "p1", content: h.text("x") });
  assert.equal(send.error.code, "forbidden");
  assert.match(send.error.message, /room:join/);
  // History of a conversation one is not part of.
  const hist = await alice.emitWithAck("messages:history", { conversationId: "private" });
  assert.equal(hist.error.code, "forbidden");
  assert.equal(await stored(), 0);
});

test("a globex token cannot reach acme's conversation with the same id", async () => {
  const aliceGlobex = await h.connect(rt, h.mintToken({ tenant: otherTenant, user: "alice" }));
  assert.equal((await aliceGlobex.emitWithAck("room:join", { conversationId: "general" })).ok, true);
  const acmeBob = await h.connect(rt, h.mintToken({ tenant, user: "bob" }));
  assert.equal((await acmeBob.emitWithAck("room:join", { conversationId: "general" })).ok, true);
  const r = await aliceGlobex.emitWithAck("message:send", { conversationId: "general", clientMessageId: "g1", content: h.text("globex only") });
  assert.equal(r.ok, true);
  await h.waitFor(async () => (await stored()) === 1, { what: "globex message stored" });
  // A later message in acme's room reaches acmeBob after anything broadcast before it.
  const acmeAlice = await h.connect(rt, h.mintToken({ tenant, user: "alice" }));
  assert.equal((await acmeAlice.emitWithAck("room:join", { conversationId: "general" })).ok, true);
  const marker = await acmeAlice.emitWithAck("message:send", { conversationId: "general", clientMessageId: "marker", content: h.text("acme marker") });
  await h.nextEvent(acmeBob, "message:new", { pred: (m) => m.messageId === marker.messageId });
  assert.deepEqual(
    acmeBob.received("message:new").map((m) => m.messageId),
    [marker.messageId],
    "acme's room must not see globex's message",
  );
  await h.waitFor(async () => (await stored()) === 2, { what: "the marker stored" });
  const page = await acmeBob.emitWithAck("messages:history", { conversationId: "general" });
  assert.deepEqual(page.messages.map((m) => m.messageId), [marker.messageId], "acme's history has only acme's message");
  await store.db.collection("messages").deleteMany({});
});

test("malformed payloads are refused with invalid_payload", async () => {
  const alice = await h.connect(rt, h.mintToken({ tenant, user: "alice" }));
  await alice.emitWithAck("room:join", { conversationId: "general" });
  const cases = [
    ["not an object", "hello"],
    ["a number", 42],
    ["an array", [1, 2]],
    ["null", null],
    ["missing conversationId", { clientMessageId: "k", content: h.text("x") }],
    ["missing clientMessageId", { conversationId: "general", content: h.text("x") }],
    ["missing content", { conversationId: "general", clientMessageId: "k" }],
    ["wrong type of conversationId", { conversationId: 7, clientMessageId: "k", content: h.text("x") }],
    ["wrong content type", { conversationId: "general", clientMessageId: "k", content: { type: "video", url: "x" } }],
    ["text not a string", { conversationId: "general", clientMessageId: "k", content: { type: "text", text: {} } }],
    ["empty text", { conversationId: "general", clientMessageId: "k", content: h.text("   ") }],
    ["bad id characters", { conversationId: "gen{eral}", clientMessageId: "k", content: h.text("x") }],
  ];
  for (const [name, payload] of cases) {
    const r = await alice.emitWithAck("message:send", payload);
    assert.equal(r.ok, false, name);
    assert.equal(r.error.code, "invalid_payload", `${name}: ${JSON.stringify(r)}`);
    assert.ok(r.error.message.length > 10, name);
  }
  const noArgs = await alice.emitWithAck("message:send");
  assert.equal(noArgs.error.code, "invalid_payload");
  for (const [event, payload] of [["room:join", { conversationId: 1 }], ["messages:history", { conversationId: "general", limit: 1000 }], ["room:leave", "x"]]) {
    const r = await alice.emitWithAck(event, payload);
    assert.equal(r.error.code, "invalid_payload", event);
  }
  // Without an ack callback the refusal arrives as an `error` event.
  alice.emit("message:send", { conversationId: "general" });
  const [err] = await h.waitFor(() => alice.received("error").length && alice.received("error"), { what: "error event" });
  assert.equal(err.code, "invalid_payload");
  assert.match(err.message, /clientMessageId|content/);
  const unknown = await alice.emitWithAck("message:delete", {});
  assert.equal(unknown.error.code, "unknown_event");
  assert.ok(alice.connected, "the connection stays open");
  assert.equal(await stored(), 0);
});

test("oversize content is refused with too_large on a connection that stays open", async () => {
  const alice = await h.connect(rt, h.mintToken({ tenant, user: "alice" }));
  await alice.emitWithAck("room:join", { conversationId: "general" });
  const big = await alice.emitWithAck("message:send", { conversationId: "general", clientMessageId: "big", content: h.text("x".repeat(1025)) });
  assert.equal(big.error.code, "too_large");
  assert.match(big.error.message, /1025 bytes; the limit is 1024/);
  // Far beyond the limit (but under the transport cap): still a clean refusal.
  const huge = await alice.emitWithAck("message:send", { conversationId: "general", clientMessageId: "huge", content: h.text("é".repeat(20_000)) });
  assert.equal(huge.error.code, "too_large");
  assert.ok(alice.connected);
  const fits = await alice.emitWithAck("message:send", { conversationId: "general", clientMessageId: "fits", content: h.text("x".repeat(1024)) });
  assert.equal(fits.ok, true, JSON.stringify(fits));
  await h.waitFor(async () => (await stored()) === 1, { what: "the fitting message stored" });
});

test("sending faster than the rate limit is refused with rate_limited", async () => {
  const bob = await h.connect(rt, h.mintToken({ tenant, user: "bob" }));
  await bob.emitWithAck("room:join", { conversationId: "general" });
  const results = [];
  for (let i = 0; i < 8; i++) {
    results.push(await bob.emitWithAck("message:send", { conversationId: "general", clientMessageId: `r${i}`, content: h.text(`r${i}`) }));
  }
  const accepted = results.filter((r) => r.ok).length;
  const limited = results.filter((r) => !r.ok);
  assert.ok(accepted >= 5 && accepted <= 6, `burst of 5 (+1 refill) accepted, got ${accepted}`);
  assert.ok(limited.length >= 2);
  for (const r of limited) {
    assert.equal(r.error.code, "rate_limited");
    assert.ok(r.error.retryAfterMs > 0 && r.error.retryAfterMs <= 1000, JSON.stringify(r));
  }
  // A second connection of the same user shares the bucket.
  const bob2 = await h.connect(rt, h.mintToken({ tenant, user: "bob" }));
  await bob2.emitWithAck("room:join", { conversationId: "general" });
  const r = await bob2.emitWithAck("message:send", { conversationId: "general", clientMessageId: "r-other", content: h.text("x") });
  assert.equal(r.error?.code, "rate_limited");
  // One more accepted message on the same conversation (same partition, stored in order):
  // once it is stored, anything sent before it is too.
  await h.sleep(r.error.retryAfterMs);
  const last = await bob2.emitWithAck("message:send", { conversationId: "general", clientMessageId: "r-last", content: h.text("x") });
  assert.equal(last.ok, true, JSON.stringify(last));
  await h.waitFor(async () => (await store.db.collection("messages").countDocuments({ message_id: last.messageId })) === 1, { what: "the last message stored" });
  assert.equal(await store.db.collection("messages").countDocuments({ sender_id: "bob" }), accepted + 1, "only accepted messages stored");
});

test("the server is still up and serving after all of that", async () => {
  assert.equal((await fetch(`${rt.url}/healthz`)).status, 200);
  const alice = await h.connect(rt, h.mintToken({ tenant, user: "alice" }));
  assert.equal((await alice.emitWithAck("room:join", { conversationId: "general" })).ok, true);
});

test("packets that are not JSON at all do not hurt the server", async () => {
  const { WebSocket } = await import("ws");
  const port = rt.port;
  const raw = new WebSocket(`ws://127.0.0.1:${port}/socket.io/?EIO=4&transport=websocket`);
  const frames = [];
  raw.on("message", (m) => frames.push(m.toString()));
  const closed = new Promise((ok) => raw.on("close", ok));
  await h.waitFor(() => frames.some((f) => f.startsWith("0{")), { what: "engine.io open" });
  raw.send(`40/chat,${JSON.stringify({ token: h.mintToken({ tenant, user: "alice" }) })}`);
  await h.waitFor(() => frames.some((f) => f.startsWith("40/chat,")), { what: "namespace connect" });
  raw.send('42/chat,1["message:send",{"conversationId": "general", "clientMessageId": "raw"');
  raw.send("42/chat,2not json at all");
  raw.send("\u0000\u0001binary garbage");
  // The server either ignores such frames or closes this one connection; it never crashes.
  await Promise.race([closed, h.sleep(1000)]);
  raw.terminate();
  assert.equal((await fetch(`${rt.url}/healthz`)).status, 200);
  const alice = await h.connect(rt, h.mintToken({ tenant, user: "alice" }));
  assert.equal((await alice.emitWithAck("room:join", { conversationId: "general" })).ok, true);
  assert.equal(await store.db.collection("messages").countDocuments({ client_message_id: "raw" }), 0);
});

test("every event has a budget: a flood of reads on one connection is refused, the server stays up (item 8)", async () => {
  const own = await h.startRealtime({ role: "all", ...s, redisDb: 30, env: { MAX_ROOMS_PER_SOCKET: "2" } });
  await h.seedConversation(store.db, tenant, "extra", ["alice"]);
  const alice = await h.connect(own, h.mintToken({ tenant, user: "alice" }));
  assert.equal((await alice.emitWithAck("room:join", { conversationId: "general" })).ok, true);
  const reads = await Promise.all(
    Array.from({ length: 3000 }, () => alice.timeout(30_000).emitWithAck("messages:history", { conversationId: "general", limit: 100 })),
  );
  const served = reads.filter((r) => r.ok).length;
  const limited = reads.filter((r) => r.error?.code === "rate_limited");
  assert.ok(served >= 200 && served < 400, `the burst (200) and a little refill are served, got ${served}`);
  assert.equal(served + limited.length, reads.length, "every other read is refused with rate_limited");
  assert.ok(limited.every((r) => r.error.retryAfterMs > 0), "with a retry hint");
  assert.ok((await h.metric(own, 'realtime_rate_limited_total{class="read"}')) >= limited.length);
  // Another class has its own budget; and the room bound holds.
  assert.equal((await alice.emitWithAck("room:join", { conversationId: "extra" })).ok, true);
  await h.seedConversation(store.db, tenant, "third", ["alice"]);
  const third = await alice.emitWithAck("room:join", { conversationId: "third" });
  assert.equal(third.error?.code, "too_many_rooms");
  assert.equal((await alice.emitWithAck("room:leave", { conversationId: "extra" })).ok, true);
  assert.equal((await alice.emitWithAck("room:join", { conversationId: "third" })).ok, true);
  assert.equal((await fetch(`${own.url}/healthz`)).status, 200);
  await h.stop(own);
});
