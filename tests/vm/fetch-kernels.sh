#!/usr/bin/env bash
# Fetches the three Debian kernels the VM tests run on and prepares each one
# to boot: an extracted ELF vmlinux plus an initramfs built by build-initramfs.sh.
#
# usage: fetch-kernels.sh [CACHE_DIR]
#   CACHE_DIR defaults to ${MESHTLS_VM_CACHE:-$HOME/.cache/meshtls/vm}
#
# Prints one line per kernel, and writes the same lines to CACHE_DIR/kernels.txt:
#   LABEL KV VMLINUX INITRAMFS
# LABEL is one of
#   6.1     bookworm's kernel, via linux-image-amd64 of the system's apt lists
#   6.12    bookworm-backports' kernel, via linux-image-amd64 of that suite
#   newest  trixie-backports' kernel, via linux-image-amd64 of that suite (7.x in 2026)
#
# The backports suites use a private apt configuration under CACHE_DIR/apt (with
# the Debian mirror taken from the system's apt sources), so the system's own
# package lists and sources stay as they are.
#
# Caching: the package names are resolved once and kept in CACHE_DIR/resolved.txt;
# the .debs, vmlinux and initramfs images are kept too. A second run downloads
# nothing and takes a few milliseconds. An initramfs is rebuilt on its own when
# initramfs-init, build-initramfs.sh or moddeps.py change.
#
# Environment:
#   MESHTLS_VM_REFRESH=1   resolve the packages again (apt-get update), e.g. to
#                          pick up a newer trixie-backports kernel; unused kernels
#                          are then removed from the cache
#   MESHTLS_VM_MIRROR=URL  the Debian mirror to use instead of the system's
#
# Two copies may run at once: they serialize on CACHE_DIR/lock (flock).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE=${1:-${MESHTLS_VM_CACHE:-$HOME/.cache/meshtls/vm}}
LABELS=(6.1 6.12 newest)

log() { echo "fetch-kernels: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# Runs a command quietly; shows its output only when it fails.
quiet() {
  local out rc=0
  out=$("$@" 2>&1) || rc=$?
  if [ "$rc" -ne 0 ]; then
    printf '%s\n' "$out" >&2
    log "command failed (exit $rc): $*"
  fi
  return "$rc"
}

command -v flock >/dev/null || die "flock (util-linux) is missing"
mkdir -p "$CACHE" || die "cannot create the cache directory $CACHE"
CACHE=$(cd "$CACHE" && pwd)

exec 9>"$CACHE/lock"
# (a concurrent copy that finds the cache filled is done within milliseconds)
if ! flock -w 2 9; then
  log "another fetch-kernels.sh holds $CACHE/lock; waiting"
  flock 9
fi

# --- host tools ---------------------------------------------------------------
# qemu-system-x86: the VM; busybox-static: the initramfs userland (it must be the
# static build, it is copied into the initramfs as it is); xz-utils and zstd: the
# kernels (6.x compresses vmlinuz and modules with xz, 7.x vmlinuz with zstd).
TOOLS=(qemu-system-x86 busybox-static xz-utils zstd)
installed=$(dpkg-query -W -f='${db:Status-Abbrev} ${Package}\n' "${TOOLS[@]}" 2>/dev/null |
  awk '$1 == "ii" { print $2 }' || true)
missing=()
for pkg in "${TOOLS[@]}"; do
  grep -qx "$pkg" <<< "$installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" -eq 0 ] || die "missing packages: ${missing[*]} (run as root, or apt-get install them)"
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt_install=(apt-get install -y -qq --no-install-recommends "${missing[@]}")
  # The system lists may be missing or stale on a fresh machine: update once and retry.
  if ! quiet "${apt_install[@]}"; then
    if ! quiet apt-get update -qq || ! quiet "${apt_install[@]}"; then
      die "apt-get could not install ${missing[*]}; see the apt output above"
    fi
  fi
fi
command -v python3 >/dev/null || die "python3 is missing"

# --- apt configurations -------------------------------------------------------
# APT_system: the system's own configuration (bookworm + bookworm-security here).
# APT_<suite>: a private configuration with one suite and its own lists.
SANDBOX_USER=$(id -un)
# shellcheck disable=SC2034  # used through apt_with's nameref
APT_system=(-o "APT::Sandbox::User=$SANDBOX_USER")

# apt_with APTCONF PROGRAM ARGS...: runs apt-get or apt-cache with that configuration
apt_with() {
  local -n apt_opts="APT_$1"
  local prog=$2
  shift 2
  "$prog" "${apt_opts[@]}" "$@"
}

host_codename() {
  # shellcheck source=/dev/null
  (. /etc/os-release && echo "${VERSION_CODENAME:-}")
}

debian_mirror() {
  if [ -n "${MESHTLS_VM_MIRROR:-}" ]; then echo "$MESHTLS_VM_MIRROR"; return; fi
  local codename uri
  local -a deb822 oneline
  codename=$(host_codename)
  codename=${codename:-bookworm}
  shopt -s nullglob
  deb822=(/etc/apt/sources.list.d/*.sources)
  oneline=(/etc/apt/sources.list /etc/apt/sources.list.d/*.list)
  shopt -u nullglob
  # deb822 sources: the first stanza that carries the release's own suite
  # (not -security, whose URI is a different archive)
  [ ${#deb822[@]} -eq 0 ] || uri=$(awk -v want="$codename" '
    function flush() { if (uri != "" && hit && !found) { print uri; found = 1 } uri = ""; hit = 0 }
    FNR == 1 { flush() }
    /^[[:space:]]*$/ { flush(); next }
    tolower($1) == "uris:" { uri = $2 }
    tolower($1) == "suites:" { for (i = 2; i <= NF; i++) if ($i == want) hit = 1 }
    END { flush() }' "${deb822[@]}" 2>/dev/null)
  # one-line sources: deb [options] URI SUITE COMPONENTS...
  [ -n "${uri:-}" ] || uri=$(awk -v want="$codename" '
    $1 == "deb" && !found {
      sub(/^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?/, "")
      if ($2 == want) { print $1; found = 1 }
    }' "${oneline[@]}" 2>/dev/null)
  [ -n "${uri:-}" ] || return 1
  echo "${uri%%$'\n'*}"
}

MIRROR=
private_apt() {  # SUITE -> defines APT_<suite> (dashes become underscores)
  local suite=$1 dir="$CACHE/apt/$1"
  local -n private_opts="APT_${1//-/_}"
  if [ -z "$MIRROR" ]; then
    MIRROR=$(debian_mirror) || die "no Debian mirror found in the apt sources; set MESHTLS_VM_MIRROR"
  fi
  mkdir -p "$dir/lists/partial" "$dir/cache/archives/partial" "$dir/sources.list.d"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR $suite main" > "$dir/sources.list"
  # shellcheck disable=SC2034  # a nameref: this defines APT_<suite>
  private_opts=(
    -o "Dir::Etc::SourceList=$dir/sources.list"
    -o "Dir::Etc::SourceParts=$dir/sources.list.d"
    -o "Dir::State::Lists=$dir/lists"
    -o "Dir::Cache=$dir/cache"
    -o "APT::Sandbox::User=$SANDBOX_USER"
  )
}

# --- resolving package names ------------------------------------------------
# resolve LABEL APTCONF -> "LABEL KV APTCONF PKG=VER [PKG=VER...]"
# linux-image-amd64 depends on linux-image-KV. From 7.x on, linux-image-KV is
# itself an empty package that depends on linux-binary-KV (vmlinuz),
# linux-modules-KV (modules) and linux-base-KV (modules.builtin, config); take
# those too.
# apt_field APTCONF PKG FIELD: one field of the candidate version
apt_field() {
  apt_with "$1" apt-cache show --no-all-versions "$2" 2>/dev/null |
    awk -v f="$3:" '$1 == f && !seen { sub(/^[^:]*: /, ""); print; seen = 1 }'
}

resolve() {
  local label=$1 conf=$2 img kv ver deps part pver
  img=$(apt_field "$conf" linux-image-amd64 Depends | tr ',' '\n' | awk '$1 ~ /^linux-image-[0-9]/ { print $1 }')
  [ -n "$img" ] || die "cannot resolve linux-image-amd64 for kernel $label (apt configuration $conf)"
  kv=${img#linux-image-}
  ver=$(apt_field "$conf" "$img" Version)
  deps=$(apt_field "$conf" "$img" Depends | tr ',' '\n' | awk '{ print $1 }')
  local line="$label $kv $conf $img=$ver"
  for part in "linux-binary-$kv" "linux-modules-$kv" "linux-base-$kv"; do
    if grep -qxF "$part" <<< "$deps"; then
      pver=$(apt_field "$conf" "$part" Version)
      [ -n "$pver" ] || die "cannot resolve $part for kernel $label"
      line+=" $part=$pver"
    fi
  done
  echo "$line"
}

RESOLVED="$CACHE/resolved.txt"
if [ -n "${MESHTLS_VM_REFRESH:-}" ] || [ ! -s "$RESOLVED" ]; then
  log "resolving the kernel packages"
  # 6.1: the system's bookworm lists (update them only when they lack the package,
  # or on request). On a host that is not bookworm, a private bookworm setup.
  codename=$(host_codename)
  if [ "$codename" = bookworm ]; then
    conf61=system
    if [ -n "${MESHTLS_VM_REFRESH:-}" ] ||
       ! apt-cache show --no-all-versions linux-image-amd64 >/dev/null 2>&1; then
      [ "$(id -u)" -eq 0 ] || die "the system apt lists lack linux-image-amd64; run apt-get update as root"
      quiet apt-get update -qq || die "apt-get update failed"
    fi
  else
    private_apt bookworm
    conf61=bookworm
  fi
  private_apt bookworm-backports
  private_apt trixie-backports
  update_confs=(bookworm_backports trixie_backports)
  [ "$conf61" = system ] || update_confs+=(bookworm)
  for conf in "${update_confs[@]}"; do
    quiet apt_with "$conf" apt-get update -qq || die "apt-get update failed for the private $conf lists"
  done
  {
    resolve 6.1 "$conf61"
    resolve 6.12 bookworm_backports
    resolve newest trixie_backports
  } > "$RESOLVED.tmp"
  mv -f "$RESOLVED.tmp" "$RESOLVED"
  REFRESHED=1
else
  REFRESHED=
fi

# --- downloading and preparing --------------------------------------------------
mkdir -p "$CACHE/debs" "$CACHE/kernels"
initramfs_hash=$(cat "$HERE/initramfs-init" "$HERE/build-initramfs.sh" "$HERE/moddeps.py" |
  sha256sum | cut -d' ' -f1)

deb_path() {  # PKG=VER -> where apt-get download puts it (':' of an epoch becomes %3a)
  local pkg=${1%%=*} ver=${1#*=}
  echo "$CACHE/debs/${pkg}_${ver//:/%3a}_amd64.deb"
}

download() {  # APTCONF PKG=VER
  local conf=$1 spec=$2 dest tmp
  dest=$(deb_path "$spec")
  [ -s "$dest" ] && return 0
  case $conf in
    system) ;;
    *) [ -v "APT_$conf" ] || private_apt "${conf//_/-}" ;;
  esac
  log "downloading $spec"
  # into a temporary directory first, so an interrupted download leaves nothing behind
  tmp=$(mktemp -d "$CACHE/debs/.download.XXXXXX")
  if ! (cd "$tmp" && quiet apt_with "$conf" apt-get download -qq "$spec"); then
    rm -rf "$tmp"
    die "apt-get download $spec failed"
  fi
  mv -f "$tmp"/*.deb "$CACHE/debs/"
  rm -rf "$tmp"
  [ -s "$dest" ] || die "downloaded $spec but found no $dest"
}

prepare() {  # KV PKG=VER... -> kernels/KV/{vmlinux,initramfs.cpio.gz}
  local kv=$1; shift
  local dir="$CACHE/kernels/$kv" spec unpack moddir vmlinuz d f
  if [ -s "$dir/vmlinux" ] && [ -s "$dir/initramfs.cpio.gz" ] &&
     [ "$(cat "$dir/initramfs.hash" 2>/dev/null)" = "$initramfs_hash" ]; then
    return 0
  fi
  log "preparing $kv"
  mkdir -p "$dir"
  unpack=$(mktemp -d "$CACHE/kernels/.unpack.XXXXXX")
  for spec in "$@"; do dpkg-deb -x "$(deb_path "$spec")" "$unpack"; done
  # 6.x: lib/modules/KV and boot/vmlinuz-KV; 7.x: usr/lib/modules/KV with vmlinuz inside
  moddir=
  for d in "$unpack/lib/modules/$kv" "$unpack/usr/lib/modules/$kv"; do
    if [ -d "$d/kernel" ]; then moddir=$d; break; fi
  done
  [ -n "$moddir" ] || { rm -rf "$unpack"; die "no modules directory for $kv in $*"; }
  vmlinuz=
  for f in "$unpack/boot/vmlinuz-$kv" "$moddir/vmlinuz"; do
    if [ -s "$f" ]; then vmlinuz=$f; break; fi
  done
  [ -n "$vmlinuz" ] || { rm -rf "$unpack"; die "no vmlinuz for $kv in $*"; }
  if [ ! -s "$dir/vmlinux" ]; then
    python3 "$HERE/extract-vmlinux.py" "$vmlinuz" "$dir/vmlinux" || { rm -rf "$unpack"; die "cannot extract vmlinux for $kv"; }
  fi
  "$HERE/build-initramfs.sh" "$kv" "$moddir" "$dir/initramfs.cpio.gz" ||
    { rm -rf "$unpack"; die "cannot build the initramfs for $kv"; }
  echo "$initramfs_hash" > "$dir/initramfs.hash"
  rm -rf "$unpack"
}

out=
for label in "${LABELS[@]}"; do
  kv='' conf='' specs=
  read -r _ kv conf specs < <(awk -v l="$label" '$1 == l' "$RESOLVED") || true
  [ -n "${kv:-}" ] || die "$RESOLVED has no kernel $label; rerun with MESHTLS_VM_REFRESH=1"
  case $label in
    6.1|6.12) [[ $kv == "$label".* ]] || log "warning: kernel $label resolved to $kv" ;;
  esac
  read -r -a speclist <<< "$specs"
  for spec in "${speclist[@]}"; do download "$conf" "$spec"; done
  prepare "$kv" "${speclist[@]}"
  out+="$label $kv $CACHE/kernels/$kv/vmlinux $CACHE/kernels/$kv/initramfs.cpio.gz"$'\n'
done

printf '%s' "$out" > "$CACHE/kernels.txt.tmp"
mv -f "$CACHE/kernels.txt.tmp" "$CACHE/kernels.txt"

# After a refresh, drop what the new set no longer uses.
if [ -n "$REFRESHED" ]; then
  keep_kv=$(awk '{ print $2 }' "$RESOLVED")
  for d in "$CACHE"/kernels/*/; do
    d=${d%/}
    grep -qxF "$(basename "$d")" <<< "$keep_kv" || { log "removing unused $d"; rm -rf "$d"; }
  done
  keep_debs=$(awk '{ for (i = 4; i <= NF; i++) print $i }' "$RESOLVED" | while read -r s; do deb_path "$s"; done)
  for f in "$CACHE"/debs/*.deb; do
    [ -e "$f" ] || continue
    grep -qxF "$f" <<< "$keep_debs" || { log "removing unused $f"; rm -f "$f"; }
  done
fi

printf '%s' "$out"
