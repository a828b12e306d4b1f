#!/usr/bin/env bash
# The load test: meshtls against plaintext and against other mTLS proxies, side by side, on the
# two-node topology of tests/e2e/topology.sh (client pod n1a on node 1, server pod n2a on node 2,
# a veth wire between the nodes). docs/benchmarks.md explains every figure.
#
# usage: run.sh BUILD_DIR [--smoke] [--seconds S] [--repeat N] [--conns "1000 10000"] [--in-flight N]
#               [--variants "plain meshtls ..."] [--label TEXT] [--raw FILE] [--out DIR]
#               [--wrk-seconds S]
#   --smoke   every variant for about a second; asserts only that each moved bytes and produced
#             its records (make bench-smoke, part of make test)
# Root. Everything it starts is torn down on exit, failure or Ctrl-C.
set -uo pipefail
build=$(cd "${1:?usage: run.sh BUILD_DIR [options]}" && pwd)
shift
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
SMOKE=0 SECONDS_EACH=10 WRK_SECONDS="" WRK_CONNS=32 REPEAT=3 CONNS="1000 10000" IN_FLIGHT=200 LABEL=host RAW="" OUT=$here/results
VARIANTS=""
while [[ $# -gt 0 ]]; do
  case $1 in
    --smoke) SMOKE=1; shift ;;
    --seconds) SECONDS_EACH=$2; shift 2 ;;
    --wrk-seconds) WRK_SECONDS=$2; shift 2 ;;  # the new-connection run (TCG needs longer)
    --repeat) REPEAT=$2; shift 2 ;;
    --conns) CONNS=$2; shift 2 ;;
    --in-flight) IN_FLIGHT=$2; shift 2 ;;  # idle connections opened ahead of the server's count
    --variants) VARIANTS=$2; shift 2 ;;
    --label) LABEL=$2; shift 2 ;;
    --raw) RAW=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    -h|--help) sed -n 2,10p "$0"; exit 0 ;;
    *) echo "run.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [[ $SMOKE == 1 ]]; then SECONDS_EACH=1; REPEAT=1; CONNS=20; WRK_CONNS=4; WRK_SECONDS=${WRK_SECONDS:-2}; fi
WRK_SECONDS=${WRK_SECONDS:-$SECONDS_EACH}
[[ $(id -u) == 0 ]] || { echo "run.sh: needs root (network namespaces, BPF, cgroups)" >&2; exit 2; }
for tool in iperf3 sockperf wrk stunnel4 nginx haproxy openssl bpftool; do
  command -v "$tool" >/dev/null || { echo "run.sh: $tool is missing: run 'make deps'" >&2; exit 2; }
done

TOPO_AGENT=$build/agent/meshtls-agent
CTL=$build/agent/meshtlsctl
TOPO_ID=${TOPO_ID:-$$}
source "$repo/tests/e2e/topology.sh"
RUN=$TOPO_ROOT
KERNEL=$(uname -r)
KTLS=no
grep -qw tls /proc/sys/net/ipv4/tcp_available_ulp 2>/dev/null || modprobe tls 2>/dev/null || true
grep -qw tls /proc/sys/net/ipv4/tcp_available_ulp 2>/dev/null && KTLS=yes
if [[ -z $VARIANTS ]]; then
  VARIANTS="plain meshtls-userspace-tls meshtls-userspace-tls+shortcut"
  [[ $KTLS == yes ]] && VARIANTS+=" meshtls-ktls-splice"
  VARIANTS+=" stunnel nginx haproxy"
fi
ulimit -n "$(ulimit -Hn)"
# Each idle connection costs a proxy two descriptors (accepted and upstream): what the descriptor
# limit allows is what can be measured. Said loudly, and the record names the real count.
max_conns=$(( ($(ulimit -n) - 400) / 2 ))
conns=""
for n in $CONNS; do
  if [[ $n -gt $max_conns ]]; then
    echo "bench: $n idle connections need $((2 * n + 400)) descriptors per proxy, but RLIMIT_NOFILE is $(ulimit -n) here (the hard limit cannot be raised in this sandbox): measuring $max_conns instead" >&2
    n=$max_conns
  fi
  conns+="$n "
done
CONNS=$conns
CLK_TCK=$(getconf CLK_TCK)
APP=${TOPO_IP[n2a]}            # the server pod
CLIENT_ADDR=10.0.1.1           # node 1's bridge address: where the peers' client side listens
SERVER_WIRE=192.168.77.2       # node 2's wire address: where the peers' server side listens
PEER_PIDS=()
BG_PIDS=()
failures=0
raw=${RAW:-$RUN/raw.jsonl}

log() { echo "bench: $*" >&2; }
# Also a record, so that the report says why a cell is empty. Messages start with "VARIANT: ".
fail() {
  echo "bench: FAIL: $*" >&2
  failures=$((failures + 1))
  [[ -n ${raw:-} ]] && /usr/bin/python3 -c 'import json, sys
label, kernel, message = sys.argv[1:4]
variant, _, detail = message.partition(": ")
print(json.dumps({"label": label, "kernel": kernel, "variant": variant, "datapath": "", "metric": "failure",
                  "value": 1, "unit": "", "run": 0, "detail": " ".join(detail.split())[:300]}))' "$LABEL" "${KERNEL:-}" "$*" >>"$raw"
}

cleanup() {
  local pid
  for pid in "${PEER_PIDS[@]}" "${BG_PIDS[@]}"; do kill -9 "$pid" 2>/dev/null; done
  [[ -n $RAW || $failures -gt 0 ]] && TOPO_KEEP=${TOPO_KEEP:-0}
  topo_down 2>/dev/null
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# One JSON record per measurement: variant, metric, value, unit, run index and where it ran.
record() {  # VARIANT METRIC VALUE UNIT RUN [DATAPATH]
  printf '{"label":"%s","kernel":"%s","variant":"%s","datapath":"%s","metric":"%s","value":%s,"unit":"%s","run":%s}\n' \
    "$LABEL" "$KERNEL" "$1" "${6:-$(datapath_of "$1")}" "$2" "$3" "$4" "$5" >>"$raw"
}
datapath_of() {
  case $1 in
    plain) echo plaintext ;;
    meshtls-ktls-splice*) echo ktls-splice ;;
    meshtls-*) echo userspace-tls ;;
    *) echo "$1" ;;
  esac
}
target_of() { [[ $1 == plain || $1 == meshtls* ]] && echo "$APP" || echo "$CLIENT_ADDR"; }

# ---- set-up: topology, certificates, the server pod's applications ----
setup() {
  topo_up || { echo "bench: topology failed" >&2; exit 1; }
  "$CTL" ca init --dir "$RUN/ca" --trust-domain cluster.local >/dev/null
  cp "$RUN/ca/root.crt" "$RUN/root.crt"
  # The peers' certificates: ECDSA P-256 leaves from the same CA as the agents' SVIDs, with the
  # SPIFFE URI SAN and a DNS SAN (nginx and HAProxy verify a host name; the name constraints of
  # the intermediate only cover URIs).
  local who sa
  for who in client server; do
    [[ $who == client ]] && sa=sleep || sa=httpbin
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /O=meshtls \
      -keyout "$RUN/$who.key" -out "$RUN/$who.csr" 2>/dev/null
    printf 'subjectAltName=critical,URI:spiffe://cluster.local/ns/default/sa/%s,DNS:load-%s.meshtls.test\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth,clientAuth\n' \
      "$sa" "$who" >"$RUN/$who.ext"
    openssl x509 -req -in "$RUN/$who.csr" -CA "$RUN/ca/intermediate.crt" -CAkey "$RUN/ca/intermediate.key" \
      -CAcreateserial -days 1 -extfile "$RUN/$who.ext" -out "$RUN/$who.leaf" 2>/dev/null
    cat "$RUN/$who.leaf" "$RUN/ca/intermediate.crt" >"$RUN/$who.crt"
    cat "$RUN/$who.crt" "$RUN/$who.key" >"$RUN/$who.pem"
    chmod 600 "$RUN/$who.key" "$RUN/$who.pem"
  done
  printf 'apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec: {mtls: {mode: STRICT}}\n' \
    >"$RUN/policies/mesh.yaml"
  mkdir -p "$RUN/tmp"
  # Thousands of connections from one address (the wrk runs leave theirs in TIME_WAIT, the memory
  # runs hold ~10,000): the widest ephemeral port range, and TIME_WAIT reuse, in every namespace
  # that opens them.
  local ns
  for ns in n1a node1 node2 n2a; do
    ip netns exec "$(topo_ns "$ns")" sysctl -qw net.ipv4.ip_local_port_range="16384 65000" net.ipv4.tcp_tw_reuse=1
  done
  subst "$here/backend-nginx.conf" >"$RUN/backend-nginx.conf"
  topo_run n2a iperf3 -s -p 5201 >"$RUN/iperf3-server.log" 2>&1 &
  BG_PIDS+=($!)
  topo_run n2a sockperf sr --tcp -i 0.0.0.0 -p 11111 >"$RUN/sockperf-server.log" 2>&1 &
  BG_PIDS+=($!)
  topo_run n2a nginx -c "$RUN/backend-nginx.conf" -p "$RUN" >"$RUN/backend.out" 2>&1 &
  BG_PIDS+=($!)
  topo_run n2a /usr/bin/python3 "$here/hold.py" serve 9000 "$RUN/held" >"$RUN/hold-server.log" 2>&1 &
  BG_PIDS+=($!)
  local i
  for i in $(seq 50); do
    ip netns exec "$(topo_ns n2a)" ss -Hltn | grep -q ':9000 ' &&
      ip netns exec "$(topo_ns n2a)" ss -Hltn | grep -q ':8080 ' &&
      ip netns exec "$(topo_ns n2a)" ss -Hltn | grep -q ':5201 ' && return 0
    sleep 0.1
  done
  echo "bench: the server pod's applications did not start" >&2
  exit 1
}

subst() {
  sed -e "s|@RUN@|$RUN|g" -e "s|@CLIENT_ADDR@|$CLIENT_ADDR|g" -e "s|@SERVER_WIRE@|$SERVER_WIRE|g" -e "s|@APP@|$APP|g" "$1"
}

# ---- the proxies under test ----
start_variant() {
  local v=$1
  PEER_PIDS=()
  case $v in
    plain) ;;
    meshtls-*)
      local datapath=userspace-tls shortcut=off
      [[ $v == meshtls-ktls-splice* ]] && datapath=ktls-splice
      [[ $v == *+shortcut ]] && shortcut=on
      printf 'localLegShortcut: %s\naccessLog: off\nworkers: 1\nmaxPendingHandshakes: 4096\n' "$shortcut" >"$RUN/extra.yaml"
      TOPO_EXTRA_CONFIG=$RUN/extra.yaml topo_start_agent 1 --datapath "$datapath" || return 1
      TOPO_EXTRA_CONFIG=$RUN/extra.yaml topo_start_agent 2 --datapath "$datapath" || return 1
      ;;
    stunnel)
      subst "$here/peers/stunnel-client.conf" >"$RUN/stunnel-client.conf"
      subst "$here/peers/stunnel-server.conf" >"$RUN/stunnel-server.conf"
      ip netns exec "$(topo_ns node2)" stunnel4 "$RUN/stunnel-server.conf" >"$RUN/stunnel-server.out" 2>&1 &
      PEER_PIDS+=($!)
      ip netns exec "$(topo_ns node1)" stunnel4 "$RUN/stunnel-client.conf" >"$RUN/stunnel-client.out" 2>&1 &
      PEER_PIDS+=($!)
      ;;
    nginx)
      subst "$here/peers/nginx-client.conf" >"$RUN/nginx-client.conf"
      subst "$here/peers/nginx-server.conf" >"$RUN/nginx-server.conf"
      ip netns exec "$(topo_ns node2)" nginx -c "$RUN/nginx-server.conf" -p "$RUN" >"$RUN/nginx-server.out" 2>&1 &
      PEER_PIDS+=($!)
      ip netns exec "$(topo_ns node1)" nginx -c "$RUN/nginx-client.conf" -p "$RUN" >"$RUN/nginx-client.out" 2>&1 &
      PEER_PIDS+=($!)
      ;;
    haproxy)
      subst "$here/peers/haproxy-client.cfg" >"$RUN/haproxy-client.cfg"
      subst "$here/peers/haproxy-server.cfg" >"$RUN/haproxy-server.cfg"
      ip netns exec "$(topo_ns node2)" haproxy -db -f "$RUN/haproxy-server.cfg" >"$RUN/haproxy-server.out" 2>&1 &
      PEER_PIDS+=($!)
      ip netns exec "$(topo_ns node1)" haproxy -db -f "$RUN/haproxy-client.cfg" >"$RUN/haproxy-client.out" 2>&1 &
      PEER_PIDS+=($!)
      ;;
    *) echo "bench: unknown variant $v" >&2; return 1 ;;
  esac
  # Ready when the client side accepts on the iperf3 port (plain and meshtls: the app itself).
  local i target; target=$(target_of "$v")
  for i in $(seq 100); do
    if [[ $v == plain || $v == meshtls* ]] || ip netns exec "$(topo_ns node1)" ss -Hltn | grep -q "$CLIENT_ADDR:5201 "; then
      return 0
    fi
    sleep 0.05
  done
  echo "bench: $v did not start:" >&2
  tail -5 "$RUN/$v"-*.out 2>/dev/null >&2
  return 1
}

stop_variant() {
  local v=$1 pid
  case $v in
    meshtls-*) topo_stop_agent 1; topo_stop_agent 2 ;;
    plain) ;;
    *) for pid in "${PEER_PIDS[@]}"; do kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; done ;;
  esac
  PEER_PIDS=()
}

# Process trees of the proxies, per node ("1" client side, "2" server side).
proxy_pids() {  # VARIANT NODE
  local v=$1 n=$2
  case $v in
    plain) ;;
    meshtls-*) cat "$TOPO_CGROUP/agent$n/cgroup.procs" 2>/dev/null ;;
    *)
      # PEER_PIDS: [0] node 2's, [1] node 1's (started in that order), plus their children.
      local root=${PEER_PIDS[$((n == 2 ? 0 : 1))]:-}
      [[ -n $root ]] && { echo "$root"; pgrep -P "$root"; }
      ;;
  esac
}
cpu_ticks() {  # VARIANT -> utime+stime of every proxy process, both nodes
  local total=0 pid f
  for pid in $(proxy_pids "$1" 1) $(proxy_pids "$1" 2); do
    f=$(cut -d')' -f2 "/proc/$pid/stat" 2>/dev/null) || continue
    total=$((total + $(awk '{print $12 + $13}' <<<"$f")))
  done
  echo "$total"
}
rss_kib() {  # VARIANT NODE [FIELD] -> resident set (VmRSS, or RssAnon: private) of that node's proxies
  local total=0 pid kib field=${3:-VmRSS}
  for pid in $(proxy_pids "$1" "$2"); do
    kib=$(awk -v f="$field:" '$1 == f {print $2}' "/proc/$pid/status" 2>/dev/null)
    total=$((total + ${kib:-0}))
  done
  echo "$total"
}

# ---- measurements ----
measure_iperf() {  # VARIANT STREAMS RUN
  local v=$1 streams=$2 run=$3 target before after out
  target=$(target_of "$v")
  before=$(cpu_ticks "$v")
  out=$(topo_run n1a iperf3 -c "$target" -p 5201 -t "$SECONDS_EACH" -P "$streams" -J 2>&1)
  after=$(cpu_ticks "$v")
  local parsed
  parsed=$(/usr/bin/python3 -c '
import json, sys
try:
    d = json.loads(sys.stdin.read())
    s = d["end"]["sum_received"]
    print(s["bytes"], s["bits_per_second"])
except Exception as e:
    print("0 0")' <<<"$out")
  local bytes=${parsed% *} bps=${parsed#* }
  if [[ $bytes == 0 ]]; then
    fail "$v: iperf3 ($streams stream(s)) moved no bytes: $(/usr/bin/python3 -c 'import json, sys
text = sys.stdin.read()
try:
    print(json.loads(text).get("error") or text[-200:])
except ValueError:
    print(text[-200:])' <<<"$out")"
    return
  fi
  record "$v" "throughput_${streams}_stream_gbit_s" "$(awk -v b="$bps" 'BEGIN {printf "%.3f", b / 1e9}')" "Gbit/s" "$run"
  record "$v" "bytes_${streams}_stream" "$bytes" "bytes" "$run"
  if [[ $v != plain ]]; then
    record "$v" "proxy_cpu_s_per_gb_${streams}_stream" \
      "$(awk -v t=$((after - before)) -v hz="$CLK_TCK" -v b="$bytes" 'BEGIN {printf "%.4f", (t / hz) / (b / 1e9)}')" "CPU-s/GB" "$run"
  fi
}

measure_latency() {  # VARIANT RUN
  local v=$1 run=$2 target out
  target=$(target_of "$v")
  out=$(topo_run n1a sockperf ping-pong --tcp -i "$target" -p 11111 -m 64 -t "$SECONDS_EACH" 2>&1)
  local p50 p99 p999
  p50=$(awk '/percentile 50.000 =/ {print $NF}' <<<"$out")
  p99=$(awk '/percentile 99.000 =/ {print $NF}' <<<"$out")
  p999=$(awk '/percentile 99.900 =/ {print $NF}' <<<"$out")
  if [[ -z $p50 || -z $p99 || -z $p999 ]]; then
    fail "$v: sockperf gave no percentiles: $(tail -c 300 <<<"$out")"
    return
  fi
  record "$v" latency_p50_us "$p50" us "$run"
  record "$v" latency_p99_us "$p99" us "$run"
  record "$v" latency_p999_us "$p999" us "$run"
}

measure_connections() {  # VARIANT RUN: new connection per request (each one a full mTLS handshake)
  local v=$1 run=$2 target out before after
  target=$(target_of "$v")
  before=$(cpu_ticks "$v")
  out=$(topo_run n1a wrk -t1 -c"$WRK_CONNS" -d"${WRK_SECONDS}s" --timeout 10s -H 'Connection: close' "http://$target:8080/" 2>&1)
  after=$(cpu_ticks "$v")
  local rps requests errors
  rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
  requests=$(awk '/requests in/ {print $1}' <<<"$out")
  errors=$(awk '/Socket errors:/ {gsub(",", ""); print $4 + $6 + $8 + $10} /Non-2xx/ {print $NF}' <<<"$out" | awk '{s += $1} END {print s + 0}')
  if [[ -z $rps || ${requests:-0} == 0 ]]; then
    fail "$v: wrk made no requests: $(tail -c 300 <<<"$out")"
    return
  fi
  record "$v" new_connections_per_s "$rps" "conn/s" "$run"
  record "$v" new_connection_errors "$errors" "errors" "$run"
  if [[ $v != plain ]]; then
    record "$v" proxy_cpu_ms_per_connection \
      "$(awk -v t=$((after - before)) -v hz="$CLK_TCK" -v n="$requests" 'BEGIN {printf "%.4f", (t / hz) * 1000 / n}')" "CPU-ms/conn" "$run"
  fi
}

# RSS counts the shared libraries' pages too (gRPC, libcrypto, ...: most of an idle agent);
# RssAnon is the memory that is the process's own.
memory_records() {  # VARIANT WHEN
  local n field name
  for n in 1 2; do
    for field in VmRSS RssAnon; do
      [[ $field == VmRSS ]] && name=rss || name=anon
      record "$1" "${name}_$2_mib_node$n" "$(awk -v k="$(rss_kib "$1" "$n" "$field")" 'BEGIN {printf "%.1f", k / 1024}')" MiB 1
    done
  done
}

measure_memory() {  # VARIANT
  local v=$1 target n held i opener
  [[ $v == plain ]] && return
  target=$(target_of "$v")
  sleep 0.5
  memory_records "$v" idle
  for n in $CONNS; do
    topo_run n1a /usr/bin/python3 "$here/hold.py" open "$target" 9000 "$n" "$RUN/held" "$IN_FLIGHT" >"$RUN/hold-open.log" 2>&1 &
    opener=$!
    held=0
    for i in $(seq 1800); do
      held=$(cat "$RUN/held" 2>/dev/null || echo 0)
      [[ $held -ge $n ]] && break
      sleep 0.1
    done
    if [[ $held -ge $n ]]; then
      sleep 0.5
      memory_records "$v" "${n}_conns"
    else
      fail "$v: only $held of $n idle connections reached the server ($(tail -2 "$RUN/hold-open.log" | tr '\n' ' '))"
    fi
    kill "$opener" 2>/dev/null
    wait "$opener" 2>/dev/null
    for i in $(seq 100); do [[ $(cat "$RUN/held" 2>/dev/null || echo 0) == 0 ]] && break; sleep 0.1; done
  done
}

# ---- the run ----
: >"$raw"
setup
log "kernel $KERNEL, kTLS $KTLS, variants: $VARIANTS; ${SECONDS_EACH}s per measurement, $REPEAT run(s)"
for v in $VARIANTS; do
  log "$v: starting"
  if ! start_variant "$v"; then
    fail "$v did not start"
    stop_variant "$v"
    continue
  fi
  for run in $(seq "$REPEAT"); do
    log "$v: run $run/$REPEAT: iperf3 1 stream, 4 streams, sockperf, wrk"
    measure_iperf "$v" 1 "$run"
    measure_iperf "$v" 4 "$run"
    measure_latency "$v" "$run"
    measure_connections "$v" "$run"
  done
  log "$v: memory idle and with $CONNS idle connections"
  measure_memory "$v"
  stop_variant "$v"
done

if [[ -z $RAW ]]; then
  smoke_flag=()
  [[ $SMOKE == 1 ]] && smoke_flag=(--smoke)
  /usr/bin/python3 "$here/report.py" --raw "$raw" --out "$OUT" --seconds "$SECONDS_EACH" "${smoke_flag[@]}" ||
    fail "the report found missing records or could not be written"
fi
if [[ $failures -gt 0 ]]; then
  log "$failures failure(s)"
  exit 1
fi
log "done"
