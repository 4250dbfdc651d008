"use strict";
// Volume and order: 1,000 events to one room arrive complete and in publish order on both gateways.

const { test } = require("node:test");
const assert = require("node:assert/strict");
const { useCluster, collect } = require("../lib/cluster");

const cluster = useCluster({ gateways: ["gw-a", "gw-b"] });
const N = 1000;

test(`${N} events to one room arrive complete and in order on both gateways`, async () => {
  const clients = [
    await cluster.connect("gw-a", { transports: ["websocket"] }),
    await cluster.connect("gw-a"),
    await cluster.connect("gw-b", { transports: ["websocket"] }),
    await cluster.connect("gw-b", { transports: ["polling"] }),
  ];
  for (const c of clients) await cluster.join(c, "firehose");
  const received = clients.map((c) => collect(c, "tick", N, { timeout: 120000 }));

  const pipeline = cluster.redis.pipeline();
  for (let i = 0; i < N; i++) {
    pipeline.xadd(cluster.keys().publish, "*", "room", "firehose", "event", "tick", "data", JSON.stringify({ i, pad: "x".repeat(100) }));
  }
  const results = await pipeline.exec();
  assert.ok(results.every(([err]) => !err), "every XADD succeeded");
  const ids = results.map(([, id]) => id);

  const expected = Array.from({ length: N }, (_, i) => i);
  for (const [k, p] of received.entries()) {
    const got = (await p).map(([payload]) => payload.i);
    const firstOff = got.findIndex((v, i) => v !== i);
    assert.equal(firstOff, -1, `client #${k} (${clients[k].__label}): first out-of-order index ${firstOff}, got ${got[firstOff]}`);
    assert.deepEqual(got, expected);
    const offsets = (await p).map((args) => args[args.length - 1]);
    assert.deepEqual(offsets, ids, `client #${k}: each event's last argument is its offset, the publish entry id`);
  }
});
