"use strict";
// Connection state recovery across gateways (default settings: recovery on, 120 s window). The
// official client connects to gw-a through a TCP proxy and reconnects by itself; the proxy holds
// its reconnection until gw-a has stored the session, then sends it to gw-b. gw-b must restore the
// session: same socket.id and pid, same rooms, every missed event replayed in order with its offset
// before the CONNECT reply (so before the client's "connect"), then `socket.recovered === true`.

const { test } = require("node:test");
const assert = require("node:assert/strict");
const { useCluster, waitFor, eventually } = require("../lib/cluster");
const {
  RECONNECT,
  Timeline,
  assertComplete,
  assertOffsetsIncrease,
  historyHas,
  historyHasAll,
  sessionGone,
  dropHeld,
  reconnectThrough,
  assertSameRooms,
  cutMidStream,
} = require("../lib/recovery");

const cluster = useCluster({ gateways: ["gw-a", "gw-b"] });

const asEvent = (e) => ({ event: e.event, args: e.raw });

/**
 * Connects through a proxy to gw-a, joins two rooms only this socket is in, receives live events,
 * is dropped with socket.io.engine.close(), misses room, multi-room, except and namespace-wide
 * events, and reconnects to gw-b.
 */
async function moveAfterEngineClose(label, transports) {
  const [r1, r2] = [`mv-${label}-1`, `mv-${label}-2`];
  const m = (room, i) => ({ room, event: "m", data: { room, i } });
  const proxy = await cluster.proxy("gw-a");
  const s = await cluster.connect(proxy, { ...RECONNECT, ...(transports ? { transports } : {}) });
  const tl = new Timeline(s);
  await cluster.join(s, r1, r2);
  const before = await cluster.whoami(s);
  assert.equal(before.gateway, "gw-a");
  assert.equal(before.sid, s.id);
  if (!transports && s.io.engine.transport.name !== "websocket") await waitFor(s.io.engine, "upgrade", { what: "the upgrade to websocket" });

  // Live events first: each carries its offset, and the client remembers the last one.
  const live = [m(r1, 0), m(r2, 0)];
  const liveIds = await cluster.publishMany(live);
  await tl.untilCount("m", 2);
  cluster.assertEvents(tl.events().map(asEvent), live.map((f, k) => ({ event: "m", args: [f.data], id: liveIds[k] })), "live events");

  const { pid, id, reason } = await dropHeld(cluster, s, proxy, "close");
  const mark = tl.mark();

  const missed = [
    m(r1, 1),
    m(r2, 1),
    { rooms: [r1, r2], event: "both", data: { n: 1 } }, // in two of its rooms: replayed once
    { room: r1, except: [r2], event: "excluded", data: { n: 2 } }, // the socket is in r2: never for it
    { event: "everyone", data: { n: 3 } }, // namespace-wide
    m(r1, 2),
    m(r2, 2),
  ];
  const missedIds = await cluster.publishMany(missed);
  // Every missed entry is in its topics' history before the client may come back, so all of
  // them are to be replayed (none can arrive on the live path instead).
  await historyHasAll(cluster, missed.map((fields, k) => ({ fields, id: missedIds[k] })));

  const back = await reconnectThrough(s, proxy, "gw-b");
  assert.equal(back.recovered, true, `recovered after ${reason} (${tl.describe()})`);
  assert.equal(back.id, id, "same socket.id after recovery");
  assert.equal(back.pid, pid, "same pid after recovery");

  const connectAt = tl.entries.findIndex((e, k) => k >= mark && e.type === "connect");
  const replay = tl.entries.slice(mark, connectAt).filter((e) => e.type === "event");
  const expectedReplay = missed.map((fields, k) => ({ fields, id: missedIds[k] })).filter(({ fields }) => fields.event !== "excluded");
  cluster.assertEvents(
    replay.map(asEvent),
    expectedReplay.map(({ fields, id: entryId }) => ({ event: fields.event, args: [fields.data], id: entryId })),
    `replayed before the CONNECT reply (${tl.describe()})`
  );

  const after = await cluster.whoami(s);
  assert.equal(after.gateway, "gw-b", "now served by gw-b");
  assert.equal(after.sid, id);
  assertSameRooms(before, after, "whoami after recovery");

  // Live again on gw-b, after the replay.
  const next = [m(r1, 3), m(r2, 3), { event: "everyone", data: { n: 4 } }];
  const nextIds = await cluster.publishMany(next);
  await tl.untilCount("everyone", 2);
  cluster.assertEvents(
    tl.events(undefined, connectAt).map(asEvent),
    next.map((f, k) => ({ event: f.event, args: [f.data], id: nextIds[k] })),
    "live events after the recovery"
  );

  const all = tl.events();
  assert.ok(!all.some((e) => e.event === "excluded"), "the except publish never reached a member of the excluded room");
  const requests = [...live, ...missed, ...next];
  const entryIds = [...liveIds, ...missedIds, ...nextIds];
  const ids = new Map([r1, r2].map((r) => [r, []]));
  for (const [k, f] of requests.entries()) if (f.event === "m") ids.get(f.room).push(entryIds[k]);
  assertComplete(tl.events("m"), ids, "room events over the whole test");
  assertOffsetsIncrease(all, "every event over the whole test");

  await sessionGone(cluster, pid, "used by the recovery");
  const members = cluster.keys().members(cluster.keys().room(r1));
  await eventually(
    async () => {
      assert.deepEqual(await cluster.redis.hgetall(members), { "gw-b": "1" });
      return true;
    },
    { message: `${members}: the socket is counted on gw-b only` }
  );
}

test("engine.close() over websocket, reconnect to the other gateway: recovered, same id and rooms, missed events replayed in order", async () => {
  await moveAfterEngineClose("ws", ["websocket"]);
});

test("engine.close() over long-polling, reconnect to the other gateway: recovered, same id and rooms, missed events replayed in order", async () => {
  await moveAfterEngineClose("poll", ["polling"]);
});

test("engine.close() after the polling→websocket upgrade, reconnect to the other gateway: recovered", async () => {
  await moveAfterEngineClose("upgrade", undefined);
});

test("abrupt TCP close (RST) mid-stream, twice (gw-a → gw-b → gw-a): recovered each time, every event once and in order", async (t) => {
  await cutMidStream(cluster, {
    rooms: ["cut-1", "cut-2"],
    perRoom: 300,
    batch: 10,
    paced: 40,
    route: ["gw-a", "gw-b", "gw-a"],
    cutAfter: 100,
    diagnostic: (m) => t.diagnostic(m),
  });
});

test("a client that had received nothing (no offset) gets exactly what was published after it joined", async () => {
  const room = "no-offset";
  // The room has history from before the client joined (another member holds it): not for the client.
  const other = await cluster.connect("gw-b");
  await cluster.join(other, room);
  const earlier = await cluster.publishMany([0, 1].map((n) => ({ room, event: "early", data: { n } })));
  await new Timeline(other).untilCount("early", 2);
  await historyHas(cluster, cluster.keys().room(room), earlier[1]);

  const proxy = await cluster.proxy("gw-a");
  const s = await cluster.connect(proxy, RECONNECT);
  const tl = new Timeline(s);
  await cluster.join(s, room);
  const { id, offset } = await dropHeld(cluster, s, proxy, "close");
  assert.equal(offset, undefined, "the client has no offset: it received no event");
  const missedId = await cluster.publish({ room, event: "missed", data: { n: 2 } });
  await historyHas(cluster, cluster.keys().room(room), missedId);

  const back = await reconnectThrough(s, proxy, "gw-b");
  assert.equal(back.recovered, true, `recovered (${tl.describe()})`);
  assert.equal(back.id, id);
  cluster.assertEvents(
    tl.events().map(asEvent),
    [{ event: "missed", args: [{ n: 2 }], id: missedId }],
    "only the event published after the join is replayed"
  );
});
