"use strict";
// SIGTERM on a gateway: it closes its client connections, removes its room memberships and its
// liveness entry from Redis, and exits 0 within SHUTDOWN_TIMEOUT_MS (the harness would SIGKILL
// it otherwise, which shows up as a signal exit). The other gateway keeps delivering.

const { test } = require("node:test");
const assert = require("node:assert/strict");
const { useCluster, waitFor, record } = require("../lib/cluster");

const cluster = useCluster({ gateways: ["gw-a", "gw-b"] });

test("SIGTERM: clients are disconnected, memberships removed, exit code 0", async () => {
  const onA = await cluster.connect("gw-a");
  const onB = await cluster.connect("gw-b");
  await cluster.join(onA, "shutdown-room");
  await cluster.join(onB, "shutdown-room");
  const members = cluster.keys().members(cluster.keys().room("shutdown-room"));
  assert.deepEqual(await cluster.redis.hgetall(members), { "gw-a": "1", "gw-b": "1" });

  const disconnected = waitFor(onA, "disconnect");
  const exit = await cluster.gateway("gw-a").proc.stop();
  assert.deepEqual(exit, { code: 0, signal: null }, "exits by itself with status 0");
  const [reason] = await disconnected;
  assert.equal(reason, "transport close", "the client sees a closed transport (and may reconnect elsewhere)");

  assert.deepEqual(await cluster.redis.hgetall(members), { "gw-b": "1" }, "gw-a's member count is gone");
  assert.equal(await cluster.redis.zscore(`${cluster.prefix}:gateways`, "gw-a"), null, "gw-a left the live set");

  const rec = record(onB);
  const id = await cluster.publish({ room: "shutdown-room", event: "still-here", data: 1 });
  await rec.until("still-here");
  cluster.assertEvents(rec.events, [{ event: "still-here", args: [1], id }]);
});
