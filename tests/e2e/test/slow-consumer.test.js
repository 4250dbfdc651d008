"use strict";
// A client that stops reading is disconnected once its outgoing queue passes MAX_BUFFERED_BYTES,
// recoverably; the other sockets on the same gateway get every event meanwhile, the gateway's
// memory stays bounded, and the slow client recovers everything it missed when it reads again.

const { test } = require("node:test");
const assert = require("node:assert/strict");
const fs = require("node:fs");
const { useCluster } = require("../lib/cluster");
const { RECONNECT, Timeline, startFirehose, concatIds, assertComplete } = require("../lib/recovery");

// Room for bursts (a fanout batch of 500 events of ~600 bytes is ~330 KB with the per-packet
// overhead) but well below what the kernel's socket buffers hold, so the gateway's own queue is
// what overflows.
const QUEUE_BYTES = 512 * 1024;
const cluster = useCluster({
  gateways: [{ id: "gw-a", env: { MAX_BUFFERED_BYTES: String(QUEUE_BYTES) } }, "gw-b"],
  // The slow client recovers every event it missed from history.
  env: { HISTORY_MAX_LEN: "100000" },
});

const SLOW = 'roomcast_gateway_connections_closed_total{reason="slow_consumer"}';

function rssKb(pid) {
  const status = fs.readFileSync(`/proc/${pid}/status`, "utf8");
  return Number(/VmRSS:\s+(\d+) kB/.exec(status)[1]);
}

test("a client that stops reading is disconnected recoverably without slowing the others, and recovers", async () => {
  const rooms = ["firehose"];
  const slow = await cluster.connect("gw-a", { ...RECONNECT, transports: ["websocket"] });
  const fast = await cluster.connect("gw-a", { transports: ["websocket"] });
  await cluster.join(slow, ...rooms);
  await cluster.join(fast, ...rooms);
  const [slowTl, fastTl] = [new Timeline(slow), new Timeline(fast)];
  const gatewayPid = cluster.gateway("gw-a").proc.child.pid;
  const rssBefore = rssKb(gatewayPid);
  const before = (await cluster.metrics("gw-a"))[SLOW];

  // The slow client stops reading its TCP socket: the kernel buffers fill, then the gateway's
  // queue for it.
  const tcp = slow.io.engine.transport.ws._socket;
  tcp.pause();
  // Publish in phases until the gateway gives up on it: how much the kernel buffers first
  // depends on the machine (socket buffer autotuning).
  const phases = [];
  const PHASE = 1000;
  let detected = false;
  while (!detected) {
    assert.ok(phases.length < 40, "the slow client was never disconnected (40,000 events of 600 bytes published)");
    const fh = startFirehose(cluster, { rooms, perRoom: PHASE, first: phases.length * PHASE, batch: 50, event: "tick", pad: 500 });
    await fh.done;
    phases.push(fh.ids);
    detected = (await cluster.metrics("gw-a"))[SLOW] >= before + 1;
  }
  assert.equal((await cluster.metrics("gw-a"))[SLOW], before + 1, "only the client that stopped reading counts as slow");
  const ids = concatIds(...phases);
  const total = phases.length * PHASE;
  await fastTl.untilCount("tick", total, { timeout: 60000 });
  assertComplete(fastTl.events("tick"), ids, "the reading client got every event meanwhile");
  const rssAfter = rssKb(gatewayPid);
  assert.ok(
    rssAfter - rssBefore < 64 * 1024,
    `gateway memory stays bounded while a client does not read: RSS ${rssBefore} kB → ${rssAfter} kB`
  );

  // Reading again: it sees the close, reconnects and recovers what it missed.
  tcp.resume();
  await slowTl.until((t) => t.entries.some((e) => e.type === "connect"), "the slow client to reconnect", { timeout: 60000 });
  const reconnect = slowTl.entries.find((e) => e.type === "connect");
  assert.equal(reconnect.recovered, true, `recovered (${slowTl.describe()})`);
  await slowTl.untilCount("tick", total, { timeout: 60000 });
  assertComplete(slowTl.events("tick"), ids, "the slow client, after recovery");
});
