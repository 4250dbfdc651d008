"use strict";
// Malformed publish requests go to `<prefix>:publish:dead` with their original fields, a readable
// `error` and the `source_id` of the original entry, while the valid entries published between
// them are all delivered, in order. The fanout runs with MAX_PUBLISH_BYTES=4096 here.

const { test } = require("node:test");
const assert = require("node:assert/strict");
const { useCluster, record, eventually } = require("../lib/cluster");

const MAX_PUBLISH_BYTES = 4096;
const cluster = useCluster({ gateways: ["gw-a", "gw-b"], fanoutEnv: { MAX_PUBLISH_BYTES: String(MAX_PUBLISH_BYTES) } });

const ROOM = "dl";
// Every bad entry targets ROOM (or everyone) with event "bad" where it can, so one that slipped
// through would show up at the clients.
const BAD = [
  { what: "missing event", fields: [["room", ROOM], ["data", '{"a":1}']], mentions: /event/ },
  { what: "empty event name", fields: [["event", ""], ["room", ROOM]], mentions: /event/ },
  { what: "data is not JSON", fields: [["room", ROOM], ["event", "bad"], ["data", "{nope"]], mentions: /data/ },
  { what: "args is not JSON", fields: [["room", ROOM], ["event", "bad"], ["args", "[1"]], mentions: /args/ },
  { what: "args is not an array", fields: [["room", ROOM], ["event", "bad"], ["args", '{"a":1}']], mentions: /args/ },
  { what: "data and args together", fields: [["room", ROOM], ["event", "bad"], ["data", "1"], ["args", "[1]"]], mentions: /data|args/ },
  { what: "rooms is not an array", fields: [["rooms", `"${ROOM}"`], ["event", "bad"]], mentions: /rooms/ },
  { what: "rooms is an empty array", fields: [["rooms", "[]"], ["event", "bad"]], mentions: /rooms/ },
  { what: "rooms holds a non-string", fields: [["rooms", `["${ROOM}", 7]`], ["event", "bad"]], mentions: /rooms/ },
  { what: "rooms is not JSON", fields: [["rooms", `[${ROOM}]`], ["event", "bad"]], mentions: /rooms/ },
  { what: "room and rooms together", fields: [["room", ROOM], ["rooms", `["${ROOM}"]`], ["event", "bad"]], mentions: /room/ },
  { what: "unknown field romm", fields: [["event", "bad"], ["romm", ROOM]], mentions: /romm/ },
  { what: "duplicate field room", fields: [["event", "bad"], ["room", ROOM], ["room", ROOM]], mentions: /room/ },
  { what: "duplicate field event", fields: [["event", "bad"], ["event", "bad2"], ["room", ROOM]], mentions: /event/ },
  { what: "reserved event connect", fields: [["event", "connect"], ["room", ROOM]], mentions: /connect/ },
  { what: "reserved event disconnect", fields: [["event", "disconnect"], ["room", ROOM]], mentions: /disconnect/ },
  { what: "namespace without a slash", fields: [["event", "bad"], ["room", ROOM], ["nsp", "admin"]], mentions: /nsp|namespace/ },
  { what: "namespace with a comma", fields: [["event", "bad"], ["nsp", "/a,b"]], mentions: /nsp|namespace/ },
  { what: "room with a newline", fields: [["event", "bad"], ["room", "d\nl"]], mentions: /room/ },
  { what: "room with a control character in rooms", fields: [["event", "bad"], ["rooms", JSON.stringify([ROOM, "x\u0007"])]], mentions: /room/ },
  { what: "empty room", fields: [["event", "bad"], ["room", ""]], mentions: /room/ },
  { what: "room over 256 bytes", fields: [["event", "bad"], ["room", "r".repeat(257)]], mentions: /room/ },
  { what: "except is not an array", fields: [["event", "bad"], ["room", ROOM], ["except", '"x"']], mentions: /except/ },
  { what: "bad traceparent", fields: [["event", "bad"], ["room", ROOM], ["traceparent", "nope"]], mentions: /traceparent/ },
  {
    what: `entry over MAX_PUBLISH_BYTES (${MAX_PUBLISH_BYTES})`,
    fields: [["event", "bad"], ["room", ROOM], ["data", JSON.stringify("x".repeat(MAX_PUBLISH_BYTES))]],
    mentions: new RegExp(String(MAX_PUBLISH_BYTES)),
  },
  { what: "value not UTF-8", fields: [["event", "bad"], ["room", Buffer.from([0x64, 0xff, 0xfe])]], mentions: /UTF-8/i },
  { what: "field name not UTF-8", fields: [["event", "bad"], [Buffer.from([0xc3, 0x28]), "1"]], mentions: /UTF-8/i },
];

/** Valid entries published around the bad ones; a few probe the edges of "valid". */
const GOOD_EXTRAS = {
  0: [], // padded to just under the limit below (the limit counts field names and values)
  1: [["traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"]],
  2: [["except", '["nobody"]']],
  3: [["nsp", "/"]],
};
function good(i) {
  const pad = i === 0 ? "p".repeat(MAX_PUBLISH_BYTES - 200) : "";
  return [["room", ROOM], ["event", "ok"], ["data", JSON.stringify({ i, pad })], ...(GOOD_EXTRAS[i] || [])];
}

const asBuffer = (v) => (Buffer.isBuffer(v) ? v : Buffer.from(v, "utf8"));

test("every kind of malformed entry is dead-lettered while the valid ones around them are delivered in order", async () => {
  const a = await cluster.connect("gw-a");
  const b = await cluster.connect("gw-b");
  const bystander = await cluster.connect("gw-b"); // in no room: would see a request that became a broadcast
  await cluster.join(a, ROOM);
  await cluster.join(b, ROOM);
  const recs = [record(a), record(b), record(bystander)];

  const badIds = [];
  let goodCount = 0;
  for (const bad of BAD) {
    await cluster.publish(good(goodCount++));
    badIds.push(await cluster.publish(bad.fields));
  }
  await cluster.publish(good(goodCount++));
  await cluster.publish({ event: "end" }); // namespace-wide marker
  await Promise.all(recs.map((r) => r.until("end")));

  for (const [k, rec] of recs.slice(0, 2).entries()) {
    assert.deepEqual(rec.names(), [...Array(goodCount).fill("ok"), "end"], `member #${k} got every valid entry and nothing else`);
    assert.deepEqual(
      rec.events.slice(0, goodCount).map((e) => e.args[0].i),
      Array.from({ length: goodCount }, (_, i) => i),
      `member #${k}: valid entries in publish order`
    );
  }
  assert.deepEqual(recs[2].names(), ["end"], "the socket in no room got only the namespace-wide marker");

  // The dead-letter stream: one entry per bad request (nothing else), each with the original
  // fields, `error` and `source_id`.
  const dead = cluster.keys().dead;
  await eventually(async () => (await cluster.redis.xlen(dead)) >= BAD.length, {
    message: `${dead} holds ${BAD.length} entries`,
  });
  const entries = await cluster.redis.xrangeBuffer(dead, "-", "+");
  assert.equal(entries.length, BAD.length, `${dead} holds exactly the ${BAD.length} bad entries`);
  const bySource = new Map();
  for (const [, flat] of entries) {
    const pairs = [];
    for (let i = 0; i < flat.length; i += 2) pairs.push([flat[i], flat[i + 1]]);
    const take = (name) => {
      const idx = pairs.findLastIndex(([k]) => k.toString("latin1") === name);
      assert.notEqual(idx, -1, `dead entry has a \`${name}\` field: ${pairs.map(([k]) => k.toString()).join(",")}`);
      return pairs.splice(idx, 1)[0][1].toString("utf8");
    };
    const sourceId = take("source_id");
    const error = take("error");
    bySource.set(sourceId, { error, pairs });
  }
  for (const [k, bad] of BAD.entries()) {
    const entry = bySource.get(badIds[k]);
    assert.ok(entry, `"${bad.what}" (entry ${badIds[k]}) is in ${dead}; source_ids there: ${[...bySource.keys()].join(", ")}`);
    assert.ok(entry.error.length > 0, `"${bad.what}": error is readable text`);
    assert.match(entry.error, bad.mentions, `"${bad.what}": error says what is wrong`);
    const original = bad.fields.map(([n, v]) => [asBuffer(n), asBuffer(v)]);
    assert.equal(entry.pairs.length, original.length, `"${bad.what}": same number of original fields`);
    for (const [j, [n, v]] of original.entries()) {
      assert.ok(entry.pairs[j][0].equals(n), `"${bad.what}": field #${j} name is the original's`);
      assert.ok(entry.pairs[j][1].equals(v), `"${bad.what}": field #${j} (${n.toString()}) value is the original's, byte for byte`);
    }
  }
});
