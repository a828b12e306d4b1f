#!/usr/bin/python3
"""Idle connections for the memory measurement of the load test (tests/load/run.sh).

  hold.py serve PORT STATUS_FILE      accept and keep connections; STATUS_FILE holds the count
  hold.py open HOST PORT N [STATUS_FILE [IN_FLIGHT]]
                                      open N connections in batches, print "opened N", then keep
                                      them until killed; with the server's STATUS_FILE, each batch
                                      waits until the server holds all but one batch, so a proxy
                                      that handshakes slower than connect() returns is not flooded
"""
import asyncio
import os
import resource
import socket
import sys
import time


def raise_fd_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def serve(port, status_file):
    held = set()

    async def on_connection(reader, writer):
        held.add(writer)
        try:
            await reader.read()  # until the peer closes
        finally:
            held.discard(writer)
            writer.close()

    server = await asyncio.start_server(on_connection, "0.0.0.0", port, backlog=4096)
    print(f"listening on {port}", flush=True)
    last = -1
    async with server:
        while True:
            if len(held) != last:
                last = len(held)
                tmp = status_file + ".tmp"
                with open(tmp, "w") as f:
                    f.write(str(last))
                os.rename(tmp, status_file)
            await asyncio.sleep(0.05)


def held(status_file):
    try:
        with open(status_file) as f:
            return int(f.read() or 0)
    except (OSError, ValueError):
        return 0


def open_connections(host, port, count, status_file=None, in_flight=200):
    # At most `in_flight` connections not yet seen by the server: a proxy's handshakes must not
    # pile up past its handshake timeout (under QEMU TCG one handshake takes ~0.3 s of CPU).
    sockets = []
    failed = 0
    for i in range(count):
        if status_file and i % in_flight == 0:
            deadline = time.monotonic() + 30
            while held(status_file) < len(sockets) - in_flight and time.monotonic() < deadline:
                time.sleep(0.02)
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.settimeout(10)
            s.connect((host, port))
            sockets.append(s)
        except OSError as e:
            failed += 1
            s.close()
            print(f"connect {i}: {e}", file=sys.stderr, flush=True)
        if i % in_flight == in_flight - 1:
            time.sleep(0.05)  # let the proxies accept and hand off
    print(f"opened {len(sockets)} failed {failed}", flush=True)
    while True:
        time.sleep(3600)


def main():
    raise_fd_limit()
    if len(sys.argv) == 4 and sys.argv[1] == "serve":
        asyncio.run(serve(int(sys.argv[2]), sys.argv[3]))
    elif len(sys.argv) in (5, 6, 7) and sys.argv[1] == "open":
        open_connections(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] if len(sys.argv) >= 6 else None,
                         int(sys.argv[6]) if len(sys.argv) == 7 else 200)
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
