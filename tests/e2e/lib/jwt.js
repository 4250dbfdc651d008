"use strict";
// Signs JSON Web Tokens for the auth tests with Node's own crypto (HS256, RS256, ES256, and the
// broken kinds a hostile client would send), and writes public keys for JWT_PUBLIC_KEY_FILE.

const crypto = require("node:crypto");
const fs = require("node:fs");
const os = require("node:os");
const path = require("node:path");

const b64url = (buf) => Buffer.from(buf).toString("base64url");

/** Seconds since the epoch, as `exp`/`nbf` want them. */
const now = () => Math.floor(Date.now() / 1000);

/**
 * A signed token. `alg`: HS256 (key: the secret), RS256 or ES256 (key: a private KeyObject or
 * PEM), or "none" (unsigned).
 */
function sign(claims, { alg = "HS256", key } = {}) {
  const input = `${b64url(JSON.stringify({ alg, typ: "JWT" }))}.${b64url(JSON.stringify(claims))}`;
  let signature;
  switch (alg) {
    case "none":
      signature = Buffer.alloc(0);
      break;
    case "HS256":
      signature = crypto.createHmac("sha256", key).update(input).digest();
      break;
    case "RS256":
      signature = crypto.sign("sha256", Buffer.from(input), key);
      break;
    case "ES256":
      signature = crypto.sign("sha256", Buffer.from(input), { key, dsaEncoding: "ieee-p1363" });
      break;
    default:
      throw new Error(`unsupported alg ${alg}`);
  }
  return `${input}.${b64url(signature)}`;
}

/** A key pair (`rsa` or `ec` P-256) whose public key is written to a PEM file. */
function keyPair(type) {
  const { publicKey, privateKey } =
    type === "rsa"
      ? crypto.generateKeyPairSync("rsa", { modulusLength: 2048 })
      : crypto.generateKeyPairSync("ec", { namedCurve: "P-256" });
  const publicPem = publicKey.export({ type: "spki", format: "pem" });
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "roomcast-jwt-"));
  const publicKeyFile = path.join(dir, `${type}-public.pem`);
  fs.writeFileSync(publicKeyFile, publicPem);
  return { privateKey, publicPem, publicKeyFile };
}

module.exports = { sign, keyPair, now };
