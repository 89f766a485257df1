# hack/lib/common.sh — what hack/control-plane and hack/lib/node.sh share (sourced): logging,
# the one wait helper and the one certificate helper. Every function takes what it works on
# as arguments (the plane's DIR first); nothing here reads a variable its caller set.

log() { printf '[control-plane] %s\n' "$*" >&2; }
die() { printf '[control-plane] error: %s\n' "$*" >&2; exit 1; }

# alive PIDFILE: the process whose pid PIDFILE holds is running.
alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# in_plane DIR CMD...: run CMD where DIR's plane listens: inside its network namespace when it
# has a node (DIR/node/netns), on the host's loopback otherwise.
in_plane() {
  local dir="$1"; shift
  if [ -f "$dir/node/netns" ]; then
    nsenter --net="/run/netns/$(cat "$dir/node/netns")" -- "$@"
  else
    "$@"
  fi
}

# fail_component DIR NAME: NAME did not come up: show its log, stop the plane, exit.
fail_component() {
  local dir="$1" name="$2"
  log "$name failed to start; last lines of $dir/$name.log:"
  tail -n 30 "$dir/$name.log" >&2 || true
  cmd_stop "$dir" || true
  die "$name did not start"
}

# wait_ready DIR SECONDS NAMES -- CMD...: poll CMD every half second until it succeeds. Each
# poll first checks that every process NAMES lists (DIR/NAME.pid, comma-separated) is still
# running; one that died, or SECONDS without success, fails the first NAME.
wait_ready() {
  local dir="$1" secs="$2" names="$3" i name; shift 3
  [ "${1:-}" = -- ] && shift
  for i in $(seq 1 $((secs * 2))); do
    for name in ${names//,/ }; do alive "$dir/$name.pid" || fail_component "$dir" "$name"; done
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  log "${names%%,*}: not ready after ${secs}s"
  fail_component "$dir" "${names%%,*}"
}

# issue_cert PKI NAME SUBJECT EXTENSIONS: PKI/NAME.key (P-256) and PKI/NAME.crt, signed by
# PKI/ca.{crt,key} for ten years with the given X.509 extensions (an openssl extfile's lines,
# e.g. 'extendedKeyUsage=clientAuth').
issue_cert() {
  local pki="$1" name="$2" subj="$3" ext="$4"
  (
    cd "$pki"
    umask 077
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "$subj" \
      -keyout "$name.key" -out "$name.csr" 2>/dev/null
    printf '%s\n' "$ext" >"$name.ext"
    openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile "$name.ext" -out "$name.crt" 2>/dev/null
    rm -f "$name.csr" "$name.ext" ca.srl
  )
}
