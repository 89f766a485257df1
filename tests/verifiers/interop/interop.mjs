// keyturn's interop matrix, Node stack: `crypto` loads the keys, `jose` signs and verifies.
//
//   node interop.mjs sign   CASES OUT     load each case's private.pem, check it holds the key
//                                         of private.jwk.json, sign a token into OUT/<case>.jwt
//   node interop.mjs verify CASES TOKENS  verify every TOKENS/<signer>/<case>.jwt against
//                                         CASES/<case>/jwks.json (createLocalJWKSet: no refetch),
//                                         the algorithm pinned to CASES/<case>/alg
//
// Prints one JSON object per line: {check, case, signer?, ok, error?}. See tests/it/interop.rs.
import { createPrivateKey, createPublicKey } from "node:crypto";
import { readFileSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { SignJWT, createLocalJWKSet, jwtVerify } from "jose";

const [mode, cases, other] = process.argv.slice(2);
const read = (dir, name) => readFileSync(join(dir, name), "utf8");
const report = (o) => process.stdout.write(JSON.stringify(o) + "\n");
const spki = (k) => createPublicKey(k).export({ type: "spki", format: "der" }).toString("hex");
const why = (e) => `${e.code || e.name}: ${e.message}`;

if (mode === "sign") {
  for (const c of readdirSync(cases).sort()) {
    const d = join(cases, c);
    const alg = read(d, "alg").trim(), kid = read(d, "kid").trim();
    let key;
    try {
      key = createPrivateKey(read(d, "private.pem"));
      const fromJwk = createPrivateKey({ key: JSON.parse(read(d, "private.jwk.json")), format: "jwk" });
      if (spki(key) !== spki(fromJwk)) throw new Error("private.pem and private.jwk.json hold different keys");
      report({ check: "load", case: c, ok: true });
    } catch (e) {
      report({ check: "load", case: c, ok: false, error: why(e) });
      continue;
    }
    try {
      const now = Math.floor(Date.now() / 1000);
      const token = await new SignJWT({})
        .setProtectedHeader({ alg, kid })
        .setIssuer("keyturn-interop").setSubject(c).setIssuedAt(now).setExpirationTime(now + 600)
        .sign(key);
      writeFileSync(join(other, c + ".jwt"), token);
      report({ check: "sign", case: c, ok: true });
    } catch (e) {
      report({ check: "sign", case: c, ok: false, error: why(e) });
    }
  }
} else if (mode === "verify") {
  for (const signer of readdirSync(other).sort()) {
    for (const name of readdirSync(join(other, signer)).sort()) {
      const c = name.replace(/\.jwt$/, "");
      const d = join(cases, c);
      try {
        const keys = createLocalJWKSet(JSON.parse(read(d, "jwks.json")));
        await jwtVerify(read(join(other, signer), name).trim(), keys, {
          algorithms: [read(d, "alg").trim()],
          issuer: "keyturn-interop",
          subject: c,
          requiredClaims: ["exp"],
        });
        report({ check: "verify", signer, case: c, ok: true });
      } catch (e) {
        report({ check: "verify", signer, case: c, ok: false, error: why(e) });
      }
    }
  }
} else {
  console.error("usage: interop.mjs sign|verify CASES DIR");
  process.exit(2);
}
