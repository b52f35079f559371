// ICE servers for calls with a static TURN configuration (TURN_URLS + TURN_SECRET): the
// HTTP endpoint and the /webrtc event answer an RTCConfiguration whose credential a real
// coturn accepts (checked with coturn's own turnutils_uclient).
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { io as ioClient } from "socket.io-client";
import * as h from "../lib/harness.mjs";

const s = h.suite("calls", 9);
const tenant = `acme-${s.id}`;
const turnSecret = `turn-${s.id}`;
let rt, coturn, turnPort;

before(async () => {
  turnPort = await h.freePort();
  const dir = mkdtempSync(join(tmpdir(), "coturn-e2e-"));
  const conf = join(dir, "turnserver.conf");
  const relay = 30000 + (turnPort % 300) * 100;
  writeFileSync(
    conf,
    [
      "listening-ip=127.0.0.1",
      "relay-ip=127.0.0.1",
      `listening-port=${turnPort}`,
      `min-port=${relay}`,
      `max-port=${relay + 99}`,
      "realm=e2e",
      "use-auth-secret",
      `static-auth-secret=${turnSecret}`,
      "fingerprint",
      "no-cli",
      "no-tls",
      "no-dtls",
      "allow-loopback-peers",
      "log-file=stdout",
    ].join("\n"),
  );
  coturn = spawn("turnserver", ["-c", conf], { stdio: "ignore" });
  coturn.on("error", (e) => {
    throw new Error(`turnserver not startable (${e.message}): scripts/stack.sh up installs coturn`);
  });
  // Its TCP listener opens with the UDP one: credentials are checked only once it is up.
  await h.waitForPort(turnPort, "turnserver");
  rt = await h.startRealtime({
    role: "gateway",
    ...s,
    env: {
      TURN_URLS: `turn:127.0.0.1:${turnPort}?transport=udp,turn:127.0.0.1:${turnPort}?transport=tcp`,
      TURN_SECRET: turnSecret,
      TURN_CREDENTIAL_TTL: "600",
    },
  });
});

after(async () => {
  h.closeAllSockets();
  await h.stopAll();
  coturn?.kill("SIGKILL");
});

const token = (user) => h.mintToken({ tenant, user });

function assertRtcConfiguration(body, user) {
  assert.equal(body.ttl, 600);
  assert.equal(body.iceServers.length, 1);
  const [server] = body.iceServers;
  assert.deepEqual(server.urls, [
    `stun:127.0.0.1:${turnPort}`,
    `turn:127.0.0.1:${turnPort}?transport=udp`,
    `turn:127.0.0.1:${turnPort}?transport=tcp`,
  ]);
  const [expiry, name] = server.username.split(":");
  assert.equal(name, user);
  const left = Number(expiry) - Math.floor(Date.now() / 1000);
  assert.ok(left > 590 && left <= 601, `expires in ${left} s`);
  assert.ok(!JSON.stringify(body).includes(turnSecret), "the shared secret never leaves the server");
  return server;
}

function uclient(username, credential, extra = []) {
  const r = spawnSync("turnutils_uclient", ["-p", String(turnPort), "-u", username, "-w", credential, "-n", "3", "-y", "-c", "-X", ...extra, "127.0.0.1"], {
    encoding: "utf8",
    timeout: 20_000,
  });
  const out = `${r.stdout}${r.stderr}`;
  return r.status === 0 && /tot_recv_msgs=[1-9]/.test(out) && !/Cannot complete Allocation/.test(out);
}

test("GET /v1/ice-servers answers an RTCConfiguration whose credential coturn accepts", async () => {
  const res = await fetch(`${rt.url}/v1/ice-servers`, { headers: { authorization: `Bearer ${token("alice")}` } });
  assert.equal(res.status, 200);
  assert.equal(res.headers.get("cache-control"), "no-store");
  const server = assertRtcConfiguration(await res.json(), "alice");
  assert.ok(uclient(server.username, server.credential), "turnutils_uclient allocates over UDP with it");
  assert.ok(uclient(server.username, server.credential, ["-t"]), "and over TCP");
  assert.ok(!uclient(server.username, server.credential.replace(/^./, (c) => (c === "A" ? "B" : "A"))), "a tampered credential is refused");
});

test("GET /v1/ice-servers refuses a missing or bad token", async () => {
  const none = await fetch(`${rt.url}/v1/ice-servers`);
  assert.equal(none.status, 401);
  assert.equal((await none.json()).error.code, "unauthorized");
  const bad = await fetch(`${rt.url}/v1/ice-servers`, { headers: { authorization: `Bearer ${h.mintToken({ tenant, user: "a", secret: "wrong" })}` } });
  assert.equal(bad.status, 401);
});

test("call:ice-servers on /webrtc answers the same shape; no token, no connection", async () => {
  const socket = ioClient(`${rt.url}/webrtc`, { auth: { token: token("bob") }, transports: ["websocket"], reconnection: false, forceNew: true });
  await new Promise((ok, fail) => {
    socket.once("connect", ok);
    socket.once("connect_error", fail);
  });
  const r = await socket.emitWithAck("call:ice-servers", {});
  assert.equal(r.ok, true, JSON.stringify(r));
  assertRtcConfiguration(r, "bob");
  const unknown = await socket.emitWithAck("call:nonsense", {});
  assert.equal(unknown.error.code, "unknown_event");
  socket.close();
  const anonymous = ioClient(`${rt.url}/webrtc`, { transports: ["websocket"], reconnection: false, forceNew: true });
  const err = await new Promise((ok) => anonymous.once("connect_error", ok));
  assert.match(err.message, /^unauthorized/);
  anonymous.close();
});
