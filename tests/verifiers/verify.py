"""Reads one JWT per line on stdin and verifies it with PyJWT's PyJWKClient against the JWKS
URL in argv[1]; prints "ok <kid>" or "fail <kid> <error>" per line.

The client caches the key set for one second (lifespan=1) and refetches on an unknown kid:
a verifier configured to refresh well within the set's prePublish.
"""
import sys

import jwt
from jwt import PyJWKClient

client = PyJWKClient(sys.argv[1], cache_jwk_set=True, lifespan=1)
for line in sys.stdin:
    token = line.strip()
    kid = "?"
    try:
        kid = jwt.get_unverified_header(token).get("kid", "?")
        key = client.get_signing_key_from_jwt(token)
        alg = jwt.get_unverified_header(token)["alg"]
        jwt.decode(token, key.key, algorithms=[alg], options={"require": ["exp"]})
        print(f"ok {kid}", flush=True)
    except Exception as e:  # every failure is reported, none is fatal
        print(f"fail {kid} {type(e).__name__}: {e}".replace("\n", " "), flush=True)
