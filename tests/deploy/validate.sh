#!/usr/bin/env bash
# Renders deploy/base, deploy/overlays/shared-ca and deploy/monitoring with kubectl's kustomize and validates every
# object (Kubernetes schemas + the security-relevant fields) with validate.mjs; then proves the
# validator can fail, by running it on deliberately broken copies. See tests/deploy/README.md.
#
#   tests/deploy/validate.sh                       # kubectl from PATH
#   KUBECTL=/path/to/kubectl tests/deploy/validate.sh
#   KUBECTL_COMPARE=/path/to/other/kubectl ...     # also: the other one renders the same objects
#
# npm packages (package-lock.json) are installed outside the source tree, in
# ${MESHTLS_NPM_CACHE:-$HOME/.cache/meshtls/deploy-npm}, and reinstalled when the lock changes.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
kubectl=${KUBECTL:-kubectl}
cache=${MESHTLS_NPM_CACHE:-$HOME/.cache/meshtls/deploy-npm}

die() { echo "deploy.manifests: $*" >&2; exit 1; }

command -v "$kubectl" >/dev/null 2>&1 ||
  die "'$kubectl' not found: kubectl renders the kustomizations; run 'make deps' (installs Debian's kubernetes-client)"
command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 ||
  die "node/npm not found: run 'make deps' (installs Debian's nodejs and npm)"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# 1. Render. kubectl 1.2x prints deprecation warnings for the v2.0.3-compatible syntax on stderr.
render() { # KUBECTL DIR OUT
  "$1" kustomize "$repo/$2" >"$3" 2>"$3.err" || { cat "$3.err" >&2; die "$1 kustomize $2 failed"; }
}
render "$kubectl" deploy/base "$tmp/base.yaml"
render "$kubectl" deploy/overlays/shared-ca "$tmp/overlay.yaml"
render "$kubectl" deploy/monitoring "$tmp/monitoring.yaml"
echo "rendered with $("$kubectl" version --client 2>/dev/null | head -1)"
compare=()
if [ -n "${KUBECTL_COMPARE:-}" ]; then
  render "$KUBECTL_COMPARE" deploy/base "$tmp/base2.yaml"
  render "$KUBECTL_COMPARE" deploy/overlays/shared-ca "$tmp/overlay2.yaml"
  render "$KUBECTL_COMPARE" deploy/monitoring "$tmp/monitoring2.yaml"
  echo "and with $("$KUBECTL_COMPARE" version --client 2>/dev/null | head -1)"
  compare=(--compare-base "$tmp/base2.yaml" --compare-overlay "$tmp/overlay2.yaml" --compare-monitoring "$tmp/monitoring2.yaml")
fi

# 2. npm packages, once per lock file. The lock serialises concurrent runs (ctest -j, build trees).
mkdir -p "$cache"
exec 9>"$cache/.lock"
flock 9
if ! cmp -s "$here/package-lock.json" "$cache/installed-lock.json" || [ ! -d "$cache/node_modules" ]; then
  echo "installing npm packages into $cache"
  rm -f "$cache/installed-lock.json"
  cp "$here/package.json" "$here/package-lock.json" "$cache/"
  npm ci --prefix "$cache" --no-audit --no-fund --loglevel=error >&2 ||
    die "npm ci failed in $cache (the npm registry must be reachable for the first run)"
  cp "$here/package-lock.json" "$cache/installed-lock.json"
fi

validate() { # BASE OVERLAY MONITORING [extra args]
  node "$here/validate.mjs" --modules "$cache" --repo "$repo" --base "$1" --overlay "$2" --monitoring "$3" "${@:4}"
}

# 3. The real manifests must pass.
validate "$tmp/base.yaml" "$tmp/overlay.yaml" "$tmp/monitoring.yaml" "${compare[@]}"

# 3b. The agent itself must accept the shipped configuration (ctest passes the binary).
if [ -n "${MESHTLS_AGENT:-}" ]; then
  for config in "$repo/deploy/base/config.yaml" "$repo/deploy/overlays/shared-ca/config.yaml"; do
    NODE_NAME=node-1 "$MESHTLS_AGENT" --config "$config" --print-config >"$tmp/printed" 2>&1 ||
      { cat "$tmp/printed" >&2; die "meshtls-agent rejects $config"; }
    grep -q '^workloadSource: kubernetes$' "$tmp/printed" || die "$config does not select the Kubernetes workload source"
    echo "meshtls-agent accepts ${config#"$repo"/}"
  done
fi

# 4. The validator must fail on broken manifests, each for the reason named.
broken=0
expect_failure() { # NAME FILE(base|overlay|monitoring) SED-EXPRESSION EXPECTED-MESSAGE
  local name=$1 which=$2 expr=$3 want=$4 b="$tmp/base.yaml" o="$tmp/overlay.yaml" m="$tmp/monitoring.yaml"
  cp "$tmp/$which.yaml" "$tmp/mutated.yaml"
  sed -i -e "$expr" "$tmp/mutated.yaml"
  if cmp -s "$tmp/$which.yaml" "$tmp/mutated.yaml"; then
    echo "self-check '$name': the mutation changed nothing (update the sed expression)" >&2
    broken=1
    return
  fi
  case $which in
    base) b="$tmp/mutated.yaml" ;;
    overlay) o="$tmp/mutated.yaml" ;;
    monitoring) m="$tmp/mutated.yaml" ;;
  esac
  if validate "$b" "$o" "$m" >"$tmp/out" 2>&1; then
    echo "self-check '$name': the validator accepted broken manifests" >&2
    broken=1
  elif ! grep -qF -- "$want" "$tmp/out"; then
    echo "self-check '$name': failed, but without '$want':" >&2
    cat "$tmp/out" >&2
    broken=1
  else
    echo "self-check '$name': rejected as expected ($(grep -F -m1 -- "$want" "$tmp/out" | sed 's/^ *//'))"
  fi
}
expect_failure 'hostPID "yes"' base 's/hostPID: true/hostPID: "yes"/' 'hostPID must be boolean'
expect_failure 'ClusterRole verb create' base '0,/^  - watch$/s//  - create/' 'only get/list/watch allowed'
expect_failure 'bpffs not Bidirectional' base 's/mountPropagation: Bidirectional/mountPropagation: HostToContainer/' 'hostPath /sys/fs/bpf mountPropagation'
expect_failure 'grace period below drainTimeout' base 's/terminationGracePeriodSeconds: 30/terminationGracePeriodSeconds: 15/' 'must exceed drainTimeout'
expect_failure 'CA secret mode 0644' overlay 's/defaultMode: 256/defaultMode: 420/' 'defaultMode is 420'
expect_failure 'unknown config key' base 's/^    drainTimeout: 20s/    drainTimout: 20s/' "key 'drainTimout'"
expect_failure 'unknown kind' base '$a ---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: meshtls-ca\n  namespace: meshtls-system' 'unknown kind v1/Secret'
expect_failure 'dashboard without the sidecar label' monitoring 's/grafana_dashboard: "1"/grafana_dashboard: "0"/' 'label grafana_dashboard must be "1"'
expect_failure 'PodMonitor on a port the pod lacks' monitoring 's/^    port: metrics$/    port: metric/' 'PodMonitor port "metric"'
expect_failure 'PrometheusRule drifted' monitoring '0,/severity: warning/s//severity: page/' 'spec.groups differ from deploy/monitoring/rules/meshtls-alerts.yaml'
expect_failure 'PrometheusRule for: not a duration' monitoring '0,/for: 10m/s//for: 10 minutes/' 'must match pattern'
[ "$broken" -eq 0 ] || die "the validator's self-checks failed (see above)"
echo "deploy.manifests: passed"
