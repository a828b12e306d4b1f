/* The agent's ports, set by the loader in each object's read-only data before load
 * (SteeringConfig on the C++ side). Included by BPF programs only. */
#pragma once

#include <linux/types.h>

const volatile __u16 outbound_port = 15001;
const volatile __u16 inbound_capture_port = 15006;
const volatile __u16 tunnel_port = 15008;
