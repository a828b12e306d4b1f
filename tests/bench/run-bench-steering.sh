#!/usr/bin/env bash
# make bench-steering: app -> agent local listener -> server, with no agent, through the steered
# relay, and through the relay with the sockmap local-leg shortcut. Root only.
# Writes tests/bench/results/steering.json (every run, medians) and steering.md (table, verdict).
# usage: run-bench-steering.sh BUILD_DIR   (env: REPEAT=3 BYTES=4294967296 RTTS=20000 VM=1)
set -euo pipefail
build=$(cd "${1:?usage: run-bench-steering.sh BUILD_DIR}" && pwd)
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
bench=$build/tests/bench/bench_steering
out=$here/results
repeat=${REPEAT:-3}
bytes=${BYTES:-4294967296}
rtts=${RTTS:-20000}
if [ "$(id -u)" != 0 ]; then
  echo "bench-steering: needs root (BPF programs, cgroups, a network namespace)" >&2
  exit 2
fi
mkdir -p "$out"
runs=$(mktemp)
trap 'rm -f "$runs"' EXIT

# Each invocation runs the three configurations back to back, so a slow patch on the host
# (another build) hits all three rather than skewing one.
echo "bench-steering: host, $repeat runs of direct, relay, relay+shortcut ($((bytes >> 20)) MiB, $rtts round trips each)"
for i in $(seq "$repeat"); do
  "$bench" --bytes "$bytes" --rtts "$rtts" --label host | tee -a "$runs"
done

# Under TCG the CPU is emulated: these runs only show that the steering and the shortcut engage
# and carry a stream on each kernel. Their speeds mean nothing.
if [ "${VM:-1}" = 1 ]; then
  for kernel in 6.1 6.12 newest; do
    echo "bench-steering: VM ($kernel, TCG), functional run"
    "$repo/tests/vm/run-in-vm.sh" --kernel "$kernel" --timeout 600 -- \
      "$bench" --bytes 268435456 --rtts 2000 --label "vm-$kernel-tcg" \
      | grep '^{' | tee -a "$runs" || echo "bench-steering: VM $kernel run failed" >&2
  done
fi

/usr/bin/python3 - "$runs" "$out" <<'PY'
import json, os, statistics, sys, datetime, platform
runs = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
out = sys.argv[2]
configs = ["direct", "relay", "relay+shortcut"]
keys = ["gbit_per_s", "cpu_s_per_gb", "rtt_p50_us", "rtt_p99_us"]
labels = []
for r in runs:
    if r["label"] not in labels: labels.append(r["label"])

def group(label, config):
    return [r for r in runs if r["label"] == label and r["config"] == config and r["ok"]]

medians = {}
for label in labels:
    for config in configs:
        rs = group(label, config)
        if rs:
            medians.setdefault(label, {})[config] = {k: statistics.median(r[k] for r in rs) for k in keys} | {"runs": len(rs)}

verdict = None
host = medians.get("host", {})
if "relay" in host and "relay+shortcut" in host:
    relay, short = host["relay"], host["relay+shortcut"]
    ratio = short["gbit_per_s"] / relay["gbit_per_s"]
    wins = ratio >= 1.05 and short["rtt_p50_us"] <= relay["rtt_p50_us"]
    verdict = (f"Verdict: the shortcut {'wins' if wins else 'loses'} on this kernel "
               f"({ratio:.2f}× relay throughput, p50 {relay['rtt_p50_us']:.1f}→{short['rtt_p50_us']:.1f} µs)")

doc = {"generated": datetime.datetime.utcnow().strftime("%Y-%m-%dT%H:%M:%SZ"),
       "machine": {"cpus": os.cpu_count(), "host_kernel": platform.release()},
       "rule": "the shortcut wins if its median throughput is >= 1.05x the relay's and its median p50 RTT is not worse",
       "verdict": verdict, "medians": medians, "runs": runs}
json.dump(doc, open(os.path.join(out, "steering.json"), "w"), indent=2)

def cell(rs, key, fmt):
    vals = [r[key] for r in rs]
    m = statistics.median(vals)
    return (fmt % m) + (" (" + (fmt % min(vals)) + "–" + (fmt % max(vals)) + ")" if len(vals) > 1 else "")

lines = ["# bench-steering results", "",
         f"Generated {doc['generated']} on {doc['machine']['cpus']} CPUs, host kernel {doc['machine']['host_kernel']}.",
         "Median (min–max) over the runs in `steering.json`. One stream; all processes in one fresh network namespace.",
         "- **direct**: the app connects straight to the server over loopback TCP; no agent.",
         "- **relay**: the app, in a meshed cgroup, connects to 192.0.2.10:80; the cgroup connect4 program redirects it to",
         "  the agent's 127.0.0.1:15001; the agent checks the original destination and relays to the server with",
         "  `PlainRelay` (splice both ways) over a second loopback TCP leg (standing in for the tunnel).",
         "- **relay+shortcut**: the same with `LocalLegShortcut`: the app ↔ agent leg moves through a sockhash (sk_msg",
         "  redirect), the agent reads that leg with recv(). The run fails unless the leg is in the sockhash and (almost) no",
         "  byte of it went through TCP.",
         "- CPU-s/GB: user+system CPU of the whole process tree (app, agent, server) per 10^9 bytes moved.",
         "- RTT: 64-byte request, 64-byte answer, one at a time, app and server in different processes (so each",
         "  round trip includes cross-task wakeups, unlike the single-thread ping-pong quoted in DESIGN.md).",
         "- EAGAIN: spurious EAGAIN from recv() on the app's blocking socket, summed over the runs (see README.md).", ""]
host_loads = [r["loadavg_1m_before"] for r in runs if r["label"] == "host"]
if host_loads:
    lines += [f"Load average (1 min) before each host run: {min(host_loads):.2f}–{max(host_loads):.2f} "
              "(other work on these 2 CPUs moves every figure, the RTTs most).", ""]
lines += ["| where | config | Gbit/s | CPU-s/GB | RTT p50 µs | RTT p99 µs | EAGAIN | runs |",
          "|---|---|---|---|---|---|---|---|"]
for label in labels:
    where = label + (" (emulated CPU: functional only)" if label.startswith("vm") else "")
    for config in configs:
        rs = group(label, config)
        failed = [r for r in runs if r["label"] == label and r["config"] == config and not r["ok"]]
        if not rs:
            if failed:
                lines.append(f"| {where} | {config} | failed: {failed[0]['error']} | | | | | 0 |")
            continue
        lines.append(f"| {where} | {config} | {cell(rs, 'gbit_per_s', '%.2f')} | {cell(rs, 'cpu_s_per_gb', '%.3f')} | "
                     f"{cell(rs, 'rtt_p50_us', '%.1f')} | {cell(rs, 'rtt_p99_us', '%.1f')} | "
                     f"{sum(r['app_spurious_eagain'] for r in rs)} | {len(rs)}"
                     + (f" ({len(failed)} failed)" if failed else "") + " |")
if verdict:
    lines += ["", f"{verdict}. Rule: the shortcut wins if its median throughput is ≥ 1.05× the relay's and its median p50 RTT is not worse."]
open(os.path.join(out, "steering.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
if verdict: print(verdict)
PY
echo "bench-steering: wrote $out/steering.json and $out/steering.md"
