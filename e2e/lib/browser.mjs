// Browser side of the call tests: headless Debian Chromium (puppeteer-core, no bundled
// browser) with fake camera and microphone, a static server for e2e/browser/ (the call
// page, window.rt) and a coturn of the test's own on loopback. Tests stop what they start:
// browser.close(), pages.close(), h.stop(coturn) (or coturn.stop()).
import { spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { extname, join, resolve } from "node:path";
import puppeteer from "puppeteer-core";
import { REPO, freePort, stop, waitForPort } from "./harness.mjs";

export const CHROMIUM = process.env.CHROMIUM_BIN ?? "/usr/bin/chromium";
const PAGES = resolve(REPO, "e2e/browser");
const SOCKET_IO = resolve(REPO, "e2e/node_modules/socket.io-client/dist/socket.io.min.js");

/** Headless Chromium whose getUserMedia answers at once with synthetic audio and video. */
export async function launchBrowser() {
  if (!existsSync(CHROMIUM)) throw new Error(`${CHROMIUM} not found: scripts/stack.sh up installs chromium`);
  return puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true, // the new headless mode (the full browser, no window)
    args: [
      "--use-fake-ui-for-media-stream", // grant camera/microphone without a prompt
      "--use-fake-device-for-media-stream", // a test pattern and a beep instead of real devices
      "--no-sandbox", // tests run as root, where Chromium's sandbox refuses to start
      "--disable-gpu",
      "--disable-dev-shm-usage", // small /dev/shm in containers
      "--mute-audio",
      // WebRTC ignores the loopback interface by default: on a machine (or container) whose
      // only interface is lo it then has no network to reach the TURN server on 127.0.0.1
      // from, and gathers no candidate at all.
      "--allow-loopback-in-peer-connection",
      // Host candidates as IPs, not .local mDNS names (nothing resolves those here). With
      // iceTransportPolicy "relay" only TURN candidates are used; this only keeps logs plain.
      "--disable-features=WebRtcHideLocalIpsWithMdns",
    ],
  });
}

const TYPES = { ".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript", ".css": "text/css" };

/** Serves e2e/browser/ and /socket.io.min.js on 127.0.0.1 (a secure context: getUserMedia works). */
export async function servePages() {
  const server = createServer((req, res) => {
    const path = new URL(req.url, "http://x").pathname;
    const file = path === "/socket.io.min.js" ? SOCKET_IO : resolve(PAGES, "." + (path === "/" ? "/call.html" : path));
    if (!file.startsWith(PAGES + "/") && file !== SOCKET_IO) return res.writeHead(403).end();
    let body;
    try {
      body = readFileSync(file);
    } catch {
      return res.writeHead(404).end();
    }
    res.writeHead(200, { "content-type": TYPES[extname(file)] ?? "application/octet-stream", "cache-control": "no-store" });
    res.end(body);
  });
  const port = await freePort();
  await new Promise((ok, fail) => server.once("error", fail).listen(port, "127.0.0.1", ok));
  return {
    url: `http://127.0.0.1:${port}`,
    close: () => new Promise((ok) => (server.closeAllConnections(), server.close(() => ok()))),
  };
}

/**
 * A new page with the call page loaded (window.rt ready). `page.logs` collects its console
 * output and errors; `page.dumpLogs(label)` prints them (call it when a test fails).
 * `page.rt(fn, ...args)` evaluates `fn(rt, ...args)` in the page, e.g.
 * `await page.rt((rt, c) => rt.call(c), conversationId)`.
 */
export async function openPage(browser, pagesUrl, label = "page") {
  const page = await browser.newPage();
  page.logs = [];
  const keep = (line) => {
    page.logs.push(`${new Date().toISOString().slice(11, 23)} ${line}`);
    if (page.logs.length > 1000) page.logs.splice(0, 500);
  };
  page.on("console", (m) => keep(`${m.type()}: ${m.text()}`));
  page.on("pageerror", (e) => keep(`pageerror: ${e.message}`));
  page.on("requestfailed", (r) => keep(`requestfailed: ${r.url()} ${r.failure()?.errorText}`));
  page.dumpLogs = (title = label) => console.error(`--- browser console of ${title}\n${page.logs.join("\n")}`);
  await page.goto(`${pagesUrl}/call.html`, { waitUntil: "load" });
  const rt = await page.waitForFunction(() => window.rt, { timeout: 5_000 });
  page.rt = (fn, ...args) => rt.evaluate(fn, ...args);
  return page;
}

/** TURN REST credentials (what the server hands out): `<expiry>:<user>`, base64(HMAC-SHA1(secret, username)). */
export function turnCredentials(secret, user, ttl = 600) {
  const username = `${Math.floor(Date.now() / 1000) + ttl}:${user}`;
  return { username, credential: createHmac("sha1", secret).update(username).digest("base64") };
}

/**
 * coturn on a free loopback port (relaying on 127.0.0.1), accepting TURN REST credentials
 * signed with `secret`. Returns a harness-style process ({child, port, log, exited}, so
 * h.stop() works) plus `urls` for an RTCIceServer and `stop()`.
 */
export async function startCoturn({ secret, realm = "e2e" }) {
  const port = await freePort();
  const dir = mkdtempSync(join(tmpdir(), "coturn-e2e-"));
  const conf = join(dir, "turnserver.conf");
  const relay = 30000 + (port % 300) * 100;
  writeFileSync(
    conf,
    [
      "listening-ip=127.0.0.1",
      "relay-ip=127.0.0.1",
      `listening-port=${port}`,
      `min-port=${relay}`,
      `max-port=${relay + 99}`,
      `realm=${realm}`,
      "use-auth-secret",
      `static-auth-secret=${secret}`,
      "fingerprint",
      "no-cli",
      "no-tls",
      "no-dtls",
      // Both browsers' relayed addresses are 127.0.0.1: coturn refuses loopback peers by default.
      "allow-loopback-peers",
      `pidfile=${join(dir, "turnserver.pid")}`,
      `userdb=${join(dir, "turndb")}`,
      "log-file=stdout",
      "simple-log",
      "verbose", // session lines (ALLOCATE/CREATE_PERMISSION/CHANNEL_BIND …) in proc.log; without it coturn logs none
    ].join("\n") + "\n",
  );
  const child = spawn("turnserver", ["-c", conf], { stdio: ["ignore", "pipe", "pipe"] });
  const proc = { child, port, role: "coturn", log: [], urls: [`turn:127.0.0.1:${port}?transport=udp`, `turn:127.0.0.1:${port}?transport=tcp`] };
  const keep = (c) => {
    proc.log.push(c.toString());
    if (proc.log.length > 400) proc.log.splice(0, 200);
  };
  child.stdout.on("data", keep);
  child.stderr.on("data", keep);
  proc.exited = new Promise((ok) => child.on("exit", (code, signal) => ok({ code, signal })));
  proc.exited.then(() => rmSync(dir, { recursive: true, force: true }));
  proc.stop = () => stop(proc, "SIGKILL");
  const died = new Promise((_, fail) => {
    child.once("error", (e) => fail(new Error(`turnserver not startable (${e.message}): scripts/stack.sh up installs coturn`)));
    proc.exited.then(({ code, signal }) => fail(new Error(`turnserver exited (${code ?? signal}):\n${proc.log.join("")}`)));
  });
  died.catch(() => {}); // after start-up, an exit is the test's business (proc.exited)
  // Its TCP listener opens with the UDP one: credentials are checked only once it is up.
  const listening = waitForPort(port, "turnserver");
  try {
    await Promise.race([listening, died]);
  } catch (e) {
    listening.catch(() => {}); // still polling; its timeout is no longer news
    child.kill("SIGKILL");
    throw e;
  }
  return proc;
}
