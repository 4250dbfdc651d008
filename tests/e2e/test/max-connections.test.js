"use strict";
// MAX_CONNECTIONS: gw-a accepts 2 connections; a third gets connect_error "server full…" while the
// first two keep working; a slot freed by a disconnect can be taken again. gw-b (default limit)
// is unaffected.

const { test } = require("node:test");
const assert = require("node:assert/strict");
const { useCluster, waitFor, eventually } = require("../lib/cluster");

const cluster = useCluster({ gateways: [{ id: "gw-a", env: { MAX_CONNECTIONS: "2" } }, "gw-b"] });

function assertServerFull(error, what) {
  assert.ok(error, `${what}: expected connect_error, but it connected`);
  assert.match(error.message, /^server full/, `${what}: connect_error message`);
}

test("the connection beyond MAX_CONNECTIONS is refused; the others keep working; a freed slot is reusable", async () => {
  const first = await cluster.connect("gw-a");
  const second = await cluster.connect("gw-a", { transports: ["websocket"] });

  const third = await cluster.tryConnect("gw-a");
  assertServerFull(third.error, "third client");
  const thirdPolling = await cluster.tryConnect("gw-a", { transports: ["polling"] });
  assertServerFull(thirdPolling.error, "third client (polling)");

  // The two accepted clients still work.
  await cluster.join(first, "full");
  await cluster.join(second, "full");
  const got = [waitFor(first, "still-here"), waitFor(second, "still-here")];
  const id1 = await cluster.publish({ room: "full", event: "still-here", data: 1 });
  for (const p of got) cluster.assertArgs(await p, [1], id1);

  // Another gateway has its own limit.
  const elsewhere = await cluster.connect("gw-b");
  await cluster.join(elsewhere, "full");

  // Freeing a slot lets a new client in (the gateway notices the disconnect asynchronously).
  first.disconnect();
  const replacement = await eventually(
    async () => {
      const attempt = await cluster.tryConnect("gw-a");
      if (attempt.error) assertServerFull(attempt.error, "while the slot is being freed");
      return attempt.socket && !attempt.error ? attempt.socket : null;
    },
    { message: "a new client connects to gw-a after one of the two disconnected" }
  );
  await cluster.join(replacement, "full");
  const gotNew = [waitFor(replacement, "again"), waitFor(second, "again"), waitFor(elsewhere, "again")];
  const id2 = await cluster.publish({ room: "full", event: "again", data: 2 });
  for (const p of gotNew) cluster.assertArgs(await p, [2], id2);

  // And the limit still holds with the replacement counted.
  const extra = await cluster.tryConnect("gw-a", { transports: ["websocket"] });
  assertServerFull(extra.error, "client beyond the limit after the replacement");
});
