"use strict";
// Recovery window expiry (RECOVERY_MAX_DISCONNECTION_MS=1500 for every process of this cluster):
// a client that comes back after its session expired gets a fresh session, recovered === false,
// a new id and no rooms, and nothing it missed; the fresh session works normally.

const { test } = require("node:test");
const assert = require("node:assert/strict");
const { useCluster } = require("../lib/cluster");
const { RECONNECT, Timeline, dropHeld, reconnectThrough, sessionGone, historyHas } = require("../lib/recovery");

const WINDOW_MS = 1500;
const cluster = useCluster({ gateways: ["gw-a", "gw-b"], env: { RECOVERY_MAX_DISCONNECTION_MS: String(WINDOW_MS) } });

test(`back after the ${WINDOW_MS} ms window: recovered === false, new id, no rooms, missed events not delivered; the new session works`, async () => {
  const room = "expiry";
  const channel = cluster.keys().room(room);
  const proxy = await cluster.proxy("gw-a");
  const s = await cluster.connect(proxy, RECONNECT);
  const tl = new Timeline(s);
  await cluster.join(s, room);
  const firstId = await cluster.publish({ room, event: "m", data: { n: 1 } });
  await tl.untilCount("m", 1);
  cluster.assertArgs(tl.events("m")[0].raw, [{ n: 1 }], firstId, "live event");

  const { pid, id } = await dropHeld(cluster, s, proxy, "close");
  const missedId = await cluster.publish({ room, event: "m", data: { n: 2 } });
  await historyHas(cluster, channel, missedId); // it was recordable: the fresh session is due to the window alone
  await sessionGone(cluster, pid, `expired after RECOVERY_MAX_DISCONNECTION_MS=${WINDOW_MS}`);
  const mark = tl.mark();

  const back = await reconnectThrough(s, proxy, "gw-b");
  assert.equal(back.recovered, false, `recovered after the window (${tl.describe()})`);
  assert.notEqual(back.id, id, "a new socket.id");
  assert.equal(typeof back.pid, "string", "a new pid for the new session");
  assert.notEqual(back.pid, pid, "a new pid");
  const who = await cluster.whoami(s);
  assert.equal(who.gateway, "gw-b");
  assert.equal(who.sid, back.id);
  assert.ok(!who.rooms.includes(room), `a fresh session is in no room: ${JSON.stringify(who.rooms)}`);

  // The fresh session works: join again, receive with an offset; the missed event never comes.
  await cluster.join(s, room);
  const nextId = await cluster.publish({ room, event: "m", data: { n: 3 } });
  await tl.until((t) => t.events("m", mark).length >= 1, "the event published after the rejoin");
  cluster.assertEvents(
    tl.events(undefined, mark).map((e) => ({ event: e.event, args: e.raw })),
    [{ event: "m", args: [{ n: 3 }], id: nextId }],
    "events after the expired reconnect (the missed one is not among them)"
  );
});
