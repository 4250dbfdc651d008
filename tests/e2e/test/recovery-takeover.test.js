"use strict";
// A client whose network vanished (no TCP close reaches the gateway) reconnects to another gateway
// before its old gateway has noticed anything, so no session is stored yet. The new gateway asks
// the others to give the socket up (control channels); the old gateway saves the session and
// closes the socket, and the client is recovered: same id and rooms, every missed event in order.

const { test } = require("node:test");
const assert = require("node:assert/strict");
const { useCluster, waitFor } = require("../lib/cluster");
const { RECONNECT, Timeline, assertComplete, reconnectThrough } = require("../lib/recovery");

const cluster = useCluster({ gateways: ["gw-a", "gw-b"] });

test("a connection that vanished without a close is taken over from the old gateway and recovered", async () => {
  const room = "vanish";
  const proxy = await cluster.proxy("gw-a");
  const s = await cluster.connect(proxy, { ...RECONNECT, transports: ["websocket"] });
  const tl = new Timeline(s);
  await cluster.join(s, room);
  const { id: sid, _pid: pid } = s;
  const ids = [await cluster.publish({ room, event: "m", data: { room, i: 0 } })];
  await tl.untilCount("m", 1);

  proxy.hold();
  const disconnected = waitFor(s, "disconnect");
  assert.ok(proxy.abandon() > 0, "the proxy had a connection to abandon");
  await disconnected;
  // gw-a still holds the socket: nothing told it the client is gone, so no session is stored.
  assert.equal(await cluster.redis.exists(cluster.keys().session(pid)), 0, "no session stored yet");
  const members = cluster.keys().members(cluster.keys().room(room));
  assert.deepEqual(await cluster.redis.hgetall(members), { "gw-a": "1" }, "gw-a still counts the socket");

  for (let i = 1; i <= 5; i++) ids.push(await cluster.publish({ room, event: "m", data: { room, i } }));
  const back = await reconnectThrough(s, proxy, "gw-b");
  assert.equal(back.recovered, true, "recovered although the session was not stored when it asked");
  assert.equal(back.id, sid, "same socket.id");
  assert.equal(back.pid, pid, "same pid");
  const who = await cluster.whoami(s);
  assert.equal(who.gateway, "gw-b");
  assert.deepEqual(who.rooms, [room]);

  ids.push(await cluster.publish({ room, event: "m", data: { room, i: 6 } }));
  await tl.untilCount("m", 7);
  assertComplete(tl.events("m"), new Map([[room, ids]]), "the vanished client");
  assert.deepEqual(await cluster.redis.hgetall(members), { "gw-b": "1" }, "gw-a gave the socket up");
});
