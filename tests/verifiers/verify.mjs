// Reads one JWT per line on stdin and verifies it with jose's createRemoteJWKSet against the
// JWKS URL in argv[2]; prints "ok <kid>" or "fail <kid> <error>" per line.
// The remote set is refreshed at least every second (cacheMaxAge) and refetched on an
// unknown kid after 500 ms (cooldownDuration): a verifier configured to refresh well
// within the set's prePublish, as DESIGN.md asks of real deployments.
import { createRemoteJWKSet, jwtVerify, decodeProtectedHeader } from "jose";
import readline from "node:readline";

const jwks = createRemoteJWKSet(new URL(process.argv[2]), { cacheMaxAge: 1000, cooldownDuration: 500 });
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
      await jwtVerify(token, jwks);
      process.stdout.write(`ok ${kid}\n`);
    } catch (e) {
      process.stdout.write(`fail ${kid} ${String(e.code || e.message).replace(/\n/g, " ")}\n`);
    }
  }
  busy = false;
}
rl.on("line", (line) => { queue.push(line.trim()); drain(); });
