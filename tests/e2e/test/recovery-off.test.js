"use strict";
// Recovery turned off (RECOVERY_MAX_DISCONNECTION_MS=0 for every process of this cluster): the
// CONNECT reply has no pid, events carry no offset argument, no session is stored on disconnect,
// and a reconnect to the other gateway is a fresh session (new id, no rooms, nothing replayed).

const { test } = require("node:test");
const assert = require("node:assert/strict");
const { useCluster, waitFor, record } = require("../lib/cluster");
const { RECONNECT, Timeline } = require("../lib/recovery");

const cluster = useCluster({ gateways: ["gw-a", "gw-b"], env: { RECOVERY_MAX_DISCONNECTION_MS: "0" } });

/** Socket.IO CONNECT packets the client receives (the manager's decoded packets), over reconnections too. */
function connectReplies(socket) {
  const replies = [];
  socket.io.on("packet", (packet) => packet.type === 0 && replies.push(packet.data));
  return replies;
}

test("CONNECT reply without pid; room, multi-argument and namespace events without offset", async () => {
  const socket = cluster.createSocket("gw-a");
  const replies = connectReplies(socket);
  const { error } = await cluster.settle(socket);
  assert.ifError(error);
  assert.deepEqual(replies.map((d) => Object.keys(d).sort()), [["sid"]], `CONNECT reply data: ${JSON.stringify(replies)}`);
  assert.equal(socket._pid, undefined, "the client holds no pid");

  const other = await cluster.connect("gw-b", { transports: ["websocket"] });
  for (const s of [socket, other]) await cluster.join(s, "off");
  const recs = [record(socket), record(other)];
  const ids = [
    await cluster.publish({ room: "off", event: "one", data: { n: 1 } }),
    await cluster.publish({ room: "off", event: "multi", args: [1, "two"] }),
    await cluster.publish({ event: "all", data: { all: true } }),
  ];
  await Promise.all(recs.map((r) => r.until("all")));
  for (const rec of recs) {
    // assertArgs knows this cluster runs with recovery off: exactly the payload arguments.
    cluster.assertEvents(rec.events, [
      { event: "one", args: [{ n: 1 }], id: ids[0] },
      { event: "multi", args: [1, "two"], id: ids[1] },
      { event: "all", args: [{ all: true }], id: ids[2] },
    ]);
  }
});

test("a reconnect to the other gateway is a fresh session: not recovered, new id, no rooms, nothing replayed, no session stored", async () => {
  const proxy = await cluster.proxy("gw-a");
  const s = cluster.createSocket(proxy, RECONNECT);
  const replies = connectReplies(s);
  assert.ifError((await cluster.settle(s)).error);
  const tl = new Timeline(s);
  await cluster.join(s, "off-move");
  const id = s.id;

  proxy.hold();
  const disconnected = waitFor(s, "disconnect");
  s.io.engine.close();
  await disconnected;
  await cluster.publish({ room: "off-move", event: "missed", data: 1 });
  const back = waitFor(s, "connect");
  proxy.retarget("gw-b");
  await back;

  // socket.io-client sets `recovered = pid && …`: without a pid in the reply it is not true (undefined).
  assert.notEqual(s.recovered, true, "not recovered");
  assert.notEqual(s.id, id, "a new socket.id");
  assert.deepEqual(replies.map((d) => Object.keys(d).sort()), [["sid"], ["sid"]], `no pid in either CONNECT reply: ${JSON.stringify(replies)}`);
  const who = await cluster.whoami(s);
  assert.equal(who.gateway, "gw-b");
  assert.ok(!who.rooms.includes("off-move"), `fresh session in no room: ${JSON.stringify(who.rooms)}`);

  await cluster.join(s, "off-move");
  const nextId = await cluster.publish({ room: "off-move", event: "next", data: 2 });
  await tl.untilCount("next", 1);
  cluster.assertEvents(tl.events().map((e) => ({ event: e.event, args: e.raw })), [{ event: "next", args: [2], id: nextId }], "only the event after the rejoin");

  const sessions = await cluster.redis.keys(cluster.keys().session("*"));
  assert.deepEqual(sessions, [], "no recovery session stored with recovery off");
});
