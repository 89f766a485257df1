// Reads one JWT per line on stdin and verifies it with jose against the JWKS at the URL in
// argv[2]; prints "ok <kid>" or "fail <kid> <error>" per line.
//
// The key set is pinned: fetched once at start and then every second on a timer, never
// because a token names a kid it does not hold (createLocalJWKSet over the last fetch). A
// verifier that refetched on an unknown kid would accept a key that signs before it was
// published; this one refuses it unless the key was in the set at least a second before, so
// an early activation fails the test (the set's prePublish is longer than the period).
import { createLocalJWKSet, jwtVerify, decodeProtectedHeader } from "jose";
import readline from "node:readline";

const url = new URL(process.argv[2]);
const PERIOD_MS = 1000;
let keys = null;
async function refresh() {
  try {
    const res = await fetch(url, { cache: "no-store" });
    if (res.ok) keys = createLocalJWKSet(await res.json());
  } catch (e) {
    // Keep the last set: a verifier rides out an endpoint blip.
  }
}
await refresh();
setInterval(refresh, PERIOD_MS).unref();

const rl = readline.createInterface({ input: process.stdin });
const queue = [];
let busy = false;
async function drain() {
  if (busy) return;
  busy = true;
  while (queue.length) {
    const token = queue.shift();
    let kid = "?";
    try {
      kid = decodeProtectedHeader(token).kid;
      if (!keys) throw new Error("no key set fetched yet");
      await jwtVerify(token, keys);
      process.stdout.write(`ok ${kid}\n`);
    } catch (e) {
      process.stdout.write(`fail ${kid} ${String(e.code || e.message).replace(/\n/g, " ")}\n`);
    }
  }
  busy = false;
}
rl.on("line", (line) => { queue.push(line.trim()); drain(); });
