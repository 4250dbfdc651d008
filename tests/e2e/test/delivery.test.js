"use strict";
// Room delivery across gateways: one XADD reaches the members of the target room(s) on every
// gateway, exactly once, and nobody else.

const { test } = require("node:test");
const assert = require("node:assert/strict");
const { useCluster, waitFor, record } = require("../lib/cluster");

const cluster = useCluster({ gateways: ["gw-a", "gw-b"] });

test("one XADD to room chat:42 reaches its members on both gateways", async () => {
  const a = await cluster.connect("gw-a");
  const b = await cluster.connect("gw-b");
  await cluster.join(a, "chat:42");
  await cluster.join(b, "chat:42");

  const gotA = waitFor(a, "message");
  const gotB = waitFor(b, "message");
  // Exactly what `redis-cli XADD socket.io:publish '*' room chat:42 event message data '{"text":"hi"}'` sends.
  const id = await cluster.publish([
    ["room", "chat:42"],
    ["event", "message"],
    ["data", '{"text":"hi"}'],
  ]);
  cluster.assertArgs(await gotA, [{ text: "hi" }], id, "client on gw-a");
  cluster.assertArgs(await gotB, [{ text: "hi" }], id, "client on gw-b");
});

test("a socket that is not in the room receives nothing (proven by a later marker)", async () => {
  // gw-b holds a member of chat:7, so it is subscribed to that room; the outsider sits next to it.
  const memberA = await cluster.connect("gw-a");
  const memberB = await cluster.connect("gw-b");
  const outsiderA = await cluster.connect("gw-a");
  const outsiderB = await cluster.connect("gw-b");
  await cluster.join(memberA, "chat:7");
  await cluster.join(memberB, "chat:7");
  await cluster.join(outsiderA, "lobby");
  await cluster.join(outsiderB, "lobby");
  const recA = record(outsiderA);
  const recB = record(outsiderB);
  const recMemberA = record(memberA);
  const recMemberB = record(memberB);

  await cluster.publish({ room: "chat:7", event: "secret", data: { n: 1 } });
  // Both gateways have dispatched "secret" once their member has it; the marker comes after it.
  await Promise.all([recMemberA.until("secret"), recMemberB.until("secret")]);
  await cluster.publish({ room: "lobby", event: "marker", data: {} });
  await Promise.all([recA.until("marker"), recB.until("marker")]);

  assert.deepEqual(recA.names(), ["marker"], "outsider on gw-a got only the marker");
  assert.deepEqual(recB.names(), ["marker"], "outsider on gw-b got only the marker");
  assert.deepEqual(recMemberA.names(), ["secret"]);
  assert.deepEqual(recMemberB.names(), ["secret"]);
});

test("a socket in several target rooms receives a multi-room publish once", async () => {
  const both = await cluster.connect("gw-a");
  const onlyB = await cluster.connect("gw-b");
  const both2 = await cluster.connect("gw-b");
  await cluster.join(both, "room-a", "room-b");
  await cluster.join(both2, "room-a", "room-b");
  await cluster.join(onlyB, "room-b");
  const recs = [record(both), record(onlyB), record(both2)];

  const id = await cluster.publish({ rooms: ["room-a", "room-b"], event: "multi", data: { x: 1 } });
  // A duplicate copy would come through room-b's channel, before anything published after it.
  await cluster.publish({ room: "room-b", event: "marker", data: {} });
  for (const rec of recs) await rec.until("marker");

  for (const [i, rec] of recs.entries()) {
    assert.deepEqual(rec.names(), ["multi", "marker"], `socket #${i}: exactly one "multi" then the marker`);
    cluster.assertArgs(rec.events[0].args, [{ x: 1 }], id, `socket #${i}`);
  }
});

test("except: members of an excluded room do not receive, the other members do", async () => {
  const keptA = await cluster.connect("gw-a");
  const bannedA = await cluster.connect("gw-a");
  const keptB = await cluster.connect("gw-b");
  const bannedB = await cluster.connect("gw-b");
  for (const s of [keptA, bannedA, keptB, bannedB]) await cluster.join(s, "general");
  await cluster.join(bannedA, "muted");
  await cluster.join(bannedB, "muted");
  const rec = { keptA: record(keptA), bannedA: record(bannedA), keptB: record(keptB), bannedB: record(bannedB) };

  const id = await cluster.publish({ room: "general", except: ["muted"], event: "news", data: { v: 2 } });
  await cluster.publish({ room: "general", event: "marker", data: {} });
  await Promise.all(Object.values(rec).map((r) => r.until("marker")));

  assert.deepEqual(rec.keptA.names(), ["news", "marker"]);
  assert.deepEqual(rec.keptB.names(), ["news", "marker"]);
  cluster.assertArgs(rec.keptA.events[0].args, [{ v: 2 }], id, "keptA");
  cluster.assertArgs(rec.keptB.events[0].args, [{ v: 2 }], id, "keptB");
  assert.deepEqual(rec.bannedA.names(), ["marker"], "member of the except room on gw-a");
  assert.deepEqual(rec.bannedB.names(), ["marker"], "member of the except room on gw-b");
});
