"use strict";
// Per-socket and per-address limits with the official client: rooms per socket, inbound event
// rate, payload size, connection attempts per address; and a malformed packet closes only the
// socket that sent it.

const { test } = require("node:test");
const assert = require("node:assert/strict");
const { useCluster, waitFor, eventually } = require("../lib/cluster");

const cluster = useCluster({
  gateways: [
    {
      id: "gw-a",
      env: { MAX_ROOMS_PER_SOCKET: "3", MAX_PAYLOAD: "2000", EVENT_RATE_PER_SECOND: "0.001", EVENT_BURST: "5" },
    },
    { id: "gw-conn", env: { CONNECT_RATE_PER_IP: "0.001", CONNECT_BURST_PER_IP: "3" } },
  ],
});

/** A second socket on the same gateway that must keep working whatever the first one does. */
async function bystander() {
  const s = await cluster.connect("gw-a");
  return async () => assert.equal((await cluster.whoami(s)).sid, s.id, "the other socket is unaffected");
}

test("a socket cannot join more than MAX_ROOMS_PER_SOCKET rooms", async () => {
  const s = await cluster.connect("gw-a");
  await cluster.join(s, "r1", "r2", "r3");
  const key = 'roomcast_gateway_joins_refused_total{reason="room_limit"}';
  const before = (await cluster.metrics("gw-a"))[key];
  assert.deepEqual(await cluster.roomRequest(s, "join", "r4"), { ok: false, error: "too many rooms (max 3)" });
  assert.equal((await cluster.metrics("gw-a"))[key], before + 1, "counted");
});

test("events past EVENT_BURST (refilling at EVENT_RATE_PER_SECOND) are refused in the ack", async () => {
  const s = await cluster.connect("gw-a");
  const key = 'roomcast_gateway_events_refused_total{reason="rate_limited"}';
  const before = (await cluster.metrics("gw-a"))[key];
  const acks = [];
  for (let i = 0; i < 7; i++) acks.push(await s.timeout(5000).emitWithAck("whoami"));
  for (const ack of acks.slice(0, 5)) assert.equal(ack.sid, s.id, "within the burst");
  for (const ack of acks.slice(5)) assert.deepEqual(ack, { ok: false, error: "rate limited" });
  assert.equal((await cluster.metrics("gw-a"))[key], before + 2, "counted");
  const other = await cluster.connect("gw-a");
  assert.equal((await cluster.whoami(other)).sid, other.id, "the limit is per socket");
});

for (const transports of [["websocket"], ["polling"]]) {
  test(`a message larger than MAX_PAYLOAD closes that client's connection only (${transports})`, async () => {
    const check = await bystander();
    const key = 'roomcast_gateway_connections_closed_total{reason="parse_error"}';
    const before = (await cluster.metrics("gw-a"))[key];
    const s = await cluster.connect("gw-a", { transports });
    const down = waitFor(s, "disconnect");
    s.emit("whoami", "x".repeat(5000));
    const [reason] = await down;
    assert.match(reason, /transport (close|error)/);
    await check();
    await eventually(async () => (await cluster.metrics("gw-a"))[key] === before + 1, { message: "counted as parse_error" });
  });
}

test("a malformed Socket.IO packet closes that client's connection only", async () => {
  const check = await bystander();
  const key = 'roomcast_gateway_connections_closed_total{reason="parse_error"}';
  const before = (await cluster.metrics("gw-a"))[key];
  const s = await cluster.connect("gw-a", { transports: ["websocket"] });
  const down = waitFor(s, "disconnect");
  s.io.engine.send("9not a socket.io packet");
  const [reason] = await down;
  assert.match(reason, /transport (close|error)/);
  await check();
  await eventually(async () => (await cluster.metrics("gw-a"))[key] === before + 1, { message: "counted as parse_error" });
});

test("connection attempts from one address past CONNECT_BURST_PER_IP are refused", async () => {
  for (let i = 0; i < 3; i++) await cluster.connect("gw-conn", { transports: ["websocket"] });
  for (const transports of [["websocket"], ["polling"]]) {
    const { error } = await cluster.tryConnect("gw-conn", { transports });
    assert.ok(error, `${transports}: refused`);
    assert.match(error.message, /error/, `${transports}: ${error.message}`);
  }
  // The client retries once on its own (polling → websocket fallback), so at least 2.
  const refused = (await cluster.metrics("gw-conn"))['roomcast_gateway_connections_refused_total{reason="rate_limited"}'];
  assert.ok(refused >= 2, `refusals counted: ${refused}`);
});
