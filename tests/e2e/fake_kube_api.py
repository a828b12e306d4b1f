#!/usr/bin/python3
"""A stand-in Kubernetes API server for the end-to-end tests (test-only, stdlib only).

Serves, over HTTPS with a bearer token, what the agent's Kubernetes workload source asks for:
  GET /api/v1/pods?fieldSelector=spec.nodeName=N | spec.nodeName!=N   (list, or watch=1)
  GET /api/v1/namespaces                                               (list, or watch=1)
with resourceVersions, chunked watch streams of ADDED/MODIFIED/DELETED events and periodic
BOOKMARKs. The test drives it through control requests on the same port:
  POST   /_control/pods             body: {"name","namespace","uid","serviceAccount","node","ip","labels"}
  DELETE /_control/pods/NS/NAME

usage: fake_kube_api.py --cert C --key K --token T --state STATE.json --port-file F
STATE.json: {"namespaces": {"NAME": {labels}}, "pods": [pod specs as for POST]}
"""
import argparse
import json
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

lock = threading.Condition()
version = 100
objects = {"pods": {}, "namespaces": {}}  # key -> object
events = []  # (resourceVersion, resource, type, object)


def record(resource, kind, key, obj):
    global version
    with lock:
        version += 1
        if obj is not None:
            obj["metadata"]["resourceVersion"] = str(version)
        if kind == "DELETED":
            obj = objects[resource].pop(key)
            obj = json.loads(json.dumps(obj))
            obj["metadata"]["resourceVersion"] = str(version)
        else:
            objects[resource][key] = obj
        events.append((version, resource, kind, obj))
        lock.notify_all()


def pod_object(spec):
    return {
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {"name": spec["name"], "namespace": spec["namespace"], "uid": spec["uid"],
                     "creationTimestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                     "labels": spec.get("labels", {})},
        "spec": {"nodeName": spec["node"], "serviceAccountName": spec["serviceAccount"],
                 "containers": [{"name": "main", "image": "registry.k8s.io/pause:3.9"}]},
        "status": {"phase": "Running", "podIP": spec["ip"], "podIPs": [{"ip": spec["ip"]}]},
    }


def namespace_object(name, labels):
    return {"kind": "Namespace", "apiVersion": "v1",
            "metadata": {"name": name, "uid": "ns-" + name, "labels": labels},
            "status": {"phase": "Active"}}


def selector_matches(selector, obj):
    if not selector:
        return True
    node = obj.get("spec", {}).get("nodeName", "")
    if "!=" in selector:
        return node != selector.split("!=", 1)[1]
    return node == selector.split("=", 1)[1]


class Api(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    token = ""

    def log_message(self, fmt, *args):
        print("fake-kube-api: " + fmt % args, flush=True)

    def reply(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def authorized(self):
        if self.headers.get("Authorization") == "Bearer " + self.token:
            return True
        self.reply(401, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": "Unauthorized",
                         "reason": "Unauthorized", "code": 401})
        return False

    def chunk(self, obj):
        data = (json.dumps(obj) + "\n").encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def do_GET(self):
        if not self.authorized():
            return
        url = urlparse(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        resource = {"/api/v1/pods": "pods", "/api/v1/namespaces": "namespaces"}.get(url.path)
        if resource is None:
            return self.reply(404, {"kind": "Status", "code": 404})
        selector = query.get("fieldSelector", "")
        if "watch" not in query:
            with lock:
                items = [o for o in objects[resource].values() if selector_matches(selector, o)]
                rv = str(version)
            kind = "PodList" if resource == "pods" else "NamespaceList"
            return self.reply(200, {"kind": kind, "apiVersion": "v1", "metadata": {"resourceVersion": rv}, "items": items})
        since = int(query.get("resourceVersion") or 0)
        deadline = time.monotonic() + min(int(query.get("timeoutSeconds", "300")), 300)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            while time.monotonic() < deadline:
                with lock:
                    lock.wait_for(lambda: events and events[-1][0] > since, timeout=5)
                    pending = [e for e in events if e[0] > since]
                    rv = version
                for ev_version, ev_resource, ev_type, obj in pending:
                    since = ev_version
                    if ev_resource == resource and selector_matches(selector, obj):
                        self.chunk({"type": ev_type, "object": obj})
                if not pending:
                    since = rv
                    self.chunk({"type": "BOOKMARK", "object": {"kind": "Pod", "apiVersion": "v1",
                                                               "metadata": {"resourceVersion": str(rv)}}})
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass

    def do_POST(self):
        if not self.authorized():
            return
        if self.path != "/_control/pods":
            return self.reply(404, {})
        spec = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        record("pods", "ADDED", spec["namespace"] + "/" + spec["name"], pod_object(spec))
        self.reply(201, {"ok": True})

    def do_DELETE(self):
        if not self.authorized():
            return
        parts = self.path.split("/")
        if len(parts) != 5 or parts[1] != "_control" or parts[2] != "pods":
            return self.reply(404, {})
        key = parts[3] + "/" + parts[4]
        if key not in objects["pods"]:
            return self.reply(404, {})
        record("pods", "DELETED", key, None)
        self.reply(200, {"ok": True})


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--state", required=True)
    parser.add_argument("--port-file", required=True)
    args = parser.parse_args()
    state = json.load(open(args.state))
    for name, labels in state.get("namespaces", {}).items():
        record("namespaces", "ADDED", name, namespace_object(name, labels))
    for spec in state.get("pods", []):
        record("pods", "ADDED", spec["namespace"] + "/" + spec["name"], pod_object(spec))
    Api.token = args.token
    server = ThreadingHTTPServer(("127.0.0.1", 0), Api)
    server.daemon_threads = True
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.cert, args.key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    with open(args.port_file + ".tmp", "w") as f:
        f.write(str(server.server_address[1]))
    import os
    os.rename(args.port_file + ".tmp", args.port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
