#!/usr/bin/env bash
# Installs every Debian package meshtls needs to build, test, benchmark and demo.
# Does nothing (and needs no network) when they are all present already.
set -euo pipefail

packages=(
  # toolchain
  build-essential cmake ninja-build pkg-config clang llvm libclang-rt-14-dev
  # libraries
  libssl-dev libabsl-dev libspdlog-dev libfmt-dev libgtest-dev libgmock-dev libbenchmark-dev
  libbpf-dev bpftool libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libcli11-dev libyaml-cpp-dev nlohmann-json3-dev libcap-dev prometheus-cpp-dev libcurl4-openssl-dev
  python3-grpcio python3-protobuf
  # tests, VM harness and benchmarks
  iproute2 iperf3 tshark tcpdump openssl qemu-system-x86 busybox-static xz-utils procps prometheus
  # the load test (tests/load): the peers and the load generators
  sockperf stunnel4 nginx-light libnginx-mod-stream haproxy wrk gnuplot-nox
)

missing=()
for p in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
  [ "$status" = installed ] || missing+=("$p")
done
# Tools checked by command rather than package, since they may come from elsewhere (a newer kubectl,
# NodeSource's nodejs): tests/deploy/validate.sh renders deploy/ with kubectl and checks it with node.
command -v kubectl >/dev/null 2>&1 || missing+=(kubernetes-client)
{ command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; } || missing+=(nodejs npm)
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "meshtls: missing Debian packages: ${missing[*]}" >&2
  echo "meshtls: run 'sudo make deps' (installing packages needs root)" >&2
  exit 1
fi
echo "meshtls: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
