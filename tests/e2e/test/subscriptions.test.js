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

test("a room's sequence lasts while a gateway holds the room, expires once none does, and lasts again on a new join", async () => {
  const room = "meta:1";
  const channel = cluster.keys().room(room);
  const meta = cluster.keys().meta(channel);
  const a = await cluster.connect("gw-a");
  const b = await cluster.connect("gw-b");
  await cluster.join(a, room);
  await cluster.join(b, room);
  const first = waitFor(a, "first");
  const id = await cluster.publish({ room, event: "first", data: 1 });
  cluster.assertArgs(await first, [1], id);
  assert.equal(await cluster.redis.hget(meta, "seq"), "1");
  assert.equal(await cluster.redis.pttl(meta), -1, "held: the sequence does not expire");

  await cluster.leave(a, room);
  await membersBecome(channel, { "gw-b": 1 }, "a left");
  assert.equal(await cluster.redis.pttl(meta), -1, "still held by gw-b: no expiry");

  // The last holder's leave and the expiry are one script: once the hash is empty, it is set.
  await cluster.leave(b, room);
  await membersBecome(channel, {}, "the last member left");
  const ttl = await cluster.redis.pttl(meta);
  const limit = Math.max(cluster.recoveryWindowMs, 60000);
  assert.ok(ttl > 0 && ttl <= limit, `nobody holds the room: its sequence expires within ${limit} ms (PTTL ${ttl})`);

  // A new member before the expiry: persistent again, and the sequence goes on.
  await cluster.join(a, room);
  assert.equal(await cluster.redis.pttl(meta), -1, "held again: no expiry");
  const second = waitFor(a, "second");
  const id2 = await cluster.publish({ room, event: "second", data: 2 });
  cluster.assertArgs(await second, [2], id2);
  assert.equal(await cluster.redis.hget(meta, "seq"), "2", "the sequence went on from 1");
});

test("a session saved for recovery keeps its rooms' sequences at least as long as itself", async () => {
  const room = "meta:2";
  const channel = cluster.keys().room(room);
  const meta = cluster.keys().meta(channel);
  const s = await cluster.connect("gw-a", { reconnection: false });
  await cluster.join(s, room);
  const got = waitFor(s, "one");
  const id = await cluster.publish({ room, event: "one", data: 1 });
  cluster.assertArgs(await got, [1], id);
  const session = cluster.keys().session(s._pid);

  // Lost without a goodbye: the gateway saves the session, then lets the room go.
  s.io.engine.close();
  await eventually(async () => (await cluster.redis.exists(session)) === 1, { message: `${session} stored` });
  await membersBecome(channel, {}, "the only member is gone");
  // Meta first: its expiry being the later one makes its PTTL, read first, the larger.
  const metaTtl = await cluster.redis.pttl(meta);
  const sessionTtl = await cluster.redis.pttl(session);
  assert.ok(sessionTtl > 0 && metaTtl >= sessionTtl, `meta PTTL ${metaTtl} >= session PTTL ${sessionTtl}`);
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
