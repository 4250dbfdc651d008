"use strict";
// Readiness follows Redis: with Redis stopped, /readyz of both gateways and the fanout turns 503
// (while /healthz stays 200 and clients stay connected); with Redis back on the same port it
// turns 200 again, and the clients connected throughout receive a publish without rejoining
// (the gateways resubscribe and re-register their rooms themselves; Redis restarts empty).

const { test } = require("node:test");
const assert = require("node:assert/strict");
const { useCluster, eventually, record } = require("../lib/cluster");

const cluster = useCluster({ gateways: ["gw-a", "gw-b"] });

const allAre = (status) => async () => {
  const got = await cluster.readyz();
  assert.deepEqual(got, { "fanout-1": status, "fanout-2": status, "gw-a": status, "gw-b": status });
  return true;
};

test("/readyz turns 503 without Redis and 200 with it back; connected clients receive without rejoining", async () => {
  assert.deepEqual(await cluster.readyz(), { "fanout-1": 200, "fanout-2": 200, "gw-a": 200, "gw-b": 200 });

  const clients = {
    a: await cluster.connect("gw-a", { transports: ["websocket"] }),
    a2: await cluster.connect("gw-a"),
    b: await cluster.connect("gw-b"),
    b2: await cluster.connect("gw-b", { transports: ["polling"] }),
  };
  const disconnects = [];
  for (const [name, s] of Object.entries(clients)) {
    await cluster.join(s, "survivors");
    s.on("disconnect", (reason) => disconnects.push(`${name}: ${reason}`));
  }
  const recs = Object.fromEntries(Object.entries(clients).map(([k, s]) => [k, record(s)]));
  const sids = Object.fromEntries(Object.entries(clients).map(([k, s]) => [k, s.id]));

  const beforeId = await cluster.publish({ room: "survivors", event: "before", data: 1 });
  await Promise.all(Object.values(recs).map((r) => r.until("before")));

  await cluster.redisServer.stop();
  await eventually(allAre(503), { message: "every /readyz is 503 while Redis is down" });
  assert.deepEqual(await cluster.readyz("/healthz"), { "fanout-1": 200, "fanout-2": 200, "gw-a": 200, "gw-b": 200 }, "/healthz stays 200");

  await cluster.redisServer.start(); // same port, empty data set
  await eventually(allAre(200), { message: "every /readyz is 200 again after Redis is back" });

  const afterId = await cluster.publish({ room: "survivors", event: "after", data: 2 });
  const afterAllId = await cluster.publish({ event: "after-all", data: 3 });
  await Promise.all(Object.values(recs).map((r) => r.until("after-all")));

  for (const [name, rec] of Object.entries(recs)) {
    cluster.assertEvents(rec.events, [
      { event: "before", args: [1], id: beforeId },
      { event: "after", args: [2], id: afterId },
      { event: "after-all", args: [3], id: afterAllId },
    ], `${name} received the room and namespace publishes after the restart`);
    assert.ok(clients[name].connected, `${name} still connected`);
    assert.equal(clients[name].id, sids[name], `${name} is the same socket`);
  }
  assert.deepEqual(disconnects, [], "no client was disconnected");

  // The gateways re-registered their local member counts in the fresh (empty) Redis.
  const key = cluster.keys().members(cluster.keys().room("survivors"));
  await eventually(
    async () => {
      assert.deepEqual(await cluster.redis.hgetall(key), { "gw-a": "2", "gw-b": "2" });
      return true;
    },
    { message: `${key} restored after the Redis restart` }
  );
});
