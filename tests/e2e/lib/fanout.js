"use strict";
// Helpers for the fanout fault tests: a publisher at a steady rate that records which XADDs
// Redis acknowledged, a per-room collector of what a client received, and the rooms' history
// read back from Redis (the envelopes decoded).

const assert = require("node:assert/strict");
const { decode } = require("@msgpack/msgpack");
const { TIMEOUT_MS } = require("./cluster");

const delay = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Publishes `perRoom` events `{room, i}` (event `event`) to every room, one round (one event per
 * room) every `tickMs`, each round in one pipeline of XADDs on `redis` (an ioredis client). A
 * round whose pipeline fails is not retried: its events count as not acknowledged (they may or
 * may not be in the stream). Returns {done, acked, published(), until(n)}: `acked.get(room)` is
 * a Map i -> entry id of the acknowledged events; until(n) resolves once n rounds were attempted.
 */
function publishPaced(redis, stream, { rooms, perRoom, tickMs, event = "tick" }) {
  const acked = new Map(rooms.map((r) => [r, new Map()]));
  let rounds = 0;
  let failed = 0;
  const waiters = [];
  const wake = () => {
    for (const w of [...waiters]) {
      if (rounds >= w.n) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve();
      }
    }
  };
  const done = (async () => {
    for (let i = 0; i < perRoom; i++) {
      const started = Date.now();
      const pipeline = redis.pipeline();
      for (const room of rooms) pipeline.xadd(stream, "*", "room", room, "event", event, "data", JSON.stringify({ room, i }));
      try {
        const results = await pipeline.exec();
        for (const [k, [err, id]] of results.entries()) {
          if (err) failed++;
          else acked.get(rooms[k]).set(i, id);
        }
      } catch (_) {
        failed += rooms.length;
      }
      rounds++;
      wake();
      // Pacing, not an assertion: a steady rate instead of a burst.
      const wait = tickMs - (Date.now() - started);
      if (wait > 0) await delay(wait);
    }
  })();
  done.catch(() => {});
  return {
    done,
    acked,
    failed: () => failed,
    published: () => rounds,
    until: (n) => (rounds >= n ? Promise.resolve() : new Promise((resolve) => waiters.push({ n, resolve }))),
  };
}

/**
 * Records the `event`s `{room, i}` a socket receives, per room: [{i, offset}] in arrival order.
 * `until(check, what)` resolves once check(byRoom) holds.
 */
function roomCollector(socket, event = "tick") {
  const byRoom = new Map();
  const offsets = [];
  const waiters = [];
  socket.on(event, (payload, offset) => {
    if (!byRoom.has(payload.room)) byRoom.set(payload.room, []);
    byRoom.get(payload.room).push({ i: payload.i, offset });
    offsets.push(offset);
    for (const w of [...waiters]) {
      if (w.check(byRoom)) {
        waiters.splice(waiters.indexOf(w), 1);
        clearTimeout(w.timer);
        w.resolve();
      }
    }
  });
  return {
    byRoom,
    /** Every event's offset, in arrival order, across rooms. */
    offsets,
    until(check, what, timeout = TIMEOUT_MS * 6) {
      if (check(byRoom)) return Promise.resolve();
      return new Promise((resolve, reject) => {
        const w = { check, resolve };
        w.timer = setTimeout(() => {
          waiters.splice(waiters.indexOf(w), 1);
          const counts = [...byRoom].map(([r, l]) => `${r}:${l.length}`).join(" ");
          reject(new Error(`timed out after ${timeout} ms waiting for ${what} on ${socket.__label}; received ${counts}`));
        }, timeout);
        waiters.push(w);
      });
    },
  };
}

/** The room's history: [{id, seq, i}] in stream order (envelope [1, seq, body] decoded). */
async function readHistory(cluster, room) {
  const channel = cluster.keys().room(room);
  const entries = await cluster.redis.xrangeBuffer(cluster.keys().hist(channel), "-", "+");
  return entries.map(([id, fields]) => {
    const envelope = decode(fields[1]);
    const [version, seq, body] = envelope;
    assert.equal(version, 1, "envelope version");
    const [event, payload] = JSON.parse(body[4]);
    assert.equal(body[0], id.toString(), "history entry id = the envelope's source id");
    return { id: id.toString(), seq, event, i: payload.i };
  });
}

/**
 * Asserts that `got` ([{i, offset}] in arrival order) is exactly the room's events in publish
 * order, each once: every acknowledged i (`acked`: Map i -> id) with its entry id as offset,
 * plus possibly some unacknowledged ones (an XADD whose reply was lost may still have reached the
 * stream), never out of order, never twice.
 */
function assertRoomSequence(got, acked, total, what) {
  const is = got.map((e) => e.i);
  const dups = is.filter((i, k) => is.indexOf(i) !== k);
  assert.deepEqual(dups, [], `${what}: no event twice`);
  const firstOff = is.findIndex((v, k) => k > 0 && v <= is[k - 1]);
  assert.equal(firstOff, -1, `${what}: in publish order (first out of order at #${firstOff}: ${JSON.stringify(is.slice(Math.max(0, firstOff - 3), firstOff + 3))})`);
  const seen = new Set(is);
  const missing = [...acked.keys()].filter((i) => !seen.has(i));
  assert.deepEqual(missing.slice(0, 20), [], `${what}: every acknowledged event arrived (${missing.length} missing)`);
  for (const e of got) {
    if (acked.has(e.i)) assert.equal(e.offset, acked.get(e.i), `${what}: event i=${e.i} carries its entry id as offset`);
    assert.ok(e.i >= 0 && e.i < total, `${what}: i=${e.i} was published`);
  }
}

/** Stream ids compared as (ms, seq). */
function compareIds(a, b) {
  const [am, as] = a.split("-").map(BigInt);
  const [bm, bs] = b.split("-").map(BigInt);
  return am === bm ? (as === bs ? 0 : as < bs ? -1 : 1) : am < bm ? -1 : 1;
}

/** Index of the first offset not greater than the one before it, or -1. */
function firstDescent(offsets) {
  return offsets.findIndex((o, k) => k > 0 && compareIds(offsets[k - 1], o) >= 0);
}

/** Whether every partition cursor is at or past entry `id`. */
async function partitionsDone(cluster, id) {
  const p = cluster.partitions;
  const keys = Array.from({ length: p }, (_, k) => `${cluster.prefix}:fanout:{${k}/${p}}:cursor`);
  const cursors = await cluster.redis.mget(...keys);
  return cursors.every((c) => c !== null && compareIds(c, id) >= 0);
}

module.exports = { publishPaced, roomCollector, readHistory, assertRoomSequence, partitionsDone, compareIds, firstDescent, delay };
