#pragma once

// Representative status API answers, shared by the golden tests and the fake agent: several
// rows, IPv6, empty fields, long identities, values on both sides of each humanizing threshold.

#include <chrono>
#include <vector>

#include "meshtls/v1/status.pb.h"

namespace meshtls::ctl::testing {

// 2024-05-01T12:00:00Z: "now" for every relative time in the samples.
std::chrono::system_clock::time_point SampleNow();

v1::GetStatusResponse SampleStatus();
v1::ListWorkloadsResponse SampleWorkloads();
v1::ListConnectionsResponse SampleConnections();
v1::ListCertificatesResponse SampleCertificates();
v1::GetPolicyResponse SamplePolicy();
std::vector<v1::Event> SampleEvents();
v1::RotateCertificatesResponse SampleRotation();

}  // namespace meshtls::ctl::testing
