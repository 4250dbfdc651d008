"use strict";
// Backpressure: a fanout started against a backlog of 100,000 entries (20 rooms × 5,000, about
// 300 bytes of payload each: ~40 MiB in Redis) drains it in bounded batches with bounded memory:
// its peak resident set (VmHWM in /proc/<pid>/status) stays below 64 MiB, far below what holding
// the backlog would take (it needs about 15 MiB). While
// it drains, its lag is visible in /stats (backlog, oldest unprocessed entry age); a client
// in one room receives that room's 5,000 events complete and in order.

const { test } = require("node:test");
const assert = require("node:assert/strict");
const fs = require("node:fs");
const { useCluster, eventually } = require("../lib/cluster");
const { roomCollector, assertRoomSequence, partitionsDone, delay } = require("../lib/fanout");

const ROOMS = Array.from({ length: 20 }, (_, k) => `backlog-${k}`);
const PER_ROOM = 5000;
const TOTAL = ROOMS.length * PER_ROOM;
/** Generous (about 4× what it needs), and still below the backlog's own size. */
const MAX_PEAK_RSS_KB = 64 * 1024;

const cluster = useCluster({
  gateways: ["gw-a"],
  fanouts: 1,
  fanoutEnv: { FANOUT_TRIM_INTERVAL_MS: "200" },
  // The room's whole backlog is delivered to one client: let it queue that much.
  gatewayEnv: { MAX_BUFFERED_PACKETS: String(PER_ROOM * 2) },
});

function status(pid, field) {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(fs.readFileSync(`/proc/${pid}/status`, "utf8"));
  return m ? Number(m[1]) : null;
}

test(`a fanout started against ${TOTAL} entries drains them with bounded memory`, async (t) => {
  const socket = await cluster.connect("gw-a", { transports: ["websocket"] });
  await cluster.join(socket, ROOMS[0]);
  const got = roomCollector(socket);

  await cluster.stopFanout(0);
  const ids = [];
  const pad = "x".repeat(300);
  for (let i = 0; i < PER_ROOM; i += 50) {
    const requests = [];
    for (let k = i; k < i + 50; k++) for (const room of ROOMS) requests.push({ room, event: "tick", data: { room, i: k, pad } });
    ids.push(...(await cluster.publishMany(requests)));
  }
  assert.equal(ids.length, TOTAL);
  const acked = new Map(ids.filter((_, n) => n % ROOMS.length === 0).map((id, i) => [i, id]));
  const streamBytes = Number(await cluster.redis.memory("USAGE", cluster.keys().publish));

  const started = Date.now();
  await cluster.startFanout(0);
  const pid = cluster.fanout.proc.child.pid;
  let sawLag = null;
  const watcher = (async () => {
    while (sawLag === null) {
      const stats = await cluster.fanoutStats(0);
      if (stats && stats.backlog > 0 && stats.oldest_unprocessed_age_ms > 0) sawLag = stats;
      else await delay(50);
    }
  })();
  await eventually(() => partitionsDone(cluster, ids[ids.length - 1]), {
    timeout: 600000,
    interval: 200,
    message: `every partition done with the ${TOTAL} entries`,
  });
  const seconds = (Date.now() - started) / 1000;
  const peakKb = status(pid, "VmHWM");
  const stats = await cluster.fanoutStats(0);
  await got.until((byRoom) => (byRoom.get(ROOMS[0]) || []).length >= PER_ROOM, `${PER_ROOM} events of ${ROOMS[0]}`);
  await watcher;

  t.diagnostic(
    `drained ${TOTAL} entries (stream ${(streamBytes / 1048576).toFixed(1)} MiB in Redis) in ${seconds.toFixed(1)} s ` +
      `(${Math.round(TOTAL / seconds)} entries/s, debug build); fanout peak RSS (VmHWM) ${(peakKb / 1024).toFixed(1)} MiB; ` +
      `lag seen while draining: backlog ${sawLag.backlog}, oldest unprocessed ${sawLag.oldest_unprocessed_age_ms} ms; batches ${stats.batches}`
  );
  assert.ok(peakKb !== null && peakKb < MAX_PEAK_RSS_KB, `peak RSS ${peakKb} kB stays under ${MAX_PEAK_RSS_KB} kB`);
  assert.ok(stats.batches >= TOTAL / 500, `read in batches of at most FANOUT_BATCH_SIZE (500): ${stats.batches} batches`);
  assert.equal(stats.committed, TOTAL, "every entry committed once");
  assert.equal(stats.published, TOTAL / ROOMS.length, "published to the one held room (the others have no members)");
  assertRoomSequence(got.byRoom.get(ROOMS[0]), acked, PER_ROOM, `client in ${ROOMS[0]}`);
  await eventually(async () => (await cluster.fanoutStats(0)).backlog < 1000, { message: "the drained stream is trimmed" });
});
