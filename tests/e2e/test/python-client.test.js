"use strict";
// The second official client: python-socketio's AsyncClient (tests/e2e/python/client.py) connects
// to gw-b, joins a room, and receives an event published with XADD. PYTHON picks the interpreter
// (default python3); `pip install -r tests/e2e/python/requirements.txt` installs the client.

const { test } = require("node:test");
const assert = require("node:assert/strict");
const path = require("node:path");
const readline = require("node:readline");
const { spawn, spawnSync } = require("node:child_process");
const { useCluster, waitFor, TIMEOUT_MS } = require("../lib/cluster");

const PYTHON = process.env.PYTHON || "python3";
const SCRIPT = path.join(__dirname, "..", "python", "client.py");

const cluster = useCluster({ gateways: ["gw-a", "gw-b"] });

/** Runs client.py; resolves helpers to await its stdout lines and its exit. */
function runPythonClient(args) {
  const child = spawn(PYTHON, [SCRIPT, ...args, "--timeout", String(TIMEOUT_MS / 1000)], { stdio: ["ignore", "pipe", "pipe"] });
  let stderr = "";
  child.stderr.on("data", (d) => (stderr += d));
  const lines = [];
  const lineEvents = readline.createInterface({ input: child.stdout });
  lineEvents.on("line", (l) => lines.push(l));
  const exited = new Promise((resolve) => child.on("close", (code, signal) => resolve({ code, signal })));
  return {
    child,
    lines,
    stderr: () => stderr,
    exited,
    /** Resolves with the first stdout line matching `re` (already printed or future). */
    async line(re) {
      const found = lines.find((l) => re.test(l));
      if (found) return found;
      const onExit = exited.then(({ code }) => {
        throw new Error(`python client exited (code ${code}) before printing ${re}; stdout: ${JSON.stringify(lines)}; stderr: ${stderr}`);
      });
      const onLine = (async () => {
        for (;;) {
          const [l] = await waitFor(lineEvents, "line", { what: `python client stdout (waiting for ${re})` });
          if (re.test(l)) return l;
        }
      })();
      return Promise.race([onLine, onExit]);
    },
    kill: () => child.exitCode === null && child.kill("SIGKILL"),
  };
}

test("python-socketio AsyncClient on gw-b joins a room and receives an XADD publish", async (t) => {
  const probe = spawnSync(PYTHON, ["-c", "import socketio, aiohttp, importlib.metadata as m; print(m.version('python-socketio'))"], { encoding: "utf8" });
  assert.equal(
    probe.status,
    0,
    `python-socketio is not importable with ${PYTHON}: run \`pip install -r tests/e2e/python/requirements.txt\` (${probe.stderr || probe.error})`
  );
  t.diagnostic(`python-socketio ${probe.stdout.trim()}`);

  for (const transports of ["", "websocket"]) {
    const py = runPythonClient(["--url", cluster.gateway("gw-b").url, "--room", "py:room", "--event", "message", ...(transports ? ["--transports", transports] : [])]);
    try {
      const joined = await py.line(/^joined /);
      assert.match(joined, /^joined \{"ok": true\}/);
      const payload = { text: "hi from redis", n: 42, nested: { list: [1, "二", null] }, unicode: "héllo ✓" };
      const id = await cluster.publish({ room: "py:room", event: "message", data: payload });
      const out = await py.line(/^\{/);
      // python-socketio does not do recovery: the offset is just one more argument for it.
      assert.deepEqual(JSON.parse(out), { event: "message", args: cluster.expectedArgs([payload], id) });
      const { code } = await py.exited;
      assert.equal(code, 0, `python client exit code (stderr: ${py.stderr()})`);
    } finally {
      py.kill();
    }
  }
});

test("python-socketio AsyncClient receives multi-argument events from a publish on the other gateway's room", async () => {
  const nodeClient = await cluster.connect("gw-a");
  await cluster.join(nodeClient, "py:args");
  const py = runPythonClient(["--url", cluster.gateway("gw-b").url, "--room", "py:args", "--event", "multi"]);
  try {
    await py.line(/^joined /);
    const nodeGot = waitFor(nodeClient, "multi");
    const id = await cluster.publish({ room: "py:args", event: "multi", args: [1, "two", { three: 3 }] });
    assert.deepEqual(JSON.parse(await py.line(/^\{/)), { event: "multi", args: cluster.expectedArgs([1, "two", { three: 3 }], id) });
    cluster.assertArgs(await nodeGot, [1, "two", { three: 3 }], id);
    assert.equal((await py.exited).code, 0, `python client exit code (stderr: ${py.stderr()})`);
  } finally {
    py.kill();
  }
});
