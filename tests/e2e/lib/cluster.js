"use strict";
// Test harness: a real Roomcast cluster per test file (its own redis-server, N gateways, two
// fanout replicas by default, all on free loopback ports), official socket.io-client sockets
// connected to it, and small helpers that await events with a safety timeout instead of sleeping.
//
//   const { useCluster, waitFor, collect, record } = require("../lib/cluster");
//   const cluster = useCluster({ gateways: ["gw-a", "gw-b"] });   // registers before/after hooks
//   test("...", async () => { const s = await cluster.connect("gw-a"); await cluster.join(s, "r"); ... });
//
// Connection state recovery is on by default (as in the binaries): every event from a room or
// namespace publish then carries its offset (the publish entry id) as its last argument, so tests
// compare events with `cluster.assertArgs` / `cluster.assertEvents`, which expect that offset
// exactly when the cluster runs with recovery on. `cluster.proxy("gw-a")` puts a TCP proxy in
// front of the gateways, to move a client to another gateway or cut its connection abruptly.
//
// Env: ROOMCAST_BIN_DIR (default <repo>/target/debug, or $CARGO_TARGET_DIR/debug), REDIS_SERVER (default redis-server),
// E2E_TIMEOUT_MS (safety timeout of one wait, default 20000), E2E_KEEP_LOGS=1 (keep the log
// folder of a passing file too). Logs of a failing file are kept and their folder is printed.

const { spawn } = require("node:child_process");
const fs = require("node:fs");
const http = require("node:http");
const net = require("node:net");
const os = require("node:os");
const path = require("node:path");
const assert = require("node:assert/strict");
const { before, after, afterEach } = require("node:test");
const Redis = require("ioredis");
const { io } = require("socket.io-client");

const REPO_ROOT = path.resolve(__dirname, "..", "..", "..");
const BIN_DIR = path.resolve(
  REPO_ROOT,
  process.env.ROOMCAST_BIN_DIR || path.join(process.env.CARGO_TARGET_DIR || "target", "debug")
);
const REDIS_SERVER = process.env.REDIS_SERVER || "redis-server";
/** Safety net of one wait; a wait that hits it fails the test. Never an assertion on speed. */
const TIMEOUT_MS = Number(process.env.E2E_TIMEOUT_MS || 20000);
const STARTUP_TIMEOUT_MS = Number(process.env.E2E_STARTUP_TIMEOUT_MS || 60000);
const SHUTDOWN_TIMEOUT_MS = 3000;

// ---------------------------------------------------------------------------------------------
// Processes. Every child is tracked; whatever is still alive when this process exits is killed,
// and where util-linux's setpriv exists each child also gets SIGKILL if this process dies first
// (PR_SET_PDEATHSIG), so a crashed or interrupted test run leaves no orphans.

const live = new Set();
process.on("exit", () => {
  for (const child of live) {
    try {
      child.kill("SIGKILL");
    } catch (_) {
      /* already gone */
    }
  }
});

const SETPRIV = ["/usr/bin/setpriv", "/bin/setpriv"].find((p) => fs.existsSync(p));

class Proc {
  /** @param {string} name  @param {string} cmd  @param {string[]} args  @param {object} env  @param {string} logFile */
  constructor(name, cmd, args, env, logFile) {
    this.name = name;
    this.logFile = logFile;
    this.exit = null; // {code, signal} once exited
    this.expectedExit = false;
    const fd = fs.openSync(logFile, "a");
    const [file, argv] = SETPRIV ? [SETPRIV, ["--pdeathsig", "KILL", "--", cmd, ...args]] : [cmd, args];
    this.child = spawn(file, argv, { env, stdio: ["ignore", fd, fd] });
    fs.closeSync(fd);
    live.add(this.child);
    this.exited = new Promise((resolve) => {
      this.child.once("error", (error) => {
        fs.appendFileSync(logFile, `\n[harness] cannot start ${cmd}: ${error.message}\n`);
        live.delete(this.child);
        this.exit = { code: null, signal: null, error };
        resolve(this.exit);
      });
      this.child.once("exit", (code, signal) => {
        live.delete(this.child);
        this.exit = { code, signal };
        resolve(this.exit);
      });
    });
  }

  get running() {
    return this.exit === null;
  }

  describe() {
    if (this.running) return `${this.name}: running (pid ${this.child.pid})`;
    const { code, signal, error } = this.exit;
    return `${this.name}: exited ${error ? `(spawn error: ${error.message})` : `code=${code} signal=${signal}`}`;
  }

  /** SIGTERM, then SIGKILL if it has not exited within `graceMs`. */
  async stop(graceMs = SHUTDOWN_TIMEOUT_MS) {
    this.expectedExit = true;
    if (!this.running) return this.exit;
    this.child.kill("SIGTERM");
    const timer = setTimeout(() => this.child.kill("SIGKILL"), graceMs);
    const exit = await this.exited;
    clearTimeout(timer);
    return exit;
  }

  /** SIGKILL, as a crash (nothing is cleaned up); resolves when the process is gone. */
  async kill() {
    this.expectedExit = true;
    if (!this.running) return this.exit;
    this.child.kill("SIGKILL");
    return this.exited;
  }

  tail(lines = 40) {
    let text;
    try {
      text = fs.readFileSync(this.logFile, "utf8");
    } catch (_) {
      return "(no log)";
    }
    return text.split("\n").slice(-lines).join("\n");
  }
}

/** A port that was free a moment ago (the OS picks it). */
function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** Sends PING on a fresh TCP connection; true on +PONG. */
function redisPing(port) {
  return new Promise((resolve) => {
    const sock = net.connect({ port, host: "127.0.0.1" });
    let buf = "";
    const done = (ok) => {
      sock.destroy();
      resolve(ok);
    };
    sock.setTimeout(1000, () => done(false));
    sock.on("error", () => done(false));
    sock.on("connect", () => sock.write("PING\r\n"));
    sock.on("data", (d) => {
      buf += d;
      if (buf.includes("\r\n")) done(buf.startsWith("+PONG"));
    });
  });
}

/** GET a URL on this machine: {status, body}; status 0 when nothing answers. */
function httpGet(url, timeoutMs = 2000) {
  return new Promise((resolve) => {
    const req = http.get(url, { timeout: timeoutMs }, (res) => {
      let body = "";
      res.setEncoding("utf8");
      res.on("data", (d) => (body += d));
      res.on("end", () => resolve({ status: res.statusCode, body }));
      res.on("error", (e) => resolve({ status: 0, body: String(e.message) }));
    });
    req.on("timeout", () => req.destroy(new Error("timeout")));
    req.on("error", (e) => resolve({ status: 0, body: String(e.message) }));
  });
}

const delay = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/** Thrown inside an eventually() callback to stop polling at once (e.g. a process died). */
class GiveUp extends Error {}

/**
 * Polls `fn` until it returns a truthy value (which is returned) or stops throwing, for state that
 * cannot be awaited as an event (Redis keys, /readyz). Fails with `message` and the last
 * result/error at the deadline, or at once on a GiveUp. The deadline is a safety net, not a
 * speed requirement.
 */
async function eventually(fn, { timeout = TIMEOUT_MS, interval = 50, message = "condition" } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      const value = await fn();
      if (value) return value;
      last = `last result: ${JSON.stringify(value)}`;
    } catch (e) {
      if (e instanceof GiveUp) throw new Error(`${message}: ${e.message}`);
      last = `last error: ${e && e.message}`;
    }
    if (Date.now() > deadline) {
      throw new Error(`${message}: still not true after ${timeout} ms (${last})`);
    }
    await delay(interval);
  }
}

// ---------------------------------------------------------------------------------------------
// Awaiting events.

function describeTarget(emitter) {
  if (emitter && emitter.__label) return emitter.__label;
  return emitter && emitter.constructor ? emitter.constructor.name : String(emitter);
}

/** Resolves with the argument list of the next `event` on `emitter`; rejects after the timeout. */
function waitFor(emitter, event, { timeout = TIMEOUT_MS, what } = {}) {
  return new Promise((resolve, reject) => {
    const onEvent = (...args) => {
      clearTimeout(timer);
      resolve(args);
    };
    const timer = setTimeout(() => {
      emitter.off(event, onEvent);
      reject(new Error(`timed out after ${timeout} ms waiting for "${event}" on ${what || describeTarget(emitter)}`));
    }, timeout);
    emitter.once(event, onEvent);
  });
}

/**
 * Resolves with the argument lists of the next `n` `event`s on `socket` (each an array, since an
 * event may carry several arguments). On timeout the error says how many had arrived.
 */
function collect(socket, event, n, { timeout = TIMEOUT_MS, what } = {}) {
  return new Promise((resolve, reject) => {
    const got = [];
    const onEvent = (...args) => {
      got.push(args);
      if (got.length === n) {
        clearTimeout(timer);
        socket.off(event, onEvent);
        resolve(got);
      }
    };
    const timer = setTimeout(() => {
      socket.off(event, onEvent);
      const lastSeen = got.length ? ` last: ${JSON.stringify(got[got.length - 1])}` : "";
      reject(
        new Error(
          `timed out after ${timeout} ms: ${got.length} of ${n} "${event}" events arrived on ${what || describeTarget(socket)}.${lastSeen}`
        )
      );
    }, timeout);
    socket.on(event, onEvent);
  });
}

/**
 * Records every event a socket receives, in order (socket.io's onAny: application events only).
 *   const rec = record(socket); ...; await rec.until("marker"); assert.deepEqual(rec.names(), [...]);
 */
function record(socket) {
  const events = [];
  const waiters = [];
  socket.onAny((event, ...args) => {
    events.push({ event, args });
    for (const w of [...waiters]) if (w.check()) waiters.splice(waiters.indexOf(w), 1);
  });
  return {
    events,
    names: () => events.map((e) => e.event),
    /** Resolves once `count` events named `event` have arrived in total. */
    until(event, { count = 1, timeout = TIMEOUT_MS } = {}) {
      return new Promise((resolve, reject) => {
        const w = {
          check: () => {
            if (events.filter((e) => e.event === event).length < count) return false;
            clearTimeout(timer);
            resolve(events.slice());
            return true;
          },
        };
        const timer = setTimeout(() => {
          waiters.splice(waiters.indexOf(w), 1);
          reject(
            new Error(
              `timed out after ${timeout} ms waiting for ${count}× "${event}" on ${describeTarget(socket)}; ` +
                `received so far: ${JSON.stringify(events.map((e) => e.event))}`
            )
          );
        }, timeout);
        if (!w.check()) waiters.push(w);
      });
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Redis server.

class RedisServer {
  /** `args`: extra redis-server arguments, e.g. ["--appendonly", "yes", "--appendfsync", "always"]. */
  constructor(dir, port, args = []) {
    this.dir = dir;
    this.port = port;
    this.args = args;
    this.url = `redis://127.0.0.1:${port}`;
    this.logFile = path.join(dir, "redis.log");
    this.proc = null;
  }

  /** Starts redis-server on this.port (again, after stop()) and waits until it answers PING. */
  async start() {
    if (this.proc && this.proc.running) throw new Error("redis-server already running");
    const args = ["--port", String(this.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", this.dir, ...this.args];
    this.proc = new Proc("redis", REDIS_SERVER, args, process.env, this.logFile);
    await eventually(
      async () => {
        if (!this.proc.running) throw new GiveUp(`redis-server exited: ${this.proc.describe()}\n${this.proc.tail(20)}`);
        return redisPing(this.port);
      },
      { timeout: STARTUP_TIMEOUT_MS, message: `redis-server on port ${this.port} answering PING (is ${REDIS_SERVER} installed?)` }
    );
  }

  async stop() {
    if (this.proc) await this.proc.stop();
  }

  /** SIGKILL: a crash; only what the AOF (if configured) already has survives. */
  async kill() {
    if (this.proc) await this.proc.kill();
  }
}

// ---------------------------------------------------------------------------------------------
// TCP proxy.

/**
 * A TCP proxy on a free loopback port that forwards each accepted connection to the port of its
 * current target; for moving a client between gateways and cutting its connections abruptly.
 *
 * With `http: true` (the gateway proxy) it routes like a sticky load balancer: a connection whose
 * first request line carries `sid=<engine.io sid>` belongs to an existing Engine.IO session and goes
 * to the target that issued that sid (learned from the handshake reply), whatever the current
 * target is; every other connection (a new session: polling handshake or websocket without sid) goes
 * to the current target. So a long-polling client's in-flight requests (including its close
 * packet) still reach the gateway it is leaving.
 *
 * Without `http` (e.g. in front of Redis) every new connection goes to the current target.
 *
 *   proxy.hold()           new sessions wait (accepted but not forwarded) until retarget()
 *   proxy.retarget("gw-b") new sessions go to gw-b (waiting ones too)
 *   proxy.cut()            resets every open connection (RST both ways); like a broken network
 *                          path, later requests of the Engine.IO sessions known so far are reset too
 *                          (a long-polling client opens a new TCP connection per request)
 *   proxy.abandon()        resets the client side of every open connection but leaves the
 *                          upstream side open and silent: the client sees its connection die
 *                          while the server notices nothing (a phone that lost its network)
 *   proxy.freeze(ports)    stops forwarding, both ways, on the connections whose upstream side
 *                          has one of these local ports, without closing them: a silently dead
 *                          path (the upstream server sees its peer at that port, e.g. CLIENT LIST addr)
 */
class TcpProxy {
  /**
   * @param {object} o
   * @param {(target: string) => number} o.resolve port of a target
   * @param {string} o.target initial target
   * @param {boolean} [o.http] sticky routing of Engine.IO sessions (see above)
   * @param {string} [o.label]
   */
  constructor({ resolve, target, http: sticky = false, label = "proxy" }) {
    this.resolve = resolve;
    this.target = target;
    this.sticky = sticky;
    this.label = label;
    this.holding = false;
    this.waiting = []; // held new sessions: {conn, head}
    this.conns = new Set();
    this.sessions = new Map(); // engine.io sid -> target
    this.deadSids = new Set(); // sessions that were open at a cut()
    this.abandoned = []; // upstream sides left open by abandon(), closed with the proxy
    this.server = null;
    this.port = null;
    this.url = null;
  }

  async start() {
    this.server = net.createServer((client) => this._accept(client));
    await new Promise((resolve, reject) => {
      this.server.once("error", reject);
      this.server.listen(0, "127.0.0.1", resolve);
    });
    this.port = this.server.address().port;
    this.url = `http://127.0.0.1:${this.port}`;
    return this;
  }

  /** New sessions wait until the next retarget(). */
  hold() {
    this.holding = true;
  }

  /** New sessions (and the waiting ones) go to `target` from now on. */
  retarget(target) {
    this.resolve(target); // fails early on an unknown target
    this.target = target;
    this.holding = false;
    const waiting = this.waiting.splice(0);
    for (const { conn, head } of waiting) this._forward(conn, this.target, head, this.sticky);
  }

  /** Resets every open connection, both sides (TCP RST); returns how many there were. */
  cut() {
    for (const sid of this.sessions.keys()) this.deadSids.add(sid);
    const n = this.conns.size;
    for (const conn of [...this.conns]) this._reset(conn);
    return n;
  }

  /** Resets the client side of every open connection, leaving the upstream side open and silent. */
  abandon() {
    let n = 0;
    for (const conn of [...this.conns]) {
      const { client, upstream } = conn;
      conn.abandoned = true;
      if (upstream) {
        client.unpipe(upstream);
        upstream.unpipe(client);
        upstream.pause();
        this.abandoned.push(upstream);
      }
      try {
        client.resetAndDestroy();
      } catch (_) {
        client.destroy();
      }
      this.conns.delete(conn);
      n++;
    }
    return n;
  }

  /** Freezes the connections whose upstream local port is in `ports`; returns how many. */
  freeze(ports) {
    let n = 0;
    for (const conn of this.conns) {
      const { client, upstream } = conn;
      if (!upstream || !ports.includes(upstream.localPort)) continue;
      client.unpipe(upstream);
      upstream.unpipe(client);
      client.pause();
      upstream.pause();
      n++;
    }
    return n;
  }

  async close() {
    this.cut();
    for (const upstream of this.abandoned.splice(0)) upstream.destroy();
    for (const { conn } of this.waiting.splice(0)) this._reset(conn);
    if (this.server) await new Promise((resolve) => this.server.close(() => resolve()));
  }

  _reset(conn) {
    for (const sock of [conn.client, conn.upstream]) {
      if (!sock || sock.destroyed) continue;
      try {
        sock.resetAndDestroy();
      } catch (_) {
        sock.destroy(); // not connected yet: resetAndDestroy needs a TCP handle
      }
    }
    this.conns.delete(conn);
  }

  _accept(client) {
    const conn = { client, upstream: null, request: null };
    this.conns.add(conn);
    client.on("error", () => conn.upstream && !conn.abandoned && conn.upstream.destroy());
    client.on("close", () => {
      this.conns.delete(conn);
      if (conn.upstream && !conn.abandoned) conn.upstream.destroy();
    });
    if (!this.sticky) {
      if (this.holding) this.waiting.push({ conn, head: Buffer.alloc(0) });
      else this._forward(conn, this.target, Buffer.alloc(0), false);
      return;
    }
    let head = Buffer.alloc(0);
    const onData = (chunk) => {
      head = Buffer.concat([head, chunk]);
      const eol = head.indexOf("\r\n");
      if (eol === -1 && head.length < 16384) return;
      client.off("data", onData);
      client.pause();
      conn.request = head.subarray(0, eol === -1 ? head.length : eol).toString("latin1");
      const m = /[?&]sid=([^&\s]+)/.exec(conn.request);
      const sid = m && decodeURIComponent(m[1]);
      if (sid && this.deadSids.has(sid)) this._reset(conn);
      else if (sid && this.sessions.has(sid)) this._forward(conn, this.sessions.get(sid), head, false);
      else if (this.holding) this.waiting.push({ conn, head });
      else this._forward(conn, this.target, head, !sid);
    };
    client.on("data", onData);
  }

  _forward(conn, target, head, learnSid) {
    const { client } = conn;
    if (client.destroyed) return;
    const upstream = net.connect({ host: "127.0.0.1", port: this.resolve(target) });
    conn.upstream = upstream;
    conn.target = target;
    upstream.on("error", () => !conn.abandoned && client.destroy());
    if (learnSid) {
      // The Engine.IO open packet is the first thing a new session receives: 0{"sid":"...",...}.
      let seen = "";
      const scan = (chunk) => {
        seen += chunk.toString("latin1");
        const m = /"sid":"([^"]+)"/.exec(seen);
        if (m) this.sessions.set(m[1], target);
        if (m || seen.length > 65536) upstream.off("data", scan);
      };
      upstream.on("data", scan);
    }
    if (head.length) upstream.write(head);
    client.pipe(upstream);
    upstream.pipe(client);
    client.resume();
  }
}

// ---------------------------------------------------------------------------------------------
// The cluster.

const BINARIES = { gateway: "roomcast-gateway", fanout: "roomcast-fanout" };
/** Settings of the binaries: never inherited from the caller's environment, only set by tests. */
const SETTINGS = [
  "REDIS_URL", "REDIS_KEY_PREFIX", "ADMIN_ADDR", "LISTEN_ADDR", "GATEWAY_ID", "NAMESPACES", "TRANSPORTS",
  "MAX_CONNECTIONS", "MAX_PAYLOAD", "MAX_PUBLISH_BYTES", "DEAD_LETTER_MAXLEN", "SHUTDOWN_TIMEOUT_MS",
  "LOG_FORMAT", "RUST_LOG", "FANOUT_PARTITIONS", "FANOUT_REPLICA_ID", "FANOUT_LEASE_TTL_MS", "FANOUT_LEASE_RENEW_MS",
  "FANOUT_BATCH_SIZE", "FANOUT_BLOCK_MS", "DELIVERY_ORDER_WAIT_MS", "DELIVERY_ORDER_MAX_HELD",
  "WEBSOCKET_PING_INTERVAL", "WEBSOCKET_PING_TIMEOUT", "WEBSOCKET_UPGRADE_TIMEOUT", "CONNECT_TIMEOUT",
  "MAX_BUFFERED_BYTES", "HEARTBEAT_INTERVAL_MS", "GATEWAY_TTL_MS", "REQUEST_TIMEOUT_MS", "MAX_ROOMS_PER_SOCKET",
  "MAX_PUBLISH_ROOMS", "FANOUT_TRIM_INTERVAL_MS",
  "RECOVERY_MAX_DISCONNECTION_MS", "RECOVERY_SKIP_MIDDLEWARES", "SUBSCRIPTION_PROBE_INTERVAL_MS", "HISTORY_MAX_LEN",
  "JWT_SECRET", "JWT_PUBLIC_KEY_FILE", "JWT_ISSUER", "JWT_AUDIENCE", "JWT_LEEWAY_SECONDS", "CORS_ALLOWED_ORIGINS",
  "EVENT_RATE_PER_SECOND", "EVENT_BURST", "CONNECT_RATE_PER_IP", "CONNECT_BURST_PER_IP", "TRUST_X_FORWARDED_FOR",
  "DRAIN_DELAY_MS", "DRAIN_PERIOD_MS",
];
/**
 * Every test client connects from 127.0.0.1 and some tests emit in bursts: the per-address and
 * per-socket rate limits are lifted unless a test sets them (limits.test.js does).
 */
const TEST_LIMITS = {
  // Stopping a gateway closes its connections at once unless a test sets a drain (drain.test.js).
  DRAIN_DELAY_MS: "0",
  DRAIN_PERIOD_MS: "0",
  CONNECT_RATE_PER_IP: "100000",
  CONNECT_BURST_PER_IP: "100000",
  EVENT_RATE_PER_SECOND: "100000",
  EVENT_BURST: "100000",
};
/** Default of RECOVERY_MAX_DISCONNECTION_MS in both binaries. */
const DEFAULT_RECOVERY_WINDOW_MS = 120000;
/** Default of HISTORY_MAX_LEN in both binaries. */
const DEFAULT_HISTORY_MAX_LEN = 1000;
function baseEnv() {
  const env = { ...process.env };
  for (const name of SETTINGS) delete env[name];
  return env;
}

/** Publish fields (an object or [name, value] pairs) as a flat XADD argument list. */
function flattenFields(fields) {
  const pairs = Array.isArray(fields) ? fields : Object.entries(fields);
  const flat = [];
  for (const [k, v] of pairs) flat.push(k, typeof v === "string" || Buffer.isBuffer(v) ? v : JSON.stringify(v));
  return flat;
}

class Cluster {
  /**
   * @param {object} [options]
   * @param {Array<string|{id:string, env?:object}>} [options.gateways] gateway ids (and extra env), default gw-a, gw-b
   * @param {object} [options.env] env for every process (gateways and fanout), e.g. the recovery
   *   settings, which all processes of a cluster must share
   * @param {object} [options.gatewayEnv] env for every gateway
   * @param {object} [options.fanoutEnv] env for every fanout replica
   * @param {number} [options.fanouts] fanout replicas, default 2 (ids fanout-1, fanout-2, …)
   * @param {string[]} [options.redisArgs] extra redis-server arguments (e.g. AOF settings)
   * @param {string} [options.prefix] REDIS_KEY_PREFIX, default socket.io
   * @param {boolean} [options.redisProxy] gateways reach Redis through a TcpProxy
   *   (`cluster.redisProxy`), to hold their new connections or freeze one
   */
  constructor(options = {}) {
    this.options = options;
    this.prefix = options.prefix || "socket.io";
    const env = options.env || {};
    /** RECOVERY_MAX_DISCONNECTION_MS of this cluster; 0: recovery off. */
    this.recoveryWindowMs = Number(env.RECOVERY_MAX_DISCONNECTION_MS ?? DEFAULT_RECOVERY_WINDOW_MS);
    /** With recovery on, events carry their offset as last argument and CONNECT replies a pid. */
    this.recoveryEnabled = this.recoveryWindowMs > 0;
    this.historyMaxLen = Number(env.HISTORY_MAX_LEN ?? DEFAULT_HISTORY_MAX_LEN);
    this.proxies = new Set();
    this.redisProxy = null;
    this.gatewaySpecs = (options.gateways || ["gw-a", "gw-b"]).map((g) => (typeof g === "string" ? { id: g } : g));
    this.gateways = [];
    this.fanouts = [];
    this.fanoutCount = options.fanouts ?? 2;
    this.redisServer = null;
    this.sockets = new Set();
    this._redis = null;
    this.logDir = null;
    this.started = false;
  }

  /** Every process started so far (restarted ones too): redis, gateways, fanouts. */
  get procs() {
    return [
      this.redisServer && this.redisServer.proc,
      ...this.gateways.map((g) => g.proc),
      ...this.fanouts.flatMap((f) => f.procs || []),
    ].filter(Boolean);
  }

  /** The first fanout replica. */
  get fanout() {
    return this.fanouts[0] || null;
  }

  /** FANOUT_PARTITIONS of this cluster. */
  get partitions() {
    return Number({ ...(this.options.env || {}), ...(this.options.fanoutEnv || {}) }.FANOUT_PARTITIONS ?? 16);
  }

  async start() {
    this.logDir = fs.mkdtempSync(path.join(os.tmpdir(), "roomcast-e2e-"));
    for (const bin of Object.values(BINARIES)) {
      const file = path.join(BIN_DIR, bin);
      if (!fs.existsSync(file)) {
        throw new Error(`${file} does not exist: run \`cargo build --workspace\` first, or set ROOMCAST_BIN_DIR`);
      }
    }
    this.redisServer = new RedisServer(this.logDir, await freePort(), this.options.redisArgs || []);
    await this.redisServer.start();
    let gatewayRedisUrl = this.redisServer.url;
    if (this.options.redisProxy) {
      this.redisProxy = await new TcpProxy({ resolve: () => this.redisServer.port, target: "redis", label: "redis-proxy" }).start();
      gatewayRedisUrl = `redis://127.0.0.1:${this.redisProxy.port}`;
    }

    const common = {
      ...baseEnv(),
      REDIS_URL: this.redisServer.url,
      REDIS_KEY_PREFIX: this.prefix,
      RUST_LOG: process.env.E2E_RUST_LOG || "info",
      LOG_FORMAT: "text",
      NO_COLOR: "1", // plain text in the log files
      SHUTDOWN_TIMEOUT_MS: "2000",
      ...(this.options.env || {}),
    };
    for (let i = 1; i <= this.fanoutCount; i++) {
      const adminPort = await freePort();
      this.fanouts.push({
        id: `fanout-${i}`,
        adminUrl: `http://127.0.0.1:${adminPort}`,
        env: { ...common, ADMIN_ADDR: `127.0.0.1:${adminPort}`, ...(this.options.fanoutEnv || {}) },
        starts: 0,
        procs: [],
      });
    }
    for (const spec of this.gatewaySpecs) {
      const port = await freePort();
      this.gateways.push({
        id: spec.id,
        port,
        url: `http://127.0.0.1:${port}`,
        adminUrl: `http://127.0.0.1:${port}`,
        env: {
          ...common,
          ...TEST_LIMITS,
          REDIS_URL: gatewayRedisUrl,
          LISTEN_ADDR: `127.0.0.1:${port}`,
          GATEWAY_ID: spec.id,
          ...(this.options.gatewayEnv || {}),
          ...(spec.env || {}),
        },
      });
    }
    for (const f of this.fanouts) this._spawnFanout(f);
    for (const g of this.gateways) {
      g.proc = new Proc(g.id, path.join(BIN_DIR, BINARIES.gateway), [], g.env, path.join(this.logDir, `${g.id}.log`));
    }
    this.started = true;
    await this.waitReady();
  }

  /** Starts a fanout process; each start gets its own replica id (`fanout-1.2`: second start). */
  _spawnFanout(f) {
    f.starts += 1;
    const env = { FANOUT_REPLICA_ID: `${f.id}.${f.starts}`, ...f.env };
    f.proc = new Proc(f.id, path.join(BIN_DIR, BINARIES.fanout), [], env, path.join(this.logDir, `${f.id}.log`));
    f.procs.push(f.proc);
  }

  /** A fanout replica by index (0-based) or id. */
  fanoutReplica(which) {
    const f = typeof which === "number" ? this.fanouts[which] : this.fanouts.find((x) => x.id === which);
    if (!f) throw new Error(`no fanout ${which}`);
    return f;
  }

  /** SIGTERM to a fanout replica: it finishes its batch and gives its partitions up. */
  async stopFanout(which) {
    const exit = await this.fanoutReplica(which).proc.stop();
    assert.equal(exit.code, 0, `${this.fanoutReplica(which).id} exits 0 after SIGTERM: ${JSON.stringify(exit)}`);
  }

  /** `kill -9` of a fanout replica (a crash: its leases stay until they expire). */
  async killFanout(which) {
    await this.fanoutReplica(which).proc.kill();
  }

  /** Starts a stopped or killed fanout replica again (a new process, a new replica id). */
  async startFanout(which) {
    const f = this.fanoutReplica(which);
    if (f.proc && f.proc.running) throw new Error(`${f.id} is running`);
    this._spawnFanout(f);
    await eventually(
      async () => {
        if (!f.proc.running) throw new GiveUp(`${f.proc.describe()}\n${f.proc.tail(30)}`);
        return (await httpGet(f.adminUrl + "/readyz")).status === 200;
      },
      { timeout: STARTUP_TIMEOUT_MS, message: `${f.id} /readyz 200 after a restart` }
    );
  }

  /** GET /stats of a fanout replica (its counters), or null when it does not answer. */
  async fanoutStats(which) {
    const { status, body } = await httpGet(this.fanoutReplica(which).adminUrl + "/stats");
    return status === 200 ? JSON.parse(body) : null;
  }

  /** Waits until the running fanout replicas share every partition fairly (each its share). */
  async waitPartitionsShared(timeout = STARTUP_TIMEOUT_MS) {
    const running = () => this.fanouts.filter((f) => f.proc && f.proc.running);
    if (running().length === 0) return;
    await eventually(
      async () => {
        const owned = await Promise.all(running().map(async (f) => ((await this.fanoutStats(f.id)) || {}).partitions_owned || 0));
        const share = Math.ceil(this.partitions / Math.max(1, owned.length));
        const total = owned.reduce((a, b) => a + b, 0);
        return total === this.partitions && owned.every((n) => n <= share && (n > 0 || this.partitions < owned.length));
      },
      { timeout, message: `the fanout replicas own all ${this.partitions} partitions, each at most its fair share` }
    );
  }

  /**
   * Waits until /readyz of every fanout and gateway answers 200 and the fanout replicas share the
   * partitions; fails at once if a process exits.
   */
  async waitReady(timeout = STARTUP_TIMEOUT_MS) {
    await eventually(
      async () => {
        for (const c of this.components()) {
          if (!c.proc.running) throw new GiveUp(`${c.proc.describe()}\n--- ${c.id} log ---\n${c.proc.tail(30)}`);
        }
        const statuses = await this.readyz();
        return Object.values(statuses).every((s) => s === 200);
      },
      { timeout, message: "fanouts and gateways /readyz 200" }
    );
    await this.waitPartitionsShared(timeout);
  }

  components() {
    return [...this.fanouts, ...this.gateways].filter(Boolean);
  }



  /** {id: status of GET /readyz} for every fanout and gateway (0: no answer). */
  async readyz(endpoint = "/readyz") {
    const out = {};
    await Promise.all(this.components().map(async (c) => (out[c.id] = (await httpGet(c.adminUrl + endpoint)).status)));
    return out;
  }

  /** A gateway by id or index. */
  gateway(which) {
    const gw = typeof which === "number" ? this.gateways[which] : this.gateways.find((g) => g.id === which);
    if (!gw) throw new Error(`no gateway ${which}`);
    return gw;
  }

  /** The harness's own Redis connection (ioredis), for publishing and inspecting. */
  get redis() {
    if (!this._redis) {
      this._redis = new Redis(this.redisServer.url, { maxRetriesPerRequest: null, retryStrategy: () => 100 });
      this._redis.on("error", () => {}); // expected while the readiness test stops Redis
    }
    return this._redis;
  }

  /** Redis key/channel names, as in shared/src/wire/keys.rs. */
  keys() {
    const p = this.prefix;
    return {
      publish: `${p}:publish`,
      dead: `${p}:publish:dead`,
      room: (room, nsp = "/") => `${p}:room:{${nsp}#${room}}`,
      nsp: (nsp = "/") => `${p}:nsp:{${nsp}}`,
      members: (channel) => `${channel}:members`,
      meta: (channel) => `${channel}:meta`,
      /** A topic's history stream (entry id = publish entry id). */
      hist: (channel) => `${channel}:hist`,
      /** Set while a disconnected socket may still recover into the topic. */
      hold: (channel) => `${channel}:hold`,
      /** A disconnected socket's recovery session. */
      session: (pid) => `${p}:session:{${pid}}`,
      gateways: `${p}:gateways`,
    };
  }

  /** The arguments an event published with payload arguments `args` and entry id `id` arrives with. */
  expectedArgs(args, id) {
    return this.recoveryEnabled ? [...args, id] : args;
  }

  /**
   * Asserts the arguments of one received event: the payload arguments `expected`, then, when this
   * cluster runs with recovery on, the offset as last argument: a string equal to the publish
   * entry id `id` (what XADD returned). With recovery off there must be no extra argument.
   */
  assertArgs(args, expected, id, message = "event") {
    if (!this.recoveryEnabled) {
      assert.deepEqual(args, expected, `${message}: payload arguments (recovery off: no offset)`);
      return;
    }
    assert.ok(args.length >= 1, `${message}: has at least the offset argument, got ${JSON.stringify(args)}`);
    assert.deepEqual(args.slice(0, -1), expected, `${message}: payload arguments (before the offset)`);
    const offset = args[args.length - 1];
    assert.equal(typeof offset, "string", `${message}: last argument is the offset string, got ${JSON.stringify(args)}`);
    assert.equal(offset, id, `${message}: offset is the publish entry id`);
  }

  /** Asserts a record()ed event list against [{event, args, id}] (see assertArgs). */
  assertEvents(events, expected, message = "events") {
    assert.deepEqual(
      events.map((e) => e.event),
      expected.map((e) => e.event),
      `${message}: event names in order`
    );
    for (const [i, e] of expected.entries()) this.assertArgs(events[i].args, e.args, e.id, `${message} #${i} (${e.event})`);
  }

  /**
   * XADDs one publish request and returns its entry id. `fields` is an object or a list of
   * [name, value] pairs (for duplicate fields); values that are neither strings nor Buffers are
   * JSON-encoded.
   */
  async publish(fields) {
    return this.redis.xadd(this.keys().publish, "*", ...flattenFields(fields));
  }

  /** XADDs several publish requests (see publish) in one pipeline; resolves with their entry ids. */
  async publishMany(requests) {
    const pipeline = this.redis.pipeline();
    for (const fields of requests) pipeline.xadd(this.keys().publish, "*", ...flattenFields(fields));
    const results = await pipeline.exec();
    return results.map(([err, id], i) => {
      if (err) throw new Error(`XADD #${i} of ${requests.length} failed: ${err.message}`);
      return id;
    });
  }

  /**
   * Connects an official socket.io-client socket to a gateway and resolves once connected.
   * Options: nsp ("/" by default), any socket.io-client option (transports, ...). Automatic
   * reconnection is off so a dropped connection shows up as a failure, not a silent new socket.
   */
  async connect(which, options = {}) {
    const { socket, error } = await this.tryConnect(which, options);
    if (error) throw new Error(`connecting ${socket.__label} failed: connect_error ${error.message}`);
    return socket;
  }

  /**
   * A TCP proxy in front of the gateways (see TcpProxy), starting with gateway `which` as target;
   * connect through it with `cluster.connect(proxy, {reconnection: true, ...})`. Closed after the
   * test.
   */
  async proxy(which) {
    const proxy = new TcpProxy({
      resolve: (id) => this.gateway(id).port,
      target: this.gateway(which).id,
      http: true,
      label: `proxy#${this.proxies.size + 1}`,
    });
    await proxy.start();
    this.proxies.add(proxy);
    return proxy;
  }

  /** Like connect() but resolves with {socket} or {error} (the connect_error) instead of throwing. */
  async tryConnect(which, options = {}) {
    return this.settle(this.createSocket(which, options));
  }

  /**
   * Creates a socket (connecting starts at once) without waiting: for tests that must listen on
   * the socket or its engine (`socket.io.engine`) before the connection completes.
   */
  createSocket(which, { nsp = "/", ...options } = {}) {
    const [url, where] = which instanceof TcpProxy ? [which.url, `${which.label}`] : [this.gateway(which).url, this.gateway(which).id];
    const socket = io(url + (nsp === "/" ? "" : nsp), { forceNew: true, reconnection: false, timeout: TIMEOUT_MS, ...options });
    socket.__label = `socket on ${where}${nsp} (${(options.transports || ["polling", "websocket"]).join("+")})`;
    this.sockets.add(socket);
    return socket;
  }

  /** Resolves with {socket} once `socket` connects, or {error} on connect_error (and closes it). */
  async settle(socket) {
    const outcome = await new Promise((resolve) => {
      if (socket.connected) return resolve({ socket });
      const timer = setTimeout(() => resolve({ error: new Error(`no connect or connect_error within ${TIMEOUT_MS} ms`) }), TIMEOUT_MS);
      socket.once("connect", () => {
        clearTimeout(timer);
        resolve({ socket });
      });
      socket.once("connect_error", (error) => {
        clearTimeout(timer);
        resolve({ error });
      });
    });
    if (outcome.error) {
      socket.close();
      return { error: outcome.error, socket };
    }
    socket.__label = `${socket.__label} sid=${socket.id}`;
    return { socket };
  }

  /** Emits `join`/`leave` with an ack and resolves with the ack's payload. */
  async roomRequest(socket, action, room) {
    try {
      return await socket.timeout(TIMEOUT_MS).emitWithAck(action, room);
    } catch (e) {
      throw new Error(`${action} ${JSON.stringify(room)} on ${describeTarget(socket)}: no ack within ${TIMEOUT_MS} ms (${e.message})`);
    }
  }

  /** Joins rooms and asserts each ack is {ok:true}. */
  async join(socket, ...rooms) {
    for (const room of rooms) {
      const ack = await this.roomRequest(socket, "join", room);
      if (!ack || ack.ok !== true) throw new Error(`join ${JSON.stringify(room)} on ${describeTarget(socket)} refused: ${JSON.stringify(ack)}`);
    }
  }

  /** Leaves rooms and asserts each ack is {ok:true}. */
  async leave(socket, ...rooms) {
    for (const room of rooms) {
      const ack = await this.roomRequest(socket, "leave", room);
      if (!ack || ack.ok !== true) throw new Error(`leave ${JSON.stringify(room)} on ${describeTarget(socket)} refused: ${JSON.stringify(ack)}`);
    }
  }

  /**
   * A gateway's or fanout replica's /metrics as {"name{labels}": value}, e.g.
   * m['roomcast_gateway_joins_refused_total{reason="forbidden"}'].
   */
  async metrics(which) {
    const c = this.components().find((x) => x.id === which);
    if (!c) throw new Error(`no gateway or fanout named ${which}`);
    const res = await fetch(`${c.adminUrl}/metrics`);
    if (res.status !== 200) throw new Error(`/metrics of ${which}: HTTP ${res.status}`);
    const out = {};
    for (const line of (await res.text()).split("\n")) {
      if (!line || line.startsWith("#")) continue;
      const i = line.lastIndexOf(" ");
      out[line.slice(0, i)] = Number(line.slice(i + 1));
    }
    return out;
  }

  async whoami(socket) {
    try {
      return await socket.timeout(TIMEOUT_MS).emitWithAck("whoami");
    } catch (e) {
      throw new Error(`whoami on ${describeTarget(socket)}: no ack (${e.message})`);
    }
  }

  /** Disconnects every socket this cluster handed out and closes its proxies (between tests). */
  async closeSockets() {
    for (const s of this.sockets) s.close();
    this.sockets.clear();
    const proxies = [...this.proxies];
    this.proxies.clear();
    await Promise.all(proxies.map((p) => p.close()));
  }

  /** Where the logs are, what runs, and the end of each log: for failure messages. */
  report(lines = 40) {
    const parts = [`Roomcast e2e logs: ${this.logDir}`];
    for (const p of this.procs) parts.push(`  ${p.describe()}  (${p.logFile})`);
    for (const p of this.procs) {
      const n = p.name === "redis" ? Math.min(lines, 10) : lines;
      parts.push(`--- last ${n} lines of ${p.logFile} ---\n${p.tail(n)}`);
    }
    return parts.join("\n");
  }

  async stop() {
    await this.closeSockets();
    if (this._redis) {
      this._redis.disconnect();
      this._redis = null;
    }
    const unexpected = this.procs.filter((p) => !p.running && !p.expectedExit);
    await Promise.all([...this.gateways, ...this.fanouts].filter((c) => c && c.proc).map((c) => c.proc.stop()));
    if (this.redisProxy) await this.redisProxy.close();
    if (this.redisServer) await this.redisServer.stop();
    return unexpected;
  }
}

/**
 * Starts a cluster before the first test of the file and stops it after the last, disconnects the
 * sockets of each test after it, and prints where the logs are (with their last lines) when a test
 * fails. Logs of a fully passing file are removed unless E2E_KEEP_LOGS=1.
 */
function useCluster(options = {}) {
  const cluster = new Cluster(options);
  let failed = false;
  before(async () => {
    try {
      await cluster.start();
    } catch (e) {
      failed = true;
      e.message += `\n${cluster.logDir ? cluster.report(30) : ""}`;
      throw e;
    }
  });
  afterEach(async (t) => {
    await cluster.closeSockets();
    if (!t.passed && cluster.started) {
      failed = true;
      process.stderr.write(`\n[e2e] test "${t.name}" failed.\n${cluster.report()}\n`);
    }
  });
  after(async () => {
    const unexpected = await cluster.stop();
    if (failed || unexpected.length || process.env.E2E_KEEP_LOGS === "1") {
      process.stderr.write(`[e2e] logs kept in ${cluster.logDir}\n`);
    } else if (cluster.logDir) {
      fs.rmSync(cluster.logDir, { recursive: true, force: true });
    }
    if (unexpected.length) {
      throw new Error(
        `exited during the tests: ${unexpected.map((p) => p.describe()).join("; ")}\n` +
          unexpected.map((p) => `--- ${p.logFile} ---\n${p.tail(40)}`).join("\n")
      );
    }
  });
  return cluster;
}

module.exports = {
  REPO_ROOT,
  BIN_DIR,
  TIMEOUT_MS,
  Cluster,
  RedisServer,
  Proc,
  TcpProxy,
  useCluster,
  waitFor,
  collect,
  record,
  eventually,
  GiveUp,
  baseEnv,
  httpGet,
  freePort,
};
