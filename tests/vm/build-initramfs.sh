#!/usr/bin/env bash
# Builds the guest initramfs for one Debian kernel: busybox-static, the kernel
# modules the harness needs (decompressed), a modules.load list in dependency
# order, and initramfs-init as /init.
#
# usage: build-initramfs.sh KV MODDIR OUT
#   KV      kernel release, e.g. 6.1.0-56-amd64
#   MODDIR  lib/modules/KV (6.x) or usr/lib/modules/KV (7.x) of the unpacked package
#   OUT     the initramfs to write (gzip'ed newc cpio), replaced atomically
#
# Everything else the guest runs comes from the host's root filesystem over
# 9p, so the initramfs stays small (a few MB) and only has to get that far.
set -euo pipefail

KV=${1:?usage: build-initramfs.sh KV MODDIR OUT}
MODDIR=${2:?usage: build-initramfs.sh KV MODDIR OUT}
OUT=${3:?usage: build-initramfs.sh KV MODDIR OUT}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BUSYBOX=${MESHTLS_VM_BUSYBOX:-/bin/busybox}

# Modules the guest cannot work without (each must be a module or built in):
# virtio + 9p for the host root, tls for kTLS, the AES-GCM pieces kTLS asks the
# crypto API for, veth for the test topologies. They are loaded up front: the
# chrooted guest sees the host's /lib/modules, which has nothing for the guest
# kernel, so on-demand loading only works for what is in this initramfs.
REQUIRED=(virtio_pci 9pnet_virtio 9p tls aesni_intel gcm ctr seqiv veth)
# Modules that only some kernel versions have, or that are only nice to have:
# the GHASH implementations (ghash_clmulni_intel is gone in 7.x, where GCM does
# its own), ChaCha20-Poly1305 for kTLS (its module names move between versions),
# bridges for multi-node topologies. A missing one is skipped silently.
OPTIONAL=(ghash_clmulni_intel ghash_generic chacha20poly1305 chacha_x86_64 chacha_generic chacha
          poly1305_x86_64 poly1305_generic bridge)

file -L "$BUSYBOX" 2>/dev/null | grep -q 'statically linked' ||
  ldd "$BUSYBOX" 2>&1 | grep -q 'not a dynamic executable' || {
  echo "build-initramfs: $BUSYBOX is not statically linked (install busybox-static)" >&2
  exit 1
}
[ -d "$MODDIR/kernel" ] || { echo "build-initramfs: no kernel modules under $MODDIR" >&2; exit 1; }

W=$(mktemp -d "${TMPDIR:-/tmp}/meshtls-initramfs.XXXXXX")
trap 'rm -rf "$W"' EXIT
mkdir -p "$W"/{bin,sbin,dev,proc,sys,newroot,keep} "$W/lib/modules/$KV"
cp "$BUSYBOX" "$W/bin/busybox"
ln -s busybox "$W/bin/sh"
# The kernel runs /sbin/modprobe for request_module(); busybox's modprobe can
# load what is in this initramfs (see the depmod step below).
ln -s ../bin/busybox "$W/sbin/modprobe"
install -m 0755 "$HERE/initramfs-init" "$W/init"

order=$(python3 "$HERE/moddeps.py" "$MODDIR" "${REQUIRED[@]}" "${OPTIONAL[@]/#/?}")
: > "$W/modules.load"
while IFS= read -r rel; do
  [ -n "$rel" ] || continue
  dst="$W/lib/modules/$KV/${rel%.*}"           # strip .xz/.gz/.zst ...
  case $rel in *.ko) dst="$W/lib/modules/$KV/$rel" ;; esac  # ... but keep a plain .ko
  mkdir -p "$(dirname "$dst")"
  # busybox insmod uses init_module(2), which wants an uncompressed image
  case $rel in
    *.ko.xz)  xz -dc "$MODDIR/$rel" > "$dst" ;;
    *.ko.gz)  gzip -dc "$MODDIR/$rel" > "$dst" ;;
    *.ko.zst) zstd -dcq "$MODDIR/$rel" > "$dst" ;;
    *)        cp "$MODDIR/$rel" "$dst" ;;
  esac
  echo "${dst#"$W/lib/modules/$KV/"}" >> "$W/modules.load"
done <<< "$order"

# Every required name must be loadable: either listed or built in.
for name in "${REQUIRED[@]}"; do
  n=${name//-/_}
  if ! grep -q "/${n//_/[-_]}\.ko\$" "$W/modules.load" &&
     ! grep -q "/${n//_/[-_]}\.ko" "$MODDIR/modules.builtin" 2>/dev/null; then
    echo "build-initramfs: required module $name is neither in $MODDIR nor built in" >&2
    exit 1
  fi
done

# modules.dep for busybox modprobe (kernel-triggered loads of the modules above)
"$BUSYBOX" depmod -b "$W" "$KV" 2>/dev/null || true

tmp="$OUT.tmp.$$"
(cd "$W" && find . | LC_ALL=C sort | "$BUSYBOX" cpio -o -H newc 2>/dev/null | gzip -1 > "$tmp")
mv -f "$tmp" "$OUT"
