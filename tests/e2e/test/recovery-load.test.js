"use strict";
// Recovery under load: a socket in 3 rooms while thousands of events are published to all 3 as
// fast as Redis takes them (pipelined XADDs); its connection is cut (RST) mid-stream and it
// reconnects to the other gateway. After recovery every room's sequence must be complete, in
// order and free of duplicates (also by offset), exactly like what a socket that was never cut
// receives (one watcher per gateway).

const { test } = require("node:test");
const { useCluster } = require("../lib/cluster");
const { cutMidStream } = require("../lib/recovery");

const cluster = useCluster({ gateways: ["gw-a", "gw-b"] });
const ROOMS = ["load-1", "load-2", "load-3"];
const PER_ROOM = 1000;

test(`3 rooms × ${PER_ROOM} events at full rate, connection cut mid-stream: complete, in order, no duplicates after recovery`, async (t) => {
  const watchers = [];
  for (const gw of ["gw-a", "gw-b"]) {
    const w = await cluster.connect(gw, { transports: ["websocket"] });
    await cluster.join(w, ...ROOMS);
    watchers.push(w);
  }
  await cutMidStream(cluster, {
    rooms: ROOMS,
    perRoom: PER_ROOM,
    batch: 100,
    route: ["gw-a", "gw-b"],
    cutAfter: 300,
    watchers,
    diagnostic: (m) => t.diagnostic(m),
  });
});
