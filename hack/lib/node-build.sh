# hack/lib/node-build.sh — builds the real node's parts (sourced by hack/control-plane).
#
# Every part comes from the Go module proxy, built once into $NODE_BIN (~/.cache/keyturn/bin/):
#   kubelet, kube-proxy,  k8s.io/kubernetes v$K8S_VERSION (the plane's wrapper module); the
#   kube-scheduler        scheduler joins the plane when it has a node
#   containerd 2.x        containerd, containerd-shim-runc-v2, ctr
#   runc                  with seccomp (cgo + libseccomp: `RuntimeDefault` profiles need it)
#   CNI plugins           bridge, host-local, loopback, portmap
#   pause                 a static Go program (sleep until signalled, reap orphans), the
#                         sandbox image's only file
# Debian packages the node needs (installed here when missing, as root with apt-get):
#   libseccomp-dev (runc's build), iptables (kube-proxy, in the nf_tables flavour Debian ships).

CONTAINERD_VERSION="${KEYTURN_CONTAINERD_VERSION:-2.4.2}"
RUNC_VERSION="${KEYTURN_RUNC_VERSION:-1.5.3}"
CNI_VERSION="${KEYTURN_CNI_VERSION:-1.10.0}"
NODE_BIN="$CACHE/bin/node-k8s$K8S_VERSION-containerd$CONTAINERD_VERSION-runc$RUNC_VERSION-cni$CNI_VERSION"

node_debian_packages() {
  local missing=()
  [ -f /usr/include/seccomp.h ] || missing+=(libseccomp-dev)
  command -v iptables >/dev/null 2>&1 || missing+=(iptables)
  command -v gcc >/dev/null 2>&1 || missing+=(gcc libc6-dev)
  [ ${#missing[@]} = 0 ] && return 0
  command -v apt-get >/dev/null 2>&1 || die "the node needs these Debian packages and apt-get is missing: ${missing[*]}"
  [ "$(id -u)" = 0 ] || die "the node needs these Debian packages (install them as root): ${missing[*]}"
  run_with_progress "installing Debian packages ${missing[*]}" "$CACHE/build/apt.log" \
    bash -c "DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${missing[*]} || { apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${missing[*]}; }"
}

# go_install WHAT LOG CGO TAGS LDFLAGS PKG@VERSION...: `go install` into $NODE_BIN.tmp/.
go_install() {
  local what="$1" logfile="$2" cgo="$3" tags="$4" ldflags="$5"; shift 5
  run_with_progress "building $what" "$logfile" \
    bash -c "cd '$CACHE/build' && GOTOOLCHAIN=local CGO_ENABLED=$cgo GOBIN='$NODE_BIN.tmp' go install -trimpath -tags '$tags' -ldflags '$ldflags' $*"
}

build_pause() {
  local work="$CACHE/build/pause"
  rm -rf "$work"; mkdir -p "$work"
  cat >"$work/go.mod" <<'GOMOD'
module keyturn.dev/hack/pause

go 1.26.0
GOMOD
  cat >"$work/main.go" <<'GOMAIN'
// Command pause holds a pod's namespaces: it sleeps until SIGINT or SIGTERM and reaps the
// orphans it inherits as the sandbox's PID 1.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for s := range sigs {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var ws syscall.WaitStatus
			if pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil); pid <= 0 || err != nil {
				break
			}
		}
	}
}
GOMAIN
  run_with_progress "building pause" "$work/build.log" \
    bash -c "cd '$work' && GOTOOLCHAIN=local CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o '$NODE_BIN.tmp/pause' ."
}

build_node() {
  [ -x "$NODE_BIN/kubelet" ] && [ -x "$NODE_BIN/kube-proxy" ] && [ -x "$NODE_BIN/kube-scheduler" ] && [ -x "$NODE_BIN/containerd" ] \
    && [ -x "$NODE_BIN/runc" ] && [ -x "$NODE_BIN/cni/bridge" ] && [ -x "$NODE_BIN/pause" ] && return 0
  check_go
  node_debian_packages
  mkdir -p "$CACHE/build" "$NODE_BIN.tmp/cni"
  local work="$CACHE/build/kubernetes-node-v$K8S_VERSION"
  k8s_wrapper "$work"
  k8s_build "$work" "kubelet, kube-proxy and kube-scheduler" kubelet kube-proxy kube-scheduler
  mv "$work/out/kubelet" "$work/out/kube-proxy" "$work/out/kube-scheduler" "$NODE_BIN.tmp/"
  local cv="github.com/containerd/containerd/v2/version"
  go_install "containerd v$CONTAINERD_VERSION" "$CACHE/build/containerd.log" 0 "no_btrfs no_devmapper no_zfs" \
    "-s -w -X $cv.Version=v$CONTAINERD_VERSION -X $cv.Package=github.com/containerd/containerd/v2" \
    "github.com/containerd/containerd/v2/cmd/containerd@v$CONTAINERD_VERSION" \
    "github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2@v$CONTAINERD_VERSION" \
    "github.com/containerd/containerd/v2/cmd/ctr@v$CONTAINERD_VERSION"
  go_install "runc v$RUNC_VERSION (cgo, seccomp)" "$CACHE/build/runc.log" 1 "seccomp urfave_cli_no_docs" \
    "-s -w -X main.version=$RUNC_VERSION" "github.com/opencontainers/runc@v$RUNC_VERSION"
  local p pkgs=()
  for p in main/bridge ipam/host-local main/loopback meta/portmap; do
    pkgs+=("github.com/containernetworking/plugins/plugins/$p@v$CNI_VERSION")
  done
  go_install "CNI plugins v$CNI_VERSION" "$CACHE/build/cni.log" 0 "" "-s -w" "${pkgs[@]}"
  mv "$NODE_BIN.tmp"/bridge "$NODE_BIN.tmp"/host-local "$NODE_BIN.tmp"/loopback "$NODE_BIN.tmp"/portmap "$NODE_BIN.tmp/cni/"
  build_pause
  rm -rf "$NODE_BIN"; mv "$NODE_BIN.tmp" "$NODE_BIN"
}
