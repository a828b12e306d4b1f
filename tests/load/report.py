#!/usr/bin/python3
"""Turns the load test's raw records (one JSON object per measurement, from run.sh) into
results/<timestamp>.json, a Markdown table with ratios to plain and to the best peer, and gnuplot
charts. --smoke only checks that every variant produced its records.

usage: report.py --raw FILE [--raw FILE ...] --out DIR [--seconds S] [--smoke]
"""
import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys

PEERS = ["stunnel", "nginx", "haproxy"]
# metric: (title, better: "high" | "low")
METRICS = {
    "throughput_1_stream_gbit_s": ("throughput, 1 stream (Gbit/s)", "high"),
    "throughput_4_stream_gbit_s": ("throughput, 4 streams (Gbit/s)", "high"),
    "proxy_cpu_s_per_gb_1_stream": ("proxy CPU-s per GB, 1 stream", "low"),
    "proxy_cpu_s_per_gb_4_stream": ("proxy CPU-s per GB, 4 streams", "low"),
    "latency_p50_us": ("latency p50 (µs)", "low"),
    "latency_p99_us": ("latency p99 (µs)", "low"),
    "latency_p999_us": ("latency p99.9 (µs)", "low"),
    "new_connections_per_s": ("new connections/s (each a full mTLS handshake)", "high"),
    "new_connection_errors": ("new-connection errors", "low"),
    "proxy_cpu_ms_per_connection": ("proxy CPU-ms per new connection", "low"),
}
REQUIRED = ["throughput_1_stream_gbit_s", "throughput_4_stream_gbit_s", "latency_p50_us", "new_connections_per_s"]


def load(paths):
    records = []
    for path in paths:
        with open(path) as f:
            records += [json.loads(line) for line in f if line.startswith("{")]
    return records


def summarize(records):
    groups = {}
    for r in records:
        groups.setdefault((r["label"], r["variant"], r["metric"]), []).append(r)
    summary = []
    for (label, variant, metric), rs in groups.items():
        values = [r["value"] for r in rs]
        summary.append({"label": label, "kernel": rs[0]["kernel"], "variant": variant, "datapath": rs[0]["datapath"],
                        "metric": metric, "unit": rs[0]["unit"], "median": statistics.median(values),
                        "min": min(values), "max": max(values), "runs": len(values)})
    return summary


def fmt(x):
    if x is None:
        return "–"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def machine():
    cpu = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"host": platform.node(), "kernel": platform.release(), "cpu": cpu, "cores": os.cpu_count()}


def markdown(summary, label, seconds):
    by = {(s["variant"], s["metric"]): s for s in summary if s["label"] == label}
    variants = []
    for s in summary:
        if s["label"] == label and s["variant"] not in variants:
            variants.append(s["variant"])
    kernel = next(s["kernel"] for s in summary if s["label"] == label)
    tcg = label.startswith("vm")
    lines = [f"### {label}: kernel {kernel}" + (" (QEMU TCG: software-emulated CPU, figures are functional only)" if tcg else ""),
             "", f"Median of the runs (min–max); {seconds} s per measurement.", ""]
    lines.append("| metric | " + " | ".join(variants) + " |")
    lines.append("|---|" + "---|" * len(variants))
    def memory_order(m):
        when = m.split("_")[1]
        return (m.startswith("anon"), m.endswith("node2"), 0 if when == "idle" else int(when))
    rss = sorted({m for (_, m) in by if m.startswith("rss_") or m.startswith("anon_")}, key=memory_order)
    for metric in list(METRICS) + rss:
        title = METRICS[metric][0] if metric in METRICS else (
            metric.replace("rss_", "RSS (MiB), ").replace("anon_", "private memory (RssAnon, MiB), ")
            .replace("_mib_node", ", node ").replace("_conns", " idle connections").replace("_", " "))
        row = []
        for v in variants:
            s = by.get((v, metric))
            if s is None:
                row.append("–")
            elif s["runs"] > 1 and s["min"] != s["max"]:
                row.append(f"{fmt(s['median'])} ({fmt(s['min'])}–{fmt(s['max'])})")
            else:
                row.append(fmt(s["median"]))
        if any(c != "–" for c in row):
            lines.append(f"| {title} | " + " | ".join(row) + " |")
    lines.append("")
    # Ratios: each meshtls variant against plain and against the best peer for that metric.
    def med(v, m):
        s = by.get((v, m))
        return s["median"] if s else None
    peers = [p for p in PEERS if p in variants]
    mesh = [v for v in variants if v.startswith("meshtls")]
    if mesh and (peers or "plain" in variants):
        lines += ["| ratio | " + " | ".join(mesh) + " |", "|---|" + "---|" * len(mesh)]
        for metric in ["throughput_1_stream_gbit_s", "throughput_4_stream_gbit_s", "proxy_cpu_s_per_gb_1_stream",
                       "latency_p50_us", "new_connections_per_s"]:
            title, better = METRICS[metric]
            peer_values = [(med(p, metric), p) for p in peers if med(p, metric) is not None]
            best = (max if better == "high" else min)(peer_values) if peer_values else None
            row_plain, row_peer = [], []
            for v in mesh:
                m, pl = med(v, metric), med("plain", metric)
                row_plain.append(f"{m / pl:.2f}×" if m is not None and pl else "–")
                row_peer.append(f"{m / best[0]:.2f}× ({best[1]})" if m is not None and best and best[0] else "–")
            if "plain" in variants and metric != "proxy_cpu_s_per_gb_1_stream":
                lines.append(f"| {title} vs plain | " + " | ".join(row_plain) + " |")
            if peers:
                lines.append(f"| {title} vs best peer | " + " | ".join(row_peer) + " |")
        lines.append("")
        if peers and "plain" in variants and not tcg:
            lines += targets(med, mesh, peers)
    return "\n".join(lines)


def targets(med, mesh, peers):
    """The issue's targets for meshtls userspace-tls against the best peer, met or missed by how much."""
    v = "meshtls-userspace-tls" if "meshtls-userspace-tls" in mesh else mesh[0]
    out = [f"Targets ({v} against the best peer in this run):", "", "| target | measured | verdict |", "|---|---|---|"]

    def best(metric, higher):
        values = [(med(p, metric), p) for p in peers if med(p, metric) is not None]
        return (max if higher else min)(values) if values else (None, None)

    def verdict(ok, miss):
        return "met" if ok else f"missed ({miss})"

    def ratio_row(name, metric, higher, want):
        b, peer = best(metric, higher)
        m = med(v, metric)
        if m is None or not b:
            return
        r = m / b
        ok = r >= want if higher else r <= want
        out.append(f"| {name} {'≥' if higher else '≤'} {want}× best peer | {r:.2f}× ({peer}) | "
                   f"{verdict(ok, f'{r / want * 100:.0f} % of the target' if higher else f'{r / want:.2f}× the allowed')} |")

    ratio_row("throughput, 1 stream,", "throughput_1_stream_gbit_s", True, 1.5)
    ratio_row("proxy CPU-s per GB", "proxy_cpu_s_per_gb_1_stream", False, 0.6)
    plain = med("plain", "latency_p50_us")
    m = med(v, "latency_p50_us")
    b, peer = best("latency_p50_us", False)
    if plain is not None and m is not None and b is not None:
        added, added_peer = m - plain, b - plain
        ok = added <= 0.5 * added_peer and added <= 30
        out.append(f"| added p50 latency ≤ 0.5× best peer's and ≤ 30 µs | +{added:.1f} µs (best peer {peer} +{added_peer:.1f} µs) | "
                   f"{verdict(ok, f'{added - min(0.5 * added_peer, 30):.1f} µs over')} |")
    ratio_row("new connections/s", "new_connections_per_s", True, 2.0)
    for when, limit, name in [("idle", 15, "agent RSS idle ≤ 15 MB"),
                              ("1000_conns", 40, "agent RSS with 1,000 connections ≤ 40 MB")]:
        value = med(v, f"rss_{when}_mib_node1")
        anon = med(v, f"anon_{when}_mib_node1")
        if value is not None:
            mb = value * 1.048576
            private = f", of which {anon * 1.048576:.1f} MB private (RssAnon)" if anon is not None else ""
            out.append(f"| {name} | {mb:.1f} MB (node 1){private} | {verdict(mb <= limit, f'{mb - limit:.1f} MB over')} |")
    out.append("")
    return out


def chart(summary, label, out_png, kind):
    rows = {}
    for s in summary:
        if s["label"] == label:
            rows.setdefault(s["variant"], {})[s["metric"]] = s["median"]
    variants = [v for v in rows if any(k.startswith("throughput") or k.startswith("latency") for k in rows[v])]
    if not variants or shutil.which("gnuplot") is None:
        return False
    data = out_png + ".dat"
    with open(data, "w") as f:
        for v in variants:
            r = rows[v]
            if kind == "throughput":
                f.write(f'"{v}" {r.get("throughput_1_stream_gbit_s", 0)} {r.get("throughput_4_stream_gbit_s", 0)}\n')
            else:
                f.write(f'"{v}" {r.get("latency_p50_us", 0)} {r.get("latency_p99_us", 0)} {r.get("latency_p999_us", 0)}\n')
    if kind == "throughput":
        plot = (f'set ylabel "Gbit/s"; set title "iperf3 throughput ({label})"; '
                f'plot "{data}" using 2:xtic(1) title "1 stream", "" using 3 title "4 streams"')
    else:
        plot = (f'set ylabel "µs (log)"; set logscale y; set title "sockperf ping-pong, 64 B ({label})"; '
                f'plot "{data}" using 2:xtic(1) title "p50", "" using 3 title "p99", "" using 4 title "p99.9"')
    script = (f'set terminal pngcairo size 1000,480 font ",10"; set output "{out_png}"; set style data histograms; '
              f'set style histogram clustered gap 1; set style fill solid 0.85 border -1; set boxwidth 0.9; '
              f'set xtics rotate by -20; set grid ytics; set key top right; {plot}')
    result = subprocess.run(["gnuplot", "-e", script], capture_output=True, text=True)
    os.unlink(data)
    if result.returncode != 0:
        print(f"report: gnuplot failed: {result.stderr}", file=sys.stderr)
        return False
    return True


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--raw", action="append", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seconds", default="?")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    records = load(args.raw)
    if not records:
        print("report: no records", file=sys.stderr)
        return 1
    # run.sh records each failed measurement too ("metric": "failure"), so that a "–" in the
    # tables always has its reason next to it.
    failures = [r for r in records if r["metric"] == "failure"]
    records = [r for r in records if r["metric"] != "failure"]
    summary = summarize(records)
    labels = []
    for r in records:
        if r["label"] not in labels:
            labels.append(r["label"])

    if args.smoke:
        problems = []
        for label in labels:
            variants = {r["variant"] for r in records if r["label"] == label}
            for v in sorted(variants):
                have = {r["metric"]: r["value"] for r in records if r["label"] == label and r["variant"] == v}
                for metric in REQUIRED + (["rss_idle_mib_node1", "anon_idle_mib_node2", "proxy_cpu_s_per_gb_1_stream"]
                                          if v != "plain" else []):
                    if metric not in have:
                        problems.append(f"{label}/{v}: no {metric} record")
                    elif metric in REQUIRED and have[metric] <= 0:
                        problems.append(f"{label}/{v}: {metric} is {have[metric]}")
                print(f"smoke {label}/{v}: " + ", ".join(f"{k}={have[k]}" for k in REQUIRED if k in have))
        for p in problems:
            print(f"report: {p}", file=sys.stderr)
        return 1 if problems else 0

    os.makedirs(args.out, exist_ok=True)
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    result = {"timestamp": stamp, "machine": machine(), "seconds_per_measurement": args.seconds,
              "summary": summary, "records": records, "failures": failures}
    base = os.path.join(args.out, stamp)
    with open(base + ".json", "w") as f:
        json.dump(result, f, indent=1)
    parts = [f"# Load test {stamp}", "",
             f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores, host kernel {result['machine']['kernel']}. "
             "Client pod on node 1, server pod on node 2, a veth wire between (tests/e2e/topology.sh); proxies as described "
             "in docs/benchmarks.md.", ""]
    for label in labels:
        parts.append(markdown(summary, label, args.seconds))
        failed = [f for f in failures if f["label"] == label]
        if failed:
            parts.append("Failed measurements (their cells show –):")
            parts.append("")
            for f in failed:
                parts.append(f"- {f['variant']}: {f.get('detail', '')}")
            parts.append("")
        for kind in ["throughput", "latency"]:
            png = f"{base}-{label}-{kind}.png"
            if chart(summary, label, png, kind):
                parts.append(f"![{kind} {label}]({os.path.basename(png)})")
        parts.append("")
    with open(base + ".md", "w") as f:
        f.write("\n".join(parts) + "\n")
    # The README shows the latest host run.
    for suffix in [".json", ".md"]:
        shutil.copyfile(base + suffix, os.path.join(args.out, "latest" + suffix))
    for label in labels:
        for kind in ["throughput", "latency"]:
            png = f"{base}-{label}-{kind}.png"
            if os.path.exists(png):
                shutil.copyfile(png, os.path.join(args.out, f"latest-{label}-{kind}.png"))
    with open(os.path.join(args.out, "latest.md")) as f:
        text = f.read().replace(os.path.basename(base) + "-", "latest-")
    with open(os.path.join(args.out, "latest.md"), "w") as f:
        f.write(text)
    print(f"report: {base}.json, {base}.md")
    print("\n".join(parts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
