#!/usr/bin/env bash
# The one-machine mesh topology, shared by `make demo` and the end-to-end tests. Source it.
#
#   node1 netns (10.0.1.1, 192.168.77.1) ==wire veth== node2 netns (10.0.2.1, 192.168.77.2)
#     |- pod n1a (10.0.1.2)  sa sleep    ns default        |- pod n2a (10.0.2.2) sa httpbin ns default
#     `- pod n1b (10.0.1.3)  sa intruder ns default        `- pod n2b (10.0.2.3) sa legacy  ns other
#   outside netns (10.0.9.2, on node2's bridge: a plaintext client outside the mesh)
#
# Every pod is a netns joined to its node's bridge, with its own cgroup v2 directory under
# $TOPO_CGROUP/node<N>/kubepods/besteffort/pod<uid> (as kubelet lays it out); each node runs its own meshtls-agent (on the host, like a DaemonSet with
# hostNetwork) attached to $TOPO_CGROUP/node<N>. topo_down removes everything, even half-made.
#
# Names carry a per-run id, so parallel runs and leftovers of a killed run never collide.

TOPO_ID=${TOPO_ID:-$$}
TOPO_ROOT=${TOPO_ROOT:-/tmp/meshtls-topo-$TOPO_ID}
TOPO_CGROUP_BASE=$(awk '$3 == "cgroup2" {print $2; exit}' /proc/mounts)
TOPO_CGROUP=$TOPO_CGROUP_BASE/meshtls-topo-$TOPO_ID
TOPO_PODS="n1a n1b n2a n2b"
declare -A TOPO_IP=([n1a]=10.0.1.2 [n1b]=10.0.1.3 [n2a]=10.0.2.2 [n2b]=10.0.2.3 [out]=10.0.9.2)
declare -A TOPO_NODE=([n1a]=1 [n1b]=1 [n2a]=2 [n2b]=2)
declare -A TOPO_SA=([n1a]=sleep [n1b]=intruder [n2a]=httpbin [n2b]=legacy)
declare -A TOPO_NS=([n1a]=default [n1b]=default [n2a]=default [n2b]=other)
# Pod UIDs, for the Kubernetes workload source: pod cgroups are named after them as kubelet's
# cgroupfs driver names them (kubepods/besteffort/pod<uid>).
declare -A TOPO_UID=([n1a]=6e316100-0000-4000-8000-00000000001a [n1b]=6e316200-0000-4000-8000-00000000001b
                     [n2a]=6e326100-0000-4000-8000-00000000002a [n2b]=6e326200-0000-4000-8000-00000000002b)
TOPO_AGENT_PIDS=()

topo_ns() { echo "mt$TOPO_ID-$1"; }  # netns name of a node ("node1"), pod ("n1a") or "out"
topo_cgroup() { echo "$TOPO_CGROUP/node${TOPO_NODE[$1]}/kubepods/besteffort/pod${TOPO_UID[$1]}"; }

topo_up() {
  [[ $(id -u) == 0 ]] || { echo "topology: must run as root" >&2; return 1; }
  [[ -n $TOPO_CGROUP_BASE ]] || { echo "topology: no cgroup2 mount" >&2; return 1; }
  mkdir -p "$TOPO_ROOT"
  local n
  for n in 1 2; do
    local ns; ns=$(topo_ns node$n)
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip -n "$ns" link add br0 type bridge
    ip -n "$ns" addr add 10.0.$n.1/24 dev br0
    ip -n "$ns" link set br0 up
    ip netns exec "$ns" sysctl -qw net.ipv4.ip_forward=1
    mkdir -p "$TOPO_CGROUP/node$n"
  done
  # The wire between the nodes: what tcpdump watches to prove only TLS crosses.
  ip link add "w$TOPO_ID-1" netns "$(topo_ns node1)" type veth peer name "w$TOPO_ID-2" netns "$(topo_ns node2)"
  ip -n "$(topo_ns node1)" addr add 192.168.77.1/24 dev "w$TOPO_ID-1"
  ip -n "$(topo_ns node2)" addr add 192.168.77.2/24 dev "w$TOPO_ID-2"
  ip -n "$(topo_ns node1)" link set "w$TOPO_ID-1" up
  ip -n "$(topo_ns node2)" link set "w$TOPO_ID-2" up
  ip -n "$(topo_ns node1)" route add 10.0.2.0/24 via 192.168.77.2
  ip -n "$(topo_ns node1)" route add 10.0.9.0/24 via 192.168.77.2
  ip -n "$(topo_ns node2)" route add 10.0.1.0/24 via 192.168.77.1
  ip -n "$(topo_ns node2)" addr add 10.0.9.1/24 dev br0
  local pod
  for pod in $TOPO_PODS out; do
    local node=${TOPO_NODE[$pod]:-2} ns; ns=$(topo_ns "$pod")
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip link add "p$TOPO_ID$pod" netns "$ns" type veth peer name "b$TOPO_ID$pod" netns "$(topo_ns node$node)"
    ip -n "$ns" link set "p$TOPO_ID$pod" name eth0
    ip -n "$ns" addr add "${TOPO_IP[$pod]}/24" dev eth0
    ip -n "$ns" link set eth0 up
    local gw=10.0.$node.1
    [[ $pod == out ]] && gw=10.0.9.1
    ip -n "$ns" route add default via "$gw"
    ip -n "$(topo_ns node$node)" link set "b$TOPO_ID$pod" master br0 up
    [[ $pod == out ]] || mkdir -p "$(topo_cgroup "$pod")"
  done
  topo_write_workloads "$TOPO_ROOT/workloads.yaml"
  mkdir -p "$TOPO_ROOT/policies"
}

topo_write_workloads() {
  local pod
  {
    echo "workloads:"
    for pod in $TOPO_PODS; do
      cat <<EOF
  - name: $pod
    namespace: ${TOPO_NS[$pod]}
    serviceAccount: ${TOPO_SA[$pod]}
    node: node${TOPO_NODE[$pod]}
    labels: {app: ${TOPO_SA[$pod]}}
    netns: /run/netns/$(topo_ns "$pod")
    cgroup: $(topo_cgroup "$pod")
    ips: [${TOPO_IP[$pod]}]
EOF
    done
  } >"$1"
}

# topo_run POD CMD...: runs CMD inside the pod (its netns and its cgroup), in the foreground.
topo_run() {
  local pod=$1; shift
  local cgroup=""
  [[ $pod != out ]] && cgroup=$(topo_cgroup "$pod")/cgroup.procs
  # The shell joins the cgroup first, so everything it execs is the pod's process.
  sh -c 'if [ -n "$1" ]; then echo $$ > "$1"; fi; shift; exec "$@"' topo "$cgroup" \
    ip netns exec "$(topo_ns "$pod")" "$@"
}

# Each node's agent serves metrics and readiness on its own loopback ports (both agents share the
# host's loopback), picked from the run id so that a leftover of another run does not collide, and
# below the ephemeral range (32768 and up by default): any outgoing connection could hold a port
# up there (CI once lost a run to that).
topo_metrics_port() { echo $((10000 + (TOPO_ID % 5000) * 4 + ($1 - 1) * 2)); }

# topo_start_agent N [extra agent flags...]: starts node N's agent; logs in $TOPO_ROOT/agentN.log,
# access log in $TOPO_ROOT/access-N.log. Waits until it is ready.
topo_start_agent() {
  local n=$1; shift
  local config=$TOPO_ROOT/agent$n.yaml
  cat >"$config" <<EOF
nodeName: node$n
trustDomain: cluster.local
stateDir: $TOPO_ROOT/state$n
policyDir: $TOPO_ROOT/policies
workloads: $TOPO_ROOT/workloads.yaml
cgroupRoot: $TOPO_CGROUP/node$n
bpfPinDir: /sys/fs/bpf/meshtls-topo-$TOPO_ID-node$n
statusSocket: $TOPO_ROOT/status$n.sock
accessLog: $TOPO_ROOT/access-$n.log
leaveBpfAttachedOnExit: ${TOPO_LEAVE_ATTACHED:-false}
drainTimeout: 2s
workers: 2
ports:
  metrics: $(topo_metrics_port "$n")
  readiness: $(( $(topo_metrics_port "$n") + 1 ))
EOF
  if [[ -n ${TOPO_EXTRA_CONFIG:-} ]]; then
    # A key the extra file sets replaces the default above (the agent rejects duplicate keys).
    local key
    for key in $(grep -o '^[A-Za-z]*:' "$TOPO_EXTRA_CONFIG"); do
      sed -i "/^${key}/d" "$config"
    done
    cat "$TOPO_EXTRA_CONFIG" >>"$config"
  fi
  # Both nodes share one CA (made once with `meshtlsctl ca init`), as one cluster would.
  mkdir -p "$TOPO_ROOT/state$n"
  [[ -e $TOPO_ROOT/state$n/ca ]] || ln -s "$TOPO_ROOT/ca" "$TOPO_ROOT/state$n/ca"
  # The log is appended across restarts: wait for one more "ready" than there was.
  local before
  before=$(grep -c "meshtls-agent ready" "$TOPO_ROOT/agent$n.log" 2>/dev/null || true)
  # Each agent in its own cgroup, as a DaemonSet pod would be: its accepted sockets (which
  # inherit the listener's cgroup) are then seen by its own sock_ops program only.
  mkdir -p "$TOPO_CGROUP/agent$n"
  sh -c 'echo $$ > "$1/cgroup.procs"; shift; exec "$@"' topo "$TOPO_CGROUP/agent$n" \
    "$TOPO_AGENT" --config "$config" "$@" >>"$TOPO_ROOT/agent$n.log" 2>&1 &
  TOPO_AGENT_PIDS[$n]=$!
  local i
  for i in $(seq 100); do
    [[ $(grep -c "meshtls-agent ready" "$TOPO_ROOT/agent$n.log") -gt ${before:-0} ]] && return 0
    kill -0 "${TOPO_AGENT_PIDS[$n]}" 2>/dev/null || break
    sleep 0.1
  done
  echo "agent $n did not start:" >&2
  tail -20 "$TOPO_ROOT/agent$n.log" >&2
  return 1
}

topo_stop_agent() {  # N [signal]
  local pid=${TOPO_AGENT_PIDS[$1]:-}
  [[ -n $pid ]] || return 0
  kill "-${2:-TERM}" "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  TOPO_AGENT_PIDS[$1]=""
}

topo_down() {
  local n pod
  for n in 1 2; do topo_stop_agent "$n" KILL; done
  for pod in $TOPO_PODS out node1 node2; do
    local ns; ns=$(topo_ns "$pod")
    # Processes still in the namespace (servers started by a test) go with it.
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
  done
  if [[ -d $TOPO_CGROUP ]]; then
    local dir
    for dir in $(find "$TOPO_CGROUP" -depth -type d); do
      xargs -r kill -9 <"$dir/cgroup.procs" 2>/dev/null || true
    done
    sleep 0.1
    find "$TOPO_CGROUP" -depth -type d -exec rmdir {} \; 2>/dev/null || true
  fi
  rm -rf /sys/fs/bpf/meshtls-topo-"$TOPO_ID"-node1 /sys/fs/bpf/meshtls-topo-"$TOPO_ID"-node2
  [[ ${TOPO_KEEP:-0} == 1 ]] || rm -rf "$TOPO_ROOT"
}
