#!/usr/bin/python3
"""Calls a live agent's status API with Python grpcio (a client the project did not write):
GetStatus and ListCertificates. Stubs come from protoc and Debian's grpc_python_plugin at run time.
Prints `node=<name> certificates=<spiffe ids, comma-separated>`.   Run with /usr/bin/python3.

  grpc_probe.py SOCKET REPO_ROOT"""
import os
import subprocess
import sys
import tempfile

socket_path, repo = sys.argv[1], sys.argv[2]
out = tempfile.mkdtemp(prefix="meshtls-grpc-probe-")
subprocess.run(["protoc", f"--proto_path={repo}/proto", f"--python_out={out}", f"--grpc_out={out}",
                "--plugin=protoc-gen-grpc=/usr/bin/grpc_python_plugin", f"{repo}/proto/meshtls/v1/status.proto"],
               check=True)
sys.path.insert(0, out)
import grpc  # noqa: E402
from meshtls.v1 import status_pb2, status_pb2_grpc  # noqa: E402

with grpc.insecure_channel(f"unix:{socket_path}") as channel:
    stub = status_pb2_grpc.StatusServiceStub(channel)
    status = stub.GetStatus(status_pb2.GetStatusRequest(), timeout=5)
    certs = stub.ListCertificates(status_pb2.ListCertificatesRequest(), timeout=5)
print(f"node={status.node_name} certificates={','.join(sorted(c.spiffe_id for c in certs.certificates))}")
