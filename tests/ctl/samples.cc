#include "samples.h"

#include <google/protobuf/util/time_util.h>

namespace meshtls::ctl::testing {
namespace {

constexpr int64_t kNow = 1714564800;  // 2024-05-01T12:00:00Z

google::protobuf::Timestamp At(int64_t offset_seconds, int32_t nanos = 0) {
  google::protobuf::Timestamp t;
  t.set_seconds(kNow + offset_seconds);
  t.set_nanos(nanos);
  return t;
}

google::protobuf::Duration Seconds(int64_t s, int32_t nanos = 0) {
  google::protobuf::Duration d;
  d.set_seconds(s);
  d.set_nanos(nanos);
  return d;
}

constexpr char kLedgerId[] =
    "spiffe://cluster.local/ns/payments/sa/ledger-reconciliation-worker-service-account";

}  // namespace

std::chrono::system_clock::time_point SampleNow() {
  return std::chrono::system_clock::time_point(std::chrono::seconds(kNow));
}

v1::GetStatusResponse SampleStatus() {
  v1::GetStatusResponse s;
  s.set_version("0.1.0");
  s.set_build("gcc 12.2.0, RelWithDebInfo");
  *s.mutable_uptime() = Seconds(3 * 86400 + 4 * 3600 + 12 * 60 + 7);
  s.set_node_name("node-a");
  s.set_trust_domain("cluster.local");
  s.set_datapath(v1::DATAPATH_KTLS_SPLICE);
  s.set_datapath_reason("the kernel accepted TLS_TX/TLS_RX for every configured cipher");
  auto* k = s.mutable_kernel();
  k->set_kernel_release("6.1.0-18-amd64");
  k->set_ktls_available(true);
  k->set_ktls_detail("setsockopt(SOL_TLS) accepted on a loopback pair");
  k->add_ktls_ciphers("TLS_AES_128_GCM_SHA256");
  k->add_ktls_ciphers("TLS_AES_256_GCM_SHA384");
  k->add_ktls_ciphers("TLS_CHACHA20_POLY1305_SHA256");
  k->set_ktls_self_test("TLS_AES_128_GCM_SHA256 passed; TLS_AES_256_GCM_SHA384 passed; TLS_CHACHA20_POLY1305_SHA256 passed");
  k->set_ktls_rekey(false);
  k->set_ktls_rekey_detail("no kTLS rekeying: setsockopt(TLS_TX) TLS_AES_128_GCM_SHA256: Device or resource busy");
  k->set_openssl_version("OpenSSL 3.0.19 27 Jan 2026");
  k->set_openssl_builtin_ec(true);
  k->set_openssl_builtin_ec_detail("on: EC certificate keys are decoded and used by OpenSSL's built-in EC code (start-up check passed)");
  k->set_local_leg_shortcut(true);
  const struct {
    const char* name;
    const char* attach;
    uint32_t prog, link;
    const char* pin;
  } progs[] = {
      {"meshtls_connect4", "/sys/fs/cgroup/meshtls.slice", 41, 12, "/sys/fs/bpf/meshtls/connect4"},
      {"meshtls_connect6", "/sys/fs/cgroup/meshtls.slice", 42, 13, "/sys/fs/bpf/meshtls/connect6"},
      {"meshtls_sockops", "/sys/fs/cgroup/meshtls.slice", 43, 14, ""},
      {"meshtls_local_leg", "sockmap meshtls_local_leg_map", 1044, 0, ""},
  };
  for (const auto& p : progs) {
    auto* b = s.add_bpf_programs();
    b->set_name(p.name);
    b->set_attach_point(p.attach);
    b->set_program_id(p.prog);
    b->set_link_id(p.link);
    b->set_pin_path(p.pin);
  }
  auto* c = s.mutable_counters();
  c->set_handshakes_ok(15234);
  c->set_handshakes_failed(3);
  c->set_denied(17);
  c->set_plaintext_refused(2);
  c->set_passthrough(408);
  c->set_limit_refusals(0);
  c->set_pending_handshakes(1);
  c->set_active_connections(42);
  s.set_worker_loops(2);
  s.add_served_workloads("shop/cart");
  s.add_served_workloads("shop/checkout");
  s.add_served_workloads("payments/ledger-reconciliation-worker");
  return s;
}

v1::ListWorkloadsResponse SampleWorkloads() {
  v1::ListWorkloadsResponse r;
  {
    auto* w = r.add_workloads();
    w->set_namespace_("shop");
    w->set_name("cart");
    w->set_service_account("cart");
    w->set_node("node-a");
    (*w->mutable_labels())["version"] = "v2";
    (*w->mutable_labels())["app"] = "cart";
    w->add_ips("10.244.1.5");
    w->add_ips("fd00:10:244:1::5");
    w->set_netns("/run/netns/cart-7f9c");
    w->set_cgroup("/sys/fs/cgroup/meshtls.slice/shop-cart");
    w->set_spiffe_id("spiffe://cluster.local/ns/shop/sa/cart");
    w->set_served_here(true);
    w->set_mode(v1::MTLS_MODE_STRICT);
  }
  {
    auto* w = r.add_workloads();
    w->set_namespace_("payments");
    w->set_name("ledger-reconciliation-worker");
    w->set_service_account("ledger-reconciliation-worker-service-account");
    w->set_node("node-b");
    (*w->mutable_labels())["app"] = "ledger";
    w->add_ips("fd00:10:244:2::1b");
    w->set_spiffe_id(kLedgerId);
    w->set_served_here(false);
    w->set_mode(v1::MTLS_MODE_PERMISSIVE);
  }
  {
    // Not scheduled yet: no node, no IPs, no identity, no mode.
    auto* w = r.add_workloads();
    w->set_namespace_("shop");
    w->set_name("legacy-batch");
  }
  {
    auto* w = r.add_workloads();
    w->set_namespace_("kube-system");
    w->set_name("coredns");
    w->set_service_account("coredns");
    w->set_node("node-a");
    w->add_ips("10.244.0.3");
    w->set_netns("/run/netns/coredns-1a2b");
    w->set_cgroup("/sys/fs/cgroup/meshtls.slice/kube-system-coredns");
    w->set_spiffe_id("spiffe://cluster.local/ns/kube-system/sa/coredns");
    w->set_served_here(true);
    w->set_mode(v1::MTLS_MODE_DISABLE);
  }
  r.set_source("static file /etc/meshtls/workloads.yaml");
  r.set_last_reload_error(
      "workloads.yaml:42: IP 10.244.1.5 given to shop/cart and shop/cart-canary; kept the previous registry");
  return r;
}

v1::ListConnectionsResponse SampleConnections() {
  v1::ListConnectionsResponse r;
  {
    auto* c = r.add_connections();
    c->set_id(1017);
    c->set_direction("outbound");
    c->set_source_workload("shop/cart");
    c->set_source_identity("spiffe://cluster.local/ns/shop/sa/cart");
    c->set_source_address("10.244.1.5:43122");
    c->set_destination_workload("shop/checkout");
    c->set_destination_identity("spiffe://cluster.local/ns/shop/sa/checkout");
    c->set_destination_address("10.244.1.9:8080");
    c->set_bytes_sent(1288490);
    c->set_bytes_received(316211);
    c->set_tls_version("TLSv1.3");
    c->set_cipher("TLS_AES_128_GCM_SHA256");
    c->set_ktls(true);
    c->set_datapath(v1::DATAPATH_KTLS_SPLICE);
    *c->mutable_age() = Seconds(312);
    c->set_peer_serial("4f2a9c01");
  }
  {
    auto* c = r.add_connections();
    c->set_id(1018);
    c->set_direction("inbound");
    c->set_source_workload("payments/ledger-reconciliation-worker");
    c->set_source_identity(kLedgerId);
    c->set_source_address("[fd00:10:244:2::1b]:51234");
    c->set_destination_workload("shop/cart");
    c->set_destination_identity("spiffe://cluster.local/ns/shop/sa/cart");
    c->set_destination_address("[fd00:10:244:1::5]:8080");
    c->set_bytes_sent(512);
    c->set_bytes_received(0);
    c->set_tls_version("TLSv1.3");
    c->set_cipher("TLS_CHACHA20_POLY1305_SHA256");
    c->set_ktls(false);
    c->set_datapath(v1::DATAPATH_USERSPACE_TLS);
    *c->mutable_age() = Seconds(86399, 500000000);
    c->set_peer_serial("00c5d1e2f3a4b5c6d7e8f90112233445566778899");
  }
  {
    // PERMISSIVE pass-through from outside the mesh: no source workload, no identities, no TLS.
    auto* c = r.add_connections();
    c->set_id(1019);
    c->set_direction("passthrough");
    c->set_source_address("192.168.7.20:60000");
    c->set_destination_workload("shop/legacy-batch");
    c->set_destination_address("10.244.1.30:9000");
    c->set_bytes_sent(5368709120);
    c->set_bytes_received(73400320);
    c->set_datapath(v1::DATAPATH_PLAINTEXT);
    *c->mutable_age() = Seconds(3 * 86400 + 4 * 3600 + 59);
  }
  {
    // kTLS refused for this one socket: the splice datapath fell back, and no age yet.
    auto* c = r.add_connections();
    c->set_id(1020);
    c->set_direction("outbound");
    c->set_source_workload("shop/checkout");
    c->set_source_identity("spiffe://cluster.local/ns/shop/sa/checkout");
    c->set_source_address("10.244.1.9:39810");
    c->set_destination_workload("payments/ledger-reconciliation-worker");
    c->set_destination_identity(kLedgerId);
    c->set_destination_address("[fd00:10:244:2::1b]:9443");
    c->set_bytes_sent(1023);
    c->set_bytes_received(1048575);
    c->set_tls_version("TLSv1.3");
    c->set_cipher("TLS_AES_256_GCM_SHA384");
    c->set_ktls(false);
    c->set_datapath(v1::DATAPATH_KTLS_SPLICE);
  }
  return r;
}

namespace {

v1::Certificate CartCert() {
  v1::Certificate c;
  c.set_spiffe_id("spiffe://cluster.local/ns/shop/sa/cart");
  c.set_serial("3f9a0c1d2e4b5a6978");
  *c.mutable_not_before() = At(-6 * 3600);
  *c.mutable_not_after() = At(18 * 3600);
  c.set_seconds_left(18 * 3600);
  c.add_chain_subjects("");
  c.add_chain_subjects("CN=meshtls intermediate CA,O=cluster.local");
  *c.mutable_rotate_at() = At(6 * 3600);
  c.set_rotations(12);
  return c;
}

}  // namespace

v1::ListCertificatesResponse SampleCertificates() {
  v1::ListCertificatesResponse r;
  *r.add_certificates() = CartCert();
  {
    // Renewal failing: the retry is what rotate_at says.
    auto* c = r.add_certificates();
    c->set_spiffe_id(kLedgerId);
    c->set_serial("00c5d1e2f3a4b5c6d7e8f90112233445566778899");
    *c->mutable_not_before() = At(-86400 + 240);
    *c->mutable_not_after() = At(240);
    c->set_seconds_left(240);
    c->add_chain_subjects("");
    c->add_chain_subjects("CN=meshtls intermediate CA,O=cluster.local");
    *c->mutable_rotate_at() = At(30);
    c->set_rotations(3);
    c->set_consecutive_failures(2);
    c->set_last_error("CA at 10.96.0.12:15012 refused the CSR: connection refused");
  }
  {
    auto* c = r.add_certificates();
    c->set_spiffe_id("spiffe://cluster.local/ns/kube-system/sa/coredns");
    c->set_serial("7b");
    *c->mutable_not_before() = At(-86400 - 30);
    *c->mutable_not_after() = At(-30);
    c->set_seconds_left(-30);
    *c->mutable_rotate_at() = At(-60);
    c->set_rotations(0);
    c->set_consecutive_failures(5);
    c->set_last_error("signing key unreadable: /etc/meshtls/ca/intermediate.key: Permission denied");
  }
  {
    auto* t = r.add_trust_bundle();
    t->set_subject("CN=meshtls root CA,O=cluster.local");
    t->set_serial("01");
    *t->mutable_not_after() = At(10 * 365 * 86400 + 2 * 86400);
  }
  {
    // The next root during a rollover.
    auto* t = r.add_trust_bundle();
    t->set_subject("CN=meshtls root CA 2025,O=cluster.local");
    t->set_serial("5e1d0a77c2");
    *t->mutable_not_after() = At(11 * 365 * 86400 + 45 * 86400);
  }
  return r;
}

v1::GetPolicyResponse SamplePolicy() {
  v1::GetPolicyResponse r;
  {
    auto* w = r.add_workloads();
    w->set_workload("shop/cart");
    w->set_mode(v1::MTLS_MODE_STRICT);
    w->set_peer_authentication("istio-system/default");
    (*w->mutable_port_modes())[15090] = v1::MTLS_MODE_DISABLE;
    (*w->mutable_port_modes())[8080] = v1::MTLS_MODE_PERMISSIVE;
    (*w->mutable_port_modes())[9090] = v1::MTLS_MODE_STRICT;
    w->add_authorization_policies("shop/deny-external");
    w->add_authorization_policies("shop/allow-frontend");
    w->set_summary("DENY from outside namespaces shop, frontend; ALLOW frontend/web on 8080");
  }
  {
    auto* w = r.add_workloads();
    w->set_workload("shop/checkout");
    w->set_mode(v1::MTLS_MODE_PERMISSIVE);
    w->set_peer_authentication("shop/checkout-permissive");
    w->set_summary("no authorization policy: every peer allowed");
  }
  {
    auto* w = r.add_workloads();
    w->set_workload("payments/ledger-reconciliation-worker");
  }
  r.set_policy_dir("/etc/meshtls/policies");
  r.set_last_reload_error("authz-bad.yaml:7: unknown field \"rulez\"; kept the previous policies");
  r.add_warnings(
      "shop/allow-frontend: principal spiffe://other.example/ns/web/sa/web is outside trust domain "
      "cluster.local and can never match");
  *r.mutable_loaded_at() = At(-312);
  return r;
}

std::vector<v1::Event> SampleEvents() {
  std::vector<v1::Event> events;
  auto add = [&](int64_t offset, int32_t nanos, v1::EventKind kind, const char* workload, const char* peer,
                 const char* result, const char* reason, const char* detail, uint64_t dropped = 0) {
    v1::Event e;
    *e.mutable_time() = At(offset, nanos);
    e.set_kind(kind);
    e.set_workload(workload);
    e.set_peer(peer);
    e.set_result(result);
    e.set_reason(reason);
    e.set_detail(detail);
    e.set_dropped_before(dropped);
    events.push_back(e);
  };
  add(0, 123000000, v1::EVENT_KIND_HANDSHAKE, "shop/cart", "spiffe://cluster.local/ns/shop/sa/checkout", "ok", "",
      "TLSv1.3 TLS_AES_128_GCM_SHA256 ktls");
  add(1, 7000000, v1::EVENT_KIND_DENIAL, "shop/cart", "spiffe://evil.example/ns/x/sa/y", "denied", "authz-deny",
      "shop/deny-external", 17);
  add(1, 500000000, v1::EVENT_KIND_HANDSHAKE, "shop/cart", "[fd00:10:244:2::1b]:51234", "error", "handshake-failed",
      "certificate verify failed: unable to get local issuer certificate");
  add(2, 0, v1::EVENT_KIND_ROTATION, "", "", "ok", "", "spiffe://cluster.local/ns/shop/sa/cart serial 4e01");
  add(3, 999000000, v1::EVENT_KIND_RELOAD, "", "", "error", "policy-rejected",
      "authz-bad.yaml:7: unknown field \"rulez\"", 1);
  add(4, 250000000, v1::EVENT_KIND_CLOSE, "payments/ledger-reconciliation-worker", kLedgerId, "ok", "eof",
      "");
  return events;
}

v1::RotateCertificatesResponse SampleRotation() {
  v1::RotateCertificatesResponse r;
  v1::Certificate cart = CartCert();
  cart.set_serial("4e01b7c2d9a0ff1e2d");
  *cart.mutable_not_before() = At(0);
  *cart.mutable_not_after() = At(86400);
  cart.set_seconds_left(86400);
  *cart.mutable_rotate_at() = At(12 * 3600);
  cart.set_rotations(13);
  *r.add_rotated() = cart;
  v1::Certificate ledger;
  ledger.set_spiffe_id(kLedgerId);
  ledger.set_serial("6a7b8c9d0e1f20314253647586970a1b2c3d4e5f");
  *ledger.mutable_not_before() = At(0);
  *ledger.mutable_not_after() = At(86400);
  ledger.set_seconds_left(86400);
  *ledger.mutable_rotate_at() = At(12 * 3600);
  ledger.set_rotations(4);
  *r.add_rotated() = ledger;
  return r;
}

}  // namespace meshtls::ctl::testing
