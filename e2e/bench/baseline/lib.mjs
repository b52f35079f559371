// Shared by the fan-out and connection benchmarks (issue 15): the Node Socket.IO baseline
// servers (./socketio-server.mjs) as child processes, and per-process CPU time and memory
// from /proc (Linux).
import { execFileSync, spawn } from "node:child_process";
import { readdirSync, readFileSync, readlinkSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import * as h from "../../lib/harness.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const started = new Set();

let ticks;
/** Clock ticks per second of /proc/<pid>/stat (USER_HZ). */
function clockTicks() {
  if (ticks === undefined) {
    try {
      ticks = Number(execFileSync("getconf", ["CLK_TCK"]).toString().trim()) || 100;
    } catch {
      ticks = 100;
    }
  }
  return ticks;
}

/** CPU seconds (user + system, all threads) `pid` has used so far. */
export function cpuSeconds(pid) {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  // The command name (field 2) may hold spaces and parentheses: count from the last ")".
  const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return (Number(fields[11]) + Number(fields[12])) / clockTicks(); // fields 14 and 15
}

/** Sum of cpuSeconds over `pids`. */
export const cpuOf = (pids) => pids.reduce((sum, pid) => sum + cpuSeconds(pid), 0);

/** Resident set size of `pid` in KiB (VmRSS). */
export function rssKb(pid) {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  return Number(status.match(/^VmRSS:\s+(\d+) kB/m)[1]);
}

/** The pid of the process listening on TCP 127.0.0.1/0.0.0.0:`port` (via /proc/net/tcp and the fd tables), or undefined. */
export function pidListeningOn(port) {
  const hexPort = port.toString(16).toUpperCase().padStart(4, "0");
  const inodes = new Set();
  for (const file of ["/proc/net/tcp", "/proc/net/tcp6"]) {
    let text;
    try {
      text = readFileSync(file, "utf8");
    } catch {
      continue;
    }
    for (const line of text.split("\n").slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f.length > 9 && f[1].endsWith(`:${hexPort}`) && f[3] === "0A") inodes.add(f[9]); // 0A = LISTEN
    }
  }
  if (!inodes.size) return undefined;
  for (const pid of readdirSync("/proc").filter((d) => /^\d+$/.test(d))) {
    let fds;
    try {
      fds = readdirSync(`/proc/${pid}/fd`);
    } catch {
      continue;
    }
    for (const fd of fds) {
      try {
        const m = readlinkSync(`/proc/${pid}/fd/${fd}`).match(/^socket:\[(\d+)\]$/);
        if (m && inodes.has(m[1])) return Number(pid);
      } catch {
        // closed meanwhile
      }
    }
  }
  return undefined;
}

/** The pid of the stack's redis-server (from REDIS_URL's port). */
export function redisPid() {
  return pidListeningOn(Number(new URL(h.stackEnv().REDIS_URL).port));
}

/**
 * Starts one baseline server (./socketio-server.mjs) on a free port and waits until it
 * listens. `key` is the adapter's channel prefix: servers with the same key share rooms.
 */
export async function startNodeServer({ key, redisDb, secret = h.SECRET }) {
  const port = await h.freePort();
  const child = spawn(process.execPath, [resolve(here, "socketio-server.mjs"), "--port", String(port), "--redis", h.redisUrlWithDb(redisDb), "--key", key, "--secret", secret], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  const proc = { child, port, url: `http://127.0.0.1:${port}`, role: "node-baseline", log: [] };
  const keep = (chunk) => {
    proc.log.push(chunk.toString());
    if (proc.log.length > 200) proc.log.splice(0, 100);
  };
  child.stdout.on("data", keep);
  child.stderr.on("data", keep);
  proc.exited = new Promise((ok) => child.on("exit", (code, signal) => ok({ code, signal })));
  started.add(proc);
  proc.exited.then(() => started.delete(proc));
  await h.waitFor(() => child.exitCode !== null || proc.log.join("").includes(`listening ${port}`), { timeoutMs: 15_000, what: `baseline server on ${port}` });
  if (child.exitCode !== null) throw new Error(`baseline server exited with ${child.exitCode}:\n${proc.log.join("")}`);
  return proc;
}

/** Stops every baseline server this module started. */
export async function stopNodeServers() {
  await Promise.all(
    [...started].map(async (p) => {
      if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill("SIGKILL");
      await p.exited;
    }),
  );
}

export function pct(values, p) {
  if (!values.length) return NaN;
  const sorted = Float64Array.from(values).sort();
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

export const fmt = (n, d = 1) => (Number.isFinite(n) ? n.toFixed(d) : "n/a");
export const ratio = (a, b) => (Number.isFinite(a / b) ? `${(a / b).toFixed(2)}×` : "n/a");
