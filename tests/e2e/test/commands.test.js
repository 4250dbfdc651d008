"use strict";
// Backend commands through the publish stream (`command join|leave|disconnect`), applied on
// every gateway, with the official client.

const { test } = require("node:test");
const assert = require("node:assert/strict");
const { useCluster, record, waitFor, eventually } = require("../lib/cluster");
const { sign, now } = require("../lib/jwt");
const { RECONNECT } = require("../lib/recovery");

const SECRET = "roomcast-e2e-shared-secret-of-32+-bytes";
const cluster = useCluster({
  gateways: [
    { id: "gw-a", env: { JWT_SECRET: SECRET } },
    { id: "gw-b", env: { JWT_SECRET: SECRET } },
  ],
});

const as = (sub, options = {}) => ({ auth: { token: sign({ sub, exp: now() + 600, rooms: ["*"] }, { key: SECRET }) }, ...options });

async function roomsOf(socket) {
  return [...(await cluster.whoami(socket)).rooms].sort();
}

test("join: a user's sockets on both gateways join rooms and receive their events", async () => {
  const a = await cluster.connect("gw-a", as("alice"));
  const b = await cluster.connect("gw-b", as("alice"));
  const other = await cluster.connect("gw-a", as("zoe"));
  await cluster.publish({ command: "join", user: "alice", args: ["premium", "news"] });
  for (const s of [a, b]) {
    await eventually(async () => (await roomsOf(s)).join() === "news,premium,user:alice", { message: `${s.__label} joined` });
  }
  assert.deepEqual(await roomsOf(other), ["user:zoe"], "another user's sockets are untouched");
  const [ra, rb] = [record(a), record(b)];
  await cluster.publish({ room: "premium", event: "offer", data: { n: 1 } });
  await Promise.all([ra.until("offer"), rb.until("offer")]);
});

test("leave: the members of a room on both gateways leave rooms", async () => {
  const a = await cluster.connect("gw-a", as("bea"));
  const b = await cluster.connect("gw-b", as("cem"));
  await cluster.join(a, "team", "extra");
  await cluster.join(b, "team");
  await cluster.publish({ command: "leave", room: "team", args: ["team", "extra"] });
  await eventually(async () => (await roomsOf(a)).join() === "user:bea", { message: "a left" });
  await eventually(async () => (await roomsOf(b)).join() === "user:cem", { message: "b left" });
});

test("disconnect: a user's sockets on both gateways are disconnected for good, without a session", async () => {
  const a = await cluster.connect("gw-a", as("mallory", RECONNECT));
  const b = await cluster.connect("gw-b", as("mallory", RECONNECT));
  const bystander = await cluster.connect("gw-a", as("dan"));
  const pids = [a._pid, b._pid];
  const downs = [waitFor(a, "disconnect"), waitFor(b, "disconnect")];
  await cluster.publish({ command: "disconnect", user: "mallory" });
  for (const [reason] of await Promise.all(downs)) assert.equal(reason, "io server disconnect");
  for (const pid of pids) assert.equal(await cluster.redis.exists(cluster.keys().session(pid)), 0, "no session kept");
  assert.equal(a.connected || b.connected, false, "the client does not reconnect after a server disconnect");
  assert.equal((await cluster.whoami(bystander)).user, "dan", "other users stay connected");
});

test("disconnect with recover: the client reconnects by itself and recovers its session", async () => {
  const s = await cluster.connect("gw-b", as("erin", { ...RECONNECT, transports: ["websocket"] }));
  await cluster.join(s, "chat:1");
  const id = s.id;
  const down = waitFor(s, "disconnect");
  const back = waitFor(s, "connect");
  await cluster.publish({ command: "disconnect", user: "erin", recover: "true" });
  const [reason] = await down;
  assert.match(reason, /transport (close|error)/);
  await back;
  assert.equal(s.recovered, true);
  assert.equal(s.id, id);
  assert.deepEqual(await roomsOf(s), ["chat:1", "user:erin"]);
});

test("a malformed command is dead-lettered with its reason", async () => {
  const id = await cluster.publish({ command: "join", user: "alice" });
  await eventually(
    async () => {
      const entries = await cluster.redis.xrange(cluster.keys().dead, "-", "+");
      return entries.find(([, fields]) => fields.includes(id));
    },
    { message: "dead-lettered" }
  );
  const entries = await cluster.redis.xrange(cluster.keys().dead, "-", "+");
  const [, fields] = entries.find(([, f]) => f.includes(id));
  const error = fields[fields.indexOf("error") + 1];
  assert.equal(error, "`command join` needs field `args`: a non-empty JSON array of room names");
});
