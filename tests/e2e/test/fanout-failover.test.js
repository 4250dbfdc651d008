"use strict";
// Fanout replicas under crashes. Three replicas share the partitions; 20 rooms × 1,000 events
// are published at a steady rate (one event per room every 20 ms); meanwhile a replica picked at
// random is `kill -9`ed at a random point (in the middle of a batch when it can catch one), four
// times, and started again a random number of
// events later (a new process: the survivors take its partitions when its leases expire, and
// give some back when it returns). Clients of both gateways (the official client) and every
// room's history must show every room's sequence complete, in publish order, without
// duplicates. Gateways wait up to 30 s for a stalled partition (longer than a takeover), so they
// also keep the publish order across rooms through every crash: each client's offsets increase.
// The random choices come from E2E_SEED (printed), so a failure can be replayed.

const { test } = require("node:test");
const assert = require("node:assert/strict");
const { useCluster, eventually } = require("../lib/cluster");
const { publishPaced, roomCollector, readHistory, assertRoomSequence, partitionsDone, firstDescent, delay } = require("../lib/fanout");

const ROOMS = Array.from({ length: 20 }, (_, k) => `chaos-${k}`);
const PER_ROOM = 1000;
const KILLS = 4;

const cluster = useCluster({
  gateways: ["gw-a", "gw-b"],
  fanouts: 3,
  // The whole sequence of a room stays in its history, to check it there too.
  env: { HISTORY_MAX_LEN: String(2 * PER_ROOM) },
  // Short leases: a crashed replica's partitions are taken over within about 2 s.
  fanoutEnv: { FANOUT_LEASE_TTL_MS: "1500", FANOUT_LEASE_RENEW_MS: "300", FANOUT_BLOCK_MS: "500" },
  gatewayEnv: { DELIVERY_ORDER_WAIT_MS: "30000" },
});

/** Deterministic pseudo-random numbers in [0, 1) (mulberry32). */
function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

test(`3 fanout replicas, ${ROOMS.length} rooms × ${PER_ROOM} events at a steady rate, a replica kill -9ed ${KILLS} times: every room complete, in order, once, for clients and in history`, async (t) => {
  const seed = Number(process.env.E2E_SEED || Date.now() % 2 ** 31);
  const random = rng(seed);
  t.diagnostic(`E2E_SEED=${seed}`);

  const clients = [];
  for (const gw of ["gw-a", "gw-a", "gw-b", "gw-b"]) {
    const socket = await cluster.connect(gw, { transports: ["websocket"] });
    await cluster.join(socket, ...ROOMS);
    const client = { socket, got: roomCollector(socket), disconnects: [] };
    socket.on("disconnect", (reason) => client.disconnects.push(reason));
    clients.push(client);
  }

  const publisher = publishPaced(cluster.redis, cluster.keys().publish, { rooms: ROOMS, perRoom: PER_ROOM, tickMs: 20 });
  // Kill points spread over the run, each at a random round of its slot; restarts a random
  // number of rounds later (within the slot).
  const slot = Math.floor((PER_ROOM * 0.9) / KILLS);
  const story = [];
  for (let k = 0; k < KILLS; k++) {
    const killAt = Math.floor(PER_ROOM * 0.05) + k * slot + Math.floor(random() * slot * 0.5);
    const restartAt = killAt + 20 + Math.floor(random() * slot * 0.4);
    const victim = Math.floor(random() * cluster.fanouts.length);
    await publisher.until(killAt);
    // Preferably in the middle of a batch (read, not committed): look for one for a moment.
    let before = null;
    for (let tries = 0; tries < 100; tries++) {
      before = await cluster.fanoutStats(victim);
      if (before && before.in_flight > 0) break;
      await delay(5);
    }
    await cluster.killFanout(victim);
    story.push(`round ${publisher.published()}: kill -9 ${cluster.fanouts[victim].id} (owned ${before && before.partitions_owned}, in flight ${before && before.in_flight})`);
    // The survivors take its partitions over once its leases expire.
    await cluster.waitPartitionsShared();
    story.push(`round ${publisher.published()}: survivors own every partition`);
    await publisher.until(restartAt);
    await cluster.startFanout(victim);
    await cluster.waitPartitionsShared();
    story.push(`round ${publisher.published()}: ${cluster.fanouts[victim].id} back, partitions shared by 3`);
  }
  await publisher.done;
  for (const line of story) t.diagnostic(line);
  assert.equal(publisher.failed(), 0, "every XADD was acknowledged (Redis stayed up)");
  const lastId = [...publisher.acked.get(ROOMS[ROOMS.length - 1]).values()].pop();

  for (const [k, c] of clients.entries()) {
    await c.got.until((byRoom) => ROOMS.every((r) => (byRoom.get(r) || []).length >= PER_ROOM), `client #${k}: ${PER_ROOM} events in every room`);
  }
  for (const [k, c] of clients.entries()) {
    assert.deepEqual(c.disconnects, [], `client #${k} stayed connected`);
    for (const room of ROOMS) {
      const got = c.got.byRoom.get(room);
      assert.equal(got.length, PER_ROOM, `client #${k} room ${room}: ${PER_ROOM} events`);
      assertRoomSequence(got, publisher.acked.get(room), PER_ROOM, `client #${k} (${c.socket.__label}) room ${room}`);
    }
    const descent = firstDescent(c.got.offsets);
    assert.equal(descent, -1, `client #${k}: offsets increase across rooms (publish order), first descent at #${descent}: ${c.got.offsets.slice(Math.max(0, descent - 2), descent + 2)}`);
  }
  const running = await Promise.all(cluster.fanouts.map((f) => cluster.fanoutStats(f.id)));
  t.diagnostic(
    `replicas now: ${running.map((s, k) => `${cluster.fanouts[k].id} published=${s.published} re-applied (duplicates)=${s.duplicates} leases acquired=${s.leases_acquired}`).join("; ")}`
  );

  await eventually(() => partitionsDone(cluster, lastId), { message: "every partition committed the last entry" });
  for (const room of ROOMS) {
    const hist = await readHistory(cluster, room);
    const acked = publisher.acked.get(room);
    assert.deepEqual(
      hist.map((e) => e.i),
      Array.from({ length: PER_ROOM }, (_, i) => i),
      `history of ${room}: every event once, in publish order`
    );
    assert.deepEqual(
      hist.map((e) => e.id),
      hist.map((e) => acked.get(e.i)),
      `history of ${room}: entry ids are the publish entry ids`
    );
    assert.deepEqual(
      hist.map((e) => e.seq),
      hist.map((_, k) => k + 1),
      `history of ${room}: seq 1, 2, … without a gap`
    );
  }
});
