#!/usr/bin/env python3
"""Extract the uncompressed ELF vmlinux from a Debian bzImage (vmlinuz).

usage: extract-vmlinux.py VMLINUZ OUT

Why: QEMU boots an ELF vmlinux directly through its PVH entry note, which
skips the real-mode setup and the in-guest decompression. Under TCG the
decompression alone costs about 2.5 s per boot.

The bzImage carries its payload as one xz (Debian 6.x, 7.x) or zstd stream
somewhere after the setup code. Search for each magic and keep the first
candidate that decompresses to an ELF image; bytes after the stream are
ignored.
"""
import lzma
import os
import subprocess
import sys

XZ_MAGIC = b'\xfd7zXZ\x00'
ZSTD_MAGIC = b'\x28\xb5\x2f\xfd'


def try_xz(blob):
    try:
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(blob)
    except lzma.LZMAError:
        return b''


def try_zstd(blob):
    # no zstd in the Python 3.11 stdlib; the zstd CLI stops at the end of the frame
    try:
        return subprocess.run(['zstd', '-dcq'], input=blob, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL).stdout
    except FileNotFoundError:
        return b''


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, out = sys.argv[1], sys.argv[2]
    with open(src, 'rb') as f:
        data = f.read()
    for magic, decompress in ((XZ_MAGIC, try_xz), (ZSTD_MAGIC, try_zstd)):
        off = data.find(magic)
        while off >= 0:
            elf = decompress(data[off:])
            if elf[:4] == b'\x7fELF':
                tmp = out + '.tmp'
                with open(tmp, 'wb') as f:
                    f.write(elf)
                os.replace(tmp, out)  # never leave a half-written vmlinux behind
                return
            off = data.find(magic, off + 1)
    sys.exit('extract-vmlinux: no xz or zstd ELF payload in %s' % src)


if __name__ == '__main__':
    main()
