"use strict";
// Test harness: a real Roomcast cluster per test file (its own redis-server, N gateways, one
// fanout, all on free loopback ports), official socket.io-client sockets connected to it, and
// small helpers that await events with a safety timeout instead of sleeping.
//
//   const { useCluster, waitFor, collect, record } = require("../lib/cluster");
//   const cluster = useCluster({ gateways: ["gw-a", "gw-b"] });   // registers before/after hooks
//   test("...", async () => { const s = await cluster.connect("gw-a"); await cluster.join(s, "r"); ... });
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
  constructor(dir, port) {
    this.dir = dir;
    this.port = port;
    this.url = `redis://127.0.0.1:${port}`;
    this.logFile = path.join(dir, "redis.log");
    this.proc = null;
  }

  /** Starts redis-server on this.port (again, after stop()) and waits until it answers PING. */
  async start() {
    if (this.proc && this.proc.running) throw new Error("redis-server already running");
    const args = ["--port", String(this.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", this.dir];
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
}

// ---------------------------------------------------------------------------------------------
// The cluster.

const BINARIES = { gateway: "roomcast-gateway", fanout: "roomcast-fanout" };
/** Settings of the binaries: never inherited from the caller's environment, only set by tests. */
const SETTINGS = [
  "REDIS_URL", "REDIS_KEY_PREFIX", "ADMIN_ADDR", "LISTEN_ADDR", "GATEWAY_ID", "NAMESPACES", "TRANSPORTS",
  "MAX_CONNECTIONS", "MAX_PAYLOAD", "MAX_PUBLISH_BYTES", "DEAD_LETTER_MAXLEN", "SHUTDOWN_TIMEOUT_MS",
  "LOG_FORMAT", "RUST_LOG", "FANOUT_GROUP", "FANOUT_CONSUMER", "FANOUT_BATCH_SIZE", "FANOUT_BLOCK_MS",
  "WEBSOCKET_PING_INTERVAL", "WEBSOCKET_PING_TIMEOUT", "WEBSOCKET_UPGRADE_TIMEOUT",
];
function baseEnv() {
  const env = { ...process.env };
  for (const name of SETTINGS) delete env[name];
  return env;
}

class Cluster {
  /**
   * @param {object} [options]
   * @param {Array<string|{id:string, env?:object}>} [options.gateways] gateway ids (and extra env), default gw-a, gw-b
   * @param {object} [options.gatewayEnv] env for every gateway
   * @param {object} [options.fanoutEnv] env for the fanout
   * @param {string} [options.prefix] REDIS_KEY_PREFIX, default socket.io
   */
  constructor(options = {}) {
    this.options = options;
    this.prefix = options.prefix || "socket.io";
    this.gatewaySpecs = (options.gateways || ["gw-a", "gw-b"]).map((g) => (typeof g === "string" ? { id: g } : g));
    this.gateways = [];
    this.fanout = null;
    this.redisServer = null;
    this.sockets = new Set();
    this._redis = null;
    this.logDir = null;
    this.started = false;
  }

  /** Everything that runs: redis, gateways, fanout. */
  get procs() {
    return [this.redisServer && this.redisServer.proc, ...this.gateways.map((g) => g.proc), this.fanout && this.fanout.proc].filter(Boolean);
  }

  async start() {
    this.logDir = fs.mkdtempSync(path.join(os.tmpdir(), "roomcast-e2e-"));
    for (const bin of Object.values(BINARIES)) {
      const file = path.join(BIN_DIR, bin);
      if (!fs.existsSync(file)) {
        throw new Error(`${file} does not exist: run \`cargo build --workspace\` first, or set ROOMCAST_BIN_DIR`);
      }
    }
    this.redisServer = new RedisServer(this.logDir, await freePort());
    await this.redisServer.start();

    const common = {
      ...baseEnv(),
      REDIS_URL: this.redisServer.url,
      REDIS_KEY_PREFIX: this.prefix,
      RUST_LOG: process.env.E2E_RUST_LOG || "info",
      LOG_FORMAT: "text",
      NO_COLOR: "1", // plain text in the log files
      SHUTDOWN_TIMEOUT_MS: "2000",
    };
    const adminPort = await freePort();
    this.fanout = {
      id: "fanout",
      adminUrl: `http://127.0.0.1:${adminPort}`,
      env: { ...common, ADMIN_ADDR: `127.0.0.1:${adminPort}`, ...(this.options.fanoutEnv || {}) },
    };
    for (const spec of this.gatewaySpecs) {
      const port = await freePort();
      this.gateways.push({
        id: spec.id,
        port,
        url: `http://127.0.0.1:${port}`,
        adminUrl: `http://127.0.0.1:${port}`,
        env: { ...common, LISTEN_ADDR: `127.0.0.1:${port}`, GATEWAY_ID: spec.id, ...(this.options.gatewayEnv || {}), ...(spec.env || {}) },
      });
    }
    for (const c of [this.fanout, ...this.gateways]) {
      const bin = path.join(BIN_DIR, c === this.fanout ? BINARIES.fanout : BINARIES.gateway);
      c.proc = new Proc(c.id, bin, [], c.env, path.join(this.logDir, `${c.id}.log`));
    }
    this.started = true;
    await this.waitReady();
  }

  /** Waits until /readyz of the fanout and every gateway answers 200; fails at once if one exits. */
  async waitReady(timeout = STARTUP_TIMEOUT_MS) {
    await eventually(
      async () => {
        for (const c of this.components()) {
          if (!c.proc.running) throw new GiveUp(`${c.proc.describe()}\n--- ${c.id} log ---\n${c.proc.tail(30)}`);
        }
        const statuses = await this.readyz();
        return Object.values(statuses).every((s) => s === 200);
      },
      { timeout, message: "fanout and gateways /readyz 200" }
    );
  }

  components() {
    return [this.fanout, ...this.gateways].filter(Boolean);
  }

  /** {id: status of GET /readyz} for the fanout and every gateway (0: no answer). */
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
    };
  }

  /**
   * XADDs one publish request and returns its entry id. `fields` is an object or a list of
   * [name, value] pairs (for duplicate fields); values that are neither strings nor Buffers are
   * JSON-encoded.
   */
  async publish(fields) {
    const pairs = Array.isArray(fields) ? fields : Object.entries(fields);
    const flat = [];
    for (const [k, v] of pairs) flat.push(k, typeof v === "string" || Buffer.isBuffer(v) ? v : JSON.stringify(v));
    return this.redis.xadd(this.keys().publish, "*", ...flat);
  }

  /**
   * Connects an official socket.io-client socket to a gateway and resolves once connected.
   * Options: nsp ("/" by default), any socket.io-client option (transports, ...). Automatic
   * reconnection is off so a dropped connection shows up as a failure, not a silent new socket.
   */
  async connect(which, options = {}) {
    const { socket, error } = await this.tryConnect(which, options);
    if (error) throw new Error(`connecting to ${this.gateway(which).id}${options.nsp || "/"} failed: connect_error ${error.message}`);
    return socket;
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
    const gw = this.gateway(which);
    const socket = io(gw.url + (nsp === "/" ? "" : nsp), { forceNew: true, reconnection: false, timeout: TIMEOUT_MS, ...options });
    socket.__label = `socket on ${gw.id}${nsp} (${(options.transports || ["polling", "websocket"]).join("+")})`;
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

  async whoami(socket) {
    return socket.timeout(TIMEOUT_MS).emitWithAck("whoami");
  }

  /** Disconnects every socket this cluster handed out (between tests). */
  closeSockets() {
    for (const s of this.sockets) s.close();
    this.sockets.clear();
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
    this.closeSockets();
    if (this._redis) {
      this._redis.disconnect();
      this._redis = null;
    }
    const unexpected = this.procs.filter((p) => !p.running && !p.expectedExit);
    await Promise.all([...this.gateways, this.fanout].filter((c) => c && c.proc).map((c) => c.proc.stop()));
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
  afterEach((t) => {
    cluster.closeSockets();
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
