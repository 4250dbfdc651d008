"use strict";
// Configuration errors: both binaries exit 64 (EX_USAGE) with a message naming the setting when
// an env var (or its --flag) has a bad value. No cluster needed: the process must not get as far
// as connecting anywhere.

const { test } = require("node:test");
const assert = require("node:assert/strict");
const path = require("node:path");
const fs = require("node:fs");
const { spawnSync } = require("node:child_process");
const { BIN_DIR, baseEnv } = require("../lib/cluster");

const CASES = {
  "roomcast-gateway": [
    { env: { MAX_CONNECTIONS: "lots" }, names: "MAX_CONNECTIONS" },
    { env: { MAX_CONNECTIONS: "0" }, names: "MAX_CONNECTIONS" },
    { env: { WEBSOCKET_PING_INTERVAL: "25s" }, names: "WEBSOCKET_PING_INTERVAL" },
    { env: { WEBSOCKET_PING_TIMEOUT: "-1" }, names: "WEBSOCKET_PING_TIMEOUT" },
    { env: { WEBSOCKET_UPGRADE_TIMEOUT: "soon" }, names: "WEBSOCKET_UPGRADE_TIMEOUT" },
    { env: { MAX_PAYLOAD: "1MB" }, names: "MAX_PAYLOAD" },
    { env: { TRANSPORTS: "carrier-pigeon" }, names: "TRANSPORTS" },
    { env: { NAMESPACES: "admin" }, names: "NAMESPACES" },
    { env: { LISTEN_ADDR: "not-an-address" }, names: "LISTEN_ADDR" },
    { env: { REDIS_URL: "nope://x" }, names: "REDIS_URL" },
    { env: { REDIS_KEY_PREFIX: "{braces}" }, names: "REDIS_KEY_PREFIX" },
    { env: { LOG_FORMAT: "xml" }, names: "LOG_FORMAT" },
    { args: ["--max-connections", "lots"], names: "MAX_CONNECTIONS" },
    { env: { RECOVERY_MAX_DISCONNECTION_MS: "2m" }, names: "RECOVERY_MAX_DISCONNECTION_MS" },
    { env: { RECOVERY_MAX_DISCONNECTION_MS: "-1" }, names: "RECOVERY_MAX_DISCONNECTION_MS" },
    { env: { HISTORY_MAX_LEN: "0" }, names: "HISTORY_MAX_LEN" },
    { env: { HISTORY_MAX_LEN: "lots" }, names: "HISTORY_MAX_LEN" },
    { env: { SUBSCRIPTION_PROBE_INTERVAL_MS: "5s" }, names: "SUBSCRIPTION_PROBE_INTERVAL_MS" },
    { env: { RECOVERY_SKIP_MIDDLEWARES: "maybe" }, names: "RECOVERY_SKIP_MIDDLEWARES" },
    { env: { DELIVERY_ORDER_WAIT_MS: "5s" }, names: "DELIVERY_ORDER_WAIT_MS" },
    { env: { DELIVERY_ORDER_MAX_HELD: "0" }, names: "DELIVERY_ORDER_MAX_HELD" },
  ],
  "roomcast-fanout": [
    { env: { FANOUT_BATCH_SIZE: "many" }, names: "FANOUT_BATCH_SIZE" },
    { env: { FANOUT_BLOCK_MS: "1s" }, names: "FANOUT_BLOCK_MS" },
    { env: { MAX_PUBLISH_BYTES: "big" }, names: "MAX_PUBLISH_BYTES" },
    { env: { DEAD_LETTER_MAXLEN: "x" }, names: "DEAD_LETTER_MAXLEN" },
    { env: { SHUTDOWN_TIMEOUT_MS: "later" }, names: "SHUTDOWN_TIMEOUT_MS" },
    { env: { ADMIN_ADDR: "nowhere" }, names: "ADMIN_ADDR" },
    { env: { REDIS_URL: "nope://x" }, names: "REDIS_URL" },
    { env: { LOG_FORMAT: "xml" }, names: "LOG_FORMAT" },
    { args: ["--max-publish-bytes", "big"], names: "MAX_PUBLISH_BYTES" },
    { env: { RECOVERY_MAX_DISCONNECTION_MS: "2m" }, names: "RECOVERY_MAX_DISCONNECTION_MS" },
    { env: { HISTORY_MAX_LEN: "0" }, names: "HISTORY_MAX_LEN" },
    { env: { FANOUT_PARTITIONS: "0" }, names: "FANOUT_PARTITIONS" },
    { env: { FANOUT_PARTITIONS: "2000" }, names: "FANOUT_PARTITIONS" },
    { env: { FANOUT_REPLICA_ID: "has space" }, names: "FANOUT_REPLICA_ID" },
    { env: { FANOUT_LEASE_TTL_MS: "3s" }, names: "FANOUT_LEASE_TTL_MS" },
    { env: { FANOUT_LEASE_TTL_MS: "1000", FANOUT_LEASE_RENEW_MS: "1000" }, names: "FANOUT_LEASE_RENEW_MS" },
  ],
};

for (const [bin, cases] of Object.entries(CASES)) {
  for (const c of cases) {
    const how = c.args ? c.args.join(" ") : Object.entries(c.env).map(([k, v]) => `${k}=${v}`).join(" ");
    test(`${bin} ${how}: exits 64 naming ${c.names}`, () => {
      const file = path.join(BIN_DIR, bin);
      assert.ok(fs.existsSync(file), `${file} does not exist: run cargo build --workspace`);
      const env = { ...baseEnv(), REDIS_URL: "redis://127.0.0.1:1", NO_COLOR: "1", ...(c.env || {}) };
      // A bad value must stop the process at once; the timeout only catches one that was accepted.
      const res = spawnSync(file, c.args || [], { env, encoding: "utf8", timeout: 15000 });
      const output = `${res.stdout}${res.stderr}`;
      assert.notEqual(res.signal, "SIGTERM", `${bin} accepted ${how} and kept running; output:\n${output}`);
      assert.equal(res.status, 64, `exit code; output:\n${output}`);
      assert.ok(output.includes(c.names), `message names ${c.names}:\n${output}`);
    });
  }
}
