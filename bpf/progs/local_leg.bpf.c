// The local-leg shortcut: bytes between an application's socket and the agent's accepted socket
// (both in the pod's netns, over loopback to the outbound listener) move from one socket's send
// path straight into the other's receive queue through a sockhash, skipping the loopback TCP
// stack. Plaintext sockets only: the only sockets ever inserted are the two ends of a connection
// to the outbound listener on loopback, which the agent never gives the TLS ULP (its kTLS
// sockets are the tunnel sockets on 15008, which never match).
#include <linux/bpf.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "agent_ports.bpf.h"
#include "meshtls_maps.h"

#define AF_INET 2
#define AF_INET6 10

char LICENSE[] SEC("license") = "GPL";

struct {
  __uint(type, BPF_MAP_TYPE_SOCKHASH);
  __uint(max_entries, MESHTLS_MAX_LOCAL_LEGS);
  __type(key, struct meshtls_leg_key);
  __type(value, __u64);
} local_legs SEC(".maps");

// Ends that have sent bytes the ordinary way (their peer was not in local_legs yet). They stay on
// the ordinary path for their whole life: a receiver reads redirected bytes before queued TCP
// bytes, so mixing the two paths in one direction could reorder the stream.
struct {
  __uint(type, BPF_MAP_TYPE_LRU_HASH);
  __uint(max_entries, MESHTLS_MAX_LOCAL_LEGS);
  __type(key, struct meshtls_leg_key);
  __type(value, __u8);
} local_leg_bypass SEC(".maps");

static __always_inline int is_loopback4(__u32 addr) { return (bpf_ntohl(addr) >> 24) == 127; }

static __always_inline int is_loopback6(const __u32 *addr) {
  return addr[0] == 0 && addr[1] == 0 && addr[2] == 0 && addr[3] == bpf_htonl(1);
}

static __always_inline void leg_key_of_sockops(struct bpf_sock_ops *skops, struct meshtls_leg_key *key) {
  key->netns_cookie = bpf_get_netns_cookie(skops);
  key->family = (__u16)skops->family;
  key->local_port = (__u16)skops->local_port;
  key->remote_port = (__u16)bpf_ntohl(skops->remote_port);
  if (skops->family == AF_INET) {
    key->local_addr[0] = skops->local_ip4;
    key->remote_addr[0] = skops->remote_ip4;
  } else {
    key->local_addr[0] = skops->local_ip6[0];
    key->local_addr[1] = skops->local_ip6[1];
    key->local_addr[2] = skops->local_ip6[2];
    key->local_addr[3] = skops->local_ip6[3];
    key->remote_addr[0] = skops->remote_ip6[0];
    key->remote_addr[1] = skops->remote_ip6[1];
    key->remote_addr[2] = skops->remote_ip6[2];
    key->remote_addr[3] = skops->remote_ip6[3];
  }
}

static __always_inline int on_loopback(const struct meshtls_leg_key *key) {
  if (key->family == AF_INET) return is_loopback4(key->local_addr[0]) && is_loopback4(key->remote_addr[0]);
  return is_loopback6(key->local_addr) && is_loopback6(key->remote_addr);
}

SEC("sockops")
int meshtls_local_leg_sockops(struct bpf_sock_ops *skops) {
  if (skops->family != AF_INET && skops->family != AF_INET6) return 1;
  struct meshtls_leg_key key = {};
  switch (skops->op) {
    case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:  // the application's end, before connect() returns
      leg_key_of_sockops(skops, &key);
      if (key.remote_port != outbound_port || !on_loopback(&key)) return 1;
      break;
    case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:  // the agent's end, before accept() returns it
      leg_key_of_sockops(skops, &key);
      if (key.local_port != outbound_port || !on_loopback(&key)) return 1;
      break;
    case BPF_SOCK_OPS_STATE_CB:
      if (skops->args[1] != BPF_TCP_CLOSE) return 1;
      leg_key_of_sockops(skops, &key);
      bpf_map_delete_elem(&local_leg_bypass, &key);
      return 1;  // the sockhash drops closed sockets by itself
    default:
      return 1;
  }
  // Failure (map full, a ULP already set) leaves the socket on the ordinary path: still correct.
  if (bpf_sock_hash_update(skops, &local_legs, &key, BPF_NOEXIST) == 0) {
    bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
  }
  return 1;
}

SEC("sk_msg")
int meshtls_local_leg_msg(struct sk_msg_md *msg) {
  struct meshtls_leg_key self = {};
  self.netns_cookie = bpf_get_netns_cookie(msg);
  self.family = (__u16)msg->family;
  self.local_port = (__u16)msg->local_port;
  self.remote_port = (__u16)bpf_ntohl(msg->remote_port);
  if (msg->family == AF_INET) {
    self.local_addr[0] = msg->local_ip4;
    self.remote_addr[0] = msg->remote_ip4;
  } else {
    self.local_addr[0] = msg->local_ip6[0];
    self.local_addr[1] = msg->local_ip6[1];
    self.local_addr[2] = msg->local_ip6[2];
    self.local_addr[3] = msg->local_ip6[3];
    self.remote_addr[0] = msg->remote_ip6[0];
    self.remote_addr[1] = msg->remote_ip6[1];
    self.remote_addr[2] = msg->remote_ip6[2];
    self.remote_addr[3] = msg->remote_ip6[3];
  }
  if (bpf_map_lookup_elem(&local_leg_bypass, &self)) return SK_PASS;

  struct meshtls_leg_key peer = self;
  peer.local_port = self.remote_port;
  peer.remote_port = self.local_port;
  __builtin_memcpy(peer.local_addr, self.remote_addr, sizeof(peer.local_addr));
  __builtin_memcpy(peer.remote_addr, self.local_addr, sizeof(peer.remote_addr));
  if (bpf_msg_redirect_hash(msg, &local_legs, &peer, BPF_F_INGRESS) == SK_PASS) return SK_PASS;
  // The peer is not (or no longer) in the map: this end keeps to TCP from now on.
  __u8 one = 1;
  bpf_map_update_elem(&local_leg_bypass, &self, &one, BPF_ANY);
  return SK_PASS;
}
