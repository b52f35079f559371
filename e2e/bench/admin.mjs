// Admin benchmark: a user's export and erasure with BENCH_MESSAGES (100k) messages,
// against MongoDB doing the plainest version of the same work on the same documents in
// the same run.
//
//   cargo build --release --bins && eval "$(scripts/stack.sh env)" && \
//   REALTIME_BIN=target/release/realtime node e2e/bench/admin.mjs
//
// Two copies of the same history (BENCH_MESSAGES messages of `heavy` in BENCH_CONVERSATIONS
// conversations, interleaved with as many of other members) go to two tenants:
// - export: `GET /v1/admin/users/heavy/export` read to its last byte and parsed, against
//   `find({tenant_id, sender_id}).toArray()` of the same documents with the Node driver;
// - erasure: `DELETE /v1/admin/users/heavy` (every step: recordings, messages redacted in
//   batches, each in a transaction with its count, memberships, moderation log, Redis),
//   against `deleteMany({tenant_id, sender_id})` of the same documents in the other
//   tenant (which keeps nothing: no history, no counts, no resumption).
import * as h from "../lib/harness.mjs";
import { Long } from "mongodb";

const MESSAGES = Number(process.env.BENCH_MESSAGES ?? 100_000);
const CONVERSATIONS = Number(process.env.BENCH_CONVERSATIONS ?? 20);

const s = h.suite("adminbench", 7);
const ours = `bench-${s.id}`;
const plain = `plain-${s.id}`;

function history(tenant) {
  const docs = [];
  for (let i = 0; i < MESSAGES * 2; i += 1) {
    const conversation = `c${i % CONVERSATIONS}`;
    const seq = Math.floor(i / CONVERSATIONS) + 1;
    const sender = i % 2 === 0 ? "heavy" : "other";
    docs.push({
      tenant_id: tenant,
      conversation_id: conversation,
      message_id: `${tenant}-${i}`,
      seq: Long.fromNumber(seq),
      sender_id: sender,
      client_message_id: `k${i}`,
      content: { type: "text", text: `message ${i} of ${sender}, about as long as a chat line` },
      created_at: new Date(1_700_000_000_000 + i),
    });
  }
  return docs;
}

async function seed(db, tenant) {
  for (let c = 0; c < CONVERSATIONS; c += 1) await h.seedConversation(db, tenant, `c${c}`, ["heavy", "other"]);
  const docs = history(tenant);
  for (let i = 0; i < docs.length; i += 5000) await db.collection("messages").insertMany(docs.slice(i, i + 5000), { ordered: false });
}

const time = async (f) => {
  const t = process.hrtime.bigint();
  const v = await f();
  return [Number(process.hrtime.bigint() - t) / 1e6, v];
};

const { client, db } = await h.mongo(s.db);
try {
  console.error(`seeding 2 × ${MESSAGES * 2} messages…`);
  await seed(db, ours);
  await seed(db, plain);
  const proc = await h.startRealtime({ role: "admin", ...s });
  const token = h.mintToken({ tenant: ours, user: "root", roles: ["admin"] });
  const auth = { headers: { authorization: `Bearer ${token}` } };

  const [exportMs, exported] = await time(async () => {
    const res = await fetch(`${proc.url}/v1/admin/users/heavy/export`, auth);
    return JSON.parse(await res.text());
  });
  const [findMs, found] = await time(() => db.collection("messages").find({ tenant_id: plain, sender_id: "heavy" }).toArray());
  if (exported.messages.length !== MESSAGES || found.length !== MESSAGES) throw new Error(`counts: ${exported.messages.length} / ${found.length}`);

  const [eraseMs, erased] = await time(async () => {
    const res = await fetch(`${proc.url}/v1/admin/users/heavy`, { method: "DELETE", ...auth });
    return res.json();
  });
  const [deleteMs, deleted] = await time(() => db.collection("messages").deleteMany({ tenant_id: plain, sender_id: "heavy" }));
  if (erased.counts?.messages !== MESSAGES || deleted.deletedCount !== MESSAGES) throw new Error(`erased ${JSON.stringify(erased)}, deleted ${deleted.deletedCount}`);
  await h.stopAll();

  const rate = (ms) => `${Math.round(MESSAGES / (ms / 1000)).toLocaleString("en")} msg/s`;
  console.log(`| export of ${MESSAGES.toLocaleString("en")} messages (streamed, parsed) | ${(exportMs / 1000).toFixed(1)} s (${rate(exportMs)}) |`);
  console.log(`| baseline: \`find().toArray()\` of the same documents | ${(findMs / 1000).toFixed(1)} s (${rate(findMs)}) — export ${(exportMs / findMs).toFixed(2)}× |`);
  console.log(`| erasure of the user (${MESSAGES.toLocaleString("en")} messages redacted in transactions of 500, + the rest) | ${(eraseMs / 1000).toFixed(1)} s (${rate(eraseMs)}) |`);
  console.log(`| baseline: \`deleteMany\` of the same documents | ${(deleteMs / 1000).toFixed(1)} s (${rate(deleteMs)}) — erasure ${(eraseMs / deleteMs).toFixed(2)}× |`);
} finally {
  await client.close();
  await h.stopAll();
}
