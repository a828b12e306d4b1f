#!/usr/bin/python3
"""Hostile clients against an agent's tunnel port (15008), run from inside a netns: garbage
bytes, a TLS 1.2-only ClientHello, a stalled handshake (slowloris), and many half-open
handshakes. Exits 0 when the agent closed every one of them, 1 otherwise.

  bad_input.py HOST PORT [--netns NAME] [--half-open 2000] [--deadline 20]"""
import argparse
import ctypes
import os
import resource
import select
import socket
import sys
import time

p = argparse.ArgumentParser()
p.add_argument("host")
p.add_argument("port", type=int)
p.add_argument("--netns")
p.add_argument("--half-open", type=int, default=2000)
p.add_argument("--deadline", type=float, default=20)
args = p.parse_args()
if args.netns:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    ns = os.open(f"/run/netns/{args.netns}", os.O_RDONLY)
    if libc.setns(ns, 0x40000000) != 0:  # CLONE_NEWNET
        sys.exit(f"setns: {os.strerror(ctypes.get_errno())}")


def closed_by_peer(s, timeout):
    """True if the peer closes (EOF or reset) within `timeout`, draining what it sends."""
    s.setblocking(False)
    end = time.time() + timeout
    while time.time() < end:
        ready, _, _ = select.select([s], [], [], max(0, end - time.time()))
        if not ready:
            continue
        try:
            if not s.recv(65536):
                return True
        except ConnectionResetError:
            return True
        except BlockingIOError:
            pass
    return False


# A ClientHello offering TLS 1.2 only: legacy_version 0x0303 and no supported_versions.
body = bytes.fromhex("0303") + b"\x00" * 32 + b"\x00" + bytes.fromhex("0002c02f") + b"\x01\x00" + b"\x00\x00"
handshake = b"\x01" + len(body).to_bytes(3, "big") + body
hello12 = b"\x16\x03\x01" + len(handshake).to_bytes(2, "big") + handshake

ok = True
for name, payload, timeout in [("garbage", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + os.urandom(64), 5),
                               ("tls1.2 hello", hello12, 5),
                               ("stalled handshake", b"", args.deadline)]:
    s = socket.create_connection((args.host, args.port), timeout=5)
    if payload:
        s.sendall(payload)
    closed = closed_by_peer(s, timeout)
    print(f"{name}: {'closed by the agent' if closed else 'NOT closed'}", flush=True)
    ok &= closed
    s.close()

# Half-open handshakes: the start of a ClientHello each, then silence.
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, args.half_open + 256)), hard))
socks, failed = [], 0
for _ in range(args.half_open):
    s = socket.socket()
    s.setblocking(False)
    if s.connect_ex((args.host, args.port)) not in (0, 115):  # EINPROGRESS
        failed += 1
        s.close()
        continue
    socks.append(s)
time.sleep(0.5)
for s in socks:
    try:
        s.send(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
    except OSError:
        pass
print("flood open", flush=True)
by_fd = {s.fileno(): s for s in socks}
remaining = set(socks)
poller = select.poll()
for s in socks:
    poller.register(s, select.POLLIN | select.POLLHUP | select.POLLERR)
end = time.time() + args.deadline
while remaining and time.time() < end:
    for fd, _ in poller.poll(500):
        s = by_fd[fd]
        if s not in remaining:
            continue
        try:
            if s.recv(65536):
                continue
        except BlockingIOError:
            continue
        except OSError:
            pass
        remaining.discard(s)
        poller.unregister(fd)
print(f"half-open: {len(socks)} opened, {len(socks) - len(remaining)} closed by the agent, "
      f"{failed} failed to open", flush=True)
ok &= not remaining
sys.exit(0 if ok else 1)
