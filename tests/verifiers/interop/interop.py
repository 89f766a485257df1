"""keyturn's interop matrix, Python stack: `cryptography` loads the keys, PyJWT signs and verifies.

  interop.py sign   CASES OUT     load each case's private.pem, check it holds the key of
                                  private.jwk.json, sign a token with it into OUT/<case>.jwt
  interop.py kid    PEM...        the RFC 7638 thumbprint of each PEM private key's public key,
                                  one per line (independent of keyturn's own)
  interop.py verify CASES TOKENS  verify every TOKENS/<signer>/<case>.jwt against
                                  CASES/<case>/jwks.json (local: no refetch), the algorithm
                                  pinned to CASES/<case>/alg

Prints one JSON object per line: {"check", "case", "signer"?, "ok", "error"?}.
See tests/it/interop.rs for the case layout and the token's claims.
"""
import base64
import hashlib
import json
import os
import sys
import time

import jwt
from cryptography.hazmat.primitives import serialization
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm, get_default_algorithms


def read(case_dir, name, mode="r"):
    with open(os.path.join(case_dir, name), mode) as f:
        return f.read()


def report(**kw):
    print(json.dumps(kw), flush=True)


def spki(key):
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def sign(cases, out):
    for case in sorted(os.listdir(cases)):
        d = os.path.join(cases, case)
        alg, kid = read(d, "alg").strip(), read(d, "kid").strip()
        try:
            key = serialization.load_pem_private_key(read(d, "private.pem", "rb"), password=None)
            jwk = get_default_algorithms()[alg].from_jwk(read(d, "private.jwk.json"))
            if spki(key) != spki(jwk):
                raise ValueError("private.pem and private.jwk.json hold different keys")
            report(check="load", case=case, ok=True)
        except Exception as e:
            report(check="load", case=case, ok=False, error=f"{type(e).__name__}: {e}")
            continue
        try:
            now = int(time.time())
            claims = {"iss": "keyturn-interop", "sub": case, "iat": now, "exp": now + 600}
            token = jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})
            with open(os.path.join(out, case + ".jwt"), "w") as f:
                f.write(token)
            report(check="sign", case=case, ok=True)
        except Exception as e:
            report(check="sign", case=case, ok=False, error=f"{type(e).__name__}: {e}")


def verify(cases, tokens):
    for signer in sorted(os.listdir(tokens)):
        for name in sorted(os.listdir(os.path.join(tokens, signer))):
            case = name.removesuffix(".jwt")
            d = os.path.join(cases, case)
            try:
                alg = read(d, "alg").strip()
                token = read(os.path.join(tokens, signer), name).strip()
                kid = jwt.get_unverified_header(token).get("kid")
                keys = jwt.PyJWKSet.from_json(read(d, "jwks.json"))
                matching = [k for k in keys.keys if k.key_id == kid]
                if not matching:
                    raise LookupError(f"kid {kid} is not in the JWKS")
                jwt.decode(
                    token,
                    matching[0].key,
                    algorithms=[alg],
                    issuer="keyturn-interop",
                    subject=case,
                    options={"require": ["exp", "iss", "sub"]},
                )
                report(check="verify", signer=signer, case=case, ok=True)
            except Exception as e:
                report(check="verify", signer=signer, case=case, ok=False, error=f"{type(e).__name__}: {e}")


def kid(paths):
    required = {"RSA": ["e", "kty", "n"], "EC": ["crv", "kty", "x", "y"], "OKP": ["crv", "kty", "x"]}
    for p in paths:
        with open(p, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None).public_key()
        for cls in (RSAAlgorithm, ECAlgorithm, OKPAlgorithm):
            try:
                jwk = json.loads(cls.to_jwk(key))
                break
            except Exception:
                continue
        canonical = json.dumps({m: jwk[m] for m in required[jwk["kty"]]}, separators=(",", ":"), sort_keys=True)
        print(base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode())


if __name__ == "__main__":
    if sys.argv[1] == "kid":
        kid(sys.argv[2:])
    else:
        mode, cases, other = sys.argv[1:4]
        {"sign": sign, "verify": verify}[mode](cases, other)
