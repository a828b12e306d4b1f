#!/usr/bin/env bash
# make bench / make bench-smoke: the load test (run.sh) on the host, then in the VM harness on
# Debian's 6.1 and 6.12 kernels (ktls-splice; TCG, so functional figures only), then one report
# (report.py) into tests/load/results/. Takes minutes and says what it is doing.
#
# usage: bench.sh BUILD_DIR [--smoke]      env: VM=0 skips the VM runs; REPEAT, SECONDS_EACH
set -uo pipefail
build=$(cd "${1:?usage: bench.sh BUILD_DIR [--smoke]}" && pwd)
smoke=${2:-}
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
work=$(mktemp -d /tmp/meshtls-bench-XXXXXX)
trap 'rm -rf "$work"' EXIT
status=0

host_args=(--repeat "${REPEAT:-3}" --seconds "${SECONDS_EACH:-10}")
vm_args=(--repeat 1 --seconds 3 --wrk-seconds 10 --conns 200 --in-flight 16)
if [[ $smoke == --smoke ]]; then
  host_args=(--smoke)
  vm_args=(--smoke --wrk-seconds 10)
fi

echo "bench: host ($(uname -r))"
"$here/run.sh" "$build" "${host_args[@]}" --label host --raw "$work/host.jsonl" || status=1

if [[ ${VM:-1} == 1 ]]; then
  for kernel in 6.1 6.12; do
    echo "bench: VM, Debian $kernel (QEMU TCG: the CPU is emulated, the figures only show that each variant works)"
    # The guest sees the host's files read-only: the records come back on its stdout.
    "$repo/tests/vm/run-in-vm.sh" --kernel "$kernel" --timeout 1500 -- /bin/sh -c \
      "'$here/run.sh' '$build' ${vm_args[*]} --label vm-$kernel-tcg --raw /tmp/records.jsonl; rc=\$?; cat /tmp/records.jsonl; exit \$rc" \
      >"$work/vm-$kernel.out" 2>&1 || { status=1; echo "bench: the VM run on $kernel failed:"; tail -30 "$work/vm-$kernel.out"; }
    grep '^{"label"' "$work/vm-$kernel.out" >"$work/vm-$kernel.jsonl" || true
    grep -E '^bench: ' "$work/vm-$kernel.out" | sed 's/^/  /'
  done
fi

raws=()
for f in "$work"/*.jsonl; do [[ -s $f ]] && raws+=(--raw "$f"); done
if [[ ${#raws[@]} -eq 0 ]]; then
  echo "bench: no records at all" >&2
  exit 1
fi
if [[ $smoke == --smoke ]]; then
  /usr/bin/python3 "$here/report.py" "${raws[@]}" --out "$work/report" --smoke || status=1
else
  /usr/bin/python3 "$here/report.py" "${raws[@]}" --out "$here/results" --seconds "${SECONDS_EACH:-10}" || status=1
fi
exit $status
