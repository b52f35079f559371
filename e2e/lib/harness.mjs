// Test harness: starts real `realtime` processes against the local stack
// (scripts/stack.sh), mints tokens, seeds MongoDB and connects the official
// socket.io-client. Every process it starts is stopped by `stopAll()`.
import { spawn } from "node:child_process";
import { createHmac, randomUUID } from "node:crypto";
import { connect as tcpConnect, createServer } from "node:net";
import { existsSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { MongoClient } from "mongodb";
import { io as ioClient } from "socket.io-client";

const here = dirname(fileURLToPath(import.meta.url));
export const REPO = resolve(here, "../..");

export const SECRET = "e2e-secret-" + randomUUID();
export const ISSUER = "realtime-e2e";
export const AUDIENCE = "realtime";

/** The stack's addresses; fails loudly when the stack is not configured. */
export function stackEnv() {
  const missing = ["REDIS_URL", "KAFKA_BROKERS", "MONGODB_URI"].filter((k) => !process.env[k]);
  if (missing.length) {
    throw new Error(
      `${missing.join(", ")} not set: start the stack with scripts/stack.sh up and ` +
        `eval "$(scripts/stack.sh env)" (scripts/test.sh does both)`,
    );
  }
  return {
    REDIS_URL: process.env.REDIS_URL,
    KAFKA_BROKERS: process.env.KAFKA_BROKERS,
    MONGODB_URI: process.env.MONGODB_URI,
  };
}

export function realtimeBin() {
  const bin = process.env.REALTIME_BIN ?? resolve(REPO, "target/debug/realtime");
  if (!existsSync(bin)) throw new Error(`${bin} not found: run cargo build -p realtime first`);
  return bin;
}

/** A Redis URL selecting database `db`, so suites do not share pending state. */
export function redisUrlWithDb(db) {
  const u = new URL(stackEnv().REDIS_URL);
  u.pathname = `/${db}`;
  return u.toString();
}

/** Runs one command on the stack's Redis (database `db`) and resolves with the raw reply line. */
export async function redisCommand(db, ...args) {
  const u = new URL(stackEnv().REDIS_URL);
  const encode = (parts) => `*${parts.length}\r\n` + parts.map((p) => `$${Buffer.byteLength(String(p))}\r\n${p}\r\n`).join("");
  return new Promise((ok, fail) => {
    const sock = tcpConnect(Number(u.port), u.hostname);
    let buf = "";
    sock.on("error", fail);
    sock.on("data", (d) => {
      buf += d.toString();
      const lines = buf.split("\r\n");
      if (lines.length >= 3) {
        sock.end();
        if (lines[0].startsWith("-") || lines[1].startsWith("-")) fail(new Error(`redis: ${buf}`));
        else ok(lines[1]);
      }
    });
    sock.write(encode(["SELECT", db]) + encode(args));
  });
}

/** Parses one RESP2 reply from `buf` at `at`: `[value, next]`, or undefined while incomplete. */
function parseResp(buf, at = 0) {
  const eol = buf.indexOf("\r\n", at);
  if (eol < 0) return undefined;
  const head = buf.toString("utf8", at, eol);
  const rest = eol + 2;
  switch (head[0]) {
    case "+":
    case ":":
      return [head[0] === ":" ? Number(head.slice(1)) : head.slice(1), rest];
    case "-":
      return [new Error(`redis: ${head.slice(1)}`), rest];
    case "$": {
      const n = Number(head.slice(1));
      if (n < 0) return [null, rest];
      if (buf.length < rest + n + 2) return undefined;
      return [buf.toString("utf8", rest, rest + n), rest + n + 2];
    }
    case "*": {
      const n = Number(head.slice(1));
      const items = [];
      let next = rest;
      for (let i = 0; i < n; i += 1) {
        const item = parseResp(buf, next);
        if (!item) return undefined;
        items.push(item[0]);
        next = item[1];
      }
      return [n < 0 ? null : items, next];
    }
    default:
      throw new Error(`redis: unexpected reply ${head}`);
  }
}

/** Runs one command on the stack's Redis (database `db`) and resolves with its whole reply (arrays, bulk strings, numbers). */
export async function redisQuery(db, ...args) {
  const u = new URL(stackEnv().REDIS_URL);
  const encode = (parts) => `*${parts.length}\r\n` + parts.map((p) => `$${Buffer.byteLength(String(p))}\r\n${p}\r\n`).join("");
  return new Promise((ok, fail) => {
    const sock = tcpConnect(Number(u.port), u.hostname);
    let buf = Buffer.alloc(0);
    sock.on("error", fail);
    sock.on("data", (d) => {
      buf = Buffer.concat([buf, d]);
      const selected = parseResp(buf);
      if (!selected) return;
      const reply = parseResp(buf, selected[1]);
      if (!reply) return;
      sock.end();
      if (reply[0] instanceof Error) fail(reply[0]);
      else ok(reply[0]);
    });
    sock.write(encode(["SELECT", db]) + encode(args));
  });
}

export async function freePort() {
  return new Promise((ok, fail) => {
    const srv = createServer();
    srv.unref();
    srv.on("error", fail);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => ok(port));
    });
  });
}

const b64url = (buf) => Buffer.from(buf).toString("base64url");

/** HS256 token with the claims of SPEC.md §3. */
export function mintToken({ tenant, user, secret = SECRET, iss = ISSUER, aud = AUDIENCE, expIn = 3600, roles, nbfIn }) {
  const header = b64url(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const claims = { sub: user, tenant_id: tenant, iss, aud, exp: Math.floor(Date.now() / 1000) + expIn };
  if (nbfIn !== undefined) claims.nbf = Math.floor(Date.now() / 1000) + nbfIn;
  if (roles) claims.roles = roles;
  const body = b64url(JSON.stringify(claims));
  const sig = createHmac("sha256", secret).update(`${header}.${body}`).digest("base64url");
  return `${header}.${body}.${sig}`;
}

const running = new Set();
const flushed = new Set();

/**
 * Starts `realtime` with `role` and waits until /readyz answers 200.
 * `env` overrides the defaults (e.g. PERSISTENCE_CONFIRMATION_TIMEOUT_MS).
 */
export async function startRealtime({ role, db, redisDb, topicPrefix, groupPrefix, env = {}, port }) {
  const stack = stackEnv();
  // A Redis database is emptied before its first process of this test file starts:
  // delivery records left by an earlier run would otherwise be swept into this one.
  // (A test that brings its own Redis passes env.REDIS_URL and empties it itself.)
  if (!env.REDIS_URL && !flushed.has(redisDb)) {
    flushed.add(redisDb);
    await redisCommand(redisDb, "FLUSHDB");
  }
  port ??= await freePort();
  const child = spawn(realtimeBin(), [], {
    env: {
      PATH: process.env.PATH,
      ...(process.env.TOKIO_WORKER_THREADS ? { TOKIO_WORKER_THREADS: process.env.TOKIO_WORKER_THREADS } : {}),
      RUST_LOG: process.env.RUST_LOG ?? "info,rdkafka=warn",
      ROLE: role,
      LISTEN_ADDR: `127.0.0.1:${port}`,
      REDIS_URL: redisUrlWithDb(redisDb),
      KAFKA_BROKERS: stack.KAFKA_BROKERS,
      KAFKA_MESSAGE_TOPIC: `${topicPrefix}.chat.messages`,
      KAFKA_PERSISTENCE_TOPIC: `${topicPrefix}.chat.persistence.events`,
      KAFKA_GROUP_PREFIX: groupPrefix ?? topicPrefix,
      KAFKA_SESSION_TIMEOUT_MS: "6000",
      MONGODB_URI: stack.MONGODB_URI,
      MONGODB_DATABASE: db,
      JWT_SECRET: SECRET,
      JWT_ISSUER: ISSUER,
      JWT_AUDIENCE: AUDIENCE,
      SHUTDOWN_GRACE_SECONDS: "5",
      ...env,
    },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const proc = { child, port, url: `http://127.0.0.1:${port}`, role, log: [], exited: null };
  const keep = (chunk) => {
    proc.log.push(chunk.toString());
    if (proc.log.length > 400) proc.log.splice(0, 200);
  };
  child.stdout.on("data", keep);
  child.stderr.on("data", keep);
  proc.exited = new Promise((ok) => child.on("exit", (code, signal) => ok({ code, signal })));
  running.add(proc);
  proc.exited.then(() => running.delete(proc));
  const deadline = Date.now() + 30_000;
  for (;;) {
    if (child.exitCode !== null) {
      throw new Error(`realtime (${role}) exited with ${child.exitCode}:\n${proc.log.join("")}`);
    }
    try {
      const res = await fetch(`${proc.url}/readyz`);
      if (res.status === 200) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      child.kill("SIGKILL");
      throw new Error(`realtime (${role}) not ready in 30 s:\n${proc.log.join("")}`);
    }
    await sleep(100);
  }
  return proc;
}

/**
 * Starts a Kafka-protocol broker of the test's own (tansu, memory storage) on a free
 * loopback port, so a test can pause (SIGSTOP), resume or kill it without touching the
 * shared stack. Stopped by `stopAll()`.
 */
export async function startBroker() {
  const bin = process.env.TANSU_BIN;
  if (!bin || !existsSync(bin)) {
    throw new Error("TANSU_BIN not set or missing: eval \"$(scripts/stack.sh env)\" after scripts/stack.sh up");
  }
  const port = await freePort();
  const url = `tcp://127.0.0.1:${port}`;
  const child = spawn(bin, ["broker", "--listener-url", url, "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  const proc = { child, port, role: "broker", log: [], brokers: `127.0.0.1:${port}` };
  child.stdout.on("data", (c) => proc.log.push(c.toString()));
  child.stderr.on("data", (c) => proc.log.push(c.toString()));
  proc.exited = new Promise((ok) => child.on("exit", (code, signal) => ok({ code, signal })));
  running.add(proc);
  proc.exited.then(() => running.delete(proc));
  proc.pause = () => child.kill("SIGSTOP");
  proc.resume = () => child.kill("SIGCONT");
  await waitForPort(port, "broker");
  return proc;
}

/** Waits until something accepts TCP connections on 127.0.0.1:`port`. */
export async function waitForPort(port, what = "server") {
  await waitFor(
    () =>
      new Promise((ok) => {
        const s = tcpConnect(port, "127.0.0.1");
        s.on("connect", () => (s.end(), ok(true)));
        s.on("error", () => ok(false));
      }),
    { timeoutMs: 10_000, what: `${what} listening on ${port}` },
  );
}

/** The value of a Prometheus sample of `proc` (0 when absent), e.g. metric(gw, "realtime_delivery_retries_total"). */
export async function metric(proc, sample) {
  const text = await (await fetch(`${proc.url}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(sample + " "));
  return line ? Number(line.slice(sample.length + 1)) : 0;
}

/** Keeps Redis busy (a script spinning on the server clock) for `ms`, as a slow or stalled Redis would be. */
export async function stallRedis(db, ms) {
  const script = `local t=redis.call('TIME') local s=t[1]*1000000+t[2] repeat local n=redis.call('TIME') until n[1]*1000000+n[2]-s >= ${ms * 1000} return 1`;
  return redisCommand(db, "EVAL", script, 0);
}

/** Stops a process: SIGTERM (graceful) by default, SIGKILL to simulate a crash. */
export async function stop(proc, signal = "SIGTERM") {
  if (proc.child.exitCode !== null || proc.child.signalCode !== null) return proc.exited;
  proc.child.kill(signal);
  const timer = setTimeout(() => proc.child.kill("SIGKILL"), 15_000);
  const res = await proc.exited;
  clearTimeout(timer);
  return res;
}

export async function stopAll() {
  if (process.env.E2E_DUMP_LOGS) {
    for (const p of running) console.error(`--- ${p.role} :${p.port}\n${p.log.join("")}`);
  }
  await Promise.all([...running].map((p) => stop(p, "SIGKILL")));
}

/** Environment for `startRealtime` that points a process at a private broker. */
export const onBroker = (broker, env = {}) => ({ KAFKA_BROKERS: broker.brokers, ...env });

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `check` until it returns a truthy value or `timeoutMs` passes. */
export async function waitFor(check, { timeoutMs = 20_000, intervalMs = 50, what = "condition" } = {}) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(intervalMs);
  }
}

export async function mongo(db) {
  const client = new MongoClient(stackEnv().MONGODB_URI);
  await client.connect();
  return { client, db: client.db(db) };
}

/** Seeds a conversation: the first user is the owner, the rest members unless `roles` says otherwise. */
export async function seedConversation(db, tenant, conversation, users, roles = {}) {
  const participants = users.map((u, i) => ({ user_id: u, role: roles[u] ?? (i === 0 ? "owner" : "member") }));
  await db.collection("conversations").replaceOne(
    { tenant_id: tenant, conversation_id: conversation },
    { tenant_id: tenant, conversation_id: conversation, participants },
    { upsert: true },
  );
}

const sockets = new Set();

/**
 * Connects to `/chat` (or `opts.namespace`, e.g. "/webrtc") and records every server
 * event. Resolves once connected, rejects with the server's connect_error.
 */
export function connect(proc, token, { namespace = "/chat", ...opts } = {}) {
  const socket = ioClient(`${proc.url}${namespace}`, {
    auth: token === undefined ? undefined : { token },
    transports: ["websocket"],
    reconnection: false,
    forceNew: true,
    ackTimeout: 10_000,
    ...opts,
  });
  sockets.add(socket);
  socket.events = [];
  socket.onAny((event, payload) => socket.events.push({ event, payload, at: Date.now() }));
  socket.received = (event) => socket.events.filter((e) => e.event === event).map((e) => e.payload);
  return new Promise((ok, fail) => {
    socket.once("connect", () => ok(socket));
    socket.once("connect_error", (err) => {
      socket.close();
      fail(err);
    });
  });
}

export function closeAllSockets() {
  for (const s of sockets) s.close();
  sockets.clear();
}

/** The first `event` received by `socket` after `since` (ms) matching `pred`, waiting up to `timeoutMs`. */
export async function nextEvent(socket, event, { since = 0, pred = () => true, timeoutMs = 5_000 } = {}) {
  const found = await waitFor(
    () => socket.events.find((e) => e.event === event && e.at >= since && pred(e.payload)),
    { timeoutMs, intervalMs: 10, what: `${event} on the socket` },
  );
  return found;
}

/** A fresh namespace for one suite: database, Redis db, topics, tenant ids. */
export function suite(name, redisDb) {
  const id = `${name}-${randomUUID().slice(0, 8)}`;
  return { db: `e2e_${id.replace(/-/g, "_")}`, redisDb, topicPrefix: `e2e.${id}`, id };
}

export const text = (t) => ({ type: "text", text: t });

/**
 * Reads every record of `topic` from the beginning with kafkajs (a client independent of
 * the server's librdkafka) until `done(records)` holds or `timeoutMs` passes. Records are
 * `{key, value (parsed JSON), partition, offset}`.
 */
export async function readTopic(topic, done, { timeoutMs = 20_000 } = {}) {
  const { Kafka, logLevel } = await import("kafkajs");
  const kafka = new Kafka({ brokers: stackEnv().KAFKA_BROKERS.split(","), clientId: "e2e-reader", logLevel: logLevel.NOTHING });
  // The broker answers a JoinGroup after half the session timeout: kafkajs's default
  // (30 s) would spend 15 s of `timeoutMs` joining; 6 s is what the servers use.
  const consumer = kafka.consumer({ groupId: `e2e-reader-${randomUUID()}`, sessionTimeout: 6_000 });
  const records = [];
  await consumer.connect();
  try {
    await consumer.subscribe({ topic, fromBeginning: true });
    await consumer.run({
      eachMessage: async ({ partition, message }) => {
        records.push({ key: message.key?.toString(), value: JSON.parse(message.value.toString()), partition, offset: message.offset });
      },
    });
    await waitFor(() => done(records), { timeoutMs, what: `records on ${topic}` });
    return records;
  } finally {
    await consumer.disconnect();
  }
}
