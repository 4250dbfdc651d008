"use strict";
// Each Engine.IO transport the official client uses: websocket only, long-polling only, and the
// default polling-then-upgrade.

const { test } = require("node:test");
const assert = require("node:assert/strict");
const { useCluster, waitFor } = require("../lib/cluster");

const cluster = useCluster({ gateways: ["gw-a", "gw-b"] });

async function joinAndReceive(socket, room) {
  await cluster.join(socket, room);
  const got = waitFor(socket, "hello");
  const id = await cluster.publish({ room, event: "hello", data: { room } });
  cluster.assertArgs(await got, [{ room }], id);
}

for (const gw of ["gw-a", "gw-b"]) {
  test(`websocket-only client on ${gw} joins and receives`, async () => {
    const s = await cluster.connect(gw, { transports: ["websocket"] });
    assert.equal(s.io.engine.transport.name, "websocket");
    await joinAndReceive(s, `ws-${gw}`);
    assert.equal(s.io.engine.transport.name, "websocket");
  });

  test(`polling-only client on ${gw} joins and receives`, async () => {
    const s = await cluster.connect(gw, { transports: ["polling"] });
    assert.equal(s.io.engine.transport.name, "polling");
    await joinAndReceive(s, `poll-${gw}`);
    assert.equal(s.io.engine.transport.name, "polling");
  });

  test(`default client on ${gw} upgrades from polling to websocket, then joins and receives`, async () => {
    const socket = cluster.createSocket(gw); // default transports: ["polling", "websocket"]
    // The engine exists as soon as the socket does: listen before the upgrade can happen.
    const engine = socket.io.engine;
    assert.equal(engine.transport.name, "polling", "starts on polling");
    const upgraded = waitFor(engine, "upgrade", { what: `engine of ${socket.__label}` });
    const { error } = await cluster.settle(socket);
    assert.ifError(error);
    const [transport] = await upgraded;
    assert.equal(transport.name, "websocket");
    assert.equal(socket.io.engine.transport.name, "websocket");
    await joinAndReceive(socket, `upgrade-${gw}`);
  });
}
