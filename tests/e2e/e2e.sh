#!/usr/bin/env bash
# End-to-end tests of meshtls-agent on the one-machine topology (tests/e2e/topology.sh): two
# "nodes" and four pods in network namespaces and cgroups, one agent per node. Privileged (root).
# Each test builds its own topology and removes it, even on failure.
#
# usage: e2e.sh BUILD_DIR TEST [--datapath D]     TEST: one of the test_* names below, or "all"
set -uo pipefail
build=$(cd "${1:?usage: e2e.sh BUILD_DIR TEST}" && pwd)
test_name=${2:?usage: e2e.sh BUILD_DIR TEST}
shift 2
DATAPATH=auto
while [[ $# -gt 0 ]]; do
  case $1 in
    --datapath) DATAPATH=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
here=$(cd "$(dirname "$0")" && pwd)
TOPO_AGENT=$build/agent/meshtls-agent
CTL=$build/agent/meshtlsctl
NETCHECK="/usr/bin/python3 $here/netcheck.py"
source "$here/topology.sh"

failures=0
fail() { echo "FAIL: $*"; failures=$((failures + 1)); }
pass() { echo "ok: $*"; }
expect_eq() {  # WHAT WANT GOT
  if [[ $2 == "$3" ]]; then pass "$1"; else fail "$1: want '$2', got '$3'"; fi
}
expect_contains() {  # WHAT FILE PATTERN
  if grep -q -- "$3" "$2"; then pass "$1"; else fail "$1: '$3' not in $2"; sed 's/^/    /' "$2" | tail -20; fi
}

setup() {
  topo_up || { echo "FAIL: topology"; exit 1; }
  "$CTL" ca init --dir "$TOPO_ROOT/ca" --trust-domain cluster.local >/dev/null
}
teardown() {
  [[ -n ${KUBE_API_PID:-} ]] && kill "$KUBE_API_PID" 2>/dev/null
  if [[ $failures -gt 0 ]]; then
    for f in "$TOPO_ROOT"/agent*.log "$TOPO_ROOT"/access-*.log; do
      [[ -f $f ]] && { echo "--- $f"; tail -25 "$f"; }
    done
  fi
  topo_down
}
trap teardown EXIT

policy() {  # FILE-NAME YAML: writes a policy file atomically (the agents hot-reload)
  printf '%s\n' "$2" >"$TOPO_ROOT/policies/.$1.tmp"
  mv "$TOPO_ROOT/policies/.$1.tmp" "$TOPO_ROOT/policies/$1.yaml"
}
mesh_mode() {
  policy mesh "apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: $1}}"
}
wait_reload() {  # N: waits for the Nth "policies reloaded" in both agents' logs
  local i
  for i in $(seq 50); do
    [[ $(grep -c "policies reloaded" "$TOPO_ROOT/agent1.log") -ge $1 && \
       $(grep -c "policies reloaded" "$TOPO_ROOT/agent2.log") -ge $1 ]] && return 0
    sleep 0.1
  done
  fail "policies were not reloaded"
}
serve() {  # POD PORT: an echo server answering "POD:<request>"
  topo_run "$1" $NETCHECK serve "$2" --reply "$1" >"$TOPO_ROOT/serve-$1-$2.log" 2>&1 &
  local i
  for i in $(seq 50); do grep -q listening "$TOPO_ROOT/serve-$1-$2.log" && return 0; sleep 0.05; done
  fail "server $1:$2 did not start"
}
send() {  # FROM-POD HOST PORT TEXT [TIMEOUT-S] -> prints the answer (or refused/reset/closed/timeout)
  topo_run "$1" $NETCHECK send "$2" "$3" "$4" --timeout "${5:-5}" 2>&1 | tail -1
}
agents() { topo_start_agent 1 --datapath "$DATAPATH" "$@" && topo_start_agent 2 --datapath "$DATAPATH" "$@"; }
capture_start() {  # records the node1<->node2 wire
  ip netns exec "$(topo_ns node1)" tcpdump --immediate-mode -Z root -i "w$TOPO_ID-1" -U -s 0 -w "$TOPO_ROOT/wire.pcap" >"$TOPO_ROOT/tcpdump.log" 2>&1 &
  CAPTURE_PID=$!
  sleep 0.5
}
capture_stop() { sleep 0.3; kill "$CAPTURE_PID" 2>/dev/null; wait "$CAPTURE_PID" 2>/dev/null; }
# Prints "<tcp packets to/from 15008> <TLS application-data records seen> <marker hits>".
wire_summary() {
  /usr/bin/python3 "$here/pcap_check.py" "$TOPO_ROOT/wire.pcap" "$1"
}

# --- the tests ---------------------------------------------------------------------------

test_strict() {
  setup; mesh_mode STRICT; agents || { fail "the agents did not start"; return; }
  serve n2a 8080
  expect_eq "plaintext from outside the mesh to a STRICT pod is refused" reset "$(send out 10.0.2.2 8080 plain)"
  expect_contains "the refusal is logged" "$TOPO_ROOT/access-2.log" '"reason":"plaintext_refused"'
  capture_start
  local marker=MESHTLS-SECRET-MARKER-$RANDOM$RANDOM
  expect_eq "mesh traffic flows" "n2a:$marker" "$(send n1a 10.0.2.2 8080 "$marker")"
  capture_stop
  read -r packets records hits <<<"$(wire_summary "$marker")"
  [[ $packets -gt 0 && $records -gt 0 ]] && pass "the wire carried TLS records ($packets packets, $records records)" \
    || fail "no TLS seen on the wire ($packets packets, $records records)"
  expect_eq "the plaintext marker never crossed the wire" 0 "$hits"
  expect_contains "outbound logged with identities" "$TOPO_ROOT/access-1.log" \
    '"dst_identity":"spiffe://cluster.local/ns/default/sa/httpbin".*"result":"ok"'
  expect_contains "inbound logged with the client identity" "$TOPO_ROOT/access-2.log" \
    '"direction":"inbound".*"src_identity":"spiffe://cluster.local/ns/default/sa/sleep"'
}

test_permissive_and_disable() {
  setup; mesh_mode PERMISSIVE
  policy legacy 'apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: legacy, namespace: other}
spec:
  selector: {matchLabels: {app: legacy}}
  mtls: {mode: DISABLE}'
  agents || { fail "the agents did not start"; return; }
  serve n2a 8080; serve n2b 8080
  expect_eq "PERMISSIVE: plaintext passes" "n2a:hello" "$(send out 10.0.2.2 8080 hello)"
  expect_contains "PERMISSIVE plaintext is logged as tls=false" "$TOPO_ROOT/access-2.log" \
    '"direction":"passthrough".*"result":"ok".*"tls":false'
  # Under TCG a scrape can be slow or land early: poll (the assertion stays exact).
  local i plaintext=0
  for i in $(seq 50); do
    scrape "$(topo_metrics_port 2)" /metrics | tail -n +2 >"$TOPO_ROOT/metrics.prom"
    plaintext=$(metric_sum "$TOPO_ROOT/metrics.prom" meshtls_plaintext_connections_total 'destination_workload="n2a"' 'mode="PERMISSIVE"')
    [[ $plaintext == 1 ]] && break
    sleep 0.2
  done
  expect_eq "the plaintext connection is counted as a PERMISSIVE one" 1 "$plaintext"
  expect_eq "PERMISSIVE: mesh traffic still uses mTLS" "n2a:meshed" "$(send n1a 10.0.2.2 8080 meshed)"
  expect_contains "mesh traffic logged with TLS" "$TOPO_ROOT/access-2.log" '"direction":"inbound".*"tls":true'
  expect_eq "DISABLE: plaintext reaches the pod" "n2b:direct" "$(send out 10.0.2.3 8080 direct)"
  if grep -q '"dst_workload":"other/n2b".*"direction":"passthrough"\|"direction":"passthrough".*"dst_workload":"other/n2b"' "$TOPO_ROOT/access-2.log"; then
    fail "DISABLE: the agent touched the pod's inbound traffic"
  else
    pass "DISABLE: the agent left the port alone"
  fi
  # DISABLE turns mTLS off, not authorization: once a policy selects the pod, the agent takes its
  # plaintext in to enforce it.
  policy deny-outside 'apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-outside, namespace: other}
spec:
  selector: {matchLabels: {app: legacy}}
  action: DENY
  rules:
  - from: [{source: {ipBlocks: ["10.0.9.0/24"]}}]'
  wait_reload 1
  expect_eq "DISABLE: an AuthorizationPolicy still applies to plaintext" reset "$(send out 10.0.2.3 8080 denied)"
  expect_contains "and the denial is logged" "$TOPO_ROOT/access-2.log" '"dst_workload":"other/n2b".*"reason":"policy_denied"'
  expect_eq "policy check says the same" "DENY deny_policy_matched DISABLE workload" \
    "$(ctl 2 -o json policy check --to other/n2b --port 8080 --plaintext --from-ip 10.0.9.2 >"$TOPO_ROOT/check.json" && \
       json_get "$TOPO_ROOT/check.json" "' '.join([d['decision'], d['reason'], d['mtls_mode'], d['mtls_mode_level']])")"
  expect_eq "DISABLE: other sources still get through" "n2b:inside" "$(send n2a 10.0.2.3 8080 inside)"
}

test_authorization() {
  setup; mesh_mode STRICT
  policy allow-sleep 'apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-sleep, namespace: default}
spec:
  selector: {matchLabels: {app: httpbin}}
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/sleep"]}}]
    to: [{operation: {ports: ["8080"]}}]'
  policy legacy-l7 'apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: legacy-get-only, namespace: other}
spec:
  selector: {matchLabels: {app: legacy}}
  rules:
  - to: [{operation: {methods: ["GET"]}}]'
  agents || { fail "the agents did not start"; return; }
  serve n2a 8080; serve n2a 9090; serve n2b 8080
  expect_eq "allowed principal" "n2a:ok" "$(send n1a 10.0.2.2 8080 ok)"
  expect_eq "other principal is refused" reset "$(send n1b 10.0.2.2 8080 no)"
  expect_contains "the denial names the policy" "$TOPO_ROOT/access-1.log" \
    '"result":"denied".*"src_identity":"spiffe://cluster.local/ns/default/sa/intruder"'
  expect_contains "the server side logs policy_denied" "$TOPO_ROOT/access-2.log" '"reason":"policy_denied"'
  expect_eq "port rule: 9090 is not allowed" reset "$(send n1a 10.0.2.2 9090 port)"
  expect_eq "an L7-only ALLOW rule never matches (denied at L4)" reset "$(send n1a 10.0.2.3 8080 l7)"
  policy deny-default 'apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-default-ns, namespace: default}
spec:
  selector: {matchLabels: {app: httpbin}}
  action: DENY
  rules:
  - from: [{source: {namespaces: ["default"]}}]'
  wait_reload 1
  expect_eq "DENY wins over ALLOW (namespace rule)" reset "$(send n1a 10.0.2.2 8080 denied)"
  expect_contains "the DENY policy is named" "$TOPO_ROOT/access-2.log" 'deny-default-ns'
  policy deny-default 'apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-default-ns, namespace: default}
spec:
  selector: {matchLabels: {app: httpbin}}
  action: DENY
  rules:
  - from: [{source: {notNamespaces: ["default"]}}]'
  wait_reload 2
  expect_eq "notNamespaces: the default namespace passes again" "n2a:back" "$(send n1a 10.0.2.2 8080 back)"
  policy broken 'apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: broken, namespace: default}
spec:
  rules:
  - from: [{source: {principal: ["x"]}}]'
  sleep 0.5
  expect_contains "a bad policy file is rejected with its file and line" "$TOPO_ROOT/agent2.log" 'broken.yaml:[0-9]*:.*principal'
  expect_eq "the last good policy set stays in force" "n2a:still" "$(send n1a 10.0.2.2 8080 still)"
}

test_identity_mismatch() {
  setup; mesh_mode STRICT
  # Node 1 believes n2a runs as "httpbin"; node 2 serves it as "impostor".
  sed 's/serviceAccount: httpbin/serviceAccount: impostor/' "$TOPO_ROOT/workloads.yaml" >"$TOPO_ROOT/workloads-2.yaml"
  topo_start_agent 1 --datapath "$DATAPATH" || { fail "an agent did not start"; return; }
  topo_start_agent 2 --datapath "$DATAPATH" --workloads "$TOPO_ROOT/workloads-2.yaml" || { fail "an agent did not start"; return; }
  serve n2a 8080
  expect_eq "the client agent refuses a server with the wrong identity" reset "$(send n1a 10.0.2.2 8080 x)"
  expect_contains "the reason is identity_mismatch" "$TOPO_ROOT/access-1.log" '"reason":"identity_mismatch"'
}

test_rotation_under_load() {
  setup; mesh_mode STRICT
  # 10 s certificates rotate at about half-life: several rotations during 30 s of traffic.
  printf 'svidTtl: 10s\n' >"$TOPO_ROOT/ttl.yaml"
  TOPO_EXTRA_CONFIG=$TOPO_ROOT/ttl.yaml
  agents || { fail "the agents did not start"; return; }
  topo_run n2a iperf3 -s -p 5201 >"$TOPO_ROOT/iperf-server.log" 2>&1 &
  serve n2a 8080
  sleep 0.5
  topo_run n1a iperf3 -c 10.0.2.2 -p 5201 -t 30 -J >"$TOPO_ROOT/iperf.json" 2>&1 &
  local iperf=$! i ok=0 total=0 started=$SECONDS
  for i in $(seq 28); do
    sleep 1
    total=$((total + 1))
    # 20 s, not 5: the check is that no connection fails across rotations, and under TCG, with
    # iperf3 saturating the emulated CPU, one handshake can take seconds. One probe failed once
    # on 6.1 with a 5 s timeout (CI rehearsal, 2026-12-07; the cause is unconfirmed: the log tails
    # did not reach it, so the failures are now printed below).
    local answer; answer=$(send n1a 10.0.2.2 8080 probe 20 2>/dev/null)
    [[ $answer == "n2a:probe" ]] && ok=$((ok + 1)) || echo "  probe $i at $((SECONDS - started)) s: $answer"
  done
  wait "$iperf"; local rc=$?
  expect_eq "iperf3 ran 30 s through rotations without a failure" 0 "$rc"
  expect_eq "every new connection during the rotations worked" "$total" "$ok"
  local serials
  serials=$(grep -o '"peer_serial":"[0-9a-f]*"' "$TOPO_ROOT/access-1.log" | sort -u | wc -l)
  [[ $serials -ge 3 ]] && pass "new handshakes saw $serials different server serials" \
    || fail "only $serials server serial(s) seen: certificates did not rotate"
  local failed
  # iperf3 itself ends its streams with a reset, so only the probes' connections are judged.
  failed=$(grep '"dst_addr":"10.0.2.2:8080"' "$TOPO_ROOT/access-1.log" | grep -c '"result":"error"' || true)
  expect_eq "no failed connections" 0 "$failed"
  # The failures themselves, with their reasons (the log tails printed on failure may miss them).
  [[ $failed == 0 ]] || grep '"result":"error"' "$TOPO_ROOT/access-1.log" "$TOPO_ROOT/access-2.log" | sed 's/^/  failed: /'
  local rotations elapsed=$((SECONDS - started + 2))
  rotations=$(grep -c "svid issued for spiffe://cluster.local/ns/default/sa/httpbin" "$TOPO_ROOT/agent2.log" || true)
  # About one renewal per half-life (4-5 s with jitter): several, but not one per second. The
  # window is measured, since the VM (TCG) stretches the 28 probes well past 30 s.
  local most=$((elapsed / 3 + 2))
  [[ $rotations -ge 4 && $rotations -le $most ]] && pass "node 2 issued $rotations httpbin SVIDs in ${elapsed} s (about one per half-life)" \
    || fail "node 2 issued $rotations httpbin SVIDs in ${elapsed} s with a 10 s TTL (want 4-$most)"
}

test_restart() {
  setup; mesh_mode STRICT
  TOPO_LEAVE_ATTACHED=true
  agents || { fail "the agents did not start"; return; }
  serve n2a 8080
  expect_eq "traffic before the crash" "n2a:before" "$(send n1a 10.0.2.2 8080 before)"
  capture_start
  topo_stop_agent 1 KILL
  local marker=MESHTLS-CRASH-MARKER-$RANDOM
  local answer; answer=$(send n1a 10.0.2.2 8080 "$marker")
  [[ $answer == refused || $answer == reset ]] && pass "with the agent killed, a STRICT pod's connect fails closed ($answer)" \
    || fail "with the agent killed the connection was not refused: $answer"
  capture_stop
  read -r packets records hits <<<"$(wire_summary "$marker")"
  expect_eq "no plaintext left the node while the agent was down" 0 "$hits"
  local start=$SECONDS
  topo_start_agent 1 --datapath "$DATAPATH" || { fail "an agent did not start"; return; }
  local i got=""
  for i in $(seq 20); do
    got=$(send n1a 10.0.2.2 8080 after)
    [[ $got == "n2a:after" ]] && break
    sleep 0.1
  done
  expect_eq "after the restart new connections work" "n2a:after" "$got"
  # How fast is for benchmarks; this checks that it recovers on its own, in a bound that even the
  # emulated VM under a parallel ctest keeps (the host takes well under a second).
  [[ $((SECONDS - start)) -le 20 ]] && pass "recovered without help ($((SECONDS - start)) s after the restart)" \
    || fail "recovery took $((SECONDS - start)) s"
  local attached
  attached=$(bpftool cgroup show "$TOPO_CGROUP/node1" 2>/dev/null | grep -c 'connect4' || true)
  expect_eq "exactly one connect4 program on the node's cgroup (adopted, not stacked)" 1 "$attached"
  expect_contains "the restarted agent adopted its pinned links" "$TOPO_ROOT/agent1.log" "adopted pinned BPF link"
}

test_bad_input() {
  setup; mesh_mode STRICT
  # A short handshake deadline, a small pending-handshake limit and a small budget for the access
  # log's mtls_handshake lines, to see all three act.
  printf 'handshakeTimeout: 2s\nmaxPendingHandshakes: 800\naccessLogHandshakeEventsBurst: 20\naccessLogHandshakeEventsPerSecond: 2\n' \
    >"$TOPO_ROOT/limits.yaml"
  TOPO_EXTRA_CONFIG=$TOPO_ROOT/limits.yaml
  local started; started=$(date +%s)
  agents || { fail "the agents did not start"; return; }
  serve n2a 8080
  /usr/bin/python3 "$here/bad_input.py" 10.0.2.2 15008 --netns "$(topo_ns out)" >"$TOPO_ROOT/bad.log" 2>&1 &
  local bad=$! i
  for i in $(seq 300); do grep -q "flood open" "$TOPO_ROOT/bad.log" && break; sleep 0.1; done
  expect_eq "real traffic continues during the flood" "n2a:during" "$(send n1a 10.0.2.2 8080 during)"
  wait "$bad"; local rc=$?
  cat "$TOPO_ROOT/bad.log"
  expect_eq "every bad connection was closed by the agent" 0 "$rc"
  expect_contains "garbage is closed with a reason" "$TOPO_ROOT/access-2.log" '"reason":"not_tls"'
  expect_contains "a TLS 1.2 hello is refused" "$TOPO_ROOT/access-2.log" '"reason":"protocol_version"'
  expect_contains "a stalled handshake times out" "$TOPO_ROOT/access-2.log" '"reason":"handshake_timeout"'
  expect_contains "failed handshakes get mtls_handshake event lines" "$TOPO_ROOT/access-2.log" \
    '"event":"mtls_handshake","failure_reason":"handshake_timeout".*"result":"failure"'
  expect_contains "the pending-handshake limit is logged" "$TOPO_ROOT/agent2.log" 'limit maxPendingHandshakes'
  # Hundreds of handshakes timed out; the log holds at most the configured burst plus the rate
  # times the agent's age, and the rest are counted.
  local lines allowed suppressed
  lines=$(grep -c '"event":"mtls_handshake"' "$TOPO_ROOT/access-2.log")
  allowed=$((20 + 2 * ($(date +%s) - started + 1)))
  scrape "$(topo_metrics_port 2)" /metrics | tail -n +2 >"$TOPO_ROOT/bad-metrics.prom"
  suppressed=$(metric_sum "$TOPO_ROOT/bad-metrics.prom" meshtls_handshake_events_suppressed_total)
  if [[ $lines -le $allowed && $suppressed -gt 0 ]]; then
    pass "the handshake event budget held: $lines lines (at most $allowed), $suppressed counted instead"
  else
    fail "the handshake event budget: $lines mtls_handshake lines (at most $allowed allowed), $suppressed suppressed"
  fi
  local rss; rss=$(awk '/VmRSS/ {print $2}' "/proc/${TOPO_AGENT_PIDS[2]}/status")
  [[ $rss -lt 200000 ]] && pass "agent memory stayed bounded (${rss} KiB RSS)" || fail "agent RSS ${rss} KiB"
  expect_eq "real traffic after the flood" "n2a:after" "$(send n1a 10.0.2.2 8080 after)"
}

test_policy_change_closes_denied_connections() {
  setup; mesh_mode STRICT
  agents || { fail "the agents did not start"; return; }
  topo_run n2a iperf3 -s -p 5201 >/dev/null 2>&1 &
  sleep 0.5
  topo_run n1a iperf3 -c 10.0.2.2 -p 5201 -t 20 >"$TOPO_ROOT/iperf.log" 2>&1 &
  local iperf=$!
  sleep 2
  local start=$SECONDS
  policy deny-sleep 'apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-sleep, namespace: default}
spec:
  selector: {matchLabels: {app: httpbin}}
  action: DENY
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/sleep"]}}]'
  wait "$iperf"; local rc=$?
  [[ $rc != 0 && $((SECONDS - start)) -le 5 ]] && pass "a DENY that now matches ends the running transfer ($((SECONDS - start)) s)" \
    || fail "the transfer was not ended by the new DENY (rc $rc after $((SECONDS - start)) s)"
  expect_contains "the close is logged as policy_denied" "$TOPO_ROOT/access-2.log" '"direction":"inbound".*"reason":"policy_denied"'
  expect_contains "the agent says why" "$TOPO_ROOT/agent2.log" "policy change closed [0-9]* connection"
}

test_workload_reload() {
  setup; mesh_mode STRICT
  # Start without n2b, then add it to the file while the agents run.
  cp "$TOPO_ROOT/workloads.yaml" "$TOPO_ROOT/workloads-full.yaml"
  /usr/bin/python3 - "$TOPO_ROOT/workloads-full.yaml" "$TOPO_ROOT/workloads.yaml" <<'PY'
import sys
lines = open(sys.argv[1]).read().split("\n  - name: ")
kept = [lines[0]] + [l for l in lines[1:] if not l.startswith("n2b")]
open(sys.argv[2], "w").write("\n  - name: ".join(kept))
PY
  agents || { fail "the agents did not start"; return; }
  serve n2b 8080
  expect_eq "a pod not in the registry is not meshed" "n2b:before" "$(send out 10.0.2.3 8080 before)"
  cp "$TOPO_ROOT/workloads-full.yaml" "$TOPO_ROOT/workloads.tmp" && mv "$TOPO_ROOT/workloads.tmp" "$TOPO_ROOT/workloads.yaml"
  local i
  for i in $(seq 50); do grep -q "serving other/n2b" "$TOPO_ROOT/agent2.log" && break; sleep 0.1; done
  expect_contains "the new pod is served after a hot reload" "$TOPO_ROOT/agent2.log" "serving other/n2b"
  sleep 0.3
  local answer; answer=$(send out 10.0.2.3 8080 after)
  [[ $answer == reset || $answer == refused ]] && pass "the new pod is STRICT now: plaintext refused" || fail "plaintext reached the new pod: $answer"
  expect_eq "and mesh traffic reaches it" "n2b:meshed" "$(send n1a 10.0.2.3 8080 meshed)"
  printf 'workloads:\n  - name: broken\n' >"$TOPO_ROOT/workloads.tmp" && mv "$TOPO_ROOT/workloads.tmp" "$TOPO_ROOT/workloads.yaml"
  sleep 0.5
  expect_contains "a bad workloads file is rejected with its line" "$TOPO_ROOT/agent2.log" "workloads reload rejected"
  expect_eq "and the last good registry stays" "n2b:still" "$(send n1a 10.0.2.3 8080 still)"
}

# A stand-in Kubernetes API server (fake_kube_api.py) serving the given topology pods, and an
# extra agent config that makes the agents read their pods from it.
kube_pod_json() {  # POD
  printf '{"name":"%s","namespace":"%s","uid":"%s","serviceAccount":"%s","node":"node%s","ip":"%s","labels":{"app":"%s"}}' \
    "$1" "${TOPO_NS[$1]}" "${TOPO_UID[$1]}" "${TOPO_SA[$1]}" "${TOPO_NODE[$1]}" "${TOPO_IP[$1]}" "${TOPO_SA[$1]}"
}
kube_api_start() {  # PODS...
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=kube-apiserver \
    -addext subjectAltName=IP:127.0.0.1 -keyout "$TOPO_ROOT/kube.key" -out "$TOPO_ROOT/kube.crt" 2>/dev/null
  local pods=() pod
  for pod in "$@"; do pods+=("$(kube_pod_json "$pod")"); done
  local joined
  joined=$(IFS=,; echo "${pods[*]}")
  printf '{"namespaces":{"default":{"meshtls.io/mode":"enabled"},"other":{"meshtls.io/mode":"enabled"},"kube-system":{}},"pods":[%s]}\n' \
    "$joined" >"$TOPO_ROOT/kube-state.json"
  /usr/bin/python3 "$here/fake_kube_api.py" --cert "$TOPO_ROOT/kube.crt" --key "$TOPO_ROOT/kube.key" --token e2e-token \
    --state "$TOPO_ROOT/kube-state.json" --port-file "$TOPO_ROOT/kube.port" >"$TOPO_ROOT/kube-api.log" 2>&1 &
  KUBE_API_PID=$!
  local i
  for i in $(seq 50); do [[ -s $TOPO_ROOT/kube.port ]] && break; sleep 0.1; done
  [[ -s $TOPO_ROOT/kube.port ]] || { fail "the stand-in API server did not start"; cat "$TOPO_ROOT/kube-api.log"; return 1; }
  local port; port=$(cat "$TOPO_ROOT/kube.port")
  {
    echo "apiVersion: v1"
    echo "kind: Config"
    echo "current-context: e2e"
    echo "clusters: [{name: e2e, cluster: {server: \"https://127.0.0.1:$port\", certificate-authority: kube.crt}}]"
    echo "contexts: [{name: e2e, context: {cluster: e2e, user: agent}}]"
    echo "users: [{name: agent, user: {token: e2e-token}}]"
  } >"$TOPO_ROOT/kubeconfig"
  printf 'workloadSource: kubernetes\nkubernetes:\n  kubeconfig: %s\n' "$TOPO_ROOT/kubeconfig" >"$TOPO_ROOT/kube-extra.yaml"
}
kube_ctl() {  # METHOD PATH [JSON]: drives the stand-in API server
  /usr/bin/python3 - "$TOPO_ROOT/kube.crt" "https://127.0.0.1:$(cat "$TOPO_ROOT/kube.port")$2" "$1" "${3:-}" <<'PY'
import ssl, sys, urllib.request
ctx = ssl.create_default_context(cafile=sys.argv[1])
req = urllib.request.Request(sys.argv[2], method=sys.argv[3], data=sys.argv[4].encode() or None,
                             headers={"Authorization": "Bearer e2e-token", "Content-Type": "application/json"})
urllib.request.urlopen(req, context=ctx, timeout=5).read()
PY
}
map_entries() {  # NODE MAP -> number of entries in a pinned BPF map of that node's agent
  bpftool -j map dump pinned "/sys/fs/bpf/meshtls-topo-$TOPO_ID-node$1/maps/$2" 2>/dev/null |
    /usr/bin/python3 -c 'import json,sys; print(len(json.load(sys.stdin)))'
}
listening_on() {  # POD PORT -> number of listeners on PORT in the pod's netns
  ip netns exec "$(topo_ns "$1")" ss -Hltn "sport = :$2" | wc -l
}

test_kubernetes() {
  setup; mesh_mode STRICT
  local pod
  # Each pod's "sandbox": the process the runtime starts first, found by the agent through the
  # pod's cgroup (kubepods/besteffort/pod<uid>), which gives it the pod's netns.
  for pod in $TOPO_PODS; do topo_run "$pod" sleep infinity & done
  kube_api_start n1a n1b n2a || return
  TOPO_EXTRA_CONFIG=$TOPO_ROOT/kube-extra.yaml agents || { fail "the agents did not start with the Kubernetes source"; return; }
  expect_contains "node 2's agent reads its pods from the API server" "$TOPO_ROOT/agent2.log" "workloads from the Kubernetes API"
  ctl 2 workloads >"$TOPO_ROOT/kube-workloads.txt" 2>&1
  expect_contains "meshtlsctl shows the watches' state" "$TOPO_ROOT/kube-workloads.txt" "pods on this node: synced"
  expect_contains "and serves the pod the API lists on its node, in the netns found from its cgroup" \
    "$TOPO_ROOT/agent2.log" "serving default/n2a .* in /run/netns/$(topo_ns n2a)"
  serve n2a 8080; serve n2b 8080
  expect_eq "mesh traffic to a pod on another node, known from the API" "n2a:meshed" "$(send n1a 10.0.2.2 8080 meshed)"
  local answer; answer=$(send out 10.0.2.2 8080 plain)
  [[ $answer == reset || $answer == refused ]] && pass "STRICT: plaintext to it refused" || fail "plaintext reached n2a: $answer"
  expect_eq "a pod the API does not list is not meshed" "n2b:before" "$(send out 10.0.2.3 8080 before)"
  expect_eq "and has no agent listener" "0" "$(listening_on n2b 15008)"
  expect_eq "node 2 captures inbound traffic of one pod" "1" "$(map_entries 2 inbound_pods)"
  expect_eq "and steers one meshed cgroup" "1" "$(map_entries 2 meshed_cgroups)"

  kube_ctl POST /_control/pods "$(kube_pod_json n2b)"
  local i
  for i in $(seq 50); do grep -q "serving other/n2b" "$TOPO_ROOT/agent2.log" && break; sleep 0.1; done
  expect_contains "a pod ADDED through the watch is served" "$TOPO_ROOT/agent2.log" "serving other/n2b"
  expect_eq "with its tunnel listener in its netns" "1" "$(listening_on n2b 15008)"
  expect_eq "and its BPF map entries (inbound capture, steered cgroup)" "2 2" \
    "$(map_entries 2 inbound_pods) $(map_entries 2 meshed_cgroups)"
  sleep 0.3
  answer=$(send out 10.0.2.3 8080 after-add)
  [[ $answer == reset || $answer == refused ]] && pass "the new pod is STRICT: plaintext refused" || fail "plaintext reached n2b: $answer"
  for i in $(seq 50); do ctl 1 workloads 2>/dev/null | grep -q "n2b" && break; sleep 0.1; done
  expect_eq "node 1 learned it from the other-nodes watch, so mesh traffic reaches it" "n2b:meshed" "$(send n1a 10.0.2.3 8080 meshed)"

  kube_ctl DELETE /_control/pods/other/n2b
  for i in $(seq 50); do grep -q "stopped serving other/n2b" "$TOPO_ROOT/agent2.log" && break; sleep 0.1; done
  expect_contains "a pod DELETED through the watch is no longer served" "$TOPO_ROOT/agent2.log" "stopped serving other/n2b"
  expect_eq "its listeners are gone" "0" "$(listening_on n2b 15008)"
  expect_eq "and so are its BPF map entries" "1 1" "$(map_entries 2 inbound_pods) $(map_entries 2 meshed_cgroups)"
  expect_eq "and the BPF capture no longer takes its traffic" "n2b:after-delete" "$(send out 10.0.2.3 8080 after-delete)"
  if ctl 2 workloads 2>&1 | grep -q "n2b"; then fail "meshtlsctl still lists n2b"; else pass "meshtlsctl no longer lists it"; fi
  expect_eq "the other pods are untouched" "n2a:still" "$(send n1a 10.0.2.2 8080 still)"
}

# Waits (up to 20 s) until node N's agent lists a live connection to ADDRESS.
wait_listed() {  # N ADDRESS
  local deadline=$((SECONDS + 20))
  while [[ $SECONDS -lt $deadline ]]; do
    [[ $("$CTL" --socket "$TOPO_ROOT/status$1.sock" -o json connections 2>/dev/null | grep -c "$2") -gt 0 ]] && return 0
    sleep 0.2
  done
  fail "node $1's agent never listed a connection to $2"
}

# meshtlsctl against a live agent; prints the output, fails the check on a non-zero exit.
ctl() {  # NODE ARGS...
  local n=$1; shift
  "$CTL" --socket "$TOPO_ROOT/status$n.sock" "$@"
}
json_get() {  # FILE PYTHON-EXPRESSION over `d` (the parsed JSON)
  /usr/bin/python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print($2)" "$1"
}
scrape() {  # NODE PATH -> body (metrics or readiness)
  /usr/bin/python3 - "http://127.0.0.1:$1$2" <<'PY'
import sys, urllib.request, urllib.error
try:
    with urllib.request.urlopen(sys.argv[1], timeout=5) as r:
        print(r.status); sys.stdout.write(r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code); sys.stdout.write(e.read().decode())
PY
}
# Sum of a metric's samples whose labels contain every given 'key="value"'.
metric_sum() {  # FILE NAME LABEL...
  local file=$1 name=$2; shift 2
  /usr/bin/python3 - "$file" "$name" "$@" <<'PY'
import sys
path, name, wanted = sys.argv[1], sys.argv[2], sys.argv[3:]
total = 0.0
for line in open(path):
    if line.startswith(name + "{") or line.startswith(name + " "):
        if all(w in line for w in wanted):
            total += float(line.rsplit(" ", 1)[1])
print(int(total))
PY
}

test_inspection() {
  setup; mesh_mode STRICT
  # With the local-leg shortcut on (it is opt-in), so the agent's recv() path is covered too.
  printf 'localLegShortcut: on\n' >"$TOPO_ROOT/shortcut.yaml"
  TOPO_EXTRA_CONFIG=$TOPO_ROOT/shortcut.yaml
  agents || { fail "the agents did not start"; return; }
  serve n2a 8080
  # A live connection to look at: a byte every 0.1 s for 20 s (iperf3 starts slowly under TCG
  # and ends its own streams with resets).
  topo_run n2a $NETCHECK serve 5201 --sink >/dev/null 2>&1 &
  sleep 0.5
  topo_run n1a $NETCHECK trickle 10.0.2.2 5201 20 >/dev/null 2>&1 &
  local iperf=$!
  local out=$TOPO_ROOT/ctl
  mkdir -p "$out"
  local deadline=$((SECONDS + 15))
  while [[ $SECONDS -lt $deadline ]]; do
    ctl 1 -o json connections >"$out/connections.json" 2>/dev/null
    [[ $(json_get "$out/connections.json" "any(c.get('destinationAddress', c.get('destination_address')) == '10.0.2.2:5201' and int(c.get('bytesSent', c.get('bytes_sent', 0))) > 0 for c in d.get('connections', []))" 2>/dev/null) == True ]] && break
    sleep 0.2
  done
  local cmd
  for cmd in status workloads connections certs policy; do
    if ctl 1 -o json "$cmd" >"$out/$cmd.json" 2>"$out/$cmd.err"; then pass "meshtlsctl $cmd -o json"; else fail "meshtlsctl $cmd: $(cat "$out/$cmd.err")"; fi
    ctl 1 "$cmd" >"$out/$cmd.txt" 2>&1 || fail "meshtlsctl $cmd (table)"
  done
  expect_eq "status: served workloads" "['default/n1a', 'default/n1b']" \
    "$(json_get "$out/status.json" "sorted(d.get('servedWorkloads', d.get('served_workloads', [])))")"
  if [[ $(json_get "$out/status.json" "d['kernel'].get('localLegShortcut', d['kernel'].get('local_leg_shortcut', False))") == True ]]; then
    # Both ends of the live connection's local leg sit in the shortcut's sockhash.
    local legs
    legs=$(bpftool -j map dump pinned "/sys/fs/bpf/meshtls-topo-$TOPO_ID-node1/maps/local_legs" 2>/dev/null \
      | /usr/bin/python3 -c 'import json,sys; print(len(json.load(sys.stdin)))' 2>/dev/null || echo 0)
    [[ $legs -ge 2 ]] && pass "the local legs ride the sockmap shortcut ($legs sockets)" || fail "no socket in the shortcut map ($legs)"
  else
    echo "note: the local-leg shortcut is off on this kernel ($(uname -r)); its map is not checked"
  fi
  expect_eq "status: the BPF programs are listed with ids" True \
    "$(json_get "$out/status.json" "len(d.get('bpfPrograms', d.get('bpf_programs', []))) >= 5")"
  expect_eq "connections: the live connection is listed with its bytes" True \
    "$(json_get "$out/connections.json" "any(c.get('destinationAddress', c.get('destination_address')) == '10.0.2.2:5201' and int(c.get('bytesSent', c.get('bytes_sent', 0))) > 0 for c in d.get('connections', []))")"
  expect_eq "certs: the sleep SVID is there" True \
    "$(json_get "$out/certs.json" "any(c.get('spiffeId', c.get('spiffe_id')) == 'spiffe://cluster.local/ns/default/sa/sleep' for c in d.get('certificates', []))")"
  expect_eq "policy: n1a is STRICT" True \
    "$(json_get "$out/policy.json" "any(w['workload'] == 'default/n1a' and w['mode'] in ('MTLS_MODE_STRICT', 1) for w in d['workloads'])")"
  expect_eq "a Python grpcio client reads GetStatus and ListCertificates" \
    "node=node1 certificates=spiffe://cluster.local/ns/default/sa/intruder,spiffe://cluster.local/ns/default/sa/sleep" \
    "$(/usr/bin/python3 "$here/grpc_probe.py" "$TOPO_ROOT/status1.sock" "$here/../.." 2>&1 | tail -1)"
  local old new
  old=$(json_get "$out/certs.json" "[c.get('serial') for c in d['certificates'] if c.get('spiffeId', c.get('spiffe_id')).endswith('/sa/sleep')][0]")
  ctl 1 -o json rotate --spiffe-id spiffe://cluster.local/ns/default/sa/sleep >"$out/rotate.json" 2>&1 || fail "meshtlsctl rotate: $(cat "$out/rotate.json")"
  new=$(json_get "$out/rotate.json" "d['rotated'][0]['serial']")
  [[ -n $new && $new != "$old" ]] && pass "rotate: a new serial ($old -> $new)" || fail "rotate did not renew ($old -> $new)"
  # tap sees the next handshake.
  timeout 4 "$CTL" --socket "$TOPO_ROOT/status1.sock" tap >"$out/tap.txt" 2>&1 &
  local tap=$!
  sleep 1
  send n1a 10.0.2.2 8080 tapped >/dev/null
  wait "$tap" 2>/dev/null
  grep -qi "handshake" "$out/tap.txt" && pass "tap streams the handshake" || fail "tap saw no handshake: $(head -5 "$out/tap.txt")"
  # End the live connection and wait until the agent has closed it, so that the counters below
  # see only the five connections made for them.
  kill "$iperf" 2>/dev/null
  wait "$iperf" 2>/dev/null
  deadline=$((SECONDS + 15))
  while [[ $SECONDS -lt $deadline ]]; do
    [[ $(ctl 1 -o json connections 2>/dev/null | grep -c '10.0.2.2:5201') -eq 0 ]] && break
    sleep 0.2
  done
  # The socket is root's only.
  expect_eq "the status socket is mode 0600" 600 "$(stat -c %a "$TOPO_ROOT/status1.sock")"
  local denied
  denied=$(setpriv --reuid=65534 --regid=65534 --clear-groups "$CTL" --socket "$TOPO_ROOT/status1.sock" status 2>&1 || true)
  [[ $denied == *"ermission denied"* ]] && pass "a non-root user is refused: $denied" || fail "a non-root user got: $denied"
  # Metrics: promtool accepts a live scrape, and the counters follow the traffic.
  local port; port=$(topo_metrics_port 1)
  # Five connections to n2b, which nothing else in this test talks to, so its counters move only
  # by them. Counting happens when a connection is logged, just after it leaves the table: poll.
  serve n2b 8080
  local labels=('reporter="source"' 'source_workload="n1a"' 'destination_workload="n2b"')
  scrape "$port" /metrics | tail -n +2 >"$out/before.prom"
  local i
  for i in 1 2 3 4 5; do send n1a 10.0.2.3 8080 "count-$i" >/dev/null; done
  deadline=$((SECONDS + 15))
  while [[ $SECONDS -lt $deadline ]]; do
    scrape "$port" /metrics | tail -n +2 >"$out/after.prom"
    [[ $(( $(metric_sum "$out/after.prom" istio_tcp_connections_closed_total "${labels[@]}") - \
           $(metric_sum "$out/before.prom" istio_tcp_connections_closed_total "${labels[@]}") )) -ge 5 ]] && break
    sleep 0.2
  done
  if promtool check metrics <"$out/after.prom" >"$out/promtool.txt" 2>&1; then pass "promtool check metrics accepts the scrape"
  else fail "promtool: $(head -5 "$out/promtool.txt")"; fi
  expect_eq "istio_tcp_connections_opened_total counted the 5 connections" 5 \
    $(( $(metric_sum "$out/after.prom" istio_tcp_connections_opened_total "${labels[@]}") - $(metric_sum "$out/before.prom" istio_tcp_connections_opened_total "${labels[@]}") ))
  expect_eq "istio_tcp_connections_closed_total too" 5 \
    $(( $(metric_sum "$out/after.prom" istio_tcp_connections_closed_total "${labels[@]}") - $(metric_sum "$out/before.prom" istio_tcp_connections_closed_total "${labels[@]}") ))
  expect_eq "istio_tcp_received_bytes_total counted the request bytes (5 x 7)" 35 \
    $(( $(metric_sum "$out/after.prom" istio_tcp_received_bytes_total "${labels[@]}") - $(metric_sum "$out/before.prom" istio_tcp_received_bytes_total "${labels[@]}") ))
  expect_eq "readiness answers 200" 200 "$(scrape $((port + 1)) /healthz/ready | head -1)"
  expect_eq "meshtls_ready is 1" 1 "$(metric_sum "$out/after.prom" meshtls_ready)"
  expect_eq "meshtls_policy_last_reload_successful is 1" 1 "$(metric_sum "$out/after.prom" meshtls_policy_last_reload_successful)"
  expect_contains "the CA's expiry is exported" "$out/after.prom" '^meshtls_ca_expiration_timestamp_seconds{role="root"'
  expect_contains "and each SVID's renewal time" "$out/after.prom" '^meshtls_certificate_renewal_timestamp_seconds{spiffe_id="spiffe://cluster.local/ns/default/sa/sleep"}'
  # The alert rules and dashboards name only metrics this agent exports.
  if /usr/bin/python3 "$here/../monitoring/check_monitoring.py" --skip-self-test --scrape "$out/after.prom" >"$out/monitoring.txt" 2>&1; then
    pass "alert rules and dashboards use only metrics in the live scrape"
  else
    fail "monitoring check: $(tail -5 "$out/monitoring.txt")"
  fi

  # policy check: the live agent and the offline files give the same answer, and the data path
  # does what it says.
  policy deny-intruder 'apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-intruder, namespace: default}
spec:
  selector: {matchLabels: {app: httpbin}}
  action: DENY
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/intruder"]}}]'
  wait_reload 1
  local q k offline_args=(--policy-dir "$TOPO_ROOT/policies" --workloads "$TOPO_ROOT/workloads.yaml")
  local -a queries=(
    "--to default/n2a --port 8080 --from-principal cluster.local/ns/default/sa/intruder"
    "--to default/n2a --port 8080 --from-principal cluster.local/ns/default/sa/sleep"
    "--to default/n2a --port 8080 --plaintext --from-ip 10.0.1.2"
    "--to default/n1a --port 9000 --from-namespace other"
  )
  k=0
  for q in "${queries[@]}"; do
    k=$((k + 1))
    # shellcheck disable=SC2086
    ctl 2 -o json policy check $q >"$out/check-live-$k.json" 2>&1 || fail "policy check (live) $q: $(cat "$out/check-live-$k.json")"
    # shellcheck disable=SC2086
    "$CTL" -o json policy check $q "${offline_args[@]}" >"$out/check-offline-$k.json" 2>&1 || fail "policy check (offline) $q: $(cat "$out/check-offline-$k.json")"
    if diff -u "$out/check-live-$k.json" "$out/check-offline-$k.json" >"$out/check-diff-$k.txt"; then
      pass "policy check $q: live and offline agree ($(json_get "$out/check-live-$k.json" "d['decision'] + ' ' + d['reason']"))"
    else
      fail "policy check $q: live and offline differ: $(head -20 "$out/check-diff-$k.txt")"
    fi
  done
  expect_eq "the intruder is denied by deny-intruder" "DENY deny_policy_matched default/deny-intruder" \
    "$(json_get "$out/check-live-1.json" "' '.join([d['decision'], d['reason'], d['policy']])")"
  expect_eq "and so it is on the wire" reset "$(send n1b 10.0.2.2 8080 intruder)"
  expect_eq "sleep is allowed (no ALLOW policy selects n2a)" "ALLOW default_allow" \
    "$(json_get "$out/check-live-2.json" "d['decision'] + ' ' + d['reason']")"
  expect_eq "and it is" n2a:checked "$(send n1a 10.0.2.2 8080 checked)"
  expect_eq "plaintext is refused under STRICT" "DENY plaintext_in_strict STRICT" \
    "$(json_get "$out/check-live-3.json" "' '.join([d['decision'], d['reason'], d['mtls_mode']])")"

  # audit: live = the policy findings (the same as offline) + the live ones.
  ctl 1 -o json audit --fail-on critical >"$out/audit-live.json" 2>&1; local rc=$?
  expect_eq "audit --fail-on critical passes a STRICT mesh" 0 "$rc"
  ctl 1 audit --fail-on warning >"$out/audit-live.txt" 2>&1; rc=$?
  expect_eq "audit --fail-on warning fails on its namespace isolation gap" 1 "$rc"
  expect_contains "audit names the gap" "$out/audit-live.txt" "namespace_isolation_gap  *default"
  "$CTL" -o json audit "${offline_args[@]}" >"$out/audit-offline.json" 2>&1
  local live_policy offline_policy
  live_policy=$(json_get "$out/audit-live.json" "sorted((f['code'], f['subject']) for f in d['findings'] if f['code'] not in ('svid_rotation_overdue', 'ca_expiring', 'chain_missing_intermediate', 'ktls_fallback'))")
  offline_policy=$(json_get "$out/audit-offline.json" "sorted((f['code'], f['subject']) for f in d['findings'])")
  expect_eq "audit: live and offline policy findings agree" "$offline_policy" "$live_policy"
}

test_lifecycle() {
  setup; mesh_mode STRICT
  # A drain window the VM (TCG, far slower) can also finish a 1 s transfer in.
  printf 'drainTimeout: 6s\n' >"$TOPO_ROOT/drain.yaml"
  TOPO_EXTRA_CONFIG=$TOPO_ROOT/drain.yaml
  agents || { fail "the agents did not start"; return; }
  serve n2a 8080
  topo_run n2a iperf3 -s -p 5201 >/dev/null 2>&1 &
  sleep 0.5
  kill -HUP "${TOPO_AGENT_PIDS[1]}"
  sleep 0.3
  expect_contains "SIGHUP reloads policies and workloads" "$TOPO_ROOT/agent1.log" "SIGHUP: reloading policies and workloads"
  expect_eq "traffic flows after the reload" "n2a:hup" "$(send n1a 10.0.2.2 8080 hup)"
  # A connection that ends within the drain window finishes untouched.
  topo_run n2a $NETCHECK serve 7071 --sink >/dev/null 2>&1 &
  sleep 0.5
  topo_run n1a $NETCHECK trickle 10.0.2.2 7071 2 >"$TOPO_ROOT/short.log" 2>&1 &
  local short=$!
  wait_listed 2 10.0.2.2:7071
  local start=$SECONDS
  kill -TERM "${TOPO_AGENT_PIDS[2]}"
  wait "$short"; local rc=$?
  expect_eq "a connection that ends within drainTimeout finishes after SIGTERM" 0 "$rc"
  local answer; answer=$(tail -1 "$TOPO_ROOT/short.log")
  [[ $answer =~ ^got\ [1-9][0-9]*$ ]] && pass "and it ended cleanly, answered by the server ($answer)" || fail "the short connection ended with: $answer"
  wait "${TOPO_AGENT_PIDS[2]}" 2>/dev/null
  TOPO_AGENT_PIDS[2]=""
  expect_contains "the agent drained and stopped" "$TOPO_ROOT/agent2.log" "drained"
  [[ $((SECONDS - start)) -le 7 ]] && pass "the agent exited within the drain window" || fail "exit took $((SECONDS - start)) s"
  local late; late=$(send n1a 10.0.2.2 8080 late)
  [[ $late == refused || $late == reset ]] && pass "once stopped, node 2 accepts no new tunnel ($late)" \
    || fail "a connection went through a stopped agent: $late"
  # A connection longer than the window is cut at the deadline.
  topo_start_agent 2 --datapath "$DATAPATH" || { fail "an agent did not start"; return; }
  topo_run n2a $NETCHECK serve 7070 --sink >/dev/null 2>&1 &
  sleep 0.5
  topo_run n1a $NETCHECK trickle 10.0.2.2 7070 30 >"$TOPO_ROOT/trickle.log" 2>&1 &
  local long=$!
  # Under TCG the handshake alone can take seconds: SIGTERM only once the connection is up.
  wait_listed 2 10.0.2.2:7070
  start=$SECONDS
  kill -TERM "${TOPO_AGENT_PIDS[2]}"
  wait "${TOPO_AGENT_PIDS[2]}" 2>/dev/null
  TOPO_AGENT_PIDS[2]=""
  [[ $((SECONDS - start)) -le 10 ]] && pass "a long connection does not hold the agent past drainTimeout" \
    || fail "exit took $((SECONDS - start)) s"
  expect_contains "the deadline closes what is left" "$TOPO_ROOT/agent2.log" "drain deadline passed: closing"
  wait "$long" 2>/dev/null
  expect_eq "the cut connection is reset, not ended cleanly" reset "$(tail -1 "$TOPO_ROOT/trickle.log")"
  # A start that fails late (its readiness port is taken, after pods are served and threads run)
  # exits with an error and cleans up, rather than aborting.
  local ready_port=$(( $(topo_metrics_port 2) + 1 ))
  /usr/bin/python3 -c 'import socket,sys,time; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(); time.sleep(60)' "$ready_port" &
  local squatter=$!
  sleep 0.3
  : >"$TOPO_ROOT/agent2.log"
  topo_start_agent 2 --datapath "$DATAPATH" 2>/dev/null && fail "the agent started with its readiness port taken"
  wait "${TOPO_AGENT_PIDS[2]}" 2>/dev/null; rc=$?
  TOPO_AGENT_PIDS[2]=""
  kill "$squatter" 2>/dev/null; wait "$squatter" 2>/dev/null
  expect_eq "a late start failure exits 1" 1 "$rc"
  expect_contains "and says why" "$TOPO_ROOT/agent2.log" "cannot start: cannot listen on 127.0.0.1:$ready_port (/healthz/ready): Address already in use"
  expect_contains "and stops what it had started" "$TOPO_ROOT/agent2.log" "meshtls-agent stopped"
  if grep -q "terminate called" "$TOPO_ROOT/agent2.log"; then fail "the agent aborted"; else pass "without aborting"; fi
}

# The start-up kTLS self-test on the running kernel (runs in the VM; the host has no kTLS).
test_ktls_self_test() {
  setup; mesh_mode STRICT
  if ! grep -qw tls /proc/sys/net/ipv4/tcp_available_ulp 2>/dev/null && ! modprobe -q tls 2>/dev/null; then
    echo "SKIP: kernel $(uname -r) has no kTLS (no 'tls' TCP ULP): this test runs in the VM harness (vm.*.e2e)"
    return
  fi
  topo_start_agent 1 --datapath auto || { fail "the agent did not start"; return; }
  ctl 1 -o json status >"$TOPO_ROOT/status-ok.json"
  expect_eq "auto picks ktls-splice once the self-test passed" DATAPATH_KTLS_SPLICE "$(json_get "$TOPO_ROOT/status-ok.json" "d['datapath']")"
  local summary; summary=$(json_get "$TOPO_ROOT/status-ok.json" "d['kernel']['ktls_self_test']")
  [[ $summary == *"TLS_AES_128_GCM_SHA256 passed"* && $summary != *FAILED* ]] \
    && pass "the self-test passed on $(uname -r): $summary" || fail "self-test: $summary"
  topo_stop_agent 1
  # Rekeying is used only where the self-test proved it; a wrong key after a KeyUpdate turns it
  # off (kTLS itself stays on).
  local rekey rekey_detail
  rekey=$(json_get "$TOPO_ROOT/status-ok.json" "d['kernel'].get('ktls_rekey', False)")
  rekey_detail=$(json_get "$TOPO_ROOT/status-ok.json" "d['kernel'].get('ktls_rekey_detail', '')")
  if [[ $rekey == True ]]; then
    [[ $summary == *"rekey passed"* ]] && pass "rekeying proven by the self-test: $rekey_detail" || fail "rekey without a self-test: $summary"
    export MESHTLS_KTLS_SELFTEST_FAULT=wrong_rekey
    topo_start_agent 1 --datapath auto || fail "the agent did not start with a failing rekey stage"
    ctl 1 -o json status >"$TOPO_ROOT/status-rekey-fault.json"
    unset MESHTLS_KTLS_SELFTEST_FAULT
    expect_eq "a failing rekey stage keeps ktls-splice" DATAPATH_KTLS_SPLICE \
      "$(json_get "$TOPO_ROOT/status-rekey-fault.json" "d['datapath']")"
    expect_eq "but turns KeyUpdate through kTLS off" False \
      "$(json_get "$TOPO_ROOT/status-rekey-fault.json" "d['kernel'].get('ktls_rekey', False)")"
    expect_contains "the status API says why" "$TOPO_ROOT/status-rekey-fault.json" 'kTLS rekeying disabled: the start-up self-test failed'
    expect_contains "and so does the log" "$TOPO_ROOT/agent1.log" "kTLS connections will not send or follow KeyUpdates"
    topo_stop_agent 1
  else
    [[ $rekey_detail == *"no kTLS rekeying"* ]] && pass "no rekeying on $(uname -r), and the status API says why: $rekey_detail" \
      || fail "rekey detail: '$rekey_detail'"
  fi
  # A wrong key on purpose: the wire carries records OpenSSL cannot read, so kTLS is disabled.
  export MESHTLS_KTLS_SELFTEST_FAULT=wrong_tx_key
  topo_start_agent 1 --datapath auto || fail "the agent did not start with a failing self-test"
  ctl 1 -o json status >"$TOPO_ROOT/status-fault.json"
  expect_eq "a failing self-test makes auto fall back to userspace-tls" DATAPATH_USERSPACE_TLS \
    "$(json_get "$TOPO_ROOT/status-fault.json" "d['datapath']")"
  expect_contains "the status API says why" "$TOPO_ROOT/status-fault.json" 'FAILED (OpenSSL could not read what the kernel sent'
  expect_eq "and lists no kTLS cipher" "[]" "$(json_get "$TOPO_ROOT/status-fault.json" "d['kernel']['ktls_ciphers']")"
  expect_contains "the log says kTLS is disabled" "$TOPO_ROOT/agent1.log" "kTLS self-test failed, kernel TLS disabled"
  topo_start_agent 2 --datapath auto || fail "agent 2 did not start"
  serve n2a 8080
  expect_eq "mesh traffic still flows (userspace-tls)" n2a:fallback "$(send n1a 10.0.2.2 8080 fallback)"
  topo_stop_agent 1; topo_stop_agent 2
  : >"$TOPO_ROOT/agent1.log"
  topo_start_agent 1 --datapath ktls-splice 2>/dev/null && fail "a forced ktls-splice started with a failing self-test"
  wait "${TOPO_AGENT_PIDS[1]}" 2>/dev/null; local rc=$?
  TOPO_AGENT_PIDS[1]=""
  unset MESHTLS_KTLS_SELFTEST_FAULT
  expect_eq "a forced ktls-splice with a failing self-test refuses to start" 1 "$rc"
  expect_contains "and says why" "$TOPO_ROOT/agent1.log" "datapath ktls-splice was requested, but .*self-test: .*FAILED"
}

# Key lifetime between two agents at 1,000 records per key: 64 MiB each way through the mesh,
# checksums equal. Where both ends can follow a KeyUpdate (userspace-tls, or kTLS on a kernel
# that can rekey: Debian's 7.x), keys are replaced several times each way and the metrics count
# them; where kTLS cannot rekey (6.1, 6.12), the agents negotiate ChaCha20-Poly1305, which has no
# record limit, and the stream flows without a KeyUpdate.
test_key_update() {
  setup; mesh_mode STRICT
  printf 'recordsPerKey: 1000\npeerKeyUpdateBurst: 1000\npeerKeyUpdatesPerMinute: 6000000\n' >"$TOPO_ROOT/keys.yaml"
  TOPO_EXTRA_CONFIG=$TOPO_ROOT/keys.yaml
  agents || { fail "the agents did not start"; return; }
  ctl 1 -o json status >"$TOPO_ROOT/status.json"
  local datapath rekey follows=no
  datapath=$(json_get "$TOPO_ROOT/status.json" "d['datapath']")
  rekey=$(json_get "$TOPO_ROOT/status.json" "d['kernel'].get('ktls_rekey', False)")
  [[ $datapath == DATAPATH_USERSPACE_TLS || $rekey == True ]] && follows=yes
  echo "datapath $datapath, kTLS rekey $rekey: KeyUpdates expected: $follows"
  if [[ $datapath == DATAPATH_KTLS_SPLICE ]]; then
    local summary; summary=$(json_get "$TOPO_ROOT/status.json" "d['kernel']['ktls_self_test']")
    if [[ $rekey == True ]]; then
      [[ $summary == *"rekey passed"* && $summary != *FAILED* ]] && pass "the self-test proved rekeying: $summary" \
        || fail "rekey advertised without a passing self-test: $summary"
    else
      [[ $summary != *rekey* ]] && pass "no rekey stage on a kernel that cannot rekey ($(uname -r))" \
        || fail "self-test: $summary"
    fi
  fi
  topo_run n2a $NETCHECK serve 9000 --mirror >"$TOPO_ROOT/mirror.log" 2>&1 &
  local i
  for i in $(seq 50); do grep -q listening "$TOPO_ROOT/mirror.log" && break; sleep 0.05; done
  local out; out=$(topo_run n1a $NETCHECK bulk 10.0.2.2 9000 $((64 << 20)) 2>&1 | tail -1)
  [[ $out == *" equal" ]] && pass "64 MiB each way through two agents, checksums equal" || fail "bulk: $out"
  # The connection is logged (and counted) when it ends; the key-update counters refresh every 5 s.
  local port1 port2 sent1=0 sent2=0 received1=0 deadline=$((SECONDS + 15))
  port1=$(topo_metrics_port 1); port2=$(topo_metrics_port 2)
  while [[ $SECONDS -lt $deadline ]]; do
    scrape "$port1" /metrics | tail -n +2 >"$TOPO_ROOT/m1.prom"
    scrape "$port2" /metrics | tail -n +2 >"$TOPO_ROOT/m2.prom"
    sent1=$(metric_sum "$TOPO_ROOT/m1.prom" meshtls_tls_key_updates_total 'direction="sent"' 'result="ok"')
    sent2=$(metric_sum "$TOPO_ROOT/m2.prom" meshtls_tls_key_updates_total 'direction="sent"' 'result="ok"')
    received1=$(metric_sum "$TOPO_ROOT/m1.prom" meshtls_tls_key_updates_total 'direction="received"' 'result="ok"')
    [[ $follows == no || ($sent1 -ge 4 && $sent2 -ge 4 && $received1 -ge 4) ]] && break
    sleep 0.5
  done
  local line; line=$(grep '"dst_addr":"10.0.2.2:9000"' "$TOPO_ROOT/access-1.log" | tail -1)
  [[ $line == *'"result":"ok"'* ]] && pass "the connection ended cleanly" || fail "access log: $line"
  if [[ $follows == yes ]]; then
    # 4,096 full records each way at most 1,000 per key (less the relay's headroom).
    [[ $sent1 -ge 4 && $sent2 -ge 4 && $received1 -ge 4 ]] \
      && pass "keys replaced each way: node 1 sent $sent1 KeyUpdates and followed $received1, node 2 sent $sent2" \
      || fail "too few KeyUpdates: node 1 sent $sent1, received $received1; node 2 sent $sent2"
  else
    expect_eq "no KeyUpdate where kTLS cannot rekey" "0 0" "$sent1 $sent2"
    [[ $line == *TLS_CHACHA20_POLY1305_SHA256* ]] && pass "the tunnel used ChaCha20-Poly1305 (no record limit)" \
      || fail "cipher of the tunnel: $line"
  fi
}

# opensslBuiltinEc: by default (auto) certificate keys go through OpenSSL's built-in EC code where
# that helps (OpenSSL 3.0 and 3.1); an agent set to off still meshes with one that uses it, both ways.
test_openssl_builtin_ec() {
  setup; mesh_mode STRICT
  # Agent 1 also gets the operator's own GLIBC_TUNABLES, which it must keep (malloc_tuning.h).
  GLIBC_TUNABLES=glibc.malloc.tcache_count=7 topo_start_agent 1 --datapath "$DATAPATH" --openssl-builtin-ec off ||
    { fail "agent 1 did not start"; return; }
  unset GLIBC_TUNABLES  # agent 2 starts as a DaemonSet pod would: without it
  topo_start_agent 2 --datapath "$DATAPATH" || { fail "agent 2 did not start"; return; }
  serve n2a 8080; serve n1a 8080
  # glibc malloc tuning: agent 2 executed itself again with meshtls's tunables, as the same
  # process (the PID the script started); agent 1 kept the operator's.
  expect_eq "agent 2 runs with meshtls's malloc tunables" "GLIBC_TUNABLES=glibc.malloc.tcache_count=128" \
    "$(tr '\0' '\n' <"/proc/${TOPO_AGENT_PIDS[2]}/environ" | grep '^GLIBC_TUNABLES=')"
  expect_contains "agent 2 logs them in effect" "$TOPO_ROOT/agent2.log" "glibc malloc tuning in effect: GLIBC_TUNABLES=glibc.malloc.tcache_count=128"
  expect_eq "agent 1 keeps the operator's" "GLIBC_TUNABLES=glibc.malloc.tcache_count=7" \
    "$(tr '\0' '\n' <"/proc/${TOPO_AGENT_PIDS[1]}/environ" | grep '^GLIBC_TUNABLES=')"
  expect_contains "agent 1 says so" "$TOPO_ROOT/agent1.log" "glibc malloc tuning left to the environment: GLIBC_TUNABLES=glibc.malloc.tcache_count=7"
  expect_eq "off -> auto: mesh traffic flows" n2a:one "$(send n1a 10.0.2.2 8080 one)"
  expect_eq "auto -> off: mesh traffic flows" n1a:two "$(send n2a 10.0.1.2 8080 two)"
  ctl 1 -o json status >"$TOPO_ROOT/status-1.json"
  ctl 2 -o json status >"$TOPO_ROOT/status-2.json"
  local field="d['kernel'].get('opensslBuiltinEc', d['kernel'].get('openssl_builtin_ec', False))"
  local detail="d['kernel'].get('opensslBuiltinEcDetail', d['kernel'].get('openssl_builtin_ec_detail', ''))"
  expect_eq "agent 1 (off): keys stay in the providers" "False off (opensslBuiltinEc: off)" \
    "$(json_get "$TOPO_ROOT/status-1.json" "$field") $(json_get "$TOPO_ROOT/status-1.json" "$detail")"
  expect_contains "agent 1 logs it" "$TOPO_ROOT/agent1.log" "OpenSSL built-in EC keys off (opensslBuiltinEc: off)"
  if openssl version | grep -q '^OpenSSL 3\.[01]\.'; then
    expect_eq "agent 2 (auto, $(openssl version | cut -d' ' -f1-2)): the built-in EC code" True "$(json_get "$TOPO_ROOT/status-2.json" "$field")"
    expect_contains "agent 2 logs that its start-up check passed" "$TOPO_ROOT/agent2.log" \
      "OpenSSL built-in EC keys on: EC certificate keys are decoded and used by OpenSSL's built-in EC code (start-up check passed)"
  else
    expect_contains "agent 2 (auto) says why not" "$TOPO_ROOT/agent2.log" "OpenSSL built-in EC keys not needed"
  fi
  expect_contains "agent 2 saw the client's identity" "$TOPO_ROOT/access-2.log" '"direction":"inbound".*"src_identity":"spiffe://cluster.local/ns/default/sa/sleep"'
  expect_contains "and agent 1 the other way" "$TOPO_ROOT/access-1.log" '"direction":"inbound".*"src_identity":"spiffe://cluster.local/ns/default/sa/httpbin"'
}

if [[ $test_name == all ]]; then
  for t in strict permissive_and_disable authorization identity_mismatch rotation_under_load restart bad_input lifecycle policy_change_closes_denied_connections workload_reload kubernetes inspection ktls_self_test key_update openssl_builtin_ec; do
    "$0" "$build" "$t" --datapath "$DATAPATH" || failures=$((failures + 1))
  done
  trap - EXIT
  exit $((failures > 0))
fi
declare -F "test_$test_name" >/dev/null || { echo "unknown test $test_name" >&2; trap - EXIT; exit 2; }
echo "== e2e $test_name (datapath $DATAPATH, kernel $(uname -r))"
"test_$test_name"
if [[ $failures -gt 0 ]]; then
  echo "== FAILED: $test_name ($failures check(s))"
  exit 1
fi
echo "== PASSED: $test_name"
