#!/usr/bin/env python3
"""Kernel module load order for the VM initramfs, without depmod or modinfo.

usage: moddeps.py MODDIR [?]NAME...

MODDIR is lib/modules/KV of an unpacked Debian kernel package. Prints the
module files (relative to MODDIR, possibly compressed: .ko, .ko.xz, .ko.gz,
.ko.zst) that must be insmod'ed, dependencies first, one per line.

Why not depmod: the packages do not ship modules.dep (their postinst
generates it), and running the host's depmod against a foreign tree is more
fragile than reading the `depends=` entry of each module's .modinfo section,
which is all insmod ordering needs.

A NAME that is not a module file is looked up in modules.builtin: if it is
built into the kernel (virtio_pci on 6.12, for example) it is skipped. If it
is neither, a warning goes to stderr and it is skipped too, unless the name
was given as ?NAME: that marks a module that only some kernel versions have
(ghash_clmulni_intel is gone in 7.x), which is skipped silently. The caller
decides which names are mandatory (see build-initramfs.sh).
"""
import gzip
import lzma
import os
import struct
import subprocess
import sys

SUFFIXES = ('.ko', '.ko.xz', '.ko.gz', '.ko.zst')


def norm(name):
    # module names treat '-' and '_' as the same character
    return name.replace('-', '_')


def strip_suffix(filename):
    for suffix in SUFFIXES:
        if filename.endswith(suffix):
            return filename[:-len(suffix)]
    return None


def read_module(path):
    """The uncompressed bytes of a module file."""
    if path.endswith('.xz'):
        with lzma.open(path) as f:
            return f.read()
    if path.endswith('.gz'):
        with gzip.open(path) as f:
            return f.read()
    if path.endswith('.zst'):  # no zstd in the Python 3.11 stdlib
        return subprocess.run(['zstd', '-dcq', path], check=True,
                              stdout=subprocess.PIPE).stdout
    with open(path, 'rb') as f:
        return f.read()


def modinfo_depends(data):
    """The `depends=` list of an ELF64 little-endian module (x86-64)."""
    if data[:4] != b'\x7fELF' or data[4] != 2 or data[5] != 1:
        raise ValueError('not an ELF64 little-endian file')
    shoff, = struct.unpack_from('<Q', data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from('<HHH', data, 0x3A)

    def section(i):
        # sh_name, sh_type, sh_flags, sh_addr, sh_offset, sh_size
        name, _, _, _, off, size = struct.unpack_from('<IIQQQQ', data, shoff + i * shentsize)
        return name, off, size

    _, stroff, _ = section(shstrndx)
    for i in range(shnum):
        name, off, size = section(i)
        end = data.index(b'\0', stroff + name)
        if data[stroff + name:end] == b'.modinfo':
            for entry in data[off:off + size].split(b'\0'):
                if entry.startswith(b'depends='):
                    return [norm(d) for d in entry[8:].decode().split(',') if d]
            return []
    return []


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    moddir, wanted = sys.argv[1], sys.argv[2:]

    index = {}  # module name -> path relative to moddir
    for root, _, files in os.walk(os.path.join(moddir, 'kernel')):
        for f in files:
            base = strip_suffix(f)
            if base is not None:
                index[norm(base)] = os.path.relpath(os.path.join(root, f), moddir)

    builtin = set()
    try:
        with open(os.path.join(moddir, 'modules.builtin')) as f:
            for line in f:
                base = strip_suffix(os.path.basename(line.strip()))
                if base is not None:
                    builtin.add(norm(base))
    except FileNotFoundError:
        pass

    order, seen = [], set()

    def visit(name, optional=False):
        name = norm(name)
        if name in seen:
            return
        seen.add(name)
        if name not in index:
            if name not in builtin and not optional:
                print('moddeps: warning: no module %s in %s' % (name, moddir), file=sys.stderr)
            return
        for dep in modinfo_depends(read_module(os.path.join(moddir, index[name]))):
            visit(dep)
        order.append(index[name])

    for name in wanted:
        visit(name.lstrip('?'), optional=name.startswith('?'))
    print('\n'.join(order))


if __name__ == '__main__':
    main()
