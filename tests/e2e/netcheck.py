#!/usr/bin/python3
"""Tiny TCP client/server for the end-to-end tests (no netcat on a fresh Debian).

  netcheck.py serve PORT [--reply TEXT] [--count N]   echo server: answers REPLY + what it got
  netcheck.py send HOST PORT TEXT [--timeout S]       prints the answer; exit 0 ok,
                                                      3 refused, 4 reset, 5 timeout, 6 closed empty
  netcheck.py serve PORT --sink                       reads to EOF, answers "got N"
  netcheck.py trickle HOST PORT SECONDS               one byte every 0.1 s for SECONDS, then EOF;
                                                      prints the answer; exit codes as send
"""
import time
import socket, sys, argparse

def serve(args):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", args.port))
    s.listen(64)
    print("listening", flush=True)
    served = 0
    while args.count == 0 or served < args.count:
        c, _ = s.accept()
        try:
            c.settimeout(60)
            if args.sink:
                total = 0
                while True:
                    chunk = c.recv(65536)
                    if not chunk:
                        break
                    total += len(chunk)
                c.sendall(f"got {total}".encode())
                c.close()
                served += 1
                continue
            data = c.recv(65536)
            c.sendall(args.reply.encode() + b":" + data)
            c.shutdown(socket.SHUT_WR)
            c.recv(1)
        except OSError:
            pass
        finally:
            c.close()
        served += 1

def send(args):
    try:
        c = socket.create_connection((args.host, args.port), timeout=args.timeout)
    except ConnectionRefusedError:
        print("refused"); return 3
    except ConnectionResetError:
        print("reset"); return 4
    except (socket.timeout, TimeoutError):
        print("timeout"); return 5
    try:
        if args.cmd == "trickle":
            end = time.time() + args.seconds
            while time.time() < end:
                c.sendall(b"x")
                time.sleep(0.1)
        else:
            c.sendall(args.text.encode())
        c.shutdown(socket.SHUT_WR)
        out = b""
        while True:
            chunk = c.recv(65536)
            if not chunk:
                break
            out += chunk
    except (ConnectionResetError, BrokenPipeError):
        print("reset"); return 4
    except OSError as e:  # e.g. ENOTCONN from shutdown() after the peer's RST already arrived
        print("reset" if e.errno in (104, 107, 32) else f"error {e}"); return 4
    except (socket.timeout, TimeoutError):
        print("timeout"); return 5
    if not out:
        print("closed"); return 6
    print(out.decode(errors="replace"))
    return 0

p = argparse.ArgumentParser()
sub = p.add_subparsers(dest="cmd", required=True)
a = sub.add_parser("serve"); a.add_argument("port", type=int); a.add_argument("--reply", default="pong"); a.add_argument("--count", type=int, default=0); a.add_argument("--sink", action="store_true")
b = sub.add_parser("send"); b.add_argument("host"); b.add_argument("port", type=int); b.add_argument("text"); b.add_argument("--timeout", type=float, default=5)
t = sub.add_parser("trickle"); t.add_argument("host"); t.add_argument("port", type=int); t.add_argument("seconds", type=float); t.add_argument("--timeout", type=float, default=60)
args = p.parse_args()
sys.exit(serve(args) if args.cmd == "serve" else send(args))
