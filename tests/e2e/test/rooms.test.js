"use strict";
// The client-side room protocol: join/leave acks, refused room names, whoami, and leave stopping
// delivery.

const { test } = require("node:test");
const assert = require("node:assert/strict");
const { useCluster, record } = require("../lib/cluster");

const cluster = useCluster({ gateways: ["gw-a", "gw-b"] });

test("join and leave are acknowledged with {ok:true}; whoami reports gateway, sid and rooms", async () => {
  const s = await cluster.connect("gw-b");
  assert.deepEqual(await cluster.roomRequest(s, "join", "lobby"), { ok: true });
  assert.deepEqual(await cluster.roomRequest(s, "join", "chat:42"), { ok: true });
  assert.deepEqual(await cluster.roomRequest(s, "join", "x".repeat(256)), { ok: true }, "256 bytes is the longest name");

  let me = await cluster.whoami(s);
  assert.equal(me.gateway, "gw-b");
  assert.equal(me.sid, s.id);
  for (const room of ["lobby", "chat:42", "x".repeat(256)]) assert.ok(me.rooms.includes(room), `rooms ${JSON.stringify(me.rooms)} include ${room}`);

  assert.deepEqual(await cluster.roomRequest(s, "leave", "chat:42"), { ok: true });
  me = await cluster.whoami(s);
  assert.ok(me.rooms.includes("lobby"));
  assert.ok(!me.rooms.includes("chat:42"), `rooms ${JSON.stringify(me.rooms)} no longer include chat:42`);
});

const BAD_ROOMS = [
  ["an empty string", ""],
  ["a number", 42],
  ["null", null],
  ["an object", { room: "a" }],
  ["a 300-character name", "r".repeat(300)],
  ["a 257-byte name", "é".repeat(128) + "x"],
  ["a name with a newline", "a\nb"],
  ["a name with a NUL", "a\u0000b"],
];

for (const action of ["join", "leave"]) {
  for (const [what, room] of BAD_ROOMS) {
    test(`${action} with ${what} is refused with {ok:false, error}`, async () => {
      const s = await cluster.connect("gw-a");
      const ack = await cluster.roomRequest(s, action, room);
      assert.equal(ack && ack.ok, false, `ack ${JSON.stringify(ack)}`);
      assert.equal(typeof ack.error, "string");
      assert.ok(ack.error.length > 0, "error says why");
      // The socket is still usable and did not end up in a room.
      const me = await cluster.whoami(s);
      assert.equal(me.sid, s.id);
      assert.ok(!me.rooms.includes(room), `rooms ${JSON.stringify(me.rooms)}`);
    });
  }
}

test("leave stops delivery of the room while other rooms and other members keep receiving", async () => {
  const leaver = await cluster.connect("gw-a");
  const stayerA = await cluster.connect("gw-a"); // keeps gw-a subscribed to "news"
  const stayerB = await cluster.connect("gw-b");
  await cluster.join(leaver, "news", "side");
  await cluster.join(stayerA, "news");
  await cluster.join(stayerB, "news");
  const recLeaver = record(leaver);
  const recStayers = [record(stayerA), record(stayerB)];

  await cluster.publish({ room: "news", event: "first", data: 1 });
  await recLeaver.until("first");
  await cluster.leave(leaver, "news");
  await cluster.publish({ room: "news", event: "second", data: 2 });
  await Promise.all(recStayers.map((r) => r.until("second")));
  await cluster.publish({ room: "side", event: "marker" });
  await recLeaver.until("marker");

  assert.deepEqual(recLeaver.names(), ["first", "marker"]);
  for (const r of recStayers) assert.deepEqual(r.names(), ["first", "second"]);
  const me = await cluster.whoami(leaver);
  assert.ok(!me.rooms.includes("news") && me.rooms.includes("side"), `rooms ${JSON.stringify(me.rooms)}`);
});

test("leaving a room the socket is not in is acknowledged and harmless", async () => {
  const s = await cluster.connect("gw-a");
  assert.deepEqual(await cluster.roomRequest(s, "leave", "never-joined"), { ok: true });
  await cluster.join(s, "after");
  const rec = record(s);
  await cluster.publish({ room: "after", event: "ok" });
  await rec.until("ok");
});

test("joining the same room twice still delivers once", async () => {
  const s = await cluster.connect("gw-b");
  await cluster.join(s, "twice", "twice");
  const rec = record(s);
  await cluster.publish({ room: "twice", event: "once" });
  await cluster.publish({ room: "twice", event: "marker" });
  await rec.until("marker");
  assert.deepEqual(rec.names(), ["once", "marker"]);
});
