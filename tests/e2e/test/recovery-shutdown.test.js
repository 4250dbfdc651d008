"use strict";
// A rolling deploy: SIGTERM on gw-a saves the sessions of all its clients before it exits; the
// clients (official client, reconnecting by itself through a proxy) come back on gw-b and every one
// of them is recovered: same id, same rooms, the events published meanwhile replayed in order.

const { test } = require("node:test");
const assert = require("node:assert/strict");
const { useCluster, waitFor } = require("../lib/cluster");
const { RECONNECT, Timeline, reconnectThrough, historyHasAll, assertSameRooms, assertComplete } = require("../lib/recovery");

const cluster = useCluster({ gateways: ["gw-a", "gw-b"] });
const CLIENTS = 12;
const ROOMS = ["deploy-1", "deploy-2", "deploy-3"];

test(`SIGTERM on gw-a: its ${CLIENTS} clients are recovered on gw-b with the events published meanwhile`, async () => {
  const proxy = await cluster.proxy("gw-a");
  const clients = [];
  for (let k = 0; k < CLIENTS; k++) {
    const transports = [["websocket"], ["polling"], undefined][k % 3];
    const s = await cluster.connect(proxy, { ...RECONNECT, ...(transports ? { transports } : {}) });
    const rooms = ROOMS.filter((_, r) => r !== k % ROOMS.length); // each client in two of the three rooms
    await cluster.join(s, ...rooms);
    clients.push({ s, tl: new Timeline(s), rooms, before: await cluster.whoami(s), id: s.id, pid: s._pid });
  }
  const live = await cluster.publishMany(ROOMS.map((room) => ({ room, event: "m", data: { room, i: 0 } })));
  for (const c of clients) await c.tl.untilCount("m", c.rooms.length);

  proxy.hold();
  const disconnected = clients.map((c) => waitFor(c.s, "disconnect"));
  const exit = await cluster.gateway("gw-a").proc.stop();
  assert.deepEqual(exit, { code: 0, signal: null }, "gw-a exits by itself with status 0");
  await Promise.all(disconnected);
  for (const c of clients) {
    assert.equal(await cluster.redis.exists(cluster.keys().session(c.pid)), 1, `${c.s.__label}: session saved before gw-a exited`);
  }

  const missed = [];
  for (let i = 1; i <= 5; i++) for (const room of ROOMS) missed.push({ room, event: "m", data: { room, i } });
  const missedIds = await cluster.publishMany(missed);
  await historyHasAll(cluster, missed.map((fields, k) => ({ fields, id: missedIds[k] })));

  await Promise.all(clients.map((c) => reconnectThrough(c.s, proxy, "gw-b")));
  const ids = new Map(ROOMS.map((room, r) => [room, [live[r]]]));
  missed.forEach((f, k) => ids.get(f.room).push(missedIds[k]));
  for (const c of clients) {
    assert.equal(c.s.recovered, true, `${c.s.__label}: recovered (${c.tl.describe()})`);
    assert.equal(c.s.id, c.id, `${c.s.__label}: same id`);
    const who = await cluster.whoami(c.s);
    assert.equal(who.gateway, "gw-b");
    assertSameRooms(c.before, who, c.s.__label);
    assertComplete(c.tl.events("m"), new Map(c.rooms.map((room) => [room, ids.get(room)])), c.s.__label);
  }
});
