// The product as a platform team and a tenant get it, on the local cluster whose node
// really runs pods (scripts/kube.sh + scripts/node.sh, images from scripts/images.sh):
// `helm install` → `kubectl apply -f examples/` → the RealtimeCluster Ready because its
// pods are (no status is patched here) → the official socket.io-client, from the host,
// chats through the gateway Service → the admin API answers through its Service with an
// admin token → ICE servers from the gateway, and coturn's own
// turnutils_uclient relays through the managed coturn pod with them → a spec change rolls
// the gateways and a gateway pod is killed while a sender keeps sending: every acked
// message is stored exactly once and the receiver recovers what it missed → uninstalling
// leaves nothing behind.
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { MongoClient } from "mongodb";
import { io } from "socket.io-client";
import * as h from "../lib/harness.mjs";

const NS = "chat-e2e";
const SYSTEM = "realtime-e2e-system";
const RELEASE = "rt-e2e";
const TENANT = "demo";
const CONVERSATION = "general";

function kubectl(...args) {
  return execFileSync("kubectl", args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] }).trim();
}

function helm(...args) {
  return execFileSync("helm", args, { encoding: "utf8", stdio: ["ignore", "pipe", "pipe"] }).trim();
}

/** The node must run pods: this suite is meaningless without one. */
function requireNode() {
  if (!process.env.KUBECONFIG) throw new Error('KUBECONFIG not set: scripts/kube.sh up && scripts/node.sh up; eval "$(scripts/kube.sh env)"');
  let ready;
  try {
    ready = kubectl("get", "node", "realtime-node", "-o", 'jsonpath={.status.conditions[?(@.type=="Ready")].status}');
  } catch (e) {
    throw new Error(`no node runs pods (${e.stderr ?? e.message}): scripts/node.sh up`);
  }
  if (ready !== "True") throw new Error(`node realtime-node is not Ready (${ready})`);
}

function cleanup() {
  for (const args of [
    ["delete", "namespace", NS, "--ignore-not-found", "--wait=true", "--timeout=120s"],
  ]) {
    try {
      kubectl(...args);
    } catch {
      // best effort
    }
  }
  try {
    helm("uninstall", RELEASE, "-n", SYSTEM, "--wait", "--timeout", "120s");
  } catch {
    // not installed
  }
  try {
    kubectl("delete", "namespace", SYSTEM, "--ignore-not-found", "--wait=true", "--timeout=120s");
  } catch {
    // best effort
  }
}

let gatewayUrl, mongo, tokens;

before(() => {
  requireNode();
  cleanup();
});

after(async () => {
  h.closeAllSockets();
  await mongo?.close();
  // Nothing stays behind, also when a test failed half-way.
  cleanup();
});

test("helm install and kubectl apply -f examples/ give a Ready installation whose pods really run", async () => {
  // Helm installs a chart's CRDs only where none exist and never upgrades them: apply the
  // current ones first, as an upgrade would (1.20's kubectl does not know CEL rules, the
  // API server ignores them).
  kubectl("apply", "--validate=false", "-f", `${h.REPO}/helm/realtime-operator/crds/`);
  helm("install", RELEASE, `${h.REPO}/helm/realtime-operator`, "-n", SYSTEM, "--create-namespace",
    // Kubernetes 1.20 refuses a server-side apply of CRDs with CEL rules it does not know.
    "--server-side=false", "--wait", "--timeout", "180s");
  const operatorPods = JSON.parse(kubectl("-n", SYSTEM, "get", "pods", "-o", "json")).items;
  assert.ok(operatorPods.length >= 1);
  for (const p of operatorPods) {
    assert.equal(p.status.phase, "Running");
    assert.match(p.spec.containers[0].image, /^ghcr\.io\/realtime-operator\/operator:/);
  }
  kubectl("create", "namespace", NS);
  kubectl("-n", NS, "apply", "-f", `${h.REPO}/examples/`);
  kubectl("-n", NS, "wait", "--for=condition=Ready", "rtc/chat", "turnpool/calls", "mongoindex/messages-by-sender", "kafkatopic/audit-events", "--timeout=240s");
  // The cluster's own topics and indexes, made by the operator from its pod (another
  // namespace than the broker's and the database's), each waitable with kubectl.
  kubectl("-n", NS, "wait", "--for=condition=Ready", "kafkatopic,mongoindex", "-l", "app.kubernetes.io/instance=chat", "--timeout=60s");
  const owned = JSON.parse(kubectl("-n", NS, "get", "kafkatopic,mongoindex", "-l", "app.kubernetes.io/instance=chat", "-o", "json")).items;
  assert.deepEqual(
    owned.map((o) => `${o.kind} ${o.metadata.name}`).sort(),
    [
      "KafkaTopic chat-dead-letters", "KafkaTopic chat-messages", "KafkaTopic chat-persistence-events", "KafkaTopic chat-recording-events",
      "MongoIndex chat-conversations-id", "MongoIndex chat-conversations-members", "MongoIndex chat-messages-history", "MongoIndex chat-messages-id",
      "MongoIndex chat-moderation-log", "MongoIndex chat-recordings-call", "MongoIndex chat-recordings-conversation", "MongoIndex chat-recordings-id",
    ],
  );
  const rc = JSON.parse(kubectl("-n", NS, "get", "rtc", "chat", "-o", "json"));
  assert.equal(rc.status.gateway.readyReplicas, rc.spec.gateway.replicas);
  const pods = JSON.parse(kubectl("-n", NS, "get", "pods", "-l", "app.kubernetes.io/instance=chat", "-o", "json")).items;
  assert.equal(pods.filter((p) => p.status.phase === "Running").length, rc.spec.gateway.replicas + rc.spec.persister.replicas + rc.spec.admin.replicas);
  // Seed a conversation and mint tokens with the tool shipped in the data-plane image.
  const out = kubectl("-n", NS, "exec", "deploy/chat-gateway", "--", "realtime-dev", "seed", "--tenant", TENANT,
    "--conversation", CONVERSATION, "--users", "alice,bob");
  tokens = Object.fromEntries([...out.matchAll(/^TOKEN_(\w+)=(\S+)$/gm)].map((m) => [m[1].toLowerCase(), m[2]]));
  assert.ok(tokens.alice && tokens.bob, out);
  const ip = kubectl("-n", NS, "get", "svc", "chat-gateway", "-o", "jsonpath={.spec.clusterIP}");
  const port = kubectl("-n", NS, "get", "svc", "chat-gateway", "-o", "jsonpath={.spec.ports[0].port}");
  gatewayUrl = `http://${ip}:${port}`;
  const mongoIp = kubectl("-n", NS, "get", "svc", "mongo", "-o", "jsonpath={.spec.clusterIP}");
  mongo = new MongoClient(`mongodb://${mongoIp}:27017/?directConnection=true`);
  await mongo.connect();
  // The example MongoIndex, created by the operator in the cluster's database (read here
  // with the driver, not through the operator).
  const indexes = await mongo.db("realtime").collection("messages").indexes();
  assert.ok(
    indexes.some((i) => i.name === "messages_by_sender" && JSON.stringify(i.key) === '{"tenant_id":1,"sender_id":1,"created_at":-1}'),
    JSON.stringify(indexes),
  );
  // And the cluster's default: the unique index the persister's idempotency relies on.
  assert.ok(indexes.some((i) => i.name === "message_id_1" && i.unique === true), JSON.stringify(indexes));
});

/** A client that reconnects by itself and rejoins its conversation on every connect. */
function client(token, opts = { transports: ["websocket"] }) {
  const socket = io(`${gatewayUrl}/chat`, {
    auth: { token },
    reconnectionDelay: 200,
    reconnectionDelayMax: 1000,
    ...opts,
  });
  socket.received = new Map();
  socket.on("message:new", (m) => socket.received.set(m.messageId, m));
  socket.on("connect", () => {
    socket.emitWithAck("room:join", { conversationId: CONVERSATION }).catch(() => {});
  });
  return socket;
}

/** Sends until acked, resending the same clientMessageId on a timeout or an error. */
async function sendUntilAcked(socket, clientMessageId, text) {
  for (let attempt = 0; ; attempt++) {
    try {
      const r = await socket.timeout(5_000).emitWithAck("message:send", { conversationId: CONVERSATION, clientMessageId, content: h.text(text) });
      if (r.ok) return r;
      if (r.error.code === "forbidden") {
        // Not in the room yet after a reconnect: join and resend.
        await socket.timeout(5_000).emitWithAck("room:join", { conversationId: CONVERSATION }).catch(() => {});
      }
    } catch {
      // timed out: the gateway went away; the client reconnects
    }
    if (attempt > 100) throw new Error(`${clientMessageId} never acked`);
    await h.sleep(200);
  }
}

/** Everything after `afterSeq` that the receiver missed, through messages:recover. */
async function recover(socket, afterSeq) {
  await h.waitFor(() => socket.connected, { timeoutMs: 30_000, what: "receiver reconnected" });
  const r = await socket.timeout(10_000).emitWithAck("messages:recover", { conversationId: CONVERSATION, afterSeq });
  assert.equal(r.ok, true, JSON.stringify(r));
  for (const m of r.messages) socket.received.set(m.messageId, m);
}

async function storedExactlyOnce(acked) {
  const messages = mongo.db("realtime").collection("messages");
  await h.waitFor(async () => (await messages.countDocuments({ message_id: { $in: acked } })) === acked.length, {
    timeoutMs: 60_000,
    what: `${acked.length} acked messages stored`,
  });
  const docs = await messages.aggregate([
    { $match: { message_id: { $in: acked } } },
    { $group: { _id: "$message_id", n: { $sum: 1 } } },
    { $match: { n: { $gt: 1 } } },
  ]).toArray();
  assert.deepEqual(docs, [], "no message stored twice");
}

/** Keeps alice sending while `disrupt` runs; then checks exactly-once and bob's recovery. */
async function sendThrough(label, disrupt) {
  const alice = client(tokens.alice);
  const bob = client(tokens.bob);
  await h.waitFor(() => alice.connected && bob.connected, { timeoutMs: 30_000, what: "clients connected" });
  const first = await sendUntilAcked(alice, `${label}-start`, "start");
  const acked = [first.messageId];
  let stop = false;
  const sender = (async () => {
    for (let i = 0; !stop; i++) {
      acked.push((await sendUntilAcked(alice, `${label}-${i}`, `${label} ${i}`)).messageId);
      await h.sleep(50);
    }
  })();
  await disrupt();
  // Keep sending a little while after the disruption, then stop.
  const atDisruptionEnd = acked.length;
  await h.waitFor(() => acked.length >= atDisruptionEnd + 10, { timeoutMs: 60_000, what: "sends after the disruption" });
  stop = true;
  await sender;
  await storedExactlyOnce(acked);
  await recover(bob, first.seq);
  const missing = acked.filter((id) => id !== first.messageId && !bob.received.has(id));
  assert.deepEqual(missing, [], "the receiver has every acked message (live or recovered)");
  alice.close();
  bob.close();
  return acked.length;
}

test("a tenant chats through the gateway Service: ack, message:new, message:persisted", async () => {
  const alice = client(tokens.alice);
  // The standard client's defaults (HTTP long-polling, then the upgrade to a websocket)
  // through a Service in front of two gateways: the Service keeps a client on one.
  const bob = client(tokens.bob, {});
  await h.waitFor(() => alice.connected && bob.connected, { timeoutMs: 30_000, what: "clients connected" });
  await h.sleep(200);
  const persisted = new Promise((ok) => alice.on("message:persisted", ok));
  const ack = await sendUntilAcked(alice, "hello", "hello from the host");
  assert.match(ack.messageId, /^[0-9a-f-]{36}$/);
  await h.waitFor(() => bob.received.has(ack.messageId), { what: "bob's message:new" });
  assert.equal((await persisted).messageId, ack.messageId);
  alice.close();
  bob.close();
});

test("the admin API runs in its own Deployment and answers through its Service", async () => {
  kubectl("-n", NS, "wait", "--for=condition=Available", "deploy/chat-admin", "--timeout=120s");
  const rc = JSON.parse(kubectl("-n", NS, "get", "rtc", "chat", "-o", "json"));
  assert.equal(rc.status.admin.readyReplicas, rc.spec.admin.replicas);
  const ip = kubectl("-n", NS, "get", "svc", "chat-admin", "-o", "jsonpath={.spec.clusterIP}");
  const port = kubectl("-n", NS, "get", "svc", "chat-admin", "-o", "jsonpath={.spec.ports[0].port}");
  assert.equal(rc.status.endpoints.adminUrl, `http://chat-admin.${NS}.svc:${port}/v1/admin`);
  const adminUrl = `http://${ip}:${port}/v1/admin`;
  // A token whose roles include admin, minted in the admin pod with its own JWT settings.
  const token = kubectl("-n", NS, "exec", "deploy/chat-admin", "--", "realtime-dev", "token", "--tenant", TENANT, "--user", "ops", "--roles", "admin");
  const res = await fetch(`${adminUrl}/openapi.json`, { headers: { authorization: `Bearer ${token}` } });
  assert.equal(res.status, 200, await res.clone().text());
  assert.match((await res.json()).openapi, /^3\.1/);
  assert.equal((await fetch(`${adminUrl}/recordings`)).status, 401, "no token");
  const member = await fetch(`${adminUrl}/recordings`, { headers: { authorization: `Bearer ${tokens.alice}` } });
  assert.equal(member.status, 403, "a token without the admin role");
});

test("ICE servers from the gateway relay through the managed coturn pod (turnutils_uclient)", async () => {
  const pool = JSON.parse(kubectl("-n", NS, "get", "turnpool", "calls", "-o", "json"));
  const coturn = JSON.parse(kubectl("-n", NS, "get", "pods", "-l", "app.kubernetes.io/instance=calls,app.kubernetes.io/component=coturn", "-o", "json")).items;
  assert.equal(coturn.length, 1);
  const nodeIp = coturn[0].status.hostIP;
  // The pod is probed at its node's address, not through a Service.
  assert.deepEqual(pool.status.servers.map((s) => [s.host, s.port, s.healthy]), [[nodeIp, 3478, true]]);
  const res = await fetch(`${gatewayUrl}/v1/ice-servers`, { headers: { authorization: `Bearer ${tokens.alice}` } });
  assert.equal(res.status, 200);
  const { iceServers } = await res.json();
  const turn = iceServers.find((s) => s.urls.some((u) => u.startsWith("turn:")));
  assert.ok(turn, JSON.stringify(iceServers));
  assert.ok(turn.urls.includes(`turn:${nodeIp}:3478?transport=udp`), JSON.stringify(turn.urls));
  const uclient = (credential, extra = []) => {
    const r = spawnSync("turnutils_uclient", ["-p", "3478", "-u", turn.username, "-w", credential, "-n", "3", "-y", "-c", "-X", ...extra, nodeIp], {
      encoding: "utf8",
      timeout: 30_000,
    });
    const out = `${r.stdout}${r.stderr}`;
    return { ok: r.status === 0 && /tot_recv_msgs=[1-9]/.test(out) && !/Cannot complete Allocation/.test(out), out };
  };
  const udp = uclient(turn.credential);
  assert.ok(udp.ok, `relayed over UDP through the coturn pod:\n${udp.out}`);
  const tcp = uclient(turn.credential, ["-t"]);
  assert.ok(tcp.ok, `and over TCP:\n${tcp.out}`);
  const tampered = uclient(turn.credential.replace(/^./, (c) => (c === "A" ? "B" : "A")));
  assert.ok(!tampered.ok, "a tampered credential is refused");
});

test("a spec change rolls the gateways while a sender keeps sending: nothing lost, nothing doubled", async () => {
  const before = kubectl("-n", NS, "get", "rtc", "chat", "-o", "jsonpath={.status.configChecksum}");
  const sent = await sendThrough("roll", async () => {
    kubectl("-n", NS, "patch", "rtc", "chat", "--type=merge", "-p", '{"spec":{"limits":{"burst":40}}}');
    await h.waitFor(() => kubectl("-n", NS, "get", "rtc", "chat", "-o", "jsonpath={.status.configChecksum}") !== before, {
      timeoutMs: 30_000,
      what: "the new configuration",
    });
    kubectl("-n", NS, "rollout", "status", "deploy/chat-gateway", "--timeout=180s");
    kubectl("-n", NS, "wait", "--for=condition=Ready", "rtc/chat", "--timeout=180s");
  });
  assert.ok(sent > 10);
});

test("a gateway pod killed while a sender keeps sending: nothing lost, nothing doubled", async () => {
  await sendThrough("kill", async () => {
    const pod = kubectl("-n", NS, "get", "pods", "-l", "app.kubernetes.io/component=gateway", "-o", "jsonpath={.items[0].metadata.name}");
    kubectl("-n", NS, "delete", "pod", pod, "--grace-period=0", "--force", "--wait=false");
    await h.waitFor(() => {
      try {
        kubectl("-n", NS, "get", "pod", pod);
        return false;
      } catch {
        return true;
      }
    }, { timeoutMs: 60_000, what: `${pod} gone` });
    kubectl("-n", NS, "rollout", "status", "deploy/chat-gateway", "--timeout=180s");
  });
});

test("deleting the RealtimeCluster and the TurnPool and uninstalling the chart leave nothing behind", async () => {
  await mongo.close();
  mongo = undefined;
  kubectl("-n", NS, "delete", "rtc/chat", "turnpool/calls", "--wait=true", "--timeout=120s");
  await h.waitFor(() => kubectl("-n", NS, "get", "all", "-l", "app.kubernetes.io/managed-by=realtime-operator", "-o", "name") === "", {
    timeoutMs: 120_000,
    what: "the children of the cluster and of the pool garbage-collected",
  });
  for (const kind of ["configmaps", "secrets", "serviceaccounts", "roles", "rolebindings", "poddisruptionbudgets"]) {
    assert.equal(kubectl("-n", NS, "get", kind, "-l", "app.kubernetes.io/managed-by=realtime-operator", "-o", "name"), "", kind);
  }
  helm("uninstall", RELEASE, "-n", SYSTEM, "--wait", "--timeout", "120s");
  await h.waitFor(() => kubectl("-n", SYSTEM, "get", "pods", "-o", "name") === "", { timeoutMs: 120_000, what: "the operator's pods gone" });
  for (const kind of ["clusterroles", "clusterrolebindings"]) {
    assert.equal(kubectl("get", kind, "-l", `app.kubernetes.io/instance=${RELEASE}`, "-o", "name"), "", kind);
  }
  kubectl("delete", "namespace", NS, SYSTEM, "--wait=true", "--timeout=180s");
});
