"use strict";
// Redis crashes mid-stream and comes back from its append-only file (`--appendonly yes
// --appendfsync always`: every acknowledged write is on disk before the reply). While events are
// published at a steady rate to 10 rooms (with 2 fanout replicas), Redis is killed (SIGKILL) and
// started again on the same port and directory. Readiness of every fanout and gateway dips (503)
// and recovers (200); delivery resumes by itself (clients stay connected); nothing Redis
// acknowledged is lost: every acknowledged event reaches the clients and the rooms' history,
// once, in publish order. Events whose XADD failed during the outage may be there or not, but
// never twice and never out of order.

const { test } = require("node:test");
const assert = require("node:assert/strict");
const Redis = require("ioredis");
const { useCluster, eventually } = require("../lib/cluster");
const { publishPaced, roomCollector, readHistory, assertRoomSequence, partitionsDone, delay } = require("../lib/fanout");

const ROOMS = Array.from({ length: 10 }, (_, k) => `aof-${k}`);
const PER_ROOM = 400;

const cluster = useCluster({
  gateways: ["gw-a", "gw-b"],
  redisArgs: ["--appendonly", "yes", "--appendfsync", "always"],
  env: { HISTORY_MAX_LEN: String(2 * PER_ROOM) },
  gatewayEnv: { SUBSCRIPTION_PROBE_INTERVAL_MS: "500" },
  fanoutEnv: { FANOUT_BLOCK_MS: "500" },
});

test(`Redis killed and restarted from its AOF while ${ROOMS.length} rooms × ${PER_ROOM} events are published: readiness dips and recovers, nothing acknowledged is lost`, async (t) => {
  const clients = [];
  for (const gw of ["gw-a", "gw-b"]) {
    const socket = await cluster.connect(gw, { transports: ["websocket"] });
    await cluster.join(socket, ...ROOMS);
    const client = { socket, got: roomCollector(socket), disconnects: [] };
    socket.on("disconnect", (reason) => client.disconnects.push(reason));
    clients.push(client);
  }

  // A publisher that fails fast while Redis is away instead of queueing and re-sending (a
  // re-sent XADD could be a second entry): what it got an id for is what Redis acknowledged.
  const publisherRedis = new Redis(cluster.redisServer.url, {
    enableOfflineQueue: false,
    autoResendUnfulfilledCommands: false,
    maxRetriesPerRequest: 0,
    retryStrategy: () => 50,
  });
  publisherRedis.on("error", () => {});
  t.after(() => publisherRedis.disconnect());
  await eventually(() => publisherRedis.status === "ready", { message: "publisher connected" });
  const publisher = publishPaced(publisherRedis, cluster.keys().publish, { rooms: ROOMS, perRoom: PER_ROOM, tickMs: 25 });

  // Readiness of every component, sampled until the end of the outage (and at every check).
  const seen = new Map(cluster.components().map((c) => [c.id, new Set()]));
  const readyz = async () => {
    const statuses = await cluster.readyz();
    for (const [id, status] of Object.entries(statuses)) seen.get(id).add(status);
    return statuses;
  };
  let sampling = true;
  const sampler = (async () => {
    while (sampling) {
      await readyz();
      await delay(100);
    }
  })();

  await publisher.until(PER_ROOM / 3);
  await cluster.redisServer.kill();
  const down = publisher.published();
  await eventually(async () => Object.values(await readyz()).every((s) => s === 503), {
    message: "every fanout and gateway /readyz is 503 while Redis is down",
  });
  await cluster.redisServer.start(); // same port and directory: loads the AOF
  await eventually(async () => Object.values(await readyz()).every((s) => s === 200), {
    message: "every fanout and gateway /readyz is 200 again",
  });
  const up = publisher.published();
  sampling = false;
  await sampler;
  for (const [id, statuses] of seen) {
    assert.ok(statuses.has(503) && statuses.has(200), `${id}: /readyz was 503 during the outage and 200 around it (${[...statuses]})`);
  }

  await publisher.done;
  t.diagnostic(`Redis killed at round ${down}, ready again at round ${up}; ${publisher.failed()} XADDs failed while it was away`);
  assert.ok(publisher.failed() > 0, "some XADDs failed while Redis was down (the outage was real)");
  const acked = (room) => publisher.acked.get(room);
  const lastOf = (room) => Math.max(...acked(room).keys());

  // Everything acknowledged arrives; the end is marked by the last acknowledged event per room.
  for (const [k, c] of clients.entries()) {
    await c.got.until(
      (byRoom) => ROOMS.every((r) => (byRoom.get(r) || []).some((e) => e.i === lastOf(r))),
      `client #${k}: the last acknowledged event of every room`
    );
  }
  for (const [k, c] of clients.entries()) {
    assert.deepEqual(c.disconnects, [], `client #${k} stayed connected through the Redis restart`);
    for (const room of ROOMS) {
      assertRoomSequence(c.got.byRoom.get(room), acked(room), PER_ROOM, `client #${k} (${c.socket.__label}) room ${room}`);
    }
  }
  const lastId = [...acked(ROOMS[ROOMS.length - 1]).values()].pop();
  await eventually(() => partitionsDone(cluster, lastId), { message: "every partition committed the last entry" });
  for (const room of ROOMS) {
    const hist = await readHistory(cluster, room);
    assertRoomSequence(
      hist.map((e) => ({ i: e.i, offset: e.id })),
      acked(room),
      PER_ROOM,
      `history of ${room}`
    );
    assert.deepEqual(
      hist.map((e) => e.seq),
      hist.map((_, k) => k + 1),
      `history of ${room}: seq 1, 2, … without a gap (the AOF kept the topic's sequence)`
    );
    // What a client received is exactly what history holds: nothing delivered that Redis lost.
    for (const [k, c] of clients.entries()) {
      assert.deepEqual(
        c.got.byRoom.get(room).map((e) => e.i),
        hist.map((e) => e.i),
        `client #${k} room ${room}: received exactly the room's history`
      );
    }
  }
});
