// Moderation across two gateways: kick, ban/unban, mute/unmute (permanent and
// temporary), the permission matrix, the moderation log, presence and typing, and
// state that survives a gateway restart.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import * as h from "../lib/harness.mjs";

const s = h.suite("moderation", 4);
const tenant = `acme-${s.id}`;
const env = {
  RATE_LIMIT_PER_SECOND: "1000",
  RATE_LIMIT_BURST: "1000",
  PERSISTENCE_CONFIRMATION_TIMEOUT_MS: "60000",
  PRESENCE_HEARTBEAT_MS: "300",
};
const people = ["alice", "carol", "dave", "bob", "mallory", "eve"];
const roles = { alice: "owner", carol: "admin", dave: "moderator" };
let gwA, gwB, store;

before(async () => {
  store = await h.mongo(s.db);
  for (const c of ["kick", "ban", "mute", "matrix", "restart", "presence"]) {
    await h.seedConversation(store.db, tenant, c, people, roles);
  }
  [gwA, gwB] = await Promise.all([
    h.startRealtime({ role: "gateway", ...s, env }),
    h.startRealtime({ role: "gateway", ...s, env }),
  ]);
});

after(async () => {
  h.closeAllSockets();
  await h.stopAll();
  await store?.client.close();
});

const token = (user) => h.mintToken({ tenant, user });
let n = 0;
const send = (socket, conversationId, text = "hello") =>
  socket.emitWithAck("message:send", { conversationId, clientMessageId: `m${++n}`, content: h.text(text) });

async function joined(proc, user, conversationId) {
  const socket = await h.connect(proc, token(user));
  const r = await socket.emitWithAck("room:join", { conversationId });
  assert.equal(r.ok, true, `${user} joins ${conversationId}: ${JSON.stringify(r)}`);
  return socket;
}

function refused(reply, code) {
  assert.equal(reply.ok, false, JSON.stringify(reply));
  assert.equal(reply.error.code, code, JSON.stringify(reply));
}

test("a kick on gateway A removes the member's sockets on gateway B within one second", async () => {
  const alice = await joined(gwA, "alice", "kick");
  const mallory = await joined(gwB, "mallory", "kick");
  const bob = await joined(gwB, "bob", "kick");
  const at = Date.now();
  const r = await alice.emitWithAck("moderation:kick", { conversationId: "kick", userId: "mallory", reason: "spam" });
  assert.equal(r.ok, true, JSON.stringify(r));
  assert.equal(r.action, "kick");
  const removed = await h.nextEvent(mallory, "room:removed", { since: at });
  assert.ok(removed.at - at < 1000, `room:removed after ${removed.at - at} ms`);
  assert.deepEqual(
    { conversationId: removed.payload.conversationId, reason: removed.payload.reason, by: removed.payload.by, note: removed.payload.note },
    { conversationId: "kick", reason: "kicked", by: "alice", note: "spam" },
  );
  const action = await h.nextEvent(bob, "moderation:action", { since: at });
  assert.equal(action.payload.userId, "mallory");
  assert.equal(action.payload.by, "alice");
  // Out of the room on B: sends are refused and the room's messages no longer arrive.
  refused(await send(mallory, "kick"), "forbidden");
  assert.equal((await send(bob, "kick", "after the kick")).ok, true);
  await h.nextEvent(alice, "message:new", { pred: (m) => m.content.text === "after the kick" });
  await h.sleep(200);
  assert.equal(mallory.received("message:new").filter((m) => m.content.text === "after the kick").length, 0);
  // A kick is not a ban.
  assert.equal((await mallory.emitWithAck("room:join", { conversationId: "kick" })).ok, true);
});

test("a ban is enforced on every gateway until unbanned; a temporary ban ends by itself", async () => {
  const alice = await joined(gwA, "alice", "ban");
  const mallory = await joined(gwB, "mallory", "ban");
  const at = Date.now();
  assert.equal((await alice.emitWithAck("moderation:ban", { conversationId: "ban", userId: "mallory" })).ok, true);
  const removed = await h.nextEvent(mallory, "room:removed", { since: at });
  assert.ok(removed.at - at < 1000, `room:removed after ${removed.at - at} ms`);
  assert.equal(removed.payload.reason, "banned");
  const again = await mallory.emitWithAck("room:join", { conversationId: "ban" });
  refused(again, "banned");
  assert.match(again.error.message, /permanently/);
  const onA = await h.connect(gwA, token("mallory"));
  refused(await onA.emitWithAck("room:join", { conversationId: "ban" }), "banned");
  refused(await onA.emitWithAck("messages:history", { conversationId: "ban" }), "banned");

  assert.equal((await alice.emitWithAck("moderation:unban", { conversationId: "ban", userId: "mallory" })).ok, true);
  assert.equal((await mallory.emitWithAck("room:join", { conversationId: "ban" })).ok, true);

  const temp = await alice.emitWithAck("moderation:ban", { conversationId: "ban", userId: "mallory", durationSeconds: 2 });
  assert.equal(temp.ok, true);
  assert.ok(temp.expiresAt > Date.now() && temp.expiresAt <= Date.now() + 2_100, JSON.stringify(temp));
  const during = await mallory.emitWithAck("room:join", { conversationId: "ban" });
  refused(during, "banned");
  assert.ok(during.error.retryAfterMs > 0 && during.error.retryAfterMs <= 2000, JSON.stringify(during));
  await h.sleep(temp.expiresAt - Date.now() + 100);
  assert.equal((await mallory.emitWithAck("room:join", { conversationId: "ban" })).ok, true, "the ban expired");
});

test("a mute on gateway A refuses sends on gateway B within one second and ends by itself", async () => {
  const dave = await joined(gwA, "dave", "mute");
  const mallory = await joined(gwB, "mallory", "mute");
  assert.equal((await send(mallory, "mute")).ok, true);
  const at = Date.now();
  const r = await dave.emitWithAck("moderation:mute", { conversationId: "mute", userId: "mallory", durationSeconds: 2, reason: "cool down" });
  assert.equal(r.ok, true, JSON.stringify(r));
  const action = await h.nextEvent(mallory, "moderation:action", { since: at });
  assert.deepEqual(
    { action: action.payload.action, userId: action.payload.userId, by: action.payload.by, expiresAt: action.payload.expiresAt },
    { action: "mute", userId: "mallory", by: "dave", expiresAt: r.expiresAt },
  );
  const muted = await send(mallory, "mute", "while muted");
  assert.ok(Date.now() - at < 1000);
  refused(muted, "muted");
  assert.ok(muted.error.retryAfterMs > 0, JSON.stringify(muted));
  // Still in the room: a muted member reads but does not write.
  assert.equal((await send(dave, "mute", "moderator speaks")).ok, true);
  await h.nextEvent(mallory, "message:new", { pred: (m) => m.content.text === "moderator speaks" });
  await h.sleep(r.expiresAt - Date.now() + 100);
  assert.equal((await send(mallory, "mute", "free again")).ok, true, "the mute expired");

  assert.equal((await dave.emitWithAck("moderation:mute", { conversationId: "mute", userId: "mallory" })).ok, true);
  refused(await send(mallory, "mute"), "muted");
  assert.equal((await dave.emitWithAck("moderation:unmute", { conversationId: "mute", userId: "mallory" })).ok, true);
  assert.equal((await send(mallory, "mute")).ok, true);
});

test("the permission matrix decides who may moderate whom, and role changes apply at once", async () => {
  const [alice, carol, dave, bob] = await Promise.all(
    ["alice", "carol", "dave", "bob"].map((u) => joined(u === "dave" || u === "bob" ? gwB : gwA, u, "matrix")),
  );
  const kick = (socket, userId) => socket.emitWithAck("moderation:kick", { conversationId: "matrix", userId });
  refused(await kick(bob, "mallory"), "forbidden");
  const modBansAdmin = await dave.emitWithAck("moderation:ban", { conversationId: "matrix", userId: "carol" });
  refused(modBansAdmin, "forbidden");
  assert.match(modBansAdmin.error.message, /a moderator may not ban an admin/);
  refused(await carol.emitWithAck("moderation:mute", { conversationId: "matrix", userId: "alice" }), "forbidden");
  refused(await kick(alice, "alice"), "forbidden");
  const grantOwner = await carol.emitWithAck("room:role", { conversationId: "matrix", userId: "bob", role: "admin" });
  refused(grantOwner, "forbidden");
  assert.match(grantOwner.error.message, /only roles below their own/);
  refused(await alice.emitWithAck("room:role", { conversationId: "matrix", userId: "nobody", role: "member" }), "not_found");
  refused(await alice.emitWithAck("moderation:kick", { conversationId: "matrix", userId: "bob", durationSeconds: 5 }), "invalid_payload");
  refused(await alice.emitWithAck("room:role", { conversationId: "matrix", userId: "bob", role: "god" }), "invalid_payload");

  // A moderator may mute a member; promoting bob makes him a moderator on every gateway at once.
  assert.equal((await dave.emitWithAck("moderation:mute", { conversationId: "matrix", userId: "eve", durationSeconds: 60 })).ok, true);
  refused(await bob.emitWithAck("moderation:unmute", { conversationId: "matrix", userId: "eve" }), "forbidden");
  const promoted = await carol.emitWithAck("room:role", { conversationId: "matrix", userId: "bob", role: "moderator" });
  assert.equal(promoted.ok, true, JSON.stringify(promoted));
  const seen = await h.nextEvent(dave, "moderation:action", { pred: (a) => a.action === "role" && a.userId === "bob" });
  assert.equal(seen.payload.role, "moderator");
  assert.equal((await bob.emitWithAck("moderation:unmute", { conversationId: "matrix", userId: "eve" })).ok, true);
  refused(await bob.emitWithAck("moderation:kick", { conversationId: "matrix", userId: "dave" }), "forbidden");
  const doc = await store.db.collection("conversations").findOne({ tenant_id: tenant, conversation_id: "matrix" });
  assert.equal(doc.participants.find((p) => p.user_id === "bob").role, "moderator");
});

test("the moderation log holds each action with who, whom, what, why and when", async () => {
  const log = await store.db.collection("moderation_log").find({ tenant_id: tenant }).sort({ created_at: 1 }).toArray();
  const summary = log.map((e) => `${e.conversation_id}:${e.by}:${e.action}:${e.user_id}`);
  for (const expected of [
    "kick:alice:kick:mallory",
    "ban:alice:ban:mallory",
    "ban:alice:unban:mallory",
    "mute:dave:mute:mallory",
    "mute:dave:unmute:mallory",
    "matrix:carol:role:bob",
    "matrix:bob:unmute:eve",
  ]) {
    assert.ok(summary.includes(expected), `${expected} in ${summary.join(", ")}`);
  }
  const kick = log.find((e) => e.action === "kick");
  assert.equal(kick.reason, "spam");
  assert.ok(kick.created_at instanceof Date);
  const tempBan = log.find((e) => e.action === "ban" && e.expires_at);
  assert.ok(tempBan.expires_at.getTime() - tempBan.created_at.getTime() === 2000, "expiry is recorded");
  assert.equal(log.find((e) => e.action === "role").role, "moderator");
  // Refused attempts change nothing and are not logged as actions.
  assert.equal(log.filter((e) => e.by === "dave" && e.user_id === "carol").length, 0);
});

test("presence across gateways, typing indicators, and their throttle", async () => {
  const alice = await joined(gwA, "alice", "presence");
  const at = Date.now();
  const bob = await joined(gwB, "bob", "presence");
  const p = await h.nextEvent(alice, "presence", { since: at, pred: (x) => x.online.includes("bob") });
  assert.deepEqual(p.payload, { conversationId: "presence", online: ["alice", "bob"] });
  const listed = await bob.emitWithAck("presence:get", { conversationId: "presence" });
  assert.deepEqual(listed.online, ["alice", "bob"]);

  const t0 = Date.now();
  assert.equal((await bob.emitWithAck("typing", { conversationId: "presence" })).ok, true);
  const typing = await h.nextEvent(alice, "typing", { since: t0 });
  assert.equal(typing.payload.userId, "bob");
  assert.ok(typing.payload.ttlMs > 0);
  const throttled = await bob.emitWithAck("typing", { conversationId: "presence" });
  refused(throttled, "rate_limited");
  assert.ok(throttled.error.retryAfterMs > 0);
  assert.equal(bob.received("typing").length, 0, "the typist does not get their own indicator");

  const t1 = Date.now();
  assert.equal((await bob.emitWithAck("room:leave", { conversationId: "presence" })).ok, true);
  const left = await h.nextEvent(alice, "presence", { since: t1 });
  assert.deepEqual(left.payload.online, ["alice"]);
  const t2 = Date.now();
  const carol = await joined(gwB, "carol", "presence");
  await h.nextEvent(alice, "presence", { since: t2, pred: (x) => x.online.includes("carol") });
  carol.close();
  const gone = await h.nextEvent(alice, "presence", { since: Date.now() - 5, pred: (x) => !x.online.includes("carol"), timeoutMs: 3000 });
  assert.deepEqual(gone.payload.online, ["alice"], "a disconnect leaves the room");
});

test("bans, mutes and room state survive a gateway restart; a dead gateway leaves no ghosts", async () => {
  const alice = await joined(gwA, "alice", "restart");
  assert.equal((await alice.emitWithAck("moderation:mute", { conversationId: "restart", userId: "mallory" })).ok, true);
  assert.equal((await alice.emitWithAck("moderation:ban", { conversationId: "restart", userId: "eve" })).ok, true);
  await joined(gwB, "bob", "restart");
  await joined(gwB, "mallory", "restart");
  assert.deepEqual((await alice.emitWithAck("presence:get", { conversationId: "restart" })).online, ["alice", "bob", "mallory"]);

  await h.stop(gwB, "SIGKILL");
  // No ghosts: B's sockets stop counting once its heartbeat lapses (3 x 300 ms).
  await h.waitFor(
    async () => {
      const r = await alice.emitWithAck("presence:get", { conversationId: "restart" });
      return r.online.length === 1 && r.online[0] === "alice";
    },
    { timeoutMs: 3000, what: "the dead gateway's sockets to leave presence" },
  );
  gwB = await h.startRealtime({ role: "gateway", ...s, env });
  const mallory = await joined(gwB, "mallory", "restart");
  refused(await send(mallory, "restart"), "muted");
  const eve = await h.connect(gwB, token("eve"));
  refused(await eve.emitWithAck("room:join", { conversationId: "restart" }), "banned");
  // No lost members: whoever comes back is online again.
  await joined(gwB, "bob", "restart");
  assert.deepEqual((await alice.emitWithAck("presence:get", { conversationId: "restart" })).online, ["alice", "bob", "mallory"]);
});
