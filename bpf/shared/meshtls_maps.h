/* Structs shared by the BPF programs and the C++ datapath library. Sizes and offsets are
 * checked on both sides (static_assert in tests/datapath/shared_structs_test.cc). */
#pragma once

#include <linux/types.h>

#define MESHTLS_MAX_CGROUPS 4096
#define MESHTLS_MAX_ENDPOINTS 65536
#define MESHTLS_MAX_EXCLUDED_PORTS 256
#define MESHTLS_MAX_ORIGINAL_DESTINATIONS 65536
#define MESHTLS_MAX_LOCAL_LEGS 131072

enum meshtls_mode {
  MESHTLS_MODE_DISABLE = 0,
  MESHTLS_MODE_PERMISSIVE = 1,
  MESHTLS_MODE_STRICT = 2,
};

/* Value of meshed_cgroups, keyed by cgroup id (__u64). */
struct meshtls_workload {
  __u32 workload_index;
  __u8 mode; /* enum meshtls_mode */
  __u8 reserved[3];
};

/* Key of mesh_endpoints4: an IPv4 address in network byte order. */
struct meshtls_endpoint4 {
  __u32 addr;
};

/* Key of mesh_endpoints6: an IPv6 address in network byte order. */
struct meshtls_endpoint6 {
  __u32 addr[4];
};

/* Key of steered_connections: the application's end of a steered connection, as the agent sees
 * it from the accepted socket (getpeername + SO_NETNS_COOKIE). */
struct meshtls_connection_key {
  __u64 netns_cookie;
  __u32 addr[4]; /* network byte order; IPv4 in addr[0] */
  __u16 port;    /* network byte order */
  __u16 family;
  __u32 reserved;
};

/* Value of original_destinations, keyed by the connecting socket's cookie (__u64). */
struct meshtls_original_destination {
  __u32 addr4;    /* network byte order, when family == AF_INET */
  __u32 addr6[4]; /* network byte order, when family == AF_INET6 */
  __u16 port;     /* network byte order */
  __u16 family;
};

/* Key of local_legs (sockhash) and local_leg_bypass: one end of a plaintext local leg between an
 * application and the agent's outbound listener, as that end sees itself. The peer's key is the
 * same with local and remote swapped (both ends share the pod's netns). */
struct meshtls_leg_key {
  __u64 netns_cookie;
  __u32 local_addr[4];  /* network byte order; IPv4 in [0] */
  __u32 remote_addr[4]; /* network byte order; IPv4 in [0] */
  __u16 local_port;     /* host byte order */
  __u16 remote_port;    /* host byte order */
  __u16 family;
  __u16 reserved;
};
