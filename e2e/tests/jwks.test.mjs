// Tokens from an identity provider (JWT_JWKS_URL): RS256 and ES256 tokens, signed with
// keys this test generates and serves as a JWKS from a loopback HTTP server of its own,
// verified by a real `realtime` process (role `all`) on `/chat`, `/webrtc`,
// `/v1/ice-servers` and the admin API; HS256 keeps working beside them. Key rotation,
// withdrawn keys, the rate limit on refreshes for unknown key ids, and a provider outage
// (cached keys keep working) are each observed through the server's answers and the
// JWKS server's request count.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { generateKeyPairSync, randomUUID, sign } from "node:crypto";
import * as h from "../lib/harness.mjs";

const s = h.suite("jwks", 15);
const tenant = `acme-${s.id}`;
const b64 = (v) => Buffer.from(typeof v === "string" ? v : JSON.stringify(v)).toString("base64url");

/** A signing key: RSA (RS256) or P-256 (ES256), with its public JWK. */
function key(alg, kid) {
  const { privateKey, publicKey } = alg === "RS256"
    ? generateKeyPairSync("rsa", { modulusLength: 2048 })
    : generateKeyPairSync("ec", { namedCurve: "P-256" });
  return { alg, kid, privateKey, jwk: { ...publicKey.export({ format: "jwk" }), kid, use: "sig", alg } };
}

/** A token signed by `k` (its kid in the header unless `kid: null`). */
function tokenOf(k, { user = "alice", roles, kid = k.kid, expIn = 600 } = {}) {
  const now = Math.floor(Date.now() / 1000);
  const header = { alg: k.alg, typ: "JWT", ...(kid === null ? {} : { kid }) };
  const claims = { sub: user, tenant_id: tenant, iss: h.ISSUER, aud: h.AUDIENCE, exp: now + expIn, ...(roles ? { roles } : {}) };
  const input = `${b64(header)}.${b64(claims)}`;
  const signature = k.alg === "RS256"
    ? sign("sha256", Buffer.from(input), k.privateKey)
    : sign("sha256", Buffer.from(input), { key: k.privateKey, dsaEncoding: "ieee-p1363" });
  return `${input}.${signature.toString("base64url")}`;
}

const rsa1 = key("RS256", "rsa-1");
const ec1 = key("ES256", "ec-1");
const rsa2 = key("RS256", "rsa-2");
const forged = key("RS256", "rsa-1"); // claims rsa-1's kid with another private key

/** The identity provider: serves `idp.keys`; counts requests; fails while `idp.down`. */
const idp = { keys: [rsa1, ec1], hits: 0, down: false };
let idpServer, proc, db, client;

before(async () => {
  idpServer = createServer((req, res) => {
    idp.hits += 1;
    if (idp.down) {
      res.writeHead(503).end("down for maintenance");
      return;
    }
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify({ keys: idp.keys.map((k) => k.jwk) }));
  });
  await new Promise((ok) => idpServer.listen(0, "127.0.0.1", ok));
  ({ client, db } = await h.mongo(s.db));
  await h.seedConversation(db, tenant, "general", ["alice", "bob"]);
  proc = await h.startRealtime({
    role: "all",
    ...s,
    env: {
      JWT_JWKS_URL: `http://127.0.0.1:${idpServer.address().port}/.well-known/jwks.json`,
      JWT_JWKS_REFRESH_SECONDS: "3",
      JWT_JWKS_MIN_REFRESH_SECONDS: "2",
    },
  });
});

after(async () => {
  h.closeAllSockets();
  await h.stopAll();
  await client?.close();
  idpServer?.close();
});

const admin = (token) => fetch(`${proc.url}/v1/admin/recordings`, { headers: { authorization: `Bearer ${token}` } });
const ice = (token) => fetch(`${proc.url}/v1/ice-servers`, { headers: { authorization: `Bearer ${token}` } });

async function refusedConnect(token, pattern, namespace = "/chat") {
  const err = await h.connect(proc, token, { namespace }).then(
    () => assert.fail("connected"),
    (e) => e,
  );
  assert.match(JSON.stringify(err.data ?? err.message), pattern);
}

test("RS256 and ES256 tokens from the JWKS work on /chat, /webrtc, ICE and the admin API; HS256 too", async () => {
  const alice = await h.connect(proc, tokenOf(rsa1));
  assert.equal((await alice.emitWithAck("room:join", { conversationId: "general" })).ok, true);
  const sent = await alice.emitWithAck("message:send", { conversationId: "general", clientMessageId: "k1", content: h.text("hi") });
  assert.equal(sent.ok, true, JSON.stringify(sent));
  const bob = await h.connect(proc, tokenOf(ec1, { user: "bob" }), { namespace: "/webrtc" });
  assert.ok(bob.connected);
  const hs = await h.connect(proc, h.mintToken({ tenant, user: "bob" }));
  assert.ok(hs.connected, "HS256 keeps working beside the JWKS");

  for (const token of [tokenOf(rsa1, { roles: ["admin"] }), tokenOf(ec1, { roles: ["admin"] }), h.mintToken({ tenant, user: "root", roles: ["admin"] })]) {
    assert.equal((await admin(token)).status, 200);
  }
  assert.equal((await admin(tokenOf(ec1))).status, 403, "verified, but no admin role");
  // No TURN servers are configured: a verified token gets 503, a refused one 401.
  assert.equal((await ice(tokenOf(rsa1))).status, 503);
  assert.equal((await ice(tokenOf(forged))).status, 401);

  await refusedConnect(tokenOf(forged), /signature/);
  await refusedConnect(tokenOf(key("ES256", "nobody")), /not among/);
  await refusedConnect(tokenOf(rsa1, { expIn: -60 }), /expired/);
  const none = `${b64({ alg: "none", typ: "JWT" })}.${b64({ sub: "alice", tenant_id: tenant, exp: 9e9 })}.`;
  await refusedConnect(none, /malformed|algorithm/);
  // An ES256 token naming an RSA key is refused, not verified with the wrong key type.
  await refusedConnect(tokenOf(ec1, { kid: "rsa-1" }), /does not fit/);
  // Without a kid: accepted only while one key fits the algorithm.
  assert.ok((await h.connect(proc, tokenOf(ec1, { kid: null }))).connected);
});

test("rotation: a new key is fetched on first sight; a withdrawn key stops working", async () => {
  idp.keys = [rsa2, ec1];
  const hits = idp.hits;
  // The first token of the new key makes the server fetch the set (once its 2 s
  // refresh floor since the last fetch has passed).
  await h.waitFor(async () => (await admin(tokenOf(rsa2, { roles: ["admin"] }))).status === 200, { timeoutMs: 10_000, intervalMs: 250, what: "rsa-2 accepted" });
  assert.ok(idp.hits > hits);
  // rsa-1 left the set: refused once the cache is older than JWT_JWKS_REFRESH_SECONDS.
  await h.waitFor(async () => (await admin(tokenOf(rsa1, { roles: ["admin"] }))).status === 401, { timeoutMs: 10_000, intervalMs: 250, what: "rsa-1 refused" });
  const r = await admin(tokenOf(rsa1, { roles: ["admin"] }));
  assert.match((await r.json()).error.message, /not among/);
});

test("unknown key ids cannot flood the provider: one fetch at most per refresh floor", async () => {
  // Wait for a quiet moment right after a fetch, then send 40 tokens with unknown kids at once.
  await h.waitFor(async () => (await admin(tokenOf(key("RS256", randomUUID())))).status === 401);
  const hits = idp.hits;
  const started = Date.now();
  const answers = await Promise.all(Array.from({ length: 40 }, () => admin(tokenOf(key("ES256", randomUUID()), { roles: ["admin"] }))));
  const elapsed = Date.now() - started;
  assert.ok(answers.every((a) => a.status === 401));
  // At most one fetch per 2 s floor (plus one at the start): never one per token.
  assert.ok(idp.hits - hits <= 2 + Math.floor(elapsed / 2000), `${idp.hits - hits} fetches for 40 unknown kids in ${elapsed} ms`);
});

test("the provider down: cached keys keep working, its failures are retried", async () => {
  idp.down = true;
  const hits = idp.hits;
  // Requests go on; once the cache is stale (3 s) one of them makes the server try the
  // provider, which fails: the keys it had are kept, every request is answered.
  await h.waitFor(async () => {
    assert.equal((await admin(tokenOf(rsa2, { roles: ["admin"] }))).status, 200);
    return idp.hits > hits;
  }, { timeoutMs: 15_000, intervalMs: 200, what: "a refresh attempt" });
  for (let i = 0; i < 3; i += 1) {
    assert.equal((await admin(tokenOf(rsa2, { roles: ["admin"] }))).status, 200);
  }
  const tokenAfter = tokenOf(ec1, { user: "bob" });
  assert.ok((await h.connect(proc, tokenAfter)).connected);
  idp.down = false;
});
