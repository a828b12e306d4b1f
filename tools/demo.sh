#!/usr/bin/env bash
# make demo: the handshake engine and datapaths end to end, on an embedded default.
#   1. a CA made with `meshtlsctl ca init`, and two workload SVIDs from `meshtlsctl ca issue`
#   2. iperf3 through a meshtls tunnel (client end -> mutual TLS 1.3 -> server end -> iperf3)
#      on this host, with the datapath the kernel allows (userspace-tls here: no kTLS)
#   3. a client that expects another server identity is refused (identity_mismatch)
#   4. the same tunnel inside a VM on Debian's 6.12 kernel, where the datapath is ktls-splice
# Everything is torn down on exit, on failure and on Ctrl-C.
# usage: tools/demo.sh BUILD_DIR [SECONDS]
set -euo pipefail
build=$(cd "${1:?usage: demo.sh BUILD_DIR}" && pwd)
seconds=${2:-5}
here=$(cd "$(dirname "$0")/.." && pwd)
tunnel=$build/agent/meshtls-tunnel
ctl=$build/agent/meshtlsctl
work=$(mktemp -d /tmp/meshtls-demo.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "1. a CA (meshtlsctl ca init) and two workload SVIDs (meshtlsctl ca issue)"
c=$work/certs
"$ctl" ca init --dir "$c/ca" --trust-domain cluster.local | sed 's/^/   /'
for n in client server; do
  "$ctl" ca issue --dir "$c/ca" --spiffe-id "spiffe://cluster.local/ns/default/sa/$n" --ttl 1h --out "$c/$n" \
    | head -1 | sed 's/^/   /'
done
cp "$c/ca/root.crt" "$c/bundle.crt"

run_tunnel_pair() {  # $1: log prefix, $2: client expected identity
  "$tunnel" server --listen 127.0.0.1:15008 --forward 127.0.0.1:5201 \
    --cert "$c/server.crt" --key "$c/server.key" --bundle "$c/bundle.crt" \
    --allow spiffe://cluster.local/ns/default/sa/client >"$work/$1-server.log" 2>&1 &
  pids+=($!)
  "$tunnel" client --listen 127.0.0.1:15001 --connect 127.0.0.1:15008 \
    --cert "$c/client.crt" --key "$c/client.key" --bundle "$c/bundle.crt" \
    --expect "$2" >"$work/$1-client.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 50); do
    ss -ltn | grep -q ':15001 ' && ss -ltn | grep -q ':15008 ' && return 0
    sleep 0.1
  done
  echo "the tunnel did not start:"; cat "$work/$1-"*.log; return 1
}

stop_all() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pids=()
}

iperf3 -s -B 127.0.0.1 -p 5201 >/dev/null 2>&1 &
pids+=($!)
sleep 0.3

say "2. iperf3 -> meshtls client end -> mutual TLS 1.3 -> meshtls server end -> iperf3 ($seconds s)"
run_tunnel_pair host spiffe://cluster.local/ns/default/sa/server
plain=$(iperf3 -c 127.0.0.1 -p 5201 -t "$seconds" -J | /usr/bin/python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9))')
meshed=$(iperf3 -c 127.0.0.1 -p 15001 -t "$seconds" -J | /usr/bin/python3 -c 'import json,sys; print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9))')
datapath=$(grep -o 'datapath [a-z-]*' "$work/host-client.log" | head -1)
grep -h 'handshake ok' "$work/host-server.log" | head -1 | sed 's/^/   server: /'
grep -h 'datapath' "$work/host-client.log" | head -1 | sed 's/^/   client: /'
printf '   plaintext loopback: %s Gbit/s   through meshtls: %s Gbit/s   (%s)\n' "$plain" "$meshed" "$datapath"
stop_all
iperf3 -s -B 127.0.0.1 -p 5201 >/dev/null 2>&1 &
pids+=($!)

say "3. a client that expects another server identity is refused"
run_tunnel_pair wrong spiffe://cluster.local/ns/default/sa/database
if iperf3 -c 127.0.0.1 -p 15001 -t 1 >/dev/null 2>&1; then
  echo "   UNEXPECTED: the connection went through"; exit 1
fi
sleep 0.3
grep -h 'handshake failed' "$work/wrong-client.log" | head -1 | sed 's/^.*handshake failed: /   client: handshake failed: /'
stop_all

say "4. the same tunnel on Debian's 6.12 kernel in a VM (kTLS: ktls-splice; TCG emulates the CPU, so speed means nothing here)"
cat > "$work/vm-demo.sh" <<VM
#!/bin/sh
set -e
iperf3 -s -B 127.0.0.1 -p 5201 -D
$tunnel server --listen 127.0.0.1:15008 --forward 127.0.0.1:5201 --cert $c/server.crt --key $c/server.key --bundle $c/bundle.crt > /tmp/s.log 2>&1 &
$tunnel client --listen 127.0.0.1:15001 --connect 127.0.0.1:15008 --cert $c/client.crt --key $c/client.key --bundle $c/bundle.crt --expect spiffe://cluster.local/ns/default/sa/server > /tmp/c.log 2>&1 &
sleep 1
iperf3 -c 127.0.0.1 -p 15001 -t 2 | tail -3
grep -h 'datapath' /tmp/c.log | head -1
grep -h 'handshake ok' /tmp/s.log | head -1
VM
chmod +x "$work/vm-demo.sh"
MESHTLS_VM_KEEP=$work "$here/tests/vm/run-in-vm.sh" --kernel 6.12 --timeout 120 -- "$work/vm-demo.sh" 2>&1 \
  | grep -v '^\[host' | sed 's/^/   /'

say "summary"
printf '   host (%s): %s Gbit/s through the tunnel, %s Gbit/s plaintext\n' "${datapath#datapath }" "$meshed" "$plain"
echo "   wrong server identity: refused (identity_mismatch)"
echo "   VM, Debian 6.12: ktls-splice (records encrypted by the kernel)"
