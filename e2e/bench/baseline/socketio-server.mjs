// Baseline for the fan-out and connection benchmarks (issue 15): a plain Node Socket.IO 4
// server with the official Redis adapter (@socket.io/redis-adapter), doing only what a
// chat broadcast needs and nothing of what the gateway does besides (no sequence numbers in
// Redis, no delivery ledger, no broker, no persistence, no presence, no rate limits, no
// standing lookups). Run as a separate process, one per "gateway"; two or more of them
// share rooms through Redis pub/sub exactly as our gateways do.
//
//   node e2e/bench/baseline/socketio-server.mjs --port 3100 --redis redis://127.0.0.1:16379/8
//
// Options (argv, or the environment variable in brackets):
//   --port N        [PORT]         listen on 127.0.0.1:N (default 3100)
//   --redis URL     [REDIS_URL]    the Redis of the adapter (only its pub/sub is used; pub/sub
//                                  channels are server-wide, whatever database the URL names)
//   --key PREFIX    [ADAPTER_KEY]  the adapter's channel prefix (default "socket.io-baseline"):
//                                  give every run its own so that it never hears other servers
//   --secret S      [JWT_SECRET]   when set, the HS256 signature of the token is checked
//                                  (one HMAC per connection, as our gateway does); otherwise
//                                  the token's claims are read unchecked
//
// Protocol, namespace `/chat` (the subset of README.md the benchmarks use):
//   handshake auth { token }: a JWT whose `sub` is the user and `tenant_id` the tenant
//   room:join { conversationId }          → ack { ok: true, conversationId }
//   room:leave { conversationId }         → ack { ok: true, conversationId }
//   message:send { conversationId, clientMessageId, content }
//       → `message:new` { messageId, conversationId, seq, senderId, clientMessageId,
//         content, createdAt } to the other sockets of the room (every server, through the
//         adapter), and ack { ok: true, messageId, seq, duplicate: false, status: "accepted" }.
//         `seq` is a per-room counter of this process (not shared between processes).
//   anything else                          → ack { ok: false, error: { code: "unknown_event" } }
// Prints `listening <port>` on stdout once it accepts connections.
import { createHmac, randomUUID, timingSafeEqual } from "node:crypto";
import { createServer } from "node:http";
import { createAdapter } from "@socket.io/redis-adapter";
import { createClient } from "redis";
import { Server } from "socket.io";

function option(name, envName, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  if (i >= 0 && i + 1 < process.argv.length) return process.argv[i + 1];
  return process.env[envName] ?? fallback;
}

const port = Number(option("port", "PORT", "3100"));
const redisUrl = option("redis", "REDIS_URL", "redis://127.0.0.1:6379/");
const key = option("key", "ADAPTER_KEY", "socket.io-baseline");
const secret = option("secret", "JWT_SECRET", undefined);

// node-redis 4 reads the database from the path; a query (`?protocol=resp3`, which our
// gateway understands) is not its business.
const url = new URL(redisUrl);
url.search = "";
const pub = createClient({ url: url.toString() });
const sub = pub.duplicate();
for (const c of [pub, sub]) c.on("error", (e) => console.error(`redis: ${e.message}`));
await Promise.all([pub.connect(), sub.connect()]);

const http = createServer((req, res) => {
  res.writeHead(req.url === "/readyz" ? 200 : 404).end();
});
const io = new Server(http, {
  adapter: createAdapter(pub, sub, { key }),
  transports: ["websocket"],
  serveClient: false,
  // Same bound as the gateway's default (twice MAX_MESSAGE_BYTES + 64 KiB).
  maxHttpBufferSize: 2 * 16384 + 64 * 1024,
});

/** The claims of an HS256 JWT, or null; the signature is checked when a secret is set. */
function claims(token) {
  if (typeof token !== "string") return null;
  const parts = token.split(".");
  if (parts.length !== 3) return null;
  if (secret) {
    const want = createHmac("sha256", secret).update(`${parts[0]}.${parts[1]}`).digest();
    const got = Buffer.from(parts[2], "base64url");
    if (got.length !== want.length || !timingSafeEqual(got, want)) return null;
  }
  try {
    const c = JSON.parse(Buffer.from(parts[1], "base64url").toString());
    if (typeof c.sub !== "string" || typeof c.tenant_id !== "string") return null;
    if (typeof c.exp === "number" && c.exp * 1000 < Date.now()) return null;
    return c;
  } catch {
    return null;
  }
}

const chat = io.of("/chat");
chat.use((socket, next) => {
  const c = claims(socket.handshake.auth?.token);
  if (!c) return next(new Error("unauthorized"));
  socket.data.user = c.sub;
  socket.data.tenant = c.tenant_id;
  next();
});

const seqs = new Map();
const fail = (ack, code) => typeof ack === "function" && ack({ ok: false, error: { code, message: code } });
const roomOf = (socket, conversationId) => `${socket.data.tenant}:${conversationId}`;

chat.on("connection", (socket) => {
  socket.on("room:join", (p, ack) => {
    if (typeof p?.conversationId !== "string") return fail(ack, "invalid_payload");
    socket.join(roomOf(socket, p.conversationId));
    if (typeof ack === "function") ack({ ok: true, conversationId: p.conversationId });
  });
  socket.on("room:leave", (p, ack) => {
    if (typeof p?.conversationId !== "string") return fail(ack, "invalid_payload");
    socket.leave(roomOf(socket, p.conversationId));
    if (typeof ack === "function") ack({ ok: true, conversationId: p.conversationId });
  });
  socket.on("message:send", (p, ack) => {
    if (typeof p?.conversationId !== "string" || typeof p.clientMessageId !== "string" || p.content?.type !== "text" || typeof p.content.text !== "string") {
      return fail(ack, "invalid_payload");
    }
    const room = roomOf(socket, p.conversationId);
    if (!socket.rooms.has(room)) return fail(ack, "forbidden");
    const seq = (seqs.get(room) ?? 0) + 1;
    seqs.set(room, seq);
    const message = {
      messageId: randomUUID(),
      conversationId: p.conversationId,
      seq,
      senderId: socket.data.user,
      clientMessageId: p.clientMessageId,
      content: { type: "text", text: p.content.text },
      createdAt: Date.now(),
    };
    socket.to(room).emit("message:new", message);
    if (typeof ack === "function") ack({ ok: true, messageId: message.messageId, seq, duplicate: false, status: "accepted" });
  });
  socket.onAny((event, ...args) => {
    if (["room:join", "room:leave", "message:send"].includes(event)) return;
    fail(args[args.length - 1], "unknown_event");
  });
});

http.listen(port, "127.0.0.1", () => console.log(`listening ${port}`));

const shutdown = () => {
  io.close();
  Promise.allSettled([pub.quit(), sub.quit()]).finally(() => process.exit(0));
  setTimeout(() => process.exit(0), 2000).unref();
};
process.on("SIGTERM", shutdown);
process.on("SIGINT", shutdown);
