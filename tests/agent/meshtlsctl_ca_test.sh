#!/usr/bin/env bash
# meshtlsctl ca init | issue | inspect, end to end, checked with the openssl CLI.
# usage: meshtlsctl_ca_test.sh MESHTLSCTL
set -euo pipefail
ctl=${1:?usage: meshtlsctl_ca_test.sh MESHTLSCTL}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
expect_fail() {  # expect_fail "message part" command...
  local want=$1; shift
  local out
  if out=$("$@" 2>&1); then fail "expected failure: $*"; fi
  grep -qF -- "$want" <<<"$out" || fail "expected '$want' in: $out"
}

"$ctl" ca init --dir "$work/ca" --trust-domain example.org > "$work/init.txt"
grep -q "created a CA for trust domain example.org" "$work/init.txt" || fail "init output: $(cat "$work/init.txt")"
[ "$(stat -c %a "$work/ca/intermediate.key")" = 600 ] || fail "intermediate.key mode"
[ "$(stat -c %a "$work/ca/root.key")" = 600 ] || fail "root.key mode"

"$ctl" ca issue --dir "$work/ca" --spiffe-id spiffe://example.org/ns/shop/sa/cart --ttl 2h --out "$work/cart" > /dev/null
[ "$(stat -c %a "$work/cart.key")" = 600 ] || fail "leaf key mode"
[ "$(grep -c 'BEGIN CERTIFICATE' "$work/cart.crt")" = 2 ] || fail "chain must hold leaf + intermediate"
openssl verify -purpose sslserver -CAfile "$work/ca/root.crt" -untrusted "$work/ca/intermediate.crt" "$work/cart.crt" \
  | grep -q ': OK' || fail "openssl verify"
openssl x509 -in "$work/cart.crt" -noout -ext subjectAltName | grep -q 'URI:spiffe://example.org/ns/shop/sa/cart' \
  || fail "SAN"
[ "$(openssl x509 -in "$work/cart.crt" -noout -pubkey | openssl pkey -pubin -noout -text | grep -c 'prime256v1\|P-256')" -ge 1 ] \
  || fail "P-256 key"

"$ctl" ca inspect "$work/cart.crt" > "$work/inspect.txt"
grep -q 'spiffe id:  spiffe://example.org/ns/shop/sa/cart' "$work/inspect.txt" || fail "inspect: $(cat "$work/inspect.txt")"
grep -q 'chain\[1\] (CA)' "$work/inspect.txt" || fail "inspect chain"
grep -Eq '\((1h[0-9]+m|2h0m) left\)' "$work/inspect.txt" || fail "inspect remaining: $(cat "$work/inspect.txt")"
"$ctl" ca inspect -o json "$work/cart.crt" | /usr/bin/python3 -c '
import json, sys
certs = json.load(sys.stdin)
assert len(certs) == 2, certs
assert certs[0]["spiffe_ids"] == ["spiffe://example.org/ns/shop/sa/cart"], certs[0]
assert certs[0]["ca"] is False and certs[1]["ca"] is True
assert 7000 < certs[0]["seconds_left"] <= 7200, certs[0]["seconds_left"]
' || fail "inspect json"

expect_fail "signs only trust domain 'example.org'" "$ctl" ca issue --dir "$work/ca" --spiffe-id spiffe://cluster.local/ns/a/sa/b --out "$work/x"
expect_fail "exists (use --force" "$ctl" ca issue --dir "$work/ca" --spiffe-id spiffe://example.org/ns/shop/sa/cart --out "$work/cart"
expect_fail "bad duration" "$ctl" ca issue --dir "$work/ca" --spiffe-id spiffe://example.org/ns/a/sa/b --ttl 5x --out "$work/y"
expect_fail "invalid SPIFFE ID" "$ctl" ca issue --dir "$work/ca" --spiffe-id spiffe://example.org/ns//sa/b --out "$work/y"
expect_fail "is not empty" "$ctl" ca init --dir "$work/ca"
expect_fail "lowercase" "$ctl" ca init --dir "$work/ca2" --trust-domain Example.org
cp "$work/ca/root.key" "$work/ca/intermediate.key"
expect_fail "does not match" "$ctl" ca issue --dir "$work/ca" --spiffe-id spiffe://example.org/ns/a/sa/b --out "$work/z"
expect_fail "no PEM certificate" "$ctl" ca inspect "$work/ca/trust-domain"
echo "1 passed, 0 failed"
