"use strict";
// /metrics of both services during an end-to-end run: the key series exist and move as the
// traffic says they must (Prometheus text format, counters ending in _total).

const { test } = require("node:test");
const assert = require("node:assert/strict");
const { useCluster, record, eventually } = require("../lib/cluster");
const { RECONNECT, dropHeld, reconnectThrough } = require("../lib/recovery");

const cluster = useCluster({ gateways: ["gw-a", "gw-b"] });
const FANOUTS = ["fanout-1", "fanout-2"];

/** Sum of a series over the fanout replicas (each owns some partitions). */
async function fanoutSum(series) {
  let sum = 0;
  for (const f of FANOUTS) sum += (await cluster.metrics(f))[series] ?? 0;
  return sum;
}

test("gateway and fanout metrics move with connections, deliveries, dead letters and recoveries", async () => {
  const before = { a: await cluster.metrics("gw-a"), b: await cluster.metrics("gw-b") };
  const fanBefore = {
    read: await fanoutSum("roomcast_fanout_entries_read_total"),
    published: await fanoutSum("roomcast_fanout_published_total"),
    dead: await fanoutSum('roomcast_fanout_dead_lettered_total{reason="unknown_field"}'),
    batches: await fanoutSum("roomcast_fanout_batch_size_count"),
  };

  // Three clients in one room on gw-a, one on gw-b; 20 events to the room.
  const socketsA = [];
  for (let k = 0; k < 3; k++) socketsA.push(await cluster.connect("gw-a", { transports: ["websocket"] }));
  const b = await cluster.connect("gw-b");
  for (const s of [...socketsA, b]) await cluster.join(s, "metered");
  const recs = [...socketsA, b].map(record);
  const N = 20;
  await cluster.publishMany(Array.from({ length: N }, (_, i) => ({ room: "metered", event: "m", data: { i } })));
  await Promise.all(recs.map((r) => r.until("m", { count: N })));
  await cluster.publish({ romm: "metered", event: "typo" });

  const a = await cluster.metrics("gw-a");
  const inc = (m, prev, series) => (m[series] ?? 0) - (prev[series] ?? 0);
  assert.ok(a["roomcast_gateway_connections"] >= 3, "open connections gauge");
  assert.ok(inc(a, before.a, "roomcast_gateway_connections_opened_total") >= 3, "connections opened");
  assert.ok(a["roomcast_gateway_topics"] >= 2, "the room and the namespace are held");
  assert.equal(inc(a, before.a, "roomcast_gateway_events_delivered_total"), 3 * N, "3 sockets × N events queued on gw-a");
  assert.ok(inc(a, before.a, "roomcast_gateway_written_bytes_total") > 3 * N * 10, "bytes written grow with the events");
  assert.equal(inc(a, before.a, "roomcast_gateway_delivery_latency_seconds_count"), N, "one latency sample per event on gw-a");
  assert.ok(a['roomcast_gateway_delivery_latency_seconds_bucket{le="+Inf"}'] >= N, "latency histogram buckets");
  const bNow = await cluster.metrics("gw-b");
  assert.equal(inc(bNow, before.b, "roomcast_gateway_events_delivered_total"), N, "1 socket × N events on gw-b");
  for (const m of [a, bNow]) {
    assert.ok(Object.keys(m).some((k) => k.startsWith('roomcast_gateway_build_info{version="')), "build info");
  }

  await eventually(async () => (await fanoutSum('roomcast_fanout_dead_lettered_total{reason="unknown_field"}')) === fanBefore.dead + 1, {
    message: "the typo is dead-lettered with its reason, once over all replicas",
  });
  assert.ok((await fanoutSum("roomcast_fanout_entries_read_total")) >= fanBefore.read + N + 1, "entries read");
  assert.ok((await fanoutSum("roomcast_fanout_published_total")) >= fanBefore.published + N, "publishes");
  assert.ok((await fanoutSum("roomcast_fanout_batch_size_count")) > fanBefore.batches, "batch sizes observed");
  for (const f of FANOUTS) {
    const m = await cluster.metrics(f);
    for (const series of ["roomcast_fanout_backlog_entries", "roomcast_fanout_in_flight_entries", "roomcast_fanout_oldest_unprocessed_age_seconds", "roomcast_fanout_partitions_owned"]) {
      assert.equal(typeof m[series], "number", `${f} exposes ${series}`);
    }
    assert.ok(Object.keys(m).some((k) => k.startsWith('roomcast_fanout_build_info{version="')), `${f} build info`);
  }

  // A recovery on gw-b counts as ok there.
  const proxy = await cluster.proxy("gw-a");
  const c = await cluster.connect(proxy, { ...RECONNECT, transports: ["websocket"] });
  await cluster.join(c, "metered");
  await dropHeld(cluster, c, proxy, "close");
  const okBefore = (await cluster.metrics("gw-b"))['roomcast_gateway_recoveries_total{result="ok"}'];
  const back = await reconnectThrough(c, proxy, "gw-b");
  assert.equal(back.recovered, true);
  assert.equal((await cluster.metrics("gw-b"))['roomcast_gateway_recoveries_total{result="ok"}'], okBefore + 1, "recovery counted");
});
