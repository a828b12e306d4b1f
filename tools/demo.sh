#!/usr/bin/env bash
# make demo: the real thing on one machine (root).
#   1. two "nodes" (netns) joined by a veth wire, two pods on each (netns + cgroup), a static
#      workloads file, a mesh-wide STRICT PeerAuthentication and one AuthorizationPolicy
#   2. a CA made with `meshtlsctl ca init`, shared by both nodes' meshtls-agent
#   3. iperf3 from a pod on node 1 to a pod on node 2 through the mesh; a plaintext client outside
#      the mesh is refused (STRICT); a pod whose service account the policy does not allow is
#      refused; a capture of the wire between the nodes shows TLS records and no plaintext
#   4. a summary, and everything torn down, also on failure and Ctrl-C
# Then (unless --no-vm) the same script runs inside a VM on Debian's 6.12 kernel, where the
# datapath is ktls-splice: the kernel encrypts and splice() moves the bytes.
# usage: tools/demo.sh BUILD_DIR [--seconds N] [--no-vm] [--datapath auto|ktls-splice|userspace-tls]
set -euo pipefail
build=$(cd "${1:?usage: demo.sh BUILD_DIR}" && pwd)
shift
seconds=5 vm=1 datapath=auto
while [[ $# -gt 0 ]]; do
  case $1 in
    --seconds) seconds=$2; shift 2 ;;
    --no-vm) vm=0; shift ;;
    --datapath) datapath=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
repo=$(cd "$(dirname "$0")/.." && pwd)
[[ $(id -u) == 0 ]] || { echo "make demo needs root (network namespaces, cgroups, BPF)" >&2; exit 1; }
TOPO_AGENT=$build/agent/meshtls-agent
source "$repo/tests/e2e/topology.sh"
netcheck="/usr/bin/python3 $repo/tests/e2e/netcheck.py"
capture_pid=""
cleanup() {
  [[ -n $capture_pid ]] && kill "$capture_pid" 2>/dev/null
  topo_down
}
trap cleanup EXIT
trap 'exit 130' INT TERM
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
indent() { sed 's/^/   /'; }

say "1. two nodes, four pods (network namespaces + cgroups), one wire between the nodes"
topo_up
printf '   node1: default/n1a (sa sleep, 10.0.1.2), default/n1b (sa intruder, 10.0.1.3)\n'
printf '   node2: default/n2a (sa httpbin, 10.0.2.2), other/n2b (sa legacy, 10.0.2.3)\n'
printf '   outside the mesh: 10.0.9.2\n'
cat >"$TOPO_ROOT/policies/mesh.yaml" <<'EOF'
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: httpbin-from-sleep, namespace: default}
spec:
  selector: {matchLabels: {app: httpbin}}
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/sleep"]}}]
EOF
echo "   policies: mesh-wide STRICT; httpbin accepts only spiffe://cluster.local/ns/default/sa/sleep"

say "2. one CA (meshtlsctl ca init), one meshtls-agent per node"
"$build/agent/meshtlsctl" ca init --dir "$TOPO_ROOT/ca" --trust-domain cluster.local | indent
topo_start_agent 1 --datapath "$datapath"
topo_start_agent 2 --datapath "$datapath"
grep -h "meshtls-agent ready" "$TOPO_ROOT"/agent*.log | sed 's/^.*meshtls-agent ready: /   ready: /'

say "3a. iperf3 from n1a (node 1) to n2a (node 2) through the mesh, ${seconds} s, wire captured"
capture_file=$TOPO_ROOT/wire.pcap
# tcpdump records (it starts at once); tshark, if installed, reads the capture afterwards.
ip netns exec "$(topo_ns node1)" tcpdump --immediate-mode -Z root -U -s 0 -i "w$TOPO_ID-1" -w "$capture_file" >/dev/null 2>&1 &
capture_pid=$!
topo_run n2a iperf3 -s -p 5201 >/dev/null 2>&1 &
topo_run n2a $netcheck serve 8080 --reply httpbin >/dev/null 2>&1 &
sleep 1
marker="DEMO-PLAINTEXT-MARKER-$RANDOM$RANDOM"
topo_run n1a iperf3 -c 10.0.2.2 -p 5201 -t "$seconds" -J >"$TOPO_ROOT/iperf.json"
gbps=$(/usr/bin/python3 -c 'import json,sys; print("%.2f" % (json.load(open(sys.argv[1]))["end"]["sum_received"]["bits_per_second"]/1e9))' "$TOPO_ROOT/iperf.json")
echo "   n1a -> n2a: $gbps Gbit/s (mutual TLS 1.3 between the two agents)"
answer=$(topo_run n1a $netcheck send 10.0.2.2 8080 "$marker" | tail -1)
echo "   n1a sends a marker to n2a:8080 and gets back: $answer"

say "3b. refusals"
out_answer=$(topo_run out $netcheck send 10.0.2.2 8080 plaintext | tail -1) || true
echo "   plaintext client outside the mesh -> n2a:8080: $out_answer (STRICT)"
intruder_answer=$(topo_run n1b $netcheck send 10.0.2.2 8080 intruder | tail -1) || true
echo "   n1b (sa intruder) -> n2a:8080: $intruder_answer (AuthorizationPolicy)"
sleep 0.5
kill "$capture_pid" 2>/dev/null; wait "$capture_pid" 2>/dev/null || true
capture_pid=""
grep -h '"result":"denied"' "$TOPO_ROOT"/access-*.log | /usr/bin/python3 -c '
import json, sys
for line in sys.stdin:
    r = json.loads(line)
    print("   access log: %s %s -> %s: %s (%s)" % (r["direction"], r["src_identity"] or r["src_addr"], r["dst_addr"], r["reason"], r.get("detail", "")))'

say "3c. the wire between the nodes"
read -r packets records hits <<<"$(/usr/bin/python3 "$repo/tests/e2e/pcap_check.py" "$capture_file" "$marker")"
if command -v tshark >/dev/null; then
  # TLS 1.3 hides the real record type: encrypted records carry opaque_type 23.
  tls_records=$(tshark -r "$capture_file" -d tcp.port==15008,tls \
    -Y 'tls.record.opaque_type == 23 || tls.record.content_type == 23' 2>/dev/null | wc -l)
  marker_frames=$(tshark -r "$capture_file" -Y "frame contains \"$marker\"" 2>/dev/null | wc -l)
  { tshark -r "$capture_file" -d tcp.port==15008,tls -Y tls 2>/dev/null || true; } | head -4 | cut -c1-140 | indent || true
  echo "   tshark: $tls_records frames with TLS application data, $marker_frames frames containing the marker"
else
  echo "   (tshark is not installed: read with tests/e2e/pcap_check.py)"
  marker_frames=$hits
fi
echo "   $packets packets on port 15008; the plaintext marker appears in $hits of them"

say "summary"
handshakes=$(grep -h '"tls":true' "$TOPO_ROOT"/access-1.log | grep -c '"result":"ok"' || true)
refused=$(grep -h '"result":"denied"' "$TOPO_ROOT"/access-*.log | wc -l)
dp=$(grep -ho 'datapath [a-z-]*' "$TOPO_ROOT/agent1.log" | head -1)
echo "   throughput n1a -> n2a: $gbps Gbit/s, ${dp}, kernel $(uname -r)"
echo "   mutual-TLS connections made by node 1: $handshakes; refused attempts: $refused"
ok=1
[[ $answer == "httpbin:$marker" ]] || { echo "   FAILED: mesh traffic did not flow"; ok=0; }
[[ $out_answer != httpbin:* ]] || { echo "   FAILED: the plaintext client got through"; ok=0; }
[[ $intruder_answer != httpbin:* ]] || { echo "   FAILED: the denied service account got through"; ok=0; }
[[ $hits == 0 && $marker_frames == 0 ]] || { echo "   FAILED: plaintext crossed the wire"; ok=0; }
[[ $packets -gt 0 ]] || { echo "   FAILED: nothing captured on the wire"; ok=0; }
[[ $ok == 1 ]] && echo "   no plaintext crossed the wire: only TLS records"
[[ $ok == 1 ]] || exit 1
trap - EXIT
cleanup

if [[ $vm == 1 ]]; then
  say "4. the same demo inside a VM on Debian's 6.12 kernel (kTLS; TCG emulates the CPU, so its speed means nothing)"
  "$repo/tests/vm/run-in-vm.sh" --kernel 6.12 --timeout 300 -- "$repo/tools/demo.sh" "$build" --no-vm \
    --seconds 3 --datapath ktls-splice 2>&1 | grep -v '^\[host' | indent
fi
