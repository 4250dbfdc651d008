"use strict";
// A rolling deploy with a drain: on SIGTERM gw-a turns not-ready at once and keeps serving for
// DRAIN_DELAY_MS, then closes its connections spread over DRAIN_PERIOD_MS; its clients (official
// client, reconnecting by themselves through a proxy that now points at gw-b, as a load balancer
// would) recover on gw-b with every event published throughout, in order, once.

const { test } = require("node:test");
const assert = require("node:assert/strict");
const { setTimeout: delay } = require("node:timers/promises");
const { useCluster, eventually, httpGet } = require("../lib/cluster");
const { RECONNECT, Timeline, assertComplete } = require("../lib/recovery");

const cluster = useCluster({
  gateways: [{ id: "gw-a", env: { DRAIN_DELAY_MS: "3000", DRAIN_PERIOD_MS: "2000", SHUTDOWN_TIMEOUT_MS: "5000" } }, "gw-b"],
  env: { HISTORY_MAX_LEN: "100000" },
});
const CLIENTS = 10;

test(`SIGTERM with a drain: not ready at once, connections closed spread out, all ${CLIENTS} clients recover on gw-b`, async () => {
  const proxy = await cluster.proxy("gw-a");
  const clients = [];
  for (let k = 0; k < CLIENTS; k++) {
    const transports = k % 2 ? ["polling"] : ["websocket"];
    const s = await cluster.connect(proxy, { ...RECONNECT, transports });
    await cluster.join(s, "deploy");
    clients.push({ s, tl: new Timeline(s), id: s.id });
  }
  // How many events each client had when the first of them was disconnected.
  let atFirstDisconnect = null;
  for (const c of clients) {
    c.s.once("disconnect", () => {
      atFirstDisconnect ??= clients.map((o) => o.tl.count("tick"));
    });
  }

  // Publishing goes on throughout the deploy, paced so it lasts longer than the drain.
  const ids = [];
  let stop = false;
  const publishing = (async () => {
    for (let i = 0; !stop; i += 5) {
      const batch = [0, 1, 2, 3, 4].map((j) => ({ room: "deploy", event: "tick", data: { room: "deploy", i: i + j } }));
      ids.push(...(await cluster.publishMany(batch)));
      await delay(10);
    }
  })();

  await clients[0].tl.untilCount("tick", 50);
  const gwA = cluster.gateway("gw-a");
  const exit = gwA.proc.stop(20000);
  proxy.retarget("gw-b"); // the load balancer sends new connections elsewhere
  await eventually(async () => (await httpGet(`${gwA.url}/readyz`)).status === 503, { message: "gw-a not ready after SIGTERM" });
  assert.ok(
    clients.every((c) => c.s.connected),
    "gw-a keeps serving its clients while it reports not ready (DRAIN_DELAY_MS)"
  );

  assert.deepEqual(await exit, { code: 0, signal: null }, "gw-a exits by itself with status 0");
  for (const c of clients) {
    await c.tl.until((t) => t.entries.some((e) => e.type === "connect"), "reconnection", { timeout: 30000 });
  }
  stop = true;
  await publishing;
  const disconnectedAt = clients.map((c) => c.tl.events("tick", 0).filter((e) => e.segment === 0).length);
  const after = disconnectedAt.map((n, k) => n - atFirstDisconnect[k]);
  assert.ok(
    Math.max(...after) >= 20,
    `connections are closed spread out: some client still got events from gw-a after the first was closed (${after.join(",")})`
  );

  const all = new Map([["deploy", ids]]);
  for (const c of clients) {
    await c.tl.untilCount("tick", ids.length, { timeout: 30000 });
    const connect = c.tl.entries.find((e) => e.type === "connect");
    assert.equal(connect.recovered, true, `${c.s.__label}: recovered (${c.tl.describe()})`);
    assert.equal(c.s.id, c.id, `${c.s.__label}: same id`);
    assert.equal((await cluster.whoami(c.s)).gateway, "gw-b");
    assertComplete(c.tl.events("tick"), all, c.s.__label);
  }
});
