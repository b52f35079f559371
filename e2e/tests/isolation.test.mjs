// Tenant isolation: a user of tenant A, with a valid token, cannot join, read, send to,
// moderate, see the presence of, type in or recover messages of tenant B, even when the
// same user and conversation ids exist in both tenants.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import * as h from "../lib/harness.mjs";

const s = h.suite("isolation", 5);
const A = `tenant-a-${s.id}`;
const B = `tenant-b-${s.id}`;
let rt, store;
let bAlice, aAlice;

before(async () => {
  store = await h.mongo(s.db);
  // Both tenants have a conversation "shared" with alice (owner) and bob, and B has
  // "b-only". Only the tenant in the token may decide which one a user reaches.
  for (const t of [A, B]) await h.seedConversation(store.db, t, "shared", ["alice", "bob"]);
  await h.seedConversation(store.db, B, "b-only", ["alice", "bob"]);
  rt = await h.startRealtime({
    role: "all",
    ...s,
    env: { RATE_LIMIT_PER_SECOND: "1000", RATE_LIMIT_BURST: "1000" },
  });
  bAlice = await h.connect(rt, h.mintToken({ tenant: B, user: "alice" }));
  for (const c of ["shared", "b-only"]) {
    assert.equal((await bAlice.emitWithAck("room:join", { conversationId: c })).ok, true);
    const sent = await bAlice.emitWithAck("message:send", { conversationId: c, clientMessageId: `b-${c}`, content: h.text(`B secret in ${c}`) });
    assert.equal(sent.ok, true);
  }
  await h.waitFor(async () => (await store.db.collection("messages").countDocuments({ tenant_id: B })) === 2, { what: "B's messages stored" });
  aAlice = await h.connect(rt, h.mintToken({ tenant: A, user: "alice" }));
});

after(async () => {
  h.closeAllSockets();
  await h.stopAll();
  await store?.client.close();
});

const forbidden = (r, what) => {
  assert.equal(r.ok, false, `${what}: ${JSON.stringify(r)}`);
  assert.equal(r.error.code, "forbidden", `${what}: ${JSON.stringify(r)}`);
  assert.doesNotMatch(JSON.stringify(r), /secret/, `${what} leaks nothing`);
};

// Every operation of the protocol against B's conversation "b-only" with A's token.
const attempts = {
  "room:join": { conversationId: "b-only" },
  "messages:history": { conversationId: "b-only" },
  "messages:recover": { conversationId: "b-only", afterSeq: 0 },
  "presence:get": { conversationId: "b-only" },
  typing: { conversationId: "b-only" },
  "message:send": { conversationId: "b-only", clientMessageId: "x", content: h.text("hi") },
  "moderation:kick": { conversationId: "b-only", userId: "bob" },
  "moderation:ban": { conversationId: "b-only", userId: "bob" },
  "moderation:unban": { conversationId: "b-only", userId: "bob" },
  "moderation:mute": { conversationId: "b-only", userId: "bob" },
  "moderation:unmute": { conversationId: "b-only", userId: "bob" },
  "room:role": { conversationId: "b-only", userId: "bob", role: "admin" },
};

for (const [event, payload] of Object.entries(attempts)) {
  test(`tenant A cannot ${event} in tenant B's conversation`, async () => {
    forbidden(await aAlice.emitWithAck(event, payload), event);
  });
}

test("the same conversation id in two tenants are two conversations", async () => {
  const joined = await aAlice.emitWithAck("room:join", { conversationId: "shared" });
  assert.equal(joined.ok, true);
  assert.deepEqual(joined.online, ["alice"], "B's alice is not present in A's room");
  const history = await aAlice.emitWithAck("messages:history", { conversationId: "shared" });
  assert.deepEqual(history.messages, [], "B's message is not in A's history");
  const recovered = await aAlice.emitWithAck("messages:recover", { conversationId: "shared", afterSeq: 0 });
  assert.equal(recovered.ok, true);
  assert.deepEqual(recovered.messages, []);
  assert.equal(recovered.latestSeq, 0, "A's sequence is its own");

  // A's owner moderates A's bob only: B's bob is untouched.
  assert.equal((await aAlice.emitWithAck("moderation:mute", { conversationId: "shared", userId: "bob" })).ok, true);
  const bBob = await h.connect(rt, h.mintToken({ tenant: B, user: "bob" }));
  assert.equal((await bBob.emitWithAck("room:join", { conversationId: "shared" })).ok, true);
  const sent = await bBob.emitWithAck("message:send", { conversationId: "shared", clientMessageId: "b2", content: h.text("B again") });
  assert.equal(sent.ok, true, "B's bob is not muted by A's moderation");
  assert.equal(sent.seq, 2);
  await h.sleep(300);
  assert.equal(aAlice.received("message:new").length, 0, "no B message reaches A's room");
  assert.equal(aAlice.received("presence").every((p) => !p.online.includes("bob")), true, "B's presence does not reach A");
  assert.equal(aAlice.received("moderation:action").length, 1);
  assert.equal(bAlice.received("moderation:action").length, 0, "A's moderation does not reach B's room");
  const log = await store.db.collection("moderation_log").find({}).toArray();
  assert.deepEqual(log.map((e) => e.tenant_id), [A]);
});
