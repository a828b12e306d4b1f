// cgroup sock_addr hooks: steer a meshed workload's TCP connects to mesh endpoints into the
// agent's outbound listener inside the workload's own netns, and show the application the
// destination it asked for.
#include <linux/bpf.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "agent_ports.bpf.h"
#include "meshtls_maps.h"

#define AF_INET 2
#define AF_INET6 10
#define SOCK_STREAM 1

char LICENSE[] SEC("license") = "GPL";


struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, MESHTLS_MAX_CGROUPS);
  __type(key, __u64);
  __type(value, struct meshtls_workload);
} meshed_cgroups SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, MESHTLS_MAX_ENDPOINTS);
  __type(key, struct meshtls_endpoint4);
  __type(value, __u8);
} mesh_endpoints4 SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, MESHTLS_MAX_ENDPOINTS);
  __type(key, struct meshtls_endpoint6);
  __type(value, __u8);
} mesh_endpoints6 SEC(".maps");

struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, MESHTLS_MAX_EXCLUDED_PORTS);
  __type(key, __u16); /* host byte order */
  __type(value, __u8);
} excluded_ports SEC(".maps");

// LRU, so that entries of sockets that never reached the agent cannot fill it.
struct {
  __uint(type, BPF_MAP_TYPE_LRU_HASH);
  __uint(max_entries, MESHTLS_MAX_ORIGINAL_DESTINATIONS);
  __type(key, __u64);
  __type(value, struct meshtls_original_destination);
} original_destinations SEC(".maps");

// True when the calling socket belongs to a meshed workload and the port may be steered.
static __always_inline int steerable(struct bpf_sock_addr *ctx) {
  if (ctx->type != SOCK_STREAM) return 0;
  __u64 cgroup = bpf_get_current_cgroup_id();
  struct meshtls_workload *workload = bpf_map_lookup_elem(&meshed_cgroups, &cgroup);
  if (!workload || workload->mode == MESHTLS_MODE_DISABLE) return 0;
  __u16 port = bpf_ntohs((__u16)ctx->user_port);
  if (port == outbound_port || port == inbound_capture_port || port == tunnel_port) return 0;
  if (bpf_map_lookup_elem(&excluded_ports, &port)) return 0;
  return 1;
}

// The application's end of each steered connection -> where it wanted to go. Filled by sock_ops
// when the connection is established, emptied when it closes.
struct {
  __uint(type, BPF_MAP_TYPE_HASH);
  __uint(max_entries, MESHTLS_MAX_ORIGINAL_DESTINATIONS);
  __type(key, struct meshtls_connection_key);
  __type(value, struct meshtls_original_destination);
} steered_connections SEC(".maps");

SEC("cgroup/connect4")
int meshtls_connect4(struct bpf_sock_addr *ctx) {
  if (!steerable(ctx)) return 1;
  __u32 addr = ctx->user_ip4;
  if ((bpf_ntohl(addr) >> 24) == 127) return 1;  // loopback stays local
  struct meshtls_endpoint4 endpoint = {.addr = addr};
  if (!bpf_map_lookup_elem(&mesh_endpoints4, &endpoint)) return 1;

  __u64 cookie = bpf_get_socket_cookie(ctx);
  struct meshtls_original_destination original = {};
  original.addr4 = addr;
  original.port = (__u16)ctx->user_port;
  original.family = AF_INET;
  // Without a record the agent could not route the connection: refuse it (fail closed).
  if (bpf_map_update_elem(&original_destinations, &cookie, &original, BPF_ANY) != 0) return 0;
  ctx->user_ip4 = bpf_htonl(0x7f000001);
  ctx->user_port = bpf_htons(outbound_port);
  return 1;
}

SEC("cgroup/getpeername4")
int meshtls_getpeername4(struct bpf_sock_addr *ctx) {
  __u64 cookie = bpf_get_socket_cookie(ctx);
  struct meshtls_original_destination *original = bpf_map_lookup_elem(&original_destinations, &cookie);
  if (original && original->family == AF_INET) {
    ctx->user_ip4 = original->addr4;
    ctx->user_port = original->port;
  }
  return 1;
}

SEC("cgroup/connect6")
int meshtls_connect6(struct bpf_sock_addr *ctx) {
  if (!steerable(ctx)) return 1;
  struct meshtls_endpoint6 endpoint = {};
  endpoint.addr[0] = ctx->user_ip6[0];
  endpoint.addr[1] = ctx->user_ip6[1];
  endpoint.addr[2] = ctx->user_ip6[2];
  endpoint.addr[3] = ctx->user_ip6[3];
  // ::1 is never an endpoint; anything not in the map is left alone.
  if (!bpf_map_lookup_elem(&mesh_endpoints6, &endpoint)) return 1;

  __u64 cookie = bpf_get_socket_cookie(ctx);
  struct meshtls_original_destination original = {};
  original.addr6[0] = endpoint.addr[0];
  original.addr6[1] = endpoint.addr[1];
  original.addr6[2] = endpoint.addr[2];
  original.addr6[3] = endpoint.addr[3];
  original.port = (__u16)ctx->user_port;
  original.family = AF_INET6;
  if (bpf_map_update_elem(&original_destinations, &cookie, &original, BPF_ANY) != 0) return 0;
  ctx->user_ip6[0] = 0;
  ctx->user_ip6[1] = 0;
  ctx->user_ip6[2] = 0;
  ctx->user_ip6[3] = bpf_htonl(1);
  ctx->user_port = bpf_htons(outbound_port);
  return 1;
}

SEC("cgroup/getpeername6")
int meshtls_getpeername6(struct bpf_sock_addr *ctx) {
  __u64 cookie = bpf_get_socket_cookie(ctx);
  struct meshtls_original_destination *original = bpf_map_lookup_elem(&original_destinations, &cookie);
  if (original && original->family == AF_INET6) {
    ctx->user_ip6[0] = original->addr6[0];
    ctx->user_ip6[1] = original->addr6[1];
    ctx->user_ip6[2] = original->addr6[2];
    ctx->user_ip6[3] = original->addr6[3];
    ctx->user_port = original->port;
  }
  return 1;
}

static __always_inline void connection_key(struct bpf_sock_ops *skops, struct meshtls_connection_key *key) {
  key->netns_cookie = bpf_get_netns_cookie(skops);
  key->family = (__u16)skops->family;
  key->port = bpf_htons((__u16)skops->local_port);
  if (skops->family == AF_INET) {
    key->addr[0] = skops->local_ip4;
  } else {
    key->addr[0] = skops->local_ip6[0];
    key->addr[1] = skops->local_ip6[1];
    key->addr[2] = skops->local_ip6[2];
    key->addr[3] = skops->local_ip6[3];
  }
}

// Re-keys a steered socket's original destination by its local address once it is established
// (the agent only has the accepted socket, whose peer is this address), and forgets both entries
// when the socket closes, so nothing leaks.
SEC("sockops")
int meshtls_sockops(struct bpf_sock_ops *skops) {
  if (skops->family != AF_INET && skops->family != AF_INET6) return 1;
  __u64 cookie = bpf_get_socket_cookie(skops);
  struct meshtls_connection_key key = {};
  switch (skops->op) {
    case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB: {
      struct meshtls_original_destination *original = bpf_map_lookup_elem(&original_destinations, &cookie);
      if (!original) return 1;
      connection_key(skops, &key);
      bpf_map_update_elem(&steered_connections, &key, original, BPF_ANY);
      bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
      return 1;
    }
    case BPF_SOCK_OPS_STATE_CB:
      if (skops->args[1] != BPF_TCP_CLOSE) return 1;
      connection_key(skops, &key);
      bpf_map_delete_elem(&steered_connections, &key);
      bpf_map_delete_elem(&original_destinations, &cookie);
      return 1;
    default:
      return 1;
  }
}
