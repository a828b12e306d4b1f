#!/usr/bin/env bash
# make bench-tls: handshake rate and relay throughput, on the host and in the VM.
# Writes tests/bench/results/tls.json (every run) and tls.md (medians, targets, verdicts).
# usage: run-bench-tls.sh BUILD_DIR   (env: REPEAT=3 BYTES=4294967296 HANDSHAKES=3000)
set -euo pipefail
build=$(cd "${1:?usage: run-bench-tls.sh BUILD_DIR}" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
bench=$build/tests/bench/bench_tls
out=$here/results
repeat=${REPEAT:-3}
bytes=${BYTES:-4294967296}
handshakes=${HANDSHAKES:-3000}
mkdir -p "$out"
runs=$(mktemp)
trap 'rm -f "$runs"' EXIT

echo "bench-tls: host, userspace-tls, $repeat runs ($handshakes handshakes, $((bytes >> 20)) MiB per relay run)"
for i in $(seq "$repeat"); do
  "$bench" --handshakes "$handshakes" --bytes "$bytes" --datapath userspace-tls --label host | tee -a "$runs"
done

# In the VM the CPU is emulated (TCG): AES and GCM run in software, so these are functional
# figures only. Both datapaths run there, so their order can at least be seen.
for kernel in 6.12 newest; do
  for datapath in ktls-splice userspace-tls; do
    echo "bench-tls: VM ($kernel, TCG), $datapath"
    "$repo/tests/vm/run-in-vm.sh" --kernel "$kernel" --timeout 600 -- \
      "$bench" --handshakes 200 --bytes 268435456 --datapath "$datapath" --label "vm-$kernel-tcg" \
      | grep '^{' | tee -a "$runs"
  done
done

/usr/bin/python3 - "$runs" "$out" <<'PY'
import json, os, statistics, sys, datetime, platform
runs = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
out = sys.argv[2]
doc = {"generated": datetime.datetime.utcnow().strftime("%Y-%m-%dT%H:%M:%SZ"),
       "machine": {"cpus": os.cpu_count(), "host_kernel": platform.release()},
       "runs": runs}
json.dump(doc, open(os.path.join(out, "tls.json"), "w"), indent=2)

def group(label, datapath):
    return [r for r in runs if r["label"] == label and r["datapath"] == datapath]
def med(rs, key):
    vals = [r[key] for r in rs]
    return statistics.median(vals), min(vals), max(vals)
def cell(rs, key, fmt="%.2f"):
    m, lo, hi = med(rs, key)
    return (fmt % m) + " (" + (fmt % lo) + "–" + (fmt % hi) + ")"

lines = ["# bench-tls results", "",
         f"Generated {doc['generated']} on {doc['machine']['cpus']} CPUs, host kernel {doc['machine']['host_kernel']}.",
         "Median (min–max) over the runs in `tls.json`. Relay runs move one stream over loopback TCP.",
         "- **full tunnel**: app → our client relay → TLS → our server relay → app (both ends encrypt/decrypt; CPU is both relay threads).",
         "- **single relay**: app → our encrypting relay → a plain OpenSSL reader (the shape of the 7.3 Gbit/s \"OpenSSL relay\" baseline).",
         "- **handshakes**: full mutual TLS 1.3 handshakes (ECDSA P-256, X25519, SPIFFE checks), both ends in one thread, one core.", "",
         "| where | datapath | handshakes/s (1 core) | full tunnel Gbit/s | full tunnel CPU-s/GB | single relay Gbit/s | single relay CPU-s/GB |",
         "|---|---|---|---|---|---|---|"]
labels = []
for r in runs:
    k = (r["label"], r["datapath"])
    if k not in labels: labels.append(k)
for label, datapath in labels:
    rs = group(label, datapath)
    where = label + (" (software-emulated CPU: functional only)" if label.startswith("vm") else "")
    lines.append(f"| {where} | {datapath} | {cell(rs, 'handshakes_per_second_one_core', '%.0f')} | "
                 f"{cell(rs, 'relay_gbit_per_s')} | {cell(rs, 'relay_cpu_s_per_gb_both_ends')} | "
                 f"{cell(rs, 'single_relay_gbit_per_s')} | {cell(rs, 'single_relay_cpu_s_per_gb')} |")
host = group("host", "userspace-tls")
if host:
    hs = med(host, "handshakes_per_second_one_core")[0]
    single = med(host, "single_relay_gbit_per_s")[0]
    full = med(host, "relay_gbit_per_s")[0]
    lines += ["", "## Targets (host)", "",
              "| target | measured | verdict |", "|---|---|---|",
              f"| ≥ 1,500 full mutual handshakes/s, one core | {hs:.0f}/s | {'met' if hs >= 1500 else 'missed by %.0f%%' % (100 * (1500 - hs) / 1500)} |",
              f"| userspace-tls relay ≥ 7 Gbit/s, one stream (single relay) | {single:.2f} Gbit/s | {'met' if single >= 7 else 'missed by %.0f%%' % (100 * (7 - single) / 7)} |",
              f"| (full tunnel, both ends ours) | {full:.2f} Gbit/s | — |"]
open(os.path.join(out, "tls.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
echo "bench-tls: wrote $out/tls.json and $out/tls.md"
