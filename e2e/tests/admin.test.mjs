// The admin REST API (SPEC.md §3 "Admin REST API") of a real `realtime` process (role
// `all`: gateway, persister and admin API) on the real stack: the authn/authz matrix on
// every endpoint, recordings CRUD (checked in MongoDB and on the broker), a user's export
// checked record by record, erasure proven by reading every MongoDB collection and every
// Redis key directly afterwards, erasure resumed after the process is SIGKILLed half-way,
// and schemathesis (PyPI) run against the live server from its own OpenAPI document.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { homedir } from "node:os";
import { Long } from "mongodb";
import * as h from "../lib/harness.mjs";

const s = h.suite("admin", 14);
const tenant = `acme-${s.id}`;
const other = `globex-${s.id}`;
const topic = `${s.topicPrefix}.webrtc.recording.events`;
const env = { KAFKA_RECORDING_TOPIC: topic };
let proc, db, client;
/** Acks of erin's messages sent through the pipeline (their seqs follow the counter's, not 400). */
const live = [];

const admin = (t = tenant, user = "root") => h.mintToken({ tenant: t, user, roles: ["admin"] });

/** An admin API call; `token: null` sends none. Returns `{status, body, headers}`. */
async function api(method, path, { token = admin(), body, raw } = {}) {
  const headers = {};
  if (token !== null) headers.authorization = `Bearer ${token}`;
  if (body !== undefined) headers["content-type"] = "application/json";
  const res = await fetch(`${proc.url}${path}`, {
    method,
    headers,
    body: raw ?? (body === undefined ? undefined : JSON.stringify(body)),
  });
  const text = await res.text();
  let json;
  try {
    json = text ? JSON.parse(text) : undefined;
  } catch {
    json = undefined;
  }
  // A server error carries the server's last log lines, to say which dependency failed.
  const detail = res.status >= 500 ? `${text}\n--- server log ---\n${proc.log.slice(-20).join("")}` : text;
  return { status: res.status, body: json, text: detail, headers: res.headers };
}

function refusedWith(r, status, code) {
  assert.equal(r.status, status, r.text);
  assert.equal(r.body?.error?.code, code, r.text);
  assert.ok(r.body.error.message.length > 0);
}

const recording = (t, id, conversation, requestedBy, status, consents = [], extra = {}) => ({
  tenant_id: t,
  recording_id: id,
  call_id: `call-${id}`,
  conversation_id: conversation,
  requested_by: requestedBy,
  status,
  reason: status === "stopped" ? "stopped" : null,
  consents: consents.map((u) => ({ user_id: u, consent: true, at: new Date(1_700_000_000_000) })),
  pending_consents: [],
  consent_deadline: new Date(1_700_000_030_000),
  started_at: null,
  stopped_at: null,
  created_at: new Date(1_700_000_000_000),
  updated_at: new Date(1_700_000_000_000),
  version: Long.fromNumber(3),
  ...extra,
});

/** `n` stored messages of `sender` in `conversation` from `seq` on (shaped as the persister writes them). */
function messages(t, conversation, sender, fromSeq, n, tag = sender) {
  return Array.from({ length: n }, (_, i) => ({
    tenant_id: t,
    conversation_id: conversation,
    message_id: `${t}-${conversation}-${tag}-${fromSeq + i}`,
    seq: Long.fromNumber(fromSeq + i),
    sender_id: sender,
    client_message_id: `k-${tag}-${fromSeq + i}`,
    content: { type: "text", text: `${tag} says ${fromSeq + i}` },
    created_at: new Date(1_700_000_000_000 + fromSeq + i),
  }));
}

async function insertMany(coll, docs) {
  for (let i = 0; i < docs.length; i += 2000) await db.collection(coll).insertMany(docs.slice(i, i + 2000), { ordered: false });
}

before(async () => {
  ({ client, db } = await h.mongo(s.db));
  // erin: member of c1, moderator of c2, banned from c3 by bob; bans dave in c2 herself.
  await h.seedConversation(db, tenant, "c1", ["bob", "erin", "carol"]);
  await h.seedConversation(db, tenant, "c2", ["carol", "erin", "dave"], { erin: "moderator" });
  await h.seedConversation(db, tenant, "c3", ["bob", "carol"]);
  await h.seedConversation(db, tenant, "fc", ["frank", "bob"]);
  await h.seedConversation(db, other, "c1", ["erin", "bob"]);
  await db.collection("conversations").updateOne(
    { tenant_id: tenant, conversation_id: "c3" },
    { $set: { bans: [{ user_id: "erin", expires_at: null, by: "bob", reason: "spam", at: new Date(1_700_000_000_000) }] } },
  );
  await db.collection("conversations").updateOne(
    { tenant_id: tenant, conversation_id: "c2" },
    { $set: { bans: [{ user_id: "dave", expires_at: null, by: "erin", reason: "rude", at: new Date(1_700_000_000_000) }] } },
  );
  await db.collection("moderation_log").insertMany([
    { tenant_id: tenant, conversation_id: "c3", action: "ban", user_id: "erin", by: "bob", reason: "spam", created_at: new Date(1) },
    { tenant_id: tenant, conversation_id: "c2", action: "ban", user_id: "dave", by: "erin", reason: "rude", created_at: new Date(2) },
    { tenant_id: tenant, conversation_id: "c1", action: "kick", user_id: "carol", by: "bob", created_at: new Date(3) },
  ]);
  // Recordings: ids sort by creation like the server's UUIDv7.
  await db.collection("call_recordings").insertMany([
    recording(tenant, `r1-${s.id}`, "c1", "bob", "stopped", ["bob", "carol"]),
    recording(tenant, `r2-${s.id}`, "c1", "erin", "stopped", ["erin", "bob"]),
    recording(tenant, `r3-${s.id}`, "c2", "carol", "cancelled", ["carol", "erin"]),
    recording(tenant, `r4-${s.id}`, "c1", "bob", "recording", ["bob"]),
    recording(tenant, `r5-${s.id}`, "c2", "dave", "pending_consent", []),
    recording(other, `r6-${s.id}`, "c1", "erin", "stopped", ["erin"]),
  ]);
  // History: erin and bob interleaved in c1 (seq 1..400), erin alone in c2; frank's many in fc.
  const c1 = [];
  for (let seq = 1; seq <= 400; seq += 1) c1.push(...messages(tenant, "c1", seq % 2 ? "erin" : "bob", seq, 1));
  await insertMany("messages", [...c1, ...messages(tenant, "c2", "erin", 1, 300), ...messages(other, "c1", "erin", 1, 5)]);
  proc = await h.startRealtime({ role: "all", ...s, env });
});

after(async () => {
  h.closeAllSockets();
  await h.stopAll();
  await client?.close();
});

// `user` must not exist in the other tenant: the cross-tenant test runs them as globex.
const endpoints = (user = "erin") => [
  ["GET", "/v1/admin/recordings"],
  ["GET", `/v1/admin/recordings/r1-${s.id}`],
  ["PATCH", `/v1/admin/recordings/r1-${s.id}`, { quality: { mos: 4 } }],
  ["DELETE", `/v1/admin/recordings/r1-${s.id}`],
  ["GET", `/v1/admin/users/${user}/export`],
  ["DELETE", `/v1/admin/users/${user}`],
];

test("every endpoint: 401 without a valid token, 403 without the admin role; audited and counted", async () => {
  const member = h.mintToken({ tenant, user: "bob", roles: ["moderator"] });
  const bad = [
    [null, "no token"],
    ["not-a-jwt", "malformed"],
    [h.mintToken({ tenant, user: "root", roles: ["admin"], secret: "another-secret" }), "signature"],
    [h.mintToken({ tenant, user: "root", roles: ["admin"], expIn: -120 }), "expired"],
    [h.mintToken({ tenant, user: "root", roles: ["admin"], iss: "someone-else" }), "issuer"],
  ];
  for (const [method, path, body] of endpoints()) {
    for (const [token, why] of bad) {
      const r = await api(method, path, { token, body });
      refusedWith(r, 401, "unauthorized");
      if (token !== null) assert.match(r.body.error.message, new RegExp(why === "no token" ? "Bearer" : why), `${method} ${path}: ${why}`);
    }
    refusedWith(await api(method, path, { token: member, body }), 403, "forbidden");
  }
  // Nothing changed: r1 and erin are intact.
  assert.ok(await db.collection("call_recordings").findOne({ recording_id: `r1-${s.id}`, status: "stopped" }));
  assert.equal(await db.collection("messages").countDocuments({ tenant_id: tenant, sender_id: "erin" }), 500);
  // 403s are audited with who and what (401s have nobody to name: counted only).
  const audits = await db.collection("admin_audit").find({ tenant_id: tenant, actor: "bob" }).toArray();
  assert.equal(audits.length, endpoints().length);
  for (const a of audits) {
    assert.equal(a.status, 403);
    assert.equal(a.outcome, "refused");
    assert.ok(a.at instanceof Date);
  }
  assert.deepEqual(new Set(audits.map((a) => a.action)), new Set(["recordings.list", "recordings.read", "recordings.update", "recordings.delete", "users.export", "users.erase"]));
  assert.ok(audits.every((a) => !JSON.stringify(a).includes("erin")), "users are audited as a digest");
  assert.ok((await h.metric(proc, 'realtime_admin_requests_total{action="users.erase",status="401"}')) >= bad.length);
  assert.ok((await h.metric(proc, 'realtime_admin_requests_total{action="recordings.read",status="403"}')) >= 1);
});

test("another tenant's admin sees none of it: 404 like a missing object, empty lists", async () => {
  const globex = admin(other);
  for (const [method, path, body] of endpoints("dave").slice(1)) {
    refusedWith(await api(method, path, { token: globex, body }), 404, "not_found");
  }
  const list = await api("GET", "/v1/admin/recordings", { token: globex });
  assert.equal(list.status, 200);
  assert.deepEqual(list.body.items.map((r) => r.recordingId), [`r6-${s.id}`]);
  refusedWith(await api("GET", "/v1/admin/recordings/no-such-recording"), 404, "not_found");
  refusedWith(await api("GET", "/v1/admin/users/nobody/export"), 404, "not_found");
  refusedWith(await api("DELETE", "/v1/admin/users/nobody"), 404, "not_found");
  assert.ok(await db.collection("call_recordings").findOne({ recording_id: `r1-${s.id}`, status: "stopped" }), "globex changed nothing");
  assert.equal(await db.collection("conversations").countDocuments({ tenant_id: tenant, "participants.user_id": "dave" }), 1);
});

test("recordings: filtered, paged newest first with a cursor, read, patched, deleted", async () => {
  const ids = (r) => r.body.items.map((x) => x.recordingId);
  const all = [5, 4, 3, 2, 1].map((n) => `r${n}-${s.id}`);
  // Pages of 2 cover everything once, in order.
  const seen = [];
  let cursor;
  for (let page = 0; page < 5; page += 1) {
    const r = await api("GET", `/v1/admin/recordings?limit=2${cursor ? `&cursor=${cursor}` : ""}`);
    assert.equal(r.status, 200, r.text);
    seen.push(...ids(r));
    cursor = r.body.nextCursor;
    if (!cursor) break;
  }
  assert.deepEqual(seen, all);
  assert.deepEqual(ids(await api("GET", "/v1/admin/recordings?conversationId=c1")), [`r4-${s.id}`, `r2-${s.id}`, `r1-${s.id}`]);
  assert.deepEqual(ids(await api("GET", "/v1/admin/recordings?conversationId=c1&status=stopped")), [`r2-${s.id}`, `r1-${s.id}`]);
  assert.deepEqual(ids(await api("GET", "/v1/admin/recordings?status=pending_consent")), [`r5-${s.id}`]);
  for (const q of ["limit=0", "limit=101", "limit=ten", "status=done", "conversationId=a:b", "cursor=a*b", "sort=asc"]) {
    refusedWith(await api("GET", `/v1/admin/recordings?${q}`), 400, "invalid_payload");
  }

  const one = await api("GET", `/v1/admin/recordings/r2-${s.id}`);
  assert.equal(one.status, 200);
  assert.deepEqual(
    { ...one.body, updatedAt: undefined },
    {
      recordingId: `r2-${s.id}`, callId: `call-r2-${s.id}`, conversationId: "c1", requestedBy: "erin", status: "stopped", reason: "stopped",
      consents: [{ userId: "erin", consent: true, at: 1_700_000_000_000 }, { userId: "bob", consent: true, at: 1_700_000_000_000 }],
      pendingConsents: [], consentDeadline: 1_700_000_030_000, startedAt: null, stoppedAt: null, storage: null, quality: null,
      createdAt: 1_700_000_000_000, updatedAt: undefined, version: 3,
    },
  );

  // PATCH: storage and quality, checked in MongoDB and published.
  const patch = { storage: { url: "s3://recordings/acme/r1.webm", sizeBytes: 1048576, durationMs: 61000 }, quality: { mos: 4.2, packetLossPercent: 0.5 } };
  const patched = await api("PATCH", `/v1/admin/recordings/r1-${s.id}`, { body: patch });
  assert.equal(patched.status, 200, patched.text);
  assert.deepEqual(patched.body.storage, patch.storage);
  assert.deepEqual(patched.body.quality, patch.quality);
  const stored = await db.collection("call_recordings").findOne({ recording_id: `r1-${s.id}` });
  assert.deepEqual(stored.storage, { url: "s3://recordings/acme/r1.webm", size_bytes: 1048576, duration_ms: 61000 });
  assert.equal(stored.quality.mos, 4.2);
  assert.equal(stored.status, "stopped", "the call's fields are untouched");
  const cleared = await api("PATCH", `/v1/admin/recordings/r1-${s.id}`, { body: { quality: null } });
  assert.equal(cleared.body.quality, null);
  assert.deepEqual(cleared.body.storage, patch.storage);
  for (const [body, why] of [
    [{}, "nothing to change"],
    [{ status: "recording" }, "unknown field"],
    [{ storage: { url: "ftp://x/y" } }, "storage.url"],
    [{ storage: { url: "s3://b/k", sizeBytes: -1 } }, "sizeBytes"],
    [{ storage: { url: "s3://b/k", sizeBytes: 2 ** 60 } }, "sizeBytes"],
    [{ quality: { mos: 9 } }, "quality.mos"],
    [{ quality: { packetLossPercent: 101 } }, "packetLossPercent"],
    ["storage", "JSON object"],
  ]) {
    const r = await api("PATCH", `/v1/admin/recordings/r1-${s.id}`, { body });
    refusedWith(r, 400, "invalid_payload");
    assert.match(r.body.error.message, new RegExp(why), JSON.stringify(body));
  }
  refusedWith(await api("PATCH", `/v1/admin/recordings/r1-${s.id}`, { raw: "{not json" }), 400, "invalid_payload");
  refusedWith(await api("PATCH", "/v1/admin/recordings/missing", { body: patch }), 404, "not_found");

  // DELETE: a tombstone with nothing but the id; gone for every reader; published.
  const del = await api("DELETE", `/v1/admin/recordings/r4-${s.id}`);
  assert.equal(del.status, 204, del.text);
  refusedWith(await api("GET", `/v1/admin/recordings/r4-${s.id}`), 404, "not_found");
  refusedWith(await api("DELETE", `/v1/admin/recordings/r4-${s.id}`), 404, "not_found");
  refusedWith(await api("PATCH", `/v1/admin/recordings/r4-${s.id}`, { body: patch }), 404, "not_found");
  const tomb = await db.collection("call_recordings").findOne({ recording_id: `r4-${s.id}` });
  assert.deepEqual(Object.keys(tomb).sort(), ["_id", "erased", "erased_at", "recording_id", "tenant_id", "version"]);
  assert.ok(!ids(await api("GET", "/v1/admin/recordings?conversationId=c1")).includes(`r4-${s.id}`));

  const events = await h.readTopic(topic, (rs) => rs.some((r) => r.value.type === "recording.deleted" && r.value.recordingId === `r4-${s.id}`));
  const updated = events.filter((r) => r.value.type === "recording.updated" && r.value.recordingId === `r1-${s.id}`);
  assert.equal(updated.length, 2);
  assert.equal(updated[0].key, `${tenant}:r1-${s.id}`);
  assert.deepEqual(updated[0].value.storage, patch.storage);
  const deleted = events.find((r) => r.value.type === "recording.deleted");
  assert.deepEqual({ ...deleted.value, at: 0 }, { type: "recording.deleted", tenantId: tenant, recordingId: `r4-${s.id}`, callId: `call-r4-${s.id}`, conversationId: "c1", at: 0, cause: "admin" });

  const audit = await db.collection("admin_audit").findOne({ tenant_id: tenant, action: "recordings.delete", status: 204 });
  assert.equal(audit.actor, "root");
  assert.equal(audit.target, `recording:r4-${s.id}`);
  assert.equal(audit.outcome, "ok");
});

/** Reads a whole export (streamed). */
async function exportOf(user, token = admin()) {
  const res = await fetch(`${proc.url}/v1/admin/users/${user}/export`, { headers: { authorization: `Bearer ${token}` } });
  assert.equal(res.status, 200);
  assert.match(res.headers.get("content-type"), /application\/json/);
  return JSON.parse(await res.text());
}

test("export: every record about the user, record by record", async () => {
  // Three messages through the real pipeline too (recovery window, idempotency records).
  const sock = await h.connect(proc, h.mintToken({ tenant, user: "erin" }));
  assert.equal((await sock.emitWithAck("room:join", { conversationId: "c1" })).ok, true);
  live.length = 0;
  for (let i = 0; i < 3; i += 1) {
    const ack = await sock.emitWithAck("message:send", { conversationId: "c1", clientMessageId: `live-${i}`, content: h.text(`live ${i}`) });
    assert.equal(ack.ok, true, JSON.stringify(ack));
    live.push(ack);
  }
  await h.waitFor(async () => (await db.collection("messages").countDocuments({ tenant_id: tenant, sender_id: "erin", client_message_id: /^live-/ })) === 3, { what: "live messages stored" });
  sock.close();

  const x = await exportOf("erin");
  assert.equal(x.tenantId, tenant);
  assert.equal(x.userId, "erin");
  assert.deepEqual(x.memberships.map((m) => [m.conversationId, m.role]), [["c1", "member"], ["c2", "moderator"]]);
  assert.deepEqual(x.restrictions.map((r) => [r.conversationId, r.kind, r.by, r.reason]), [["c3", "ban", "bob", "spam"]]);
  assert.deepEqual(x.moderation.map((m) => [m.conversationId, m.action, m.userId, m.by]), [["c3", "ban", "erin", "bob"], ["c2", "ban", "dave", "erin"]]);
  assert.deepEqual(x.recordings.map((r) => r.recordingId), [`r2-${s.id}`, `r3-${s.id}`]);
  assert.deepEqual(x.recordings[1].consents.map((c) => c.userId), ["carol", "erin"]);
  // Messages: exactly erin's 200 + 3 in c1 and 300 in c2 of this tenant, by conversation and seq, as stored.
  const stored = await db.collection("messages").find({ tenant_id: tenant, sender_id: "erin" }).toArray();
  assert.equal(x.messages.length, stored.length);
  assert.equal(x.messages.length, 503);
  const byId = new Map(stored.map((m) => [m.message_id, m]));
  let previous = ["", 0];
  for (const m of x.messages) {
    const d = byId.get(m.messageId);
    assert.ok(d, m.messageId);
    assert.equal(m.senderId, "erin");
    assert.equal(m.conversationId, d.conversation_id);
    assert.equal(m.seq, Number(d.seq));
    assert.deepEqual(m.content, d.content);
    assert.equal(m.clientMessageId, d.client_message_id);
    assert.equal(m.createdAt, d.created_at.getTime());
    const key = [m.conversationId, m.seq];
    assert.ok(key[0] > previous[0] || (key[0] === previous[0] && key[1] > previous[1]), "ordered by conversation and seq");
    previous = key;
  }
  assert.ok(live.every((a) => x.messages.some((m) => m.messageId === a.messageId)));
  // The other tenant's erin is another person.
  const theirs = await exportOf("erin", admin(other));
  assert.equal(theirs.messages.length, 5);
  assert.deepEqual(theirs.recordings.map((r) => r.recordingId), [`r6-${s.id}`]);
});

/**
 * Every record in MongoDB (every collection) and Redis (every key, field, member, value)
 * that names `needle`, except the other tenant's (its erin is another person).
 */
async function traces(needle) {
  const found = [];
  for (const { name } of await db.listCollections().toArray()) {
    for (const d of await db.collection(name).find({ tenant_id: { $ne: other } }).toArray()) {
      const json = JSON.stringify(d);
      if (json.includes(`"${needle}"`) || json.includes(`:${needle}:`) || json.includes(`${needle} says`)) found.push(`${name}: ${json}`);
    }
  }
  const keys = await h.redisQuery(s.redisDb, "KEYS", "*");
  for (const key of keys.filter((k) => !k.startsWith(`rt:${other}:`))) {
    const type = await h.redisQuery(s.redisDb, "TYPE", key);
    let content;
    if (type === "string") content = await h.redisQuery(s.redisDb, "GET", key);
    else if (type === "hash") content = await h.redisQuery(s.redisDb, "HGETALL", key);
    else if (type === "zset") content = await h.redisQuery(s.redisDb, "ZRANGE", key, "0", "-1");
    else if (type === "set") content = await h.redisQuery(s.redisDb, "SMEMBERS", key);
    else if (type === "list") content = await h.redisQuery(s.redisDb, "LRANGE", key, "0", "-1");
    const json = JSON.stringify(content ?? "");
    if (key.split(":").includes(needle) || key.includes(`|${needle}`) || json.includes(`\\"${needle}\\"`) || json.includes(`"${needle}|`) || json.includes(`${needle} says`)) {
      found.push(`redis ${key}: ${json.slice(0, 200)}`);
    }
  }
  return found;
}

test("erasure: nothing of the user left in MongoDB or Redis, others intact, history whole; idempotent", async () => {
  assert.ok((await traces("erin")).length > 0, "the probe finds erin before");
  const bobBefore = await db.collection("messages").find({ tenant_id: tenant, sender_id: "bob" }).sort({ seq: 1 }).toArray();
  const r = await api("DELETE", "/v1/admin/users/erin");
  assert.equal(r.status, 200, r.text);
  assert.equal(r.body.userId, "erin");
  assert.equal(r.body.attempts, 1);
  assert.equal(r.body.counts.messages, 503);
  assert.equal(r.body.counts.memberships, 2);
  assert.equal(r.body.counts.restrictions, 2, "the ban on her, her name on the ban she imposed");
  assert.equal(r.body.counts.moderationEntries, 2);
  assert.equal(r.body.counts.recordings, 2);
  assert.ok(r.body.counts.redisEntries >= 4, JSON.stringify(r.body.counts));

  assert.deepEqual(await traces("erin"), [], "nothing of erin left");
  // Others intact: bob's messages, the other tenant's erin, bans erin imposed (anonymous).
  assert.deepEqual(await db.collection("messages").find({ tenant_id: tenant, sender_id: "bob" }).sort({ seq: 1 }).toArray(), bobBefore);
  assert.equal(await db.collection("messages").countDocuments({ tenant_id: other, sender_id: "erin" }), 5);
  assert.ok(await db.collection("call_recordings").findOne({ recording_id: `r6-${s.id}`, requested_by: "erin" }));
  assert.ok(await db.collection("call_recordings").findOne({ recording_id: `r1-${s.id}`, requested_by: "bob" }), "recordings without erin stay");
  const c2 = await db.collection("conversations").findOne({ tenant_id: tenant, conversation_id: "c2" });
  assert.deepEqual(c2.participants.map((p) => p.user_id), ["carol", "dave"]);
  assert.deepEqual(c2.bans.map((b) => [b.user_id, b.by]), [["dave", null]]);
  assert.equal(await db.collection("moderation_log").countDocuments({ tenant_id: tenant, user_id: "carol", by: "bob" }), 1);

  // History pages through the erased messages without a shift: bob reads every seq of c1.
  const bob = await h.connect(proc, h.mintToken({ tenant, user: "bob" }));
  assert.equal((await bob.emitWithAck("room:join", { conversationId: "c1" })).ok, true);
  const seqs = [];
  let before;
  for (;;) {
    const page = await bob.emitWithAck("messages:history", { conversationId: "c1", limit: 100, ...(before ? { beforeSeq: before } : {}) });
    assert.equal(page.ok, true, JSON.stringify(page));
    if (page.messages.length === 0) break;
    for (const m of page.messages) {
      seqs.push(m.seq);
      if ((m.seq % 2 === 1 && m.seq <= 400) || live.some((a) => a.seq === m.seq)) {
        assert.deepEqual([m.senderId, m.content, m.clientMessageId], ["", { type: "erased" }, ""]);
      } else {
        assert.equal(m.senderId, "bob");
        assert.equal(m.content.text, `bob says ${m.seq}`);
      }
    }
    before = Math.min(...page.messages.map((m) => m.seq));
    if (before <= 1) break;
  }
  const liveSeqs = live.map((a) => a.seq);
  assert.deepEqual([...seqs].sort((a, b) => a - b), [...Array.from({ length: 400 }, (_, i) => i + 1), ...liveSeqs]);
  // Recovery from Redis: the window holds the erased form.
  const rec = await bob.emitWithAck("messages:recover", { conversationId: "c1", afterSeq: liveSeqs[0] - 1 });
  assert.equal(rec.ok, true, JSON.stringify(rec));
  assert.deepEqual(rec.messages.map((m) => [m.seq, m.senderId, m.content.type]), liveSeqs.map((q) => [q, "", "erased"]));
  bob.close();

  // Published, with the counts.
  const events = await h.readTopic(topic, (rs) => rs.some((e) => e.value.type === "user.erased"));
  const erased = events.find((e) => e.value.type === "user.erased");
  assert.equal(erased.key, `${tenant}:erin`);
  assert.deepEqual(erased.value.counts, r.body.counts);
  for (const id of [`r2-${s.id}`, `r3-${s.id}`]) {
    assert.ok(events.some((e) => e.value.type === "recording.deleted" && e.value.recordingId === id && e.value.cause === "user_erased"), id);
  }

  // Again: the same totals, nothing more to do.
  const again = await api("DELETE", "/v1/admin/users/erin");
  assert.equal(again.status, 200, again.text);
  assert.deepEqual(again.body.counts, r.body.counts);
  assert.equal(again.body.attempts, 2);
  refusedWith(await api("GET", "/v1/admin/users/erin/export"), 404, "not_found");
});

test("erasure resumes after the process is killed half-way", async (t) => {
  const N = 5_000;
  const seeded = Date.now();
  await insertMany("messages", messages(tenant, "fc", "frank", 1, N));
  t.diagnostic(`${N} messages seeded in ${Date.now() - seeded} ms`);
  const erasedInFc = () => db.collection("messages").countDocuments({ tenant_id: tenant, conversation_id: "fc", erased: true });
  const pending = api("DELETE", "/v1/admin/users/frank").catch((e) => ({ error: e }));
  await h.waitFor(async () => (await erasedInFc()) > 0, { timeoutMs: 60_000, intervalMs: 20, what: "the first batch" });
  await h.stop(proc, "SIGKILL");
  const first = await pending;
  assert.ok(first.error, "the first attempt never answered");
  const partial = await erasedInFc();
  assert.ok(partial > 0 && partial < N, `killed half-way: ${partial} of ${N}`);

  proc = await h.startRealtime({ role: "all", ...s, env });
  const retried = Date.now();
  const r = await api("DELETE", "/v1/admin/users/frank");
  t.diagnostic(`killed after ${partial} of ${N}; the retry took ${Date.now() - retried} ms`);
  assert.equal(r.status, 200, r.text);
  assert.equal(r.body.attempts, 2);
  assert.equal(r.body.counts.messages, N, "counted once over both attempts");
  assert.equal(r.body.counts.memberships, 1);
  assert.equal(await erasedInFc(), N);
  assert.equal(await db.collection("messages").countDocuments({ tenant_id: tenant, sender_id: "frank" }), 0);
  assert.deepEqual(await traces("frank"), []);
});

test("schemathesis: the OpenAPI 3.1 document, run against the live server, finds nothing", async () => {
  const doc = await (await fetch(`${proc.url}/v1/admin/openapi.json`)).json();
  assert.match(doc.openapi, /^3\.1\./);
  const st = process.env.SCHEMATHESIS_BIN ?? `${homedir()}/.cache/realtime-operator/schemathesis/bin/st`;
  assert.ok(existsSync(st), `schemathesis is missing at ${st}: run scripts/stack.sh install`);
  // A tenant of its own: what it reads, changes or erases touches nothing of the tests
  // above. Its recordings (reached through the document's links: list → read, patch,
  // delete; read → the requester's export and erasure) and their requesters' records give
  // the stateful phase real objects.
  const st_tenant = `st-${s.id}`;
  await h.seedConversation(db, st_tenant, "sc", ["ann", "ben"]);
  await db.collection("call_recordings").insertMany(
    ["ann", "ben", "ann"].map((u, i) => recording(st_tenant, `st${i}-${s.id}`, "sc", u, "stopped", ["ann", "ben"])),
  );
  await insertMany("messages", [...messages(st_tenant, "sc", "ann", 1, 20), ...messages(st_tenant, "sc", "ben", 21, 20)]);
  const token = admin(st_tenant);
  const args = [
    "run", `${proc.url}/v1/admin/openapi.json`, "--url", proc.url,
    "-H", `Authorization: Bearer ${token}`,
    "--checks", "all", "--max-examples", process.env.SCHEMATHESIS_MAX_EXAMPLES ?? "60",
    "--seed", "1", "--workers", "1", "--request-timeout", "20", "--no-color",
  ];
  const out = [];
  const code = await new Promise((resolve) => {
    const child = spawn(st, args, { stdio: ["ignore", "pipe", "pipe"] });
    child.stdout.on("data", (c) => out.push(c.toString()));
    child.stderr.on("data", (c) => out.push(c.toString()));
    child.on("exit", (c) => resolve(c));
  });
  assert.equal(code, 0, out.join(""));
});
