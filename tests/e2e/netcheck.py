#!/usr/bin/python3
"""Tiny TCP client/server for the end-to-end tests (no netcat on a fresh Debian).

  netcheck.py serve PORT [--reply TEXT] [--count N]   echo server: answers REPLY + what it got
  netcheck.py send HOST PORT TEXT [--timeout S]       prints the answer; exit 0 ok,
                                                      3 refused, 4 reset, 5 timeout, 6 closed empty
  netcheck.py serve PORT --sink                       reads to EOF, answers "got N"
  netcheck.py trickle HOST PORT SECONDS               one byte every 0.1 s for SECONDS, then EOF;
                                                      prints the answer; exit codes as send
  netcheck.py serve PORT --mirror                     sends back every byte it gets, until EOF
  netcheck.py bulk HOST PORT BYTES                    sends BYTES random bytes to a mirror while
                                                      reading them back; prints both SHA-256s;
                                                      exit 0 if equal, 7 if not
"""
import hashlib, os, threading
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
            if args.mirror:
                c.settimeout(600)
                while True:
                    chunk = c.recv(262144)
                    if not chunk:
                        break
                    c.sendall(chunk)
                c.shutdown(socket.SHUT_WR)
                c.close()
                served += 1
                continue
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

def bulk(args):
    c = socket.create_connection((args.host, args.port), timeout=args.timeout)
    sent_hash, got_hash = hashlib.sha256(), hashlib.sha256()
    failure = []
    def writer():
        try:
            left = args.bytes
            while left > 0:
                chunk = os.urandom(min(left, 262144))
                sent_hash.update(chunk)
                c.sendall(chunk)
                left -= len(chunk)
            c.shutdown(socket.SHUT_WR)
        except OSError as e:
            failure.append(f"send: {e}")
    t = threading.Thread(target=writer)
    t.start()
    got = 0
    try:
        while True:
            chunk = c.recv(262144)
            if not chunk:
                break
            got_hash.update(chunk)
            got += len(chunk)
    except OSError as e:
        failure.append(f"receive: {e}")
    t.join()
    same = got == args.bytes and sent_hash.hexdigest() == got_hash.hexdigest()
    print(f"sent {args.bytes} sha256 {sent_hash.hexdigest()} received {got} sha256 {got_hash.hexdigest()}"
          + (f" errors {failure}" if failure else "") + (" equal" if same else " DIFFERENT"))
    return 0 if same and not failure else 7

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
a = sub.add_parser("serve"); a.add_argument("port", type=int); a.add_argument("--reply", default="pong"); a.add_argument("--count", type=int, default=0); a.add_argument("--sink", action="store_true"); a.add_argument("--mirror", action="store_true")
b = sub.add_parser("send"); b.add_argument("host"); b.add_argument("port", type=int); b.add_argument("text"); b.add_argument("--timeout", type=float, default=5)
t = sub.add_parser("trickle"); t.add_argument("host"); t.add_argument("port", type=int); t.add_argument("seconds", type=float); t.add_argument("--timeout", type=float, default=60)
k = sub.add_parser("bulk"); k.add_argument("host"); k.add_argument("port", type=int); k.add_argument("bytes", type=int); k.add_argument("--timeout", type=float, default=600)
args = p.parse_args()
sys.exit(serve(args) if args.cmd == "serve" else bulk(args) if args.cmd == "bulk" else send(args))
