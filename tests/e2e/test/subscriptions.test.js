"use strict";
// Redis-side bookkeeping of room membership: a gateway subscribes to a room's channel while it
// has a member, unsubscribes after the last one leaves or disconnects, and keeps its entry in
// `<channel>:members` (gateway id -> local member count) in step. Uses its own key prefix to
// check REDIS_KEY_PREFIX is honoured.

const { test } = require("node:test");
const assert = require("node:assert/strict");
const { useCluster, eventually, waitFor } = require("../lib/cluster");

const cluster = useCluster({ gateways: ["gw-a", "gw-b"], prefix: "e2e-subs" });

async function channels() {
  return cluster.redis.pubsub("CHANNELS", "*");
}
async function numsub(channel) {
  const [, n] = await cluster.redis.pubsub("NUMSUB", channel);
  return Number(n);
}
async function members(channel) {
  return cluster.redis.hgetall(cluster.keys().members(channel));
}
/** Polls until the members hash equals `expected` (an object gateway id -> count). */
async function membersBecome(channel, expected, message) {
  await eventually(
    async () => {
      const got = await members(channel);
      const norm = Object.fromEntries(Object.entries(got).map(([k, v]) => [k, Number(v)]));
      assert.deepEqual(norm, expected);
      return true;
    },
    { message: `${message}: ${cluster.keys().members(channel)} == ${JSON.stringify(expected)}` }
  );
}

test("room channel subscribed while a gateway has members, unsubscribed after the last leaves", async () => {
  const room = "sub:1";
  const channel = cluster.keys().room(room);
  assert.equal(channel, "e2e-subs:room:{/#sub:1}");
  assert.ok(!(await channels()).includes(channel), "no subscription before anyone joined");

  const a1 = await cluster.connect("gw-a");
  const a2 = await cluster.connect("gw-a");
  const b1 = await cluster.connect("gw-b");

  // The join ack comes once the subscription is in place: no polling needed for this one.
  await cluster.join(a1, room);
  assert.ok((await channels()).includes(channel), `PUBSUB CHANNELS shows ${channel} after the first join`);
  await cluster.join(a2, room);
  await membersBecome(channel, { "gw-a": 2 }, "two members on gw-a");
  const subsOneGateway = await numsub(channel);

  await cluster.join(b1, room);
  await membersBecome(channel, { "gw-a": 2, "gw-b": 1 }, "gw-b joins");
  const subsTwoGateways = await numsub(channel);
  assert.ok(subsTwoGateways > subsOneGateway, `NUMSUB grows when gw-b subscribes too (${subsOneGateway} -> ${subsTwoGateways})`);

  // gw-a: one of two members leaves -> still subscribed; the last one disconnects -> unsubscribed.
  await cluster.leave(a1, room);
  await membersBecome(channel, { "gw-a": 1, "gw-b": 1 }, "a1 left");
  assert.equal(await numsub(channel), subsTwoGateways, "gw-a keeps its subscription while a2 is a member");
  a2.disconnect();
  await membersBecome(channel, { "gw-b": 1 }, "a2 disconnected: gw-a's entry is gone");
  await eventually(async () => (await numsub(channel)) === subsOneGateway, {
    message: `NUMSUB ${channel} back to ${subsOneGateway} after gw-a's last member disconnected`,
  });
  assert.ok((await channels()).includes(channel), "gw-b is still subscribed");

  // gw-b: its only member leaves -> nobody is subscribed and the hash is empty.
  await cluster.leave(b1, room);
  await eventually(async () => !(await channels()).includes(channel), {
    message: `${channel} gone from PUBSUB CHANNELS after the last member left`,
  });
  await membersBecome(channel, {}, "last member left");

  // And a new member makes it come back, with delivery working.
  await cluster.join(b1, room);
  assert.ok((await channels()).includes(channel), "subscribed again after a new join");
  const got = waitFor(b1, "back");
  const id = await cluster.publish({ room, event: "back", data: true });
  cluster.assertArgs(await got, [true], id);
});

test("disconnecting a member of several rooms releases all of them", async () => {
  const rooms = ["multi:1", "multi:2", "multi:3"];
  const s = await cluster.connect("gw-b", { transports: ["websocket"] });
  await cluster.join(s, ...rooms);
  const chans = rooms.map((r) => cluster.keys().room(r));
  const before = await channels();
  for (const c of chans) assert.ok(before.includes(c), `${c} subscribed`);
  for (const c of chans) await membersBecome(c, { "gw-b": 1 }, "joined");

  s.disconnect();
  await eventually(async () => (await channels()).every((c) => !chans.includes(c)), {
    message: `${chans.join(", ")} gone from PUBSUB CHANNELS after disconnect`,
  });
  for (const c of chans) await membersBecome(c, {}, "disconnected");
});
