"""Reads one JWT per line on stdin and verifies it with PyJWT against the JWKS at the URL in
argv[1]; prints "ok <kid>" or "fail <kid> <error>" per line.

The key set is pinned: fetched at start and then every second by a timer thread, never
because a token names a kid it does not hold. A verifier that refetched on an unknown kid
would accept a key that signs before it was published; this one refuses it unless the key
was in the set at least a second before, so an early activation fails the test (the set's
prePublish is longer than the period).
"""
import json
import sys
import threading
import time
import urllib.request

import jwt

URL = sys.argv[1]
PERIOD = 1.0
keys = None
lock = threading.Lock()


def refresh():
    global keys
    try:
        with urllib.request.urlopen(URL, timeout=2) as r:
            fresh = jwt.PyJWKSet.from_dict(json.load(r))
        with lock:
            keys = fresh
    except Exception:  # keep the last set: a verifier rides out an endpoint blip
        pass


def refresher():
    while True:
        time.sleep(PERIOD)
        refresh()


refresh()
threading.Thread(target=refresher, daemon=True).start()

for line in sys.stdin:
    token = line.strip()
    kid = "?"
    try:
        header = jwt.get_unverified_header(token)
        kid = header.get("kid", "?")
        with lock:
            current = keys
        if current is None:
            raise LookupError("no key set fetched yet")
        matching = [k for k in current.keys if k.key_id == kid]
        if not matching:
            raise LookupError(f"kid {kid} is not in the pinned key set")
        jwt.decode(token, matching[0].key, algorithms=[matching[0].algorithm_name], options={"require": ["exp"]})
        print(f"ok {kid}", flush=True)
    except Exception as e:  # every failure is reported, none is fatal
        print(f"fail {kid} {type(e).__name__}: {e}".replace("\n", " "), flush=True)
