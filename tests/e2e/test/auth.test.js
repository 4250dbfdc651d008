"use strict";
// Authentication and authorization with the official client: JWT on the handshake (HS256 with a
// shared secret, RS256/ES256 with a public key file), refusals with a clear connect_error, the
// user room, room patterns, recovery bound to the session's user, and allowed origins.

const { test } = require("node:test");
const assert = require("node:assert/strict");
const { useCluster, record } = require("../lib/cluster");
const { sign, keyPair, now } = require("../lib/jwt");
const { RECONNECT, dropHeld, reconnectThrough } = require("../lib/recovery");

const SECRET = "roomcast-e2e-shared-secret-of-32+-bytes";
const ISSUER = "roomcast-tests";
const AUDIENCE = "chat";
const rsa = keyPair("rsa");
const ec = keyPair("ec");
const HS = { JWT_SECRET: SECRET, JWT_ISSUER: ISSUER, JWT_AUDIENCE: AUDIENCE, CORS_ALLOWED_ORIGINS: "https://app.example" };

const cluster = useCluster({
  gateways: [
    { id: "gw-a", env: HS },
    { id: "gw-b", env: HS },
    { id: "gw-rs", env: { JWT_PUBLIC_KEY_FILE: rsa.publicKeyFile } },
    { id: "gw-es", env: { JWT_PUBLIC_KEY_FILE: ec.publicKeyFile } },
  ],
});

/** Claims the HS256 gateways accept, for `sub`, with `extra` merged in. */
function claims(sub, extra = {}) {
  return { sub, iss: ISSUER, aud: AUDIENCE, exp: now() + 600, rooms: ["chat:*", "lobby"], ...extra };
}

const hs = (c) => sign(c, { alg: "HS256", key: SECRET });

/** Connects with `token` in the CONNECT payload; resolves with {socket} or {error}. */
function tryWith(which, token, options = {}) {
  return cluster.tryConnect(which, { auth: token === undefined ? {} : { token }, ...options });
}

async function refusedWith(which, token, message, options) {
  const { error } = await tryWith(which, token, options);
  assert.ok(error, "the connection is refused");
  assert.equal(error.message, message);
}

test("a missing, malformed, expired, not-yet-valid or wrongly signed token is refused with a clear message", async () => {
  await refusedWith("gw-a", undefined, "unauthorized: missing token");
  await refusedWith("gw-a", "not.a.token", "unauthorized: malformed token");
  await refusedWith("gw-a", hs(claims("alice", { exp: now() - 60 })), "unauthorized: token expired");
  await refusedWith("gw-a", hs(claims("alice", { nbf: now() + 600 })), "unauthorized: token not yet valid");
  await refusedWith("gw-a", sign(claims("alice"), { alg: "HS256", key: "another-secret-of-at-least-32-bytes!!" }), "unauthorized: invalid signature");
  await refusedWith("gw-a", hs(claims("alice", { iss: "someone-else" })), "unauthorized: wrong issuer");
  await refusedWith("gw-a", hs(claims("alice", { aud: "billing" })), "unauthorized: wrong audience");
  await refusedWith("gw-a", sign(claims("alice"), { alg: "none" }), "unauthorized: algorithm not allowed");
  await refusedWith("gw-rs", sign(claims("alice"), { alg: "ES256", key: ec.privateKey }), "unauthorized: algorithm not allowed");
  const m = await cluster.metrics("gw-a");
  assert.ok(m['roomcast_gateway_connections_refused_total{reason="unauthorized"}'] >= 8, "refusals counted");
});

test("HS256 signed with the RSA public key (algorithm confusion) and alg:none are refused by an RS256 gateway", async () => {
  const confused = sign({ sub: "mallory", exp: now() + 600 }, { alg: "HS256", key: rsa.publicPem });
  await refusedWith("gw-rs", confused, "unauthorized: algorithm not allowed");
  await refusedWith("gw-rs", sign({ sub: "mallory", exp: now() + 600 }, { alg: "none" }), "unauthorized: algorithm not allowed");
});

test("valid HS256, RS256 and ES256 tokens are accepted, from the CONNECT payload or an Authorization header", async () => {
  const viaPayload = await cluster.connect("gw-a", { auth: { token: hs(claims("alice")) } });
  assert.equal((await cluster.whoami(viaPayload)).user, "alice");
  for (const transports of [["websocket"], ["polling"]]) {
    const viaHeader = await cluster.connect("gw-a", {
      transports,
      extraHeaders: { Authorization: `Bearer ${hs(claims("bob"))}` },
    });
    assert.equal((await cluster.whoami(viaHeader)).user, "bob", `${transports}: header token`);
  }
  const rs = await cluster.connect("gw-rs", { auth: { token: sign({ sub: "carol", exp: now() + 600 }, { alg: "RS256", key: rsa.privateKey }) } });
  assert.equal((await cluster.whoami(rs)).user, "carol");
  const es = await cluster.connect("gw-es", { auth: { token: sign({ sub: "dave", exp: now() + 600 }, { alg: "ES256", key: ec.privateKey }) } });
  assert.equal((await cluster.whoami(es)).user, "dave");
});

test("joins outside the token's rooms claim, and of user rooms, are refused with forbidden", async () => {
  const s = await cluster.connect("gw-a", { auth: { token: hs(claims("alice")) } });
  assert.deepEqual(await cluster.roomRequest(s, "join", "chat:42"), { ok: true });
  assert.deepEqual(await cluster.roomRequest(s, "join", "lobby"), { ok: true });
  for (const room of ["admin", "lobby2", "chat", "user:bob", "user:alice"]) {
    assert.deepEqual(await cluster.roomRequest(s, "join", room), { ok: false, error: "forbidden" }, room);
  }
  assert.deepEqual(await cluster.roomRequest(s, "leave", "user:alice"), { ok: false, error: "forbidden" }, "own user room stays");
  const me = await cluster.whoami(s);
  assert.deepEqual([...me.rooms].sort(), ["chat:42", "lobby", "user:alice"]);

  const noRooms = await cluster.connect("gw-a", { auth: { token: hs(claims("erin", { rooms: undefined })) } });
  assert.deepEqual(await cluster.roomRequest(noRooms, "join", "lobby"), { ok: false, error: "forbidden" }, "no rooms claim: no rooms");
  const m = await cluster.metrics("gw-a");
  assert.ok(m['roomcast_gateway_joins_refused_total{reason="forbidden"}'] >= 6, "forbidden joins counted");
});

test("an event for user:<sub> reaches exactly that user's sockets, on every gateway", async () => {
  const aliceA = await cluster.connect("gw-a", { auth: { token: hs(claims("alice")) } });
  const aliceB = await cluster.connect("gw-b", { auth: { token: hs(claims("alice")) } });
  const bobA = await cluster.connect("gw-a", { auth: { token: hs(claims("bob")) } });
  const [ra, rb, rbob] = [record(aliceA), record(aliceB), record(bobA)];
  await cluster.publish({ room: "user:alice", event: "dm", data: { text: "for alice" } });
  await Promise.all([ra.until("dm"), rb.until("dm")]);
  await cluster.publish({ room: "user:bob", event: "marker", data: {} });
  await rbob.until("marker");
  assert.deepEqual(rbob.names(), ["marker"], "bob never got alice's event");
  assert.deepEqual(ra.events[0].args[0], { text: "for alice" });
});

test("recovery keeps the session's user: another user's token with its pid gets a fresh session, the owner still recovers", async () => {
  const proxy = await cluster.proxy("gw-a");
  const alice = await cluster.connect(proxy, { ...RECONNECT, auth: { token: hs(claims("alice")) }, transports: ["websocket"] });
  await cluster.join(alice, "chat:secret");
  const { pid, id, offset } = await dropHeld(cluster, alice, proxy, "close");

  // Mallory has alice's pid (and offset), but her own valid token.
  const mallory = await cluster.connect("gw-b", { auth: { token: hs(claims("mallory")), pid, offset } });
  assert.equal(mallory.recovered, false, "not recovered with another user's token");
  assert.notEqual(mallory.id, id);
  const me = await cluster.whoami(mallory);
  assert.equal(me.user, "mallory");
  assert.deepEqual(me.rooms, ["user:mallory"], "none of alice's rooms");

  const back = await reconnectThrough(alice, proxy, "gw-b");
  assert.equal(back.recovered, true, "the owner still recovers: the session was kept for her");
  const m = await cluster.metrics("gw-b");
  assert.equal(m['roomcast_gateway_recoveries_total{result="wrong_user"}'], 1, "the attempt is counted");
  assert.equal(back.id, id);
  const again = await cluster.whoami(alice);
  assert.equal(again.user, "alice");
  assert.deepEqual([...again.rooms].sort(), ["chat:secret", "user:alice"]);
});

test("browser origins: an unlisted Origin is refused, a listed one gets CORS headers, preflight answered", async () => {
  const url = `${cluster.gateway("gw-a").url}/socket.io/?EIO=4&transport=polling`;
  const refused = await fetch(url, { headers: { Origin: "https://evil.example" } });
  assert.equal(refused.status, 403);
  const allowed = await fetch(url, { headers: { Origin: "https://app.example" } });
  assert.equal(allowed.status, 200);
  assert.equal(allowed.headers.get("access-control-allow-origin"), "https://app.example");
  assert.equal(allowed.headers.get("access-control-allow-credentials"), "true");
  const preflight = await fetch(url, {
    method: "OPTIONS",
    headers: { Origin: "https://app.example", "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type" },
  });
  assert.equal(preflight.status, 204);
  assert.match(preflight.headers.get("access-control-allow-methods"), /POST/);
  const noOrigin = await fetch(url);
  assert.equal(noOrigin.status, 200, "non-browser clients send no Origin and are not affected");
  const rs = await fetch(`${cluster.gateway("gw-rs").url}/socket.io/?EIO=4&transport=polling`, { headers: { Origin: "https://evil.example" } });
  assert.equal(rs.status, 403, "auth on and no list: only the gateway's own host");
});
