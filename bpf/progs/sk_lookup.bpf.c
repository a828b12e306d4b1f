// sk_lookup, attached to each meshed pod's network namespace: inbound TCP to the pod's IP on any
// port but the tunnel's goes to the agent's capture listener in that netns, where STRICT refuses
// plaintext and PERMISSIVE passes it on. DISABLE leaves the port alone.
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "agent_ports.bpf.h"
#include "meshtls_maps.h"

#define AF_INET 2
#define IPPROTO_TCP 6

char LICENSE[] SEC("license") = "GPL";


// Pod IPv4 (network byte order) -> the workload's settings.
struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, MESHTLS_MAX_ENDPOINTS);
  __type(key, struct meshtls_endpoint4);
  __type(value, struct meshtls_workload);
} inbound_pods SEC(".maps");

// Pod IPv4 -> the agent's capture listener inside that pod's netns.
struct {
  __uint(type, BPF_MAP_TYPE_SOCKHASH);
  __uint(max_entries, MESHTLS_MAX_ENDPOINTS);
  __type(key, struct meshtls_endpoint4);
  __type(value, __u64);
} capture_listeners SEC(".maps");

SEC("sk_lookup")
int meshtls_inbound(struct bpf_sk_lookup *ctx) {
  if (ctx->protocol != IPPROTO_TCP || ctx->family != AF_INET) return SK_PASS;
  const __u16 port = (__u16)ctx->local_port;  // host byte order
  if (port == tunnel_port || port == inbound_capture_port || port == outbound_port) return SK_PASS;
  struct meshtls_endpoint4 key = {.addr = ctx->local_ip4};
  struct meshtls_workload *pod = bpf_map_lookup_elem(&inbound_pods, &key);
  if (!pod || pod->mode == MESHTLS_MODE_DISABLE) return SK_PASS;
  const int strict = pod->mode == MESHTLS_MODE_STRICT;
  struct bpf_sock *listener = bpf_map_lookup_elem(&capture_listeners, &key);
  // STRICT without its capture listener (agent gone): refuse rather than reach the app in clear.
  if (!listener) return strict ? SK_DROP : SK_PASS;
  long err = bpf_sk_assign(ctx, listener, 0);
  bpf_sk_release(listener);
  if (err) return strict ? SK_DROP : SK_PASS;
  return SK_PASS;
}
