"use strict";
// Helpers of the connection state recovery and self-healing tests: a timeline of what a socket
// receives (events split into payload and offset, plus connect/disconnect), a firehose publisher,
// the "complete, in order, once" check, dropping a client behind a held proxy and letting it
// reconnect elsewhere, Redis state polls (session, history), and a direct call of the real
// topic_publish.lua for injecting a gap.
//
// Offsets: with recovery on, every event from a room or namespace publish carries its offset, the
// publish stream entry id ("<ms>-<n>"), as its last argument; the official client remembers the
// last one and sends it with its pid when it reconnects.

const assert = require("node:assert/strict");
const fs = require("node:fs");
const path = require("node:path");
const { encode, decode } = require("@msgpack/msgpack");
const { REPO_ROOT, TIMEOUT_MS, eventually, waitFor } = require("./cluster");

/**
 * socket.io-client options for a client that reconnects by itself, promptly. The delay is the
 * client's own reconnection backoff (kept short so the suite is quick), not something a test waits on.
 */
const RECONNECT = { reconnection: true, reconnectionDelay: 50, reconnectionDelayMax: 200, randomizationFactor: 0 };

const ID_RE = /^(\d+)-(\d+)$/;

/** Compares two stream entry ids "<ms>-<n>" numerically: negative, 0 or positive. */
function compareIds(a, b) {
  const ma = ID_RE.exec(a);
  const mb = ID_RE.exec(b);
  assert.ok(ma && mb, `stream ids look like <ms>-<n>: ${JSON.stringify(a)}, ${JSON.stringify(b)}`);
  const [msA, nA, msB, nB] = [ma[1], ma[2], mb[1], mb[2]].map(BigInt);
  if (msA !== msB) return msA < msB ? -1 : 1;
  return nA === nB ? 0 : nA < nB ? -1 : 1;
}

/**
 * Everything one socket goes through, in arrival order:
 *   {type: "event", event, args, offset}   args = payload arguments; offset = the trailing string
 *                                          argument (undefined if the last argument is not a string)
 *   {type: "connect", id, pid, recovered}  every connect after the timeline was created
 *   {type: "disconnect", reason}
 * The official client emits the events it receives before a CONNECT reply (a recovery replay)
 * right before its "connect", so they sit just before that connect entry here.
 */
class Timeline {
  constructor(socket) {
    this.socket = socket;
    this.entries = [];
    this.waiters = [];
    this.counts = new Map(); // event name -> how many arrived
    this.lifecycle = 0; // connects and disconnects so far
    socket.onAny((event, ...raw) => {
      const last = raw[raw.length - 1];
      const hasOffset = typeof last === "string";
      this._push({ type: "event", event, args: hasOffset ? raw.slice(0, -1) : raw, offset: hasOffset ? last : undefined, raw });
    });
    socket.on("connect", () => this._push({ type: "connect", id: socket.id, pid: socket._pid, recovered: socket.recovered }));
    socket.on("disconnect", (reason) => this._push({ type: "disconnect", reason }));
    // Reconnection attempts (a connection closed before its CONNECT reply emits no disconnect;
    // the official client keeps the events it received on it and emits them at the next connect).
    this.attempts = 0;
    socket.io.on("reconnect_attempt", () => this.attempts++);
  }

  _push(entry) {
    // Where it arrived: `segment` counts the connects and disconnects before it, so for an event
    // 0 = before the first drop, odd = after a disconnect and before the next "connect" (a
    // recovery replay), even ≥ 2 = live after a reconnection.
    entry.index = this.entries.length;
    entry.segment = this.lifecycle;
    if (entry.type === "event") this.counts.set(entry.event, this.count(entry.event) + 1);
    else this.lifecycle++;
    this.entries.push(entry);
    for (const w of [...this.waiters]) w();
  }

  /** Application events (optionally only those named `name`), optionally from entry index `from`. */
  events(name, from = 0) {
    return this.entries.slice(from).filter((e) => e.type === "event" && (name === undefined || e.event === name));
  }

  /** How many events named `name` arrived. */
  count(name) {
    return this.counts.get(name) || 0;
  }

  /** Index of the next entry: a bookmark for events(name, from). */
  mark() {
    return this.entries.length;
  }

  /** Compact text of the entries, for failure messages. */
  describe(max = 12) {
    const text = (e) =>
      e.type === "event" ? `${e.event}${JSON.stringify(e.args)}@${e.offset}` : e.type === "connect" ? `<connect ${e.id} recovered=${e.recovered}>` : `<disconnect ${e.reason}>`;
    const n = this.entries.length;
    const shown = n > max ? [...this.entries.slice(0, max / 2).map(text), `… ${n - max} more …`, ...this.entries.slice(-max / 2).map(text)] : this.entries.map(text);
    return `${n} entries: ${shown.join(", ")}`;
  }

  /** Resolves once `predicate(this)` is true (checked on every new entry); fails after the timeout. */
  until(predicate, what, { timeout = TIMEOUT_MS } = {}) {
    return new Promise((resolve, reject) => {
      const check = () => {
        if (!predicate(this)) return;
        clearTimeout(timer);
        this.waiters.splice(this.waiters.indexOf(check), 1);
        resolve(this);
      };
      const timer = setTimeout(() => {
        this.waiters.splice(this.waiters.indexOf(check), 1);
        reject(new Error(`timed out after ${timeout} ms waiting for ${what} on ${this.socket.__label}; ${this.describe()}`));
      }, timeout);
      this.waiters.push(check);
      check();
    });
  }

  /** Resolves once `count` events named `name` have arrived (in total). */
  untilCount(name, count, options) {
    return this.until((t) => t.count(name) >= count, `${count}× "${name}"`, options);
  }
}

/**
 * Publishes `perRoom` events `{room, i}` (event `event`, i from `first`) to every room,
 * round-robin, in pipelined batches of `batch` XADDs, as fast as Redis takes them. Returns
 * {done, ids, total, published()}: `ids.get(room)[k]` is the entry id of event i = first + k of
 * room; `done` resolves when all are published. With `pace: {timeline, window}` it keeps at
 * most `window` events ahead of what `timeline`'s socket received (5 × `window` while that socket
 * is disconnected).
 */
function startFirehose(cluster, { rooms, perRoom, batch = 50, event = "tick", pad = 0, first = 0, pace = null }) {
  const ids = new Map(rooms.map((r) => [r, []]));
  const requests = [];
  for (let i = first; i < first + perRoom; i++) {
    for (const room of rooms) requests.push({ room, i });
  }
  let published = 0;
  const done = (async () => {
    for (let k = 0; k < requests.length; k += batch) {
      if (pace) {
        // Flow control: at most `window` events ahead of the paced client while it is connected
        // (so a cut always finds events in flight), 5 × `window` while it is disconnected (so it
        // misses some, and publishing goes on across its reconnection and replay).
        const { timeline, window } = pace;
        await timeline.until(
          (t) => t.count(event) >= k - (t.socket.connected ? window : 5 * window),
          `the paced client to be within ${window} events (${5 * window} while disconnected) of the ${k} published`,
          { timeout: 60000 }
        );
      }
      const chunk = requests.slice(k, k + batch);
      const got = await cluster.publishMany(
        chunk.map(({ room, i }) => ({ room, event, data: pad ? { room, i, pad: "x".repeat(pad) } : { room, i } }))
      );
      for (const [j, { room }] of chunk.entries()) ids.get(room).push(got[j]);
      published += chunk.length;
    }
  })();
  done.catch(() => {}); // awaited by the test; a failure after the test gave up is not an unhandled rejection
  return { done, ids, total: requests.length, published: () => published };
}

/** Concatenates firehose id maps (room -> ids) of consecutive phases. */
function concatIds(...maps) {
  const out = new Map();
  for (const m of maps) for (const [room, ids] of m) out.set(room, [...(out.get(room) || []), ...ids]);
  return out;
}

/**
 * Asserts that the `{room, i}` events in `events` (timeline events) are, for every room of
 * `ids` (room -> entry ids by i), exactly i = 0..n-1: complete, in order, each once; that every
 * offset is that event's publish entry id; that no offset appears twice; and (unless
 * `acrossRooms: false`) that offsets strictly increase over the whole list: a gateway sends in
 * publish order (docs/recovery.md "Why one offset is enough"), except after a gap repair, which
 * may send a room's repaired events after later events of other rooms (the `late` exception).
 */
function assertComplete(events, ids, what, { acrossRooms = true } = {}) {
  for (const [room, roomIds] of ids) {
    const got = events.filter((e) => e.args[0] && e.args[0].room === room);
    const seq = got.map((e) => e.args[0].i);
    const seen = new Map();
    for (const i of seq) seen.set(i, (seen.get(i) || 0) + 1);
    const missing = roomIds.map((_, i) => i).filter((i) => !seen.has(i));
    const dups = [...seen].filter(([, n]) => n > 1).map(([i, n]) => `${i}×${n}`);
    const firstOff = seq.findIndex((v, k) => v !== k);
    const where = (e) => `#${e.index} ${e.segment === 0 ? "live" : e.segment % 2 ? `replayed (segment ${e.segment})` : `live after reconnect (segment ${e.segment})`}`;
    const firstDup = dups.length ? Number(dups[0].split("×")[0]) : null;
    const dupWhere = firstDup === null ? "" : `; i=${firstDup} arrived as ${got.filter((e) => e.args[0].i === firstDup).map(where).join(" and ")}`;
    assert.ok(
      missing.length === 0 && dups.length === 0 && firstOff === -1 && seq.length === roomIds.length,
      `${what}: room ${room}: expected i = 0..${roomIds.length - 1} once each in order; got ${seq.length} events, ` +
        `missing ${missing.length} [${missing.slice(0, 10).join(",")}${missing.length > 10 ? ",…" : ""}], ` +
        `duplicated [${dups.slice(0, 10).join(",")}], first out-of-place position ${firstOff}` +
        (firstOff >= 0 ? ` (got i=${seq[firstOff]} around [${seq.slice(Math.max(0, firstOff - 3), firstOff + 4).join(",")}], ${where(got[firstOff])})` : "") +
        dupWhere
    );
    for (const [k, e] of got.entries()) {
      assert.equal(e.offset, roomIds[k], `${what}: room ${room} event i=${k}: offset is its publish entry id (args ${JSON.stringify(e.raw)})`);
    }
  }
  if (acrossRooms) assertOffsetsIncrease(events, what);
  else assertNoOffsetTwice(events, what);
}

/** Asserts that no offset appears twice. */
function assertNoOffsetTwice(events, what) {
  const byOffset = new Map();
  for (const [k, e] of events.entries()) {
    assert.ok(!byOffset.has(e.offset), `${what}: offset ${e.offset} delivered twice (events #${byOffset.get(e.offset)} and #${k})`);
    byOffset.set(e.offset, k);
  }
}

/** Asserts that no offset appears twice and that offsets strictly increase, in arrival order. */
function assertOffsetsIncrease(events, what) {
  const byOffset = new Map();
  for (const [k, e] of events.entries()) {
    assert.equal(typeof e.offset, "string", `${what}: event #${k} ${e.event}${JSON.stringify(e.args)} carries an offset`);
    assert.ok(!byOffset.has(e.offset), `${what}: offset ${e.offset} delivered twice (events #${byOffset.get(e.offset)} and #${k})`);
    byOffset.set(e.offset, k);
    if (k > 0) {
      const prev = events[k - 1];
      assert.ok(
        compareIds(prev.offset, e.offset) < 0,
        `${what}: offsets must increase in delivery order: event #${k - 1} ${JSON.stringify(prev.args)}@${prev.offset} ` +
          `then #${k} ${JSON.stringify(e.args)}@${e.offset}`
      );
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Redis state.

/** Polls until the recovery session of `pid` exists (the gateway stores it on disconnect). */
async function sessionStored(cluster, pid) {
  const key = cluster.keys().session(pid);
  await eventually(async () => (await cluster.redis.exists(key)) === 1, { message: `session ${key} stored after the disconnect` });
}

/** Polls until the recovery session of `pid` is gone. */
async function sessionGone(cluster, pid, why) {
  const key = cluster.keys().session(pid);
  await eventually(async () => (await cluster.redis.exists(key)) === 0, { message: `session ${key} deleted (${why})` });
}

/** Polls until the history stream of `channel` holds the entry `id`. */
async function historyHas(cluster, channel, id) {
  const key = cluster.keys().hist(channel);
  await eventually(async () => (await cluster.redis.xrange(key, id, id)).length === 1, {
    message: `history ${key} holds entry ${id} (published while the only member was disconnected)`,
  });
}

/** Waits until each publish request's entry is in the history of each of its topics. */
async function historyHasAll(cluster, published) {
  const k = cluster.keys();
  for (const { fields, id } of published) {
    const channels = fields.rooms ? fields.rooms.map((r) => k.room(r, fields.nsp)) : fields.room ? [k.room(fields.room, fields.nsp)] : [k.nsp(fields.nsp)];
    for (const channel of channels) await historyHas(cluster, channel, id);
  }
}

// ---------------------------------------------------------------------------------------------
// Moving a client.

/**
 * Makes `proxy` hold new sessions, drops `socket`'s connection (`how`: "close" =
 * socket.io.engine.close(), a clean Engine.IO close; "cut" = proxy.cut(), TCP RST both ways),
 * waits for the client's disconnect and for the gateway to store the session in Redis (so the
 * reconnection cannot overtake the old gateway's clean-up). The client's own reconnection then
 * waits in the proxy until reconnectThrough(). Returns {reason, pid, id, offset (the client's last
 * offset), session (the stored record, msgpack-decoded, as text: for failure diagnostics)}.
 */
async function dropHeld(cluster, socket, proxy, how) {
  const pid = socket._pid;
  const id = socket.id;
  assert.equal(typeof pid, "string", `${socket.__label} got a pid in its CONNECT reply (recovery on)`);
  proxy.hold();
  const disconnected = waitFor(socket, "disconnect");
  if (how === "close") socket.io.engine.close();
  else if (how === "cut") assert.ok(proxy.cut() > 0, "the proxy had connections to cut");
  else throw new Error(`unknown way to drop: ${how}`);
  const [reason] = await disconnected;
  await sessionStored(cluster, pid);
  return { reason, pid, id, offset: socket._lastOffset, session: await sessionText(cluster, pid) };
}

/** The stored session of `pid`, msgpack-decoded, as JSON text (or why not). */
async function sessionText(cluster, pid) {
  try {
    const bytes = await cluster.redis.getBuffer(cluster.keys().session(pid));
    if (!bytes) return "(gone)";
    return JSON.stringify(decode(bytes), (_, v) => (typeof v === "bigint" ? String(v) : v instanceof Uint8Array ? Buffer.from(v).toString("latin1") : v));
  } catch (e) {
    return `(cannot read: ${e.message})`;
  }
}

/** Sends the held reconnection (and later ones) to gateway `target`; resolves once `socket` is connected again. */
async function reconnectThrough(socket, proxy, target) {
  const connected = waitFor(socket, "connect", { what: `${socket.__label} reconnecting through the proxy to ${target}` });
  proxy.retarget(target);
  await connected;
  return { id: socket.id, pid: socket._pid, recovered: socket.recovered };
}

/** Asserts that `after` (a whoami ack) lists the same rooms as `before`. */
function assertSameRooms(before, after, what) {
  assert.deepEqual([...after.rooms].sort(), [...before.rooms].sort(), `${what}: rooms restored`);
}

/**
 * Scenario: a websocket client connects through a proxy to `route[0]` and joins `rooms`. Then, for
 * each next gateway of `route`, one round: a firehose publishes `perRoom` events `{room, i}` to
 * every room; once the client has `cutAfter` of them, the proxy cuts its connection (RST both
 * ways) and the client reconnects by itself, through the proxy, to that gateway, while publishing
 * goes on (`paced`: at most that many events ahead of the client while it is connected, so the
 * cut certainly loses events in flight, and 5 × that many while it is away, so publishing goes on
 * through its reconnection and replay; otherwise full rate). Each round asserts: recovered, same socket.id and pid, same rooms on the new gateway,
 * and every event of the round complete, in order, once, with its offset. `watchers` (sockets
 * already in the rooms, never cut) must get every event complete and in order too.
 * Returns the client's timeline.
 */
async function cutMidStream(cluster, { rooms, perRoom, batch = 50, route, cutAfter, paced = 0, watchers = [], diagnostic = () => {} }) {
  const proxy = await cluster.proxy(route[0]);
  const socket = await cluster.connect(proxy, { ...RECONNECT, transports: ["websocket"] });
  const tl = new Timeline(socket);
  await cluster.join(socket, ...rooms);
  const before = await cluster.whoami(socket);
  const { id: sid, _pid: pid } = socket;
  const watched = watchers.map((w) => new Timeline(w));

  for (const [round, target] of route.slice(1).entries()) {
    const event = `tick${round}`;
    const end = `end${round}`;
    const fh = startFirehose(cluster, { rooms, perRoom, batch, event, pace: paced ? { timeline: tl, window: paced } : null });
    await tl.untilCount(event, cutAfter, { timeout: 120000 });
    const markDrop = tl.mark();
    const attemptsBefore = tl.attempts;
    const { reason, offset, session } = await dropHeld(cluster, socket, proxy, "cut");
    const back = await reconnectThrough(socket, proxy, target);
    assert.equal(back.recovered, true, `round ${round}: recovered after ${reason} (${tl.describe()})`);
    assert.equal(back.id, sid, `round ${round}: same socket.id`);
    assert.equal(back.pid, pid, `round ${round}: same pid`);
    // Checked after the delivery checks below if it fails, so a failure reports both.
    const roomsCheck = cluster.whoami(socket).then(
      (who) => {
        assert.equal(who.gateway, target, `round ${round}: served by ${target}`);
        assertSameRooms(before, who, `round ${round}`);
      },
      (error) => error
    );

    await fh.done;
    // A marker per room, published last: whatever the round still had in flight comes before it.
    await cluster.publishMany(rooms.map((room) => ({ room, event: end, data: { room } })));
    for (const t of [tl, ...watched]) await t.untilCount(end, rooms.length, { timeout: 120000 });
    const connectAt = tl.entries.findIndex((e, k) => k >= markDrop && e.type === "connect");
    const afterCut = tl.events(event, markDrop).length;
    const lifecycle = tl.entries.slice(markDrop).filter((e) => e.type !== "event");
    const sinceCut = lifecycle.map((e) => (e.type === "connect" ? `connect(recovered=${e.recovered})` : `disconnect(${e.reason})`)).join(", ");
    diagnostic(
      `round ${round} (${route[round]} → ${target}, ${reason}): ${tl.events(event).length - afterCut} events before the cut, ` +
        `${afterCut - tl.events(event, connectAt).length} replayed before the CONNECT reply, ${tl.events(event, connectAt).length} after it; ` +
        `since the cut: ${sinceCut} (${tl.attempts - attemptsBefore} reconnection attempts); client offset at the cut ${offset}; ` +
        `stored session ${session.slice(0, 1500)}`
    );
    assertComplete(tl.events(event), fh.ids, `round ${round}, recovered client`);
    for (const [k, w] of watched.entries()) assertComplete(w.events(event), fh.ids, `round ${round}, watcher #${k} (${w.socket.__label})`);
    assert.equal(lifecycle.length, 2, `round ${round}: one disconnect (the cut) and one connect (the recovery), the recovered connection stays up; since the cut: ${sinceCut}`);
    const roomsError = await roomsCheck;
    if (roomsError) throw roomsError;
  }
  assertOffsetsIncrease(tl.events(), "recovered client, every event of every round");
  return tl;
}

// ---------------------------------------------------------------------------------------------
// Calling the real topic_publish.lua.

const TOPIC_PUBLISH_LUA = path.join(REPO_ROOT, "shared", "src", "wire", "topic_publish.lua");

/**
 * The script text and its documented KEYS/ARGV, read from the header comment at test time:
 *   -- KEYS[1]  <topic>:meta   ...        -> {index, name: "<topic>:meta", text}
 *   -- ARGV[1]  the topic's channel        -> {index, text}
 */
function readTopicPublishScript() {
  const source = fs.readFileSync(TOPIC_PUBLISH_LUA, "utf8");
  const keys = [];
  const argv = [];
  for (const line of source.split("\n")) {
    const m = /^--\s*(KEYS|ARGV)\[(\d+)\]\s+(.*)$/.exec(line);
    if (!m) continue;
    (m[1] === "KEYS" ? keys : argv).push({ index: Number(m[2]), text: m[3].trim(), line });
  }
  for (const list of [keys, argv]) list.sort((a, b) => a.index - b.index);
  assert.ok(keys.length >= 2 && argv.length >= 3, `${TOPIC_PUBLISH_LUA}: header documents KEYS and ARGV (${keys.length} keys, ${argv.length} args found)`);
  return { source, keys, argv };
}

/**
 * Runs the real topic_publish.lua (EVAL of the file's text) for one topic the way the fanout
 * does, except that the envelope is PUBLISHed on `publishChannel` (pass a channel nobody
 * listens to, to record an entry in the topic's history and sequence without the live path
 * seeing it). Each documented KEYS/ARGV line is mapped by what it says; an argument this helper
 * does not recognise fails the test, naming the line, so a changed contract shows up at once.
 * Resolves with the script's reply.
 */
async function evalTopicPublish(cluster, { channel, publishChannel, sourceId, body }) {
  const { source, keys, argv } = readTopicPublishScript();
  const keyValues = keys.map(({ text, line }) => {
    const m = /^<topic>(:[a-z_]+)\b/.exec(text);
    if (!m) throw new Error(`topic_publish.lua: cannot map key line ${JSON.stringify(line)}`);
    return `${channel}${m[1]}`;
  });
  const rules = [
    [/channel/i, publishChannel],
    [/retention|window/i, String(cluster.recoveryWindowMs)],
    [/cap|max.?len|length/i, String(cluster.historyMaxLen)],
    [/body|envelope/i, body],
    [/source|entry id/i, sourceId],
  ];
  const argValues = argv.map(({ text, line }) => {
    const rule = rules.find(([re]) => re.test(text));
    if (!rule) throw new Error(`topic_publish.lua: cannot map argument line ${JSON.stringify(line)}`);
    return rule[1];
  });
  return cluster.redis.eval(source, keyValues.length, ...keyValues, ...argValues);
}

/**
 * The msgpack envelope body (v1, 7 fields by position, see docs/redis-keys.md "Envelope v1"):
 * [source_id, nsp, rooms, except, data (JSON text of ["event", ...args]), published_at_ms, traceparent].
 */
function encodeEnvelopeBody({ sourceId, nsp = "/", rooms = [], except = [], event, args = [], traceparent = null }) {
  const publishedAt = Number(ID_RE.exec(sourceId)[1]);
  return Buffer.from(encode([sourceId, nsp, rooms, except, JSON.stringify([event, ...args]), publishedAt, traceparent]));
}

module.exports = {
  RECONNECT,
  Timeline,
  compareIds,
  startFirehose,
  concatIds,
  assertComplete,
  assertOffsetsIncrease,
  sessionStored,
  sessionGone,
  historyHas,
  historyHasAll,
  dropHeld,
  sessionText,
  reconnectThrough,
  assertSameRooms,
  cutMidStream,
  readTopicPublishScript,
  evalTopicPublish,
  encodeEnvelopeBody,
};
