"use strict";
// When recovery cannot be exact the client gets a fresh session (recovered === false, new id, no
// rooms, nothing replayed) and everything keeps working: an unknown pid (its session is gone from
// Redis), and a client that missed more events than a room's history keeps (HISTORY_MAX_LEN=10
// for every process of this cluster). Within the cap it still recovers.

const { test } = require("node:test");
const assert = require("node:assert/strict");
const { useCluster } = require("../lib/cluster");
const { RECONNECT, Timeline, dropHeld, reconnectThrough, historyHas, compareIds } = require("../lib/recovery");

const HISTORY_MAX_LEN = 10;
const cluster = useCluster({ gateways: ["gw-a", "gw-b"], env: { HISTORY_MAX_LEN: String(HISTORY_MAX_LEN) } });

/** Connects through a proxy to gw-a, joins `room`, receives one live event; returns {proxy, s, tl}. */
async function joinedClient(room) {
  const proxy = await cluster.proxy("gw-a");
  const s = await cluster.connect(proxy, RECONNECT);
  const tl = new Timeline(s);
  await cluster.join(s, room);
  const id = await cluster.publish({ room, event: "m", data: { i: 0 } });
  await tl.untilCount("m", 1);
  cluster.assertArgs(tl.events("m")[0].raw, [{ i: 0 }], id, "live event");
  return { proxy, s, tl };
}

/** Asserts a fresh session after reconnecting through `proxy` to gw-b, and that it works. */
async function assertFreshSession({ proxy, s, tl }, { id, pid }, room, why) {
  const mark = tl.mark();
  const back = await reconnectThrough(s, proxy, "gw-b");
  assert.equal(back.recovered, false, `${why}: recovered (${tl.describe()})`);
  assert.notEqual(back.id, id, `${why}: a new socket.id`);
  assert.notEqual(back.pid, pid, `${why}: a new pid`);
  const who = await cluster.whoami(s);
  assert.equal(who.gateway, "gw-b");
  assert.ok(!who.rooms.includes(room), `${why}: a fresh session is in no room: ${JSON.stringify(who.rooms)}`);
  await cluster.join(s, room);
  const nextId = await cluster.publish({ room, event: "after", data: { ok: true } });
  await tl.untilCount("after", 1);
  cluster.assertEvents(
    tl.events(undefined, mark).map((e) => ({ event: e.event, args: e.raw })),
    [{ event: "after", args: [{ ok: true }], id: nextId }],
    `${why}: nothing replayed, then the fresh session receives`
  );
}

test("unknown pid (its session was deleted): fresh session, nothing breaks", async () => {
  const room = "fb-unknown";
  const c = await joinedClient(room);
  const dropped = await dropHeld(cluster, c.s, c.proxy, "close");
  await cluster.publish({ room, event: "m", data: { i: 1 } });
  assert.equal(await cluster.redis.del(cluster.keys().session(dropped.pid)), 1, "the stored session existed and is now deleted");
  await assertFreshSession(c, dropped, room, "unknown pid");
});

test(`missed more than HISTORY_MAX_LEN=${HISTORY_MAX_LEN} events: fresh session, nothing breaks`, async () => {
  const room = "fb-trimmed";
  const c = await joinedClient(room);
  const dropped = await dropHeld(cluster, c.s, c.proxy, "close");
  const missed = Array.from({ length: 300 }, (_, k) => ({ room, event: "m", data: { i: k + 1 } }));
  const ids = await cluster.publishMany(missed);
  const hist = cluster.keys().hist(cluster.keys().room(room));
  await historyHas(cluster, cluster.keys().room(room), ids[ids.length - 1]);
  const [[oldest]] = await cluster.redis.xrange(hist, "-", "+", "COUNT", 1);
  assert.ok(compareIds(oldest, ids[0]) > 0, `${hist} was trimmed past the first missed event (oldest kept ${oldest}, first missed ${ids[0]})`);
  await assertFreshSession(c, dropped, room, "history trimmed");
});

test(`missed fewer than HISTORY_MAX_LEN=${HISTORY_MAX_LEN} events: recovered`, async () => {
  const room = "fb-within";
  const c = await joinedClient(room);
  const dropped = await dropHeld(cluster, c.s, c.proxy, "close");
  const missed = Array.from({ length: 5 }, (_, k) => ({ room, event: "m", data: { i: k + 1 } }));
  const ids = await cluster.publishMany(missed);
  await historyHas(cluster, cluster.keys().room(room), ids[ids.length - 1]);
  const back = await reconnectThrough(c.s, c.proxy, "gw-b");
  assert.equal(back.recovered, true, `recovered (${c.tl.describe()})`);
  assert.equal(back.id, dropped.id);
  cluster.assertEvents(
    c.tl.events("m", 0).slice(1).map((e) => ({ event: e.event, args: e.raw })),
    missed.map((f, k) => ({ event: "m", args: [f.data], id: ids[k] })),
    "the 5 missed events, replayed"
  );
});
