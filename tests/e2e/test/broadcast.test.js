"use strict";
// Publishes without a room (the whole namespace), multi-argument events (`args`), and a second
// namespace (NAMESPACES=/,/admin) selected by the `nsp` field.

const { test } = require("node:test");
const assert = require("node:assert/strict");
const { useCluster, waitFor, record } = require("../lib/cluster");

const cluster = useCluster({ gateways: ["gw-a", "gw-b"], gatewayEnv: { NAMESPACES: "/,/admin" } });

test("a publish without room reaches every socket of the namespace on both gateways", async () => {
  const sockets = [
    await cluster.connect("gw-a"),
    await cluster.connect("gw-a", { transports: ["websocket"] }),
    await cluster.connect("gw-b"),
    await cluster.connect("gw-b", { transports: ["polling"] }),
  ];
  await cluster.join(sockets[1], "some-room"); // being in a room does not matter
  const got = sockets.map((s) => waitFor(s, "announcement"));

  const id = await cluster.publish({ event: "announcement", data: { text: "maintenance at noon" } });
  for (const [i, p] of got.entries()) cluster.assertArgs(await p, [{ text: "maintenance at noon" }], id, `socket #${i}`);
});

test("`args` arrives as several arguments, `data` as one, no data as none", async () => {
  const a = await cluster.connect("gw-a");
  const b = await cluster.connect("gw-b");
  await cluster.join(a, "args-room");
  await cluster.join(b, "args-room");
  const recA = record(a);
  const recB = record(b);

  const ids = [
    await cluster.publish({ room: "args-room", event: "multi", args: [1, "two", { three: [3] }, null, true] }),
    await cluster.publish({ room: "args-room", event: "single", data: [1, "two"] }),
    await cluster.publish({ room: "args-room", event: "bare" }),
  ];
  await Promise.all([recA.until("bare"), recB.until("bare")]);

  for (const rec of [recA, recB]) {
    cluster.assertEvents(rec.events, [
      { event: "multi", args: [1, "two", { three: [3] }, null, true], id: ids[0] },
      { event: "single", args: [[1, "two"]], id: ids[1] },
      { event: "bare", args: [], id: ids[2] },
    ]);
  }
});

test("`nsp /admin` reaches only sockets of /admin; the default namespace gets only its own events", async () => {
  const adminA = await cluster.connect("gw-a", { nsp: "/admin" });
  const adminB = await cluster.connect("gw-b", { nsp: "/admin" });
  const rootA = await cluster.connect("gw-a");
  const rootB = await cluster.connect("gw-b");
  for (const s of [adminA, adminB, rootA, rootB]) await cluster.join(s, "ops");
  const recs = { adminA: record(adminA), adminB: record(adminB), rootA: record(rootA), rootB: record(rootB) };

  const adminRoomId = await cluster.publish({ nsp: "/admin", room: "ops", event: "admin-room", data: { a: 1 } });
  await cluster.publish({ nsp: "/admin", event: "admin-all", data: { a: 2 } });
  await cluster.publish({ room: "ops", event: "root-room", data: { r: 1 } });
  await cluster.publish({ event: "root-all", data: { r: 2 } });
  // Markers in both namespaces, published last.
  await cluster.publish({ nsp: "/admin", event: "marker" });
  await cluster.publish({ event: "marker" });
  await Promise.all(Object.values(recs).map((r) => r.until("marker")));

  assert.deepEqual(recs.adminA.names(), ["admin-room", "admin-all", "marker"]);
  assert.deepEqual(recs.adminB.names(), ["admin-room", "admin-all", "marker"]);
  cluster.assertArgs(recs.adminA.events[0].args, [{ a: 1 }], adminRoomId, "admin-room on gw-a");
  assert.deepEqual(recs.rootA.names(), ["root-room", "root-all", "marker"]);
  assert.deepEqual(recs.rootB.names(), ["root-room", "root-all", "marker"]);
});

test("a namespace the gateway does not serve is refused with connect_error Invalid namespace", async () => {
  const { error } = await cluster.tryConnect("gw-a", { nsp: "/nope" });
  assert.ok(error, "connecting to /nope must fail");
  assert.equal(error.message, "Invalid namespace");
});
