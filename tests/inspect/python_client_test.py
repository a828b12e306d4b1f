#!/usr/bin/python3
"""The status API from a client the project did not write: Python grpcio.

Generates the Python messages and stubs from proto/ with protoc and Debian's grpc_python_plugin
(so python3-grpc-tools is not needed), starts `inspect_fake_agent serve` on a fresh socket, and
checks GetStatus, ListCertificates and an error against FakeAgentView's fixed data
(tests/inspect/fake_agent_view.cc: keep the values in step).

Needs Debian's python3-grpcio and python3-protobuf: run it with /usr/bin/python3.
"""
import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile

WEB_ID = "spiffe://cluster.local/ns/default/sa/web"
DB_ID = "spiffe://cluster.local/ns/data/sa/db"


def fail(message):
    print(f"FAIL: {message}", file=sys.stderr)
    sys.exit(1)


def expect_eq(got, want, what):
    if got != want:
        fail(f"{what}: got {got!r}, want {want!r}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", required=True)
    parser.add_argument("--proto-root", required=True)
    parser.add_argument("--protoc", required=True)
    parser.add_argument("--grpc-python-plugin", required=True)
    args = parser.parse_args()

    try:
        import grpc  # noqa: F401
        import google.protobuf  # noqa: F401
    except ImportError as e:
        # A failure, not a skip: the test suite is meant to exercise a foreign client.
        fail(f"{e}: install Debian's python3-grpcio and python3-protobuf "
             f"(running {sys.executable})")

    work = tempfile.mkdtemp(prefix="meshtls-pyclient-")
    server = None
    try:
        gen = os.path.join(work, "gen")
        os.mkdir(gen)
        subprocess.run(
            [args.protoc, f"--proto_path={args.proto_root}", f"--python_out={gen}",
             f"--grpc_python_out={gen}",
             f"--plugin=protoc-gen-grpc_python={args.grpc_python_plugin}",
             "meshtls/v1/status.proto"],
            check=True)
        sys.path.insert(0, gen)
        import grpc
        from meshtls.v1 import status_pb2, status_pb2_grpc

        socket_path = os.path.join(work, "run", "status.sock")
        server = subprocess.Popen([args.server, "serve", socket_path], stdout=subprocess.PIPE,
                                  text=True)
        line = server.stdout.readline().strip()
        expect_eq(line, "ready", "fake agent start-up line")

        with grpc.insecure_channel(f"unix:{socket_path}") as channel:
            stub = status_pb2_grpc.StatusServiceStub(channel)

            status = stub.GetStatus(status_pb2.GetStatusRequest(), timeout=10)
            expect_eq(status.version, "0.1.0-test", "GetStatus version")
            expect_eq(status.node_name, "node-a", "GetStatus node_name")
            expect_eq(status.trust_domain, "cluster.local", "GetStatus trust_domain")
            expect_eq(status.datapath, status_pb2.DATAPATH_KTLS_SPLICE, "GetStatus datapath")
            expect_eq(status.uptime.seconds, 3723, "GetStatus uptime")
            expect_eq(status.kernel.ktls_available, True, "GetStatus kernel.ktls_available")
            expect_eq(list(status.kernel.ktls_ciphers), ["TLS_AES_128_GCM_SHA256"],
                      "GetStatus kernel.ktls_ciphers")
            expect_eq([p.name for p in status.bpf_programs], ["meshtls_connect4"],
                      "GetStatus bpf_programs")
            expect_eq(status.counters.handshakes_ok, 10, "GetStatus counters.handshakes_ok")
            expect_eq(list(status.served_workloads), ["default/web", "data/db"],
                      "GetStatus served_workloads")

            certs = stub.ListCertificates(status_pb2.ListCertificatesRequest(), timeout=10)
            expect_eq([c.spiffe_id for c in certs.certificates], [WEB_ID, DB_ID],
                      "ListCertificates spiffe_ids")
            web = certs.certificates[0]
            expect_eq(web.serial, "0a1b2c", "certificate serial")
            expect_eq(web.not_before.seconds, 1700000000, "certificate not_before")
            expect_eq(web.not_after.seconds, 1700003600, "certificate not_after")
            expect_eq(web.seconds_left, 1800, "certificate seconds_left")
            expect_eq(list(web.chain_subjects),
                      ["O=meshtls, CN=web", "O=meshtls, CN=meshtls root CA"],
                      "certificate chain_subjects")
            expect_eq([r.subject for r in certs.trust_bundle],
                      ["O=meshtls, CN=meshtls root CA"], "trust bundle")

            try:
                stub.GetPolicy(status_pb2.GetPolicyRequest(workload="nobody/here"), timeout=10)
                fail("GetPolicy for an unknown workload succeeded")
            except grpc.RpcError as e:
                expect_eq(e.code(), grpc.StatusCode.NOT_FOUND, "GetPolicy error code")
                expect_eq(e.details(), "workload nobody/here is not served by this agent",
                          "GetPolicy error message")

        server.send_signal(signal.SIGTERM)
        expect_eq(server.wait(timeout=10), 0, "fake agent exit code")
        if os.path.exists(socket_path):
            fail(f"{socket_path} left behind after shutdown")
        server = None
        print("python grpcio client: GetStatus, ListCertificates, GetPolicy NOT_FOUND ok")
    finally:
        if server is not None:
            server.kill()
            server.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
