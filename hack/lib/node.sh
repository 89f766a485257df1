# hack/lib/node.sh — a real node for the test plane (sourced by hack/control-plane).
#
# `hack/control-plane start --node DIR` runs the whole cluster inside one network namespace
# of its own (keyturn-<hash of DIR>): etcd, kube-apiserver and kube-controller-manager on its
# loopback, and the node — containerd + runc, the kubelet, kube-proxy (iptables mode), a local
# image registry (crane) — on a dummy interface holding the node IP. Pods live in child
# network namespaces on a bridge in that namespace. No address outside namespaces this script
# created is ever a target: the namespace has no link to the host, and its default route is
# a blackhole.
#
# Host state the node creates, and `stop` removes: the network namespace (and, with it, the
# bridge, veths, iptables/nftables rules), a cgroup `keyturn-<hash>` in each cgroup v1
# hierarchy (every process of the node, pods and shims included, lives below it: `stop`
# kills exactly those), and the mounts under DIR/node (pod volumes, container root
# filesystems, pod network namespaces). The host's cgroup mounts are never changed.
#
# cgroup v1: Kubernetes 1.35+ refuses cgroup v1 unless the kubelet sets `failCgroupV1: false`
# (KEP-5573); containerd 2.x and runc 1.x still support v1. On a cgroup v2 host the same
# configuration runs with the kubelet's v2 path.

NODE_NAME="keyturn-node"
NODE_IP="10.250.0.1"          # on kt-node0, a veth whose peer is inside the namespace too
POD_CIDR="10.251.0.0/24"      # the bridge kt-cni0 is 10.251.0.1
SERVICE_CIDR="10.0.0.0/24"    # the plane's --service-cluster-ip-range
REGISTRY_PORT=5000            # the local registry, on the namespace's loopback
REGISTRY="127.0.0.1:$REGISTRY_PORT"

node_ns_name() { printf 'keyturn-%s' "$(printf '%s' "$1" | sha256sum | cut -c1-8)"; }

# in_ns DIR CMD...: run CMD inside DIR's network namespace (only the network: the mount
# namespace stays the host's, so cgroups and mounts are the ones the kubelet manages).
in_ns() {
  local dir="$1"; shift
  nsenter --net="/run/netns/$(node_ns_name "$dir")" -- "$@"
}

# The cgroup v1 hierarchies mounted on this host (or "unified" on a cgroup v2 host).
cgroup_hierarchies() {
  awk '$9 == "cgroup" && $5 ~ "^/sys/fs/cgroup/" { print $5 }' /proc/self/mountinfo
}

# One node per host: the kubelet's device-plugin socket (/var/lib/kubelet/device-plugins) and
# the shims' socket directory (/run/containerd/s) have fixed paths.
NODE_LOCK=/run/keyturn-node.dir

node_preflight() {
  [ "$(id -u)" = 0 ] || die "the node needs root (network namespaces, cgroups, mounts)"
  if [ -f "$NODE_LOCK" ]; then
    local other
    other="$(cat "$NODE_LOCK")"
    if [ "$other" != "$1" ] && alive "$other/kubelet.pid"; then
      die "a node is already running for $other (one per host: the kubelet's and containerd's fixed paths); stop it first: hack/control-plane stop $other"
    fi
  fi
  grep -qw overlay /proc/filesystems || die "the node needs overlayfs (containerd's snapshotter): not in /proc/filesystems"
  local fstype
  fstype="$(stat -fc %T /sys/fs/cgroup)"
  if [ "$fstype" = cgroup2fs ]; then
    die "this host has cgroup v2 only; the node is configured and tested for the cgroup v1 hierarchy this project's machines have (see hack/lib/node.sh)"
  fi
  local need
  for need in cpu cpuacct cpuset memory pids devices freezer; do
    cgroup_hierarchies | grep -qx "/sys/fs/cgroup/$need" \
      || die "the node needs the cgroup v1 '$need' controller mounted at /sys/fs/cgroup/$need (found: $(cgroup_hierarchies | tr '\n' ' '))"
  done
}

# node_preflight_tools: the commands the node runs (hack/lib/node-build.sh installs them).
node_preflight_tools() {
  local c
  for c in ip nsenter iptables mount umount; do
    command -v "$c" >/dev/null 2>&1 || die "the node needs '$c' (Debian: iproute2, util-linux, iptables)"
  done
}

gen_node_certs() { # gen_node_certs DIR
  local d="$1/pki" name subj
  for name in kubelet kube-proxy kube-scheduler apiserver-kubelet-client; do
    case "$name" in
      kubelet) subj="/O=system:nodes/CN=system:node:$NODE_NAME" ;;
      kube-proxy) subj="/CN=system:kube-proxy" ;;
      kube-scheduler) subj="/CN=system:kube-scheduler" ;;
      apiserver-kubelet-client) subj="/O=system:masters/CN=kube-apiserver-kubelet-client" ;;
    esac
    issue_cert "$d" "$name" "$subj" 'extendedKeyUsage=clientAuth'
  done
  # The kubelet's serving certificate (the API server reaches it for logs and exec).
  issue_cert "$d" kubelet-serving "/CN=$NODE_NAME" \
    "$(printf 'subjectAltName=IP:%s,DNS:%s\nextendedKeyUsage=serverAuth' "$NODE_IP" "$NODE_NAME")"
}

# node_netns DIR: the namespace, its loopback, the node IP and the pod bridge's sysctls.
node_netns() {
  local dir="$1" ns
  echo "$dir" >"$NODE_LOCK"
  ns="$(node_ns_name "$dir")"
  ip netns del "$ns" 2>/dev/null || true
  ip netns add "$ns"
  echo "$ns" >"$dir/node/netns"
  in_ns "$dir" ip link set lo up
  # The node's interface: one end of a veth pair whose other end is in the namespace too
  # (kernels without the dummy driver have veth).
  in_ns "$dir" ip link add kt-node0 type veth peer name kt-node1
  in_ns "$dir" ip addr add "$NODE_IP/32" dev kt-node0
  in_ns "$dir" ip link set kt-node0 up
  in_ns "$dir" ip link set kt-node1 up
  # The default route is a blackhole: whatever is not for the namespace's own addresses is
  # refused on the spot, so nothing leaves it.
  in_ns "$dir" ip route add blackhole default
  in_ns "$dir" sysctl -qw net.ipv4.ip_forward=1
  # Pod → Service → pod on the same bridge needs bridged traffic to pass iptables (per
  # namespace since Linux 5.3), or replies skip kube-proxy's reverse NAT.
  in_ns "$dir" sysctl -qw net.bridge.bridge-nf-call-iptables=1 \
    || die "net.bridge.bridge-nf-call-iptables cannot be set in a network namespace (br_netfilter missing)"
}

# node_cgroups DIR: DIR's cgroup in every v1 hierarchy, with a `daemons` child for the node's
# own processes (containerd and its shims, the kubelet, kube-proxy, the registry).
node_cgroups() {
  local dir="$1" cg h
  cg="$(node_ns_name "$dir")"
  echo "/$cg" >"$dir/node/cgroup"
  for h in $(cgroup_hierarchies); do
    mkdir -p "$h/$cg/daemons"
    if [ "$(basename "$h")" = cpuset ]; then
      cat "$h/cpuset.cpus" >"$h/$cg/cpuset.cpus"; cat "$h/cpuset.mems" >"$h/$cg/cpuset.mems"
      cat "$h/cpuset.cpus" >"$h/$cg/daemons/cpuset.cpus"; cat "$h/cpuset.mems" >"$h/$cg/daemons/cpuset.mems"
    fi
  done
}

# node_proc NAME DIR CMD...: start a node daemon inside the namespace and DIR's `daemons`
# cgroups (its children, containers included, stay below DIR's cgroup).
node_proc() {
  local name="$1" dir="$2"; shift 2
  local cg procs="" h
  cg="$(cat "$dir/node/cgroup")"
  for h in $(cgroup_hierarchies); do procs+=" $h$cg/daemons/cgroup.procs"; done
  start_proc "$name" "$dir" nsenter --net="/run/netns/$(node_ns_name "$dir")" -- \
    bash -c 'for f in '"$procs"'; do echo $$ >"$f"; done; exec "$@"' "$name" "$@"
}

write_containerd_config() {
  local dir="$1" n="$1/node"
  mkdir -p "$n/containerd" "$n/certs.d/$REGISTRY" "$n/cni/net.d" "$n/cni/ipam" "$n/runc"
  cat >"$n/certs.d/$REGISTRY/hosts.toml" <<TOML
server = "http://$REGISTRY"

[host."http://$REGISTRY"]
  capabilities = ["pull", "resolve"]
TOML
  cat >"$n/containerd.toml" <<TOML
version = 3
root = "$n/containerd/root"
state = "$n/containerd/state"
temp = "$n/containerd/tmp"
disabled_plugins = ["io.containerd.nri.v1.nri", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "$n/containerd.sock"

[ttrpc]
  address = "$n/containerd.sock.ttrpc"

[debug]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "$n/containerd/opt"

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "$REGISTRY/pause:keyturn"
  [plugins."io.containerd.cri.v1.images".registry]
    config_path = "$n/certs.d"

[plugins."io.containerd.cri.v1.runtime"]
  netns_mounts_under_state_dir = true
  # Never lower a container's oom_score_adj below containerd's own: that needs
  # CAP_SYS_RESOURCE, which sandboxes like this project's machines do not grant root.
  restrict_oom_score_adj = true
  enable_unprivileged_ports = false
  cdi_spec_dirs = []
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["$NODE_BIN/cni"]
    conf_dir = "$n/cni/net.d"
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "$NODE_BIN/runc"
        Root = "$n/runc"
        SystemdCgroup = false
TOML
  cat >"$n/cni/net.d/10-keyturn.conflist" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "keyturn",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "kt-cni0",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$n/cni/ipam",
        "ranges": [[{"subnet": "$POD_CIDR"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
JSON
}

write_kubelet_config() {
  local dir="$1" n="$1/node" api_port="$2"
  : >"$n/resolv.conf"   # pods get no resolver of the host's
  cat >"$n/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# cgroup v1 hosts: refused by default since Kubernetes 1.35 (KEP-5573).
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: $(cat "$n/cgroup")
cgroupsPerQOS: true
containerRuntimeEndpoint: unix://$n/containerd.sock
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: $dir/pki/kubelet-serving.crt
tlsPrivateKeyFile: $dir/pki/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $dir/pki/ca.crt}
authorization: {mode: Webhook}
podLogsDir: $n/pod-logs
volumePluginDir: $n/volume-plugins
resolvConf: $n/resolv.conf
clusterDomain: cluster.local
failSwapOn: false
# How often the kubelet re-syncs every pod (and so refreshes mounted ConfigMaps and
# Secrets); the Kubernetes default is 1m. KEYTURN_NODE_SYNC_FREQUENCY changes it.
syncFrequency: ${KEYTURN_NODE_SYNC_FREQUENCY:-1m}
configMapAndSecretChangeDetectionStrategy: Watch
# A test machine's disk is shared: never evict or collect images because of it.
evictionHard: {memory.available: "1Mi", nodefs.available: "1%", imagefs.available: "1%"}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
maxPods: 40
serializeImagePulls: false
YAML
  write_kubeconfig "$dir/kubelet.kubeconfig" "https://$NODE_IP:$api_port" "$dir/pki/kubelet.crt" "$dir/pki/kubelet.key" "system:node:$NODE_NAME"
  write_kubeconfig "$dir/kube-proxy.kubeconfig" "https://$NODE_IP:$api_port" "$dir/pki/kube-proxy.crt" "$dir/pki/kube-proxy.key" system:kube-proxy
  cat >"$n/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $dir/kube-proxy.kubeconfig}
hostnameOverride: $NODE_NAME
mode: iptables
clusterCIDR: $POD_CIDR
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: ["$NODE_IP/32"]
# Leave the (host-wide) conntrack table settings alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
YAML
}

# push_static_image DIR CRANE REF BINARY ENTRYPOINT...: an image whose only file is BINARY,
# pushed with the crane at CRANE.
push_static_image() {
  local dir="$1" crane="$2" ref="$3" bin="$4"; shift 4
  local work
  work="$(mktemp -d)"
  mkdir "$work/root"
  cp "$bin" "$work/root/$(basename "$bin")"
  tar --create --file "$work/layer.tar" --directory "$work/root" \
    --owner=0 --group=0 --numeric-owner --mode=0755 --mtime=@0 --sort=name "$(basename "$bin")"
  in_ns "$dir" "$crane" append --oci-empty-base --new_layer "$work/layer.tar" --new_tag "$ref" >/dev/null 2>&1
  local ep
  ep="$(printf '%s,' "$@")"
  in_ns "$dir" "$crane" mutate "$ref" --entrypoint "${ep%,}" --set-platform linux/amd64 --tag "$ref" >/dev/null 2>&1
  rm -rf "$work"
}

# node_start DIR API_PORT: after the plane is up inside the namespace.
node_start() {
  local dir="$1" api_port="$2" n="$1/node" crane
  crane="$("$ROOT/hack/image" --crane)"
  log "starting the image registry on $REGISTRY (inside the namespace)"
  mkdir -p "$n/registry"
  node_proc registry "$dir" "$crane" registry serve --address "$REGISTRY" --disk "$n/registry"
  wait_ready "$dir" 30 registry -- in_ns "$dir" curl -sf "http://$REGISTRY/v2/"
  push_static_image "$dir" "$crane" "$REGISTRY/pause:keyturn" "$NODE_BIN/pause" /pause

  write_containerd_config "$dir"
  # The shims' socket directory is fixed (/run/containerd/s, whatever `state` says): remove it
  # on stop if this node made it.
  [ -e /run/containerd ] || echo /run/containerd >>"$n/created-paths"
  log "starting containerd v$CONTAINERD_VERSION (runc v$RUNC_VERSION)"
  node_proc containerd "$dir" env PATH="$NODE_BIN:$PATH" "$NODE_BIN/containerd" --config "$n/containerd.toml"
  wait_ready "$dir" 60 containerd -- "$NODE_BIN/ctr" --address "$n/containerd.sock" version

  write_kubelet_config "$dir" "$api_port"
  # The kubelet's device-plugin socket directory is fixed (/var/lib/kubelet/device-plugins,
  # whatever --root-dir says); remember whether it was there, so that stop removes only ours.
  [ -e /var/lib/kubelet ] || echo /var/lib/kubelet >>"$n/created-paths"
  log "starting the kubelet v$K8S_VERSION as node $NODE_NAME ($NODE_IP)"
  node_proc kubelet "$dir" env PATH="$NODE_BIN:$PATH" "$NODE_BIN/kubelet" \
    --config "$n/kubelet.yaml" --kubeconfig "$dir/kubelet.kubeconfig" --root-dir "$n/kubelet" \
    --cert-dir "$n/kubelet/pki" --hostname-override "$NODE_NAME" --node-ip "$NODE_IP" --v 1
  log "starting kube-proxy v$K8S_VERSION (iptables)"
  node_proc kube-proxy "$dir" env PATH="$NODE_BIN:$PATH" "$NODE_BIN/kube-proxy" --config "$n/kube-proxy.yaml"
  # Healthy once it has programmed the Services' rules (Services are unreachable before).
  wait_ready "$dir" 120 kube-proxy -- in_ns "$dir" curl -sf http://127.0.0.1:10256/healthz
  wait_ready "$dir" 120 kubelet,kube-proxy -- node_ready "$dir"
  log "node $NODE_NAME is Ready"
}

# node_ready DIR: the node reports Ready.
node_ready() {
  [ "$(in_ns "$1" "$K8S_BIN/kubectl" --kubeconfig "$1/kubeconfig" get node "$NODE_NAME" \
    -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}')" = True ]
}

# node_stop DIR: stop what node_start started and remove what it created, nothing else.
node_stop() {
  local dir="$1" n="$1/node" name pid
  [ -d "$n" ] || return 0
  for name in kubelet kube-proxy; do stop_pid "$dir" "$name"; done
  if [ -f "$n/cgroup" ]; then
    local cg h round pids
    cg="$(cat "$n/cgroup")"
    # Every process below the node's cgroup is the node's: containers, shims, containerd,
    # the registry. Freeze them so none forks while they are killed.
    [ -d "/sys/fs/cgroup/freezer$cg" ] && echo FROZEN >"/sys/fs/cgroup/freezer$cg/freezer.state" 2>/dev/null || true
    for round in $(seq 1 50); do
      pids="$(find "/sys/fs/cgroup/pids$cg" -name cgroup.procs -exec cat {} + 2>/dev/null | sort -u)"
      [ -z "$pids" ] && break
      # shellcheck disable=SC2086
      kill -9 $pids 2>/dev/null || true
      [ -d "/sys/fs/cgroup/freezer$cg" ] && echo THAWED >"/sys/fs/cgroup/freezer$cg/freezer.state" 2>/dev/null || true
      sleep 0.1
    done
    [ -n "$pids" ] && log "warning: processes still in $cg: $pids"
  fi
  for name in containerd registry; do rm -f "$dir/$name.pid"; done
  # Mounts below DIR/node, deepest first: pod volumes, container root filesystems, the pods'
  # network namespaces.
  local m
  awk -v p="$n/" 'index($5, p) == 1 { print $5 }' /proc/self/mountinfo | sort -r | while read -r m; do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "warning: cannot unmount $m"
  done
  if [ -f "$n/cgroup" ]; then
    cg="$(cat "$n/cgroup")"
    for h in $(cgroup_hierarchies); do
      [ -d "$h$cg" ] && find "$h$cg" -depth -type d -exec rmdir {} + 2>/dev/null
      [ -d "$h$cg" ] && log "warning: cannot remove cgroup $h$cg"
    done
    rm -f "$n/cgroup"
  fi
  if [ -f "$n/created-paths" ]; then
    while read -r m; do rm -rf "$m"; done <"$n/created-paths"
    rm -f "$n/created-paths"
  fi
  if [ -f "$n/netns" ]; then
    ip netns del "$(cat "$n/netns")" 2>/dev/null || true
    rm -f "$n/netns"
  fi
  if [ "$(cat "$NODE_LOCK" 2>/dev/null)" = "$dir" ]; then rm -f "$NODE_LOCK"; fi
}
