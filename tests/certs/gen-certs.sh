#!/usr/bin/env bash
# Generates every test certificate and key into OUTDIR (see README.md for each identity).
# Deterministic in content, not in bytes: keys are fresh on each run. Takes about a second.
# usage: gen-certs.sh OUTDIR
set -euo pipefail
out=${1:?usage: gen-certs.sh OUTDIR}
mkdir -p "$out"
cd "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

td=cluster.local

cat > "$work/ext.cnf" <<CNF
[ca]
default_ca = ca_default
[ca_default]
database = $work/index.txt
new_certs_dir = $work
serial = $work/serial
default_md = sha256
policy = policy_any
unique_subject = no
copy_extensions = none
[policy_any]
commonName = optional
organizationName = optional
[root_ext]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[intermediate_ext]
basicConstraints = critical,CA:TRUE,pathlen:0
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[leaf_ext]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth,clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = \${ENV::SAN}
[codesign_ext]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = codeSigning
subjectAltName = \${ENV::SAN}
CNF
: > "$work/index.txt"
echo 1000 > "$work/serial"
export SAN="URI:spiffe://unused"

ec_key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

# ca NAME SUBJECT ISSUER_NAME EXT: a CA certificate (self-signed when ISSUER_NAME is "self")
ca() {
  local name=$1 subject=$2 issuer=$3 ext=$4
  ec_key "$name.key"
  openssl req -new -key "$name.key" -subj "$subject" -out "$work/$name.csr"
  if [ "$issuer" = self ]; then
    openssl ca -batch -notext -config "$work/ext.cnf" -selfsign -keyfile "$name.key" \
      -extensions "$ext" -days 3650 -rand_serial -in "$work/$name.csr" -out "$name.crt" 2>/dev/null
  else
    openssl ca -batch -notext -config "$work/ext.cnf" -cert "$issuer.crt" -keyfile "$issuer.key" \
      -extensions "$ext" -days 365 -rand_serial -in "$work/$name.csr" -out "$name.crt" 2>/dev/null
  fi
}

# leaf NAME SAN [ISSUER] [EXT] [START END] [KEYTYPE]: NAME.crt (leaf + issuer chain) and NAME.key
leaf() {
  local name=$1 san=$2 issuer=${3:-intermediate} ext=${4:-leaf_ext} start=${5:-} end=${6:-} keytype=${7:-ec}
  if [ "$keytype" = rsa1024 ]; then
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:1024 -out "$name.key" 2>/dev/null
  else
    ec_key "$name.key"
  fi
  openssl req -new -key "$name.key" -subj "/O=meshtls-test" -out "$work/$name.csr"
  local dates=(-days 1)
  [ -n "$start" ] && dates=(-startdate "$start" -enddate "$end")
  SAN=$san openssl ca -batch -notext -config "$work/ext.cnf" -cert "$issuer.crt" -keyfile "$issuer.key" \
    -extensions "$ext" "${dates[@]}" -rand_serial -in "$work/$name.csr" -out "$work/$name.leaf" 2>/dev/null
  cat "$work/$name.leaf" "$issuer.crt" > "$name.crt"
}

ca root "/O=meshtls-test/CN=meshtls test root" self root_ext
ca intermediate "/O=meshtls-test/CN=meshtls test intermediate" root intermediate_ext
ca rogue-root "/O=meshtls-test/CN=rogue root" self root_ext
ca rogue-intermediate "/O=meshtls-test/CN=rogue intermediate" rogue-root intermediate_ext

leaf server "URI:spiffe://$td/ns/default/sa/server"
leaf client "URI:spiffe://$td/ns/default/sa/client"
leaf other "URI:spiffe://$td/ns/other/sa/other"
leaf expired "URI:spiffe://$td/ns/default/sa/expired" intermediate leaf_ext 20200101000000Z 20200102000000Z
leaf not-yet-valid "URI:spiffe://$td/ns/default/sa/not-yet-valid" intermediate leaf_ext 20400101000000Z 20400102000000Z
leaf rogue "URI:spiffe://$td/ns/default/sa/rogue" rogue-intermediate
leaf no-spiffe "DNS:server.default.svc"
leaf two-spiffe "URI:spiffe://$td/ns/default/sa/one,URI:spiffe://$td/ns/default/sa/two"
leaf invalid-spiffe "URI:spiffe://Cluster.Local/ns/default/sa/upper"
leaf foreign "URI:spiffe://example.org/ns/default/sa/foreign"
leaf weak "URI:spiffe://$td/ns/default/sa/weak" intermediate leaf_ext "" "" rsa1024
leaf wrong-usage "URI:spiffe://$td/ns/default/sa/wrong-usage" intermediate codesign_ext

# bad-signature: the server leaf with one bit of its signature flipped.
openssl x509 -in server.crt -outform DER -out "$work/good.der"
size=$(stat -c %s "$work/good.der")
last=$(od -An -tu1 -j $((size - 1)) -N1 "$work/good.der" | tr -d ' ')
{ head -c $((size - 1)) "$work/good.der"; printf "\\$(printf '%03o' $((last ^ 1)))"; } > "$work/bad.der"
openssl x509 -inform DER -in "$work/bad.der" -out "$work/bad.leaf"
cat "$work/bad.leaf" intermediate.crt > bad-signature.crt
cp server.key bad-signature.key

cat root.crt > bundle.crt
cat rogue-root.crt > rogue-bundle.crt
chmod 600 ./*.key
