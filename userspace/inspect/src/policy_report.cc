#include "meshtls/inspect/policy_report.h"

#include <algorithm>
#include <map>
#include <set>
#include <tuple>

#include "meshtls/common/ip_address.h"
#include "meshtls/common/strings.h"

namespace meshtls::inspect {
namespace {

policy::PolicyTarget TargetOf(const workload::Workload& w) { return {w.namespace_name, w.labels}; }

bool Selects(const std::map<std::string, std::string>& selector, const std::map<std::string, std::string>& labels) {
  return std::all_of(selector.begin(), selector.end(), [&](const auto& entry) {
    auto it = labels.find(entry.first);
    return it != labels.end() && it->second == entry.second;
  });
}

std::string Ago(std::chrono::system_clock::duration d) {
  const auto seconds = std::chrono::duration_cast<std::chrono::seconds>(d).count();
  if (seconds < 120) return StrCat(seconds, "s");
  if (seconds < 2 * 3600) return StrCat(seconds / 60, "m");
  if (seconds < 2 * 86400) return StrCat(seconds / 3600, "h");
  return StrCat(seconds / 86400, "d");
}

v1::Finding MakeFinding(v1::Severity severity, std::string code, std::string subject, std::string detail) {
  v1::Finding f;
  f.set_severity(severity);
  f.set_code(std::move(code));
  f.set_subject(std::move(subject));
  f.set_detail(std::move(detail));
  return f;
}

std::string ModeOrigin(const std::string& peer_authentication, policy::ModeLevel level) {
  if (peer_authentication.empty()) return "no PeerAuthentication: Istio's default";
  return StrCat("PeerAuthentication ", peer_authentication, ", ", policy::ModeLevelName(level), " level");
}

// "td/ns/NS/sa/SA" -> NS; nullopt when the principal does not have that shape.
std::optional<std::string> NamespaceOfPrincipal(std::string_view principal) {
  const std::vector<std::string_view> parts = Split(principal, '/');
  if (parts.size() != 5 || parts[0].empty() || parts[1] != "ns" || parts[2].empty() || parts[3] != "sa" ||
      parts[4].empty()) {
    return std::nullopt;
  }
  return std::string(parts[2]);
}

}  // namespace

v1::MtlsMode ToProto(policy::MtlsMode mode) {
  switch (mode) {
    case policy::MtlsMode::kStrict:
      return v1::MTLS_MODE_STRICT;
    case policy::MtlsMode::kPermissive:
      return v1::MTLS_MODE_PERMISSIVE;
    case policy::MtlsMode::kDisable:
      return v1::MTLS_MODE_DISABLE;
  }
  return v1::MTLS_MODE_UNSPECIFIED;
}

absl::StatusOr<v1::CheckAccessResponse> CheckAccess(const policy::PolicySet& policies,
                                                    const workload::WorkloadSnapshot& workloads,
                                                    std::string_view trust_domain,
                                                    const v1::CheckAccessRequest& request) {
  const workload::Workload* target = workloads.Find(request.destination_workload());
  if (target == nullptr) {
    return absl::NotFoundError(
        StrCat("no workload '", request.destination_workload(), "' in the registry (use namespace/name)"));
  }
  if (request.port() == 0 || request.port() > 65535) {
    return absl::InvalidArgumentError(StrCat("port ", request.port(), " is not a TCP port (1-65535)"));
  }
  const int sources = (request.source_principal().empty() ? 0 : 1) + (request.source_namespace().empty() ? 0 : 1) +
                      (request.plaintext() ? 1 : 0);
  if (sources != 1) {
    return absl::InvalidArgumentError("give exactly one source: a principal, a namespace, or plaintext");
  }
  policy::SourceAttributes source;
  source.destination_port = static_cast<uint16_t>(request.port());
  if (!request.source_principal().empty()) {
    std::string principal = request.source_principal();
    if (principal.starts_with("spiffe://")) principal.erase(0, std::string_view("spiffe://").size());
    std::optional<std::string> space = NamespaceOfPrincipal(principal);
    if (!space) {
      return absl::InvalidArgumentError(StrCat("principal '", request.source_principal(),
                                               "' is not TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT"));
    }
    source.principal = principal;
    source.namespace_name = *space;
  } else if (!request.source_namespace().empty()) {
    source.namespace_name = request.source_namespace();
    source.principal = StrCat(trust_domain, "/ns/", request.source_namespace(), "/sa/default");
  }
  if (request.source_ip().empty()) {
    source.source_ip = *IpAddress::Parse("0.0.0.0");
  } else {
    absl::StatusOr<IpAddress> ip = IpAddress::Parse(request.source_ip());
    if (!ip.ok()) return absl::InvalidArgumentError(StrCat("source IP '", request.source_ip(), "' is not an address"));
    source.source_ip = *ip;
  }

  const policy::Explanation explanation = policies.Explain(TargetOf(*target), source);
  v1::CheckAccessResponse out;
  out.set_decision(explanation.allowed ? v1::DECISION_ALLOW : v1::DECISION_DENY);
  out.set_mtls_mode(ToProto(explanation.mode));
  out.set_mtls_mode_level(std::string(policy::ModeLevelName(explanation.mode_level)));
  out.set_peer_authentication(explanation.peer_authentication);
  out.set_policy(explanation.policy);
  out.set_reason(explanation.reason_code);
  out.set_detail(explanation.reason);
  for (const policy::ConsideredPolicy& considered : explanation.considered) {
    v1::ConsideredPolicy* item = out.add_considered();
    item->set_policy(considered.policy);
    item->set_action(considered.deny ? "DENY" : "ALLOW");
    item->set_matched(considered.matched);
    item->set_rule(considered.rule);
    item->set_why(considered.why);
  }
  out.set_source_principal(source.principal.value_or(""));
  out.set_source_namespace(source.namespace_name.value_or(""));
  for (const std::string& warning : policies.warnings()) out.add_warnings(warning);
  return out;
}

std::vector<v1::Finding> AuditPolicies(const policy::PolicySet& policies, const workload::WorkloadSnapshot& workloads) {
  std::vector<v1::Finding> findings;
  const std::vector<policy::PolicySet::PolicyInfo> infos = policies.Policies();
  std::map<std::string, bool> is_deny;
  for (const auto& info : infos) {
    if (info.kind == "AuthorizationPolicy") is_deny[info.id] = info.deny;
  }

  // Modes, per workload and per port override.
  std::map<std::string, std::pair<size_t, std::vector<std::string>>> open_by_namespace;  // ns -> {total, unselected}
  for (const workload::Workload& w : workloads.all()) {
    const policy::PolicySet::Effective effective = policies.Describe(TargetOf(w));
    const policy::ModeLevel level = policies.ModeAndLevelFor(TargetOf(w), 0).second;
    const std::string origin = ModeOrigin(effective.peer_authentication, level);
    if (effective.mode == policy::MtlsMode::kPermissive) {
      findings.push_back(MakeFinding(v1::SEVERITY_WARNING, "permissive_mode", w.uid(),
                                     StrCat("PERMISSIVE (", origin, "): plaintext is accepted")));
    } else if (effective.mode == policy::MtlsMode::kDisable) {
      findings.push_back(MakeFinding(v1::SEVERITY_CRITICAL, "mtls_disabled", w.uid(),
                                     StrCat("DISABLE (", origin, "): no mutual TLS at all")));
    }
    for (const auto& [port, mode] : effective.port_modes) {
      if (mode == effective.mode || mode == policy::MtlsMode::kStrict) continue;
      const bool disabled = mode == policy::MtlsMode::kDisable;
      // The port level belongs to the workload's own PeerAuthentication, which Explain names.
      policy::SourceAttributes probe;
      probe.destination_port = port;
      const policy::Explanation at_port = policies.Explain(TargetOf(w), probe);
      findings.push_back(MakeFinding(disabled ? v1::SEVERITY_CRITICAL : v1::SEVERITY_WARNING,
                                     disabled ? "mtls_disabled" : "permissive_mode", StrCat(w.uid(), " port ", port),
                                     StrCat(policy::MtlsModeName(mode), " (",
                                            ModeOrigin(at_port.peer_authentication, at_port.mode_level), ")",
                                            disabled ? ": no mutual TLS at all" : ": plaintext is accepted")));
    }
    auto& [total, unselected] = open_by_namespace[w.namespace_name];
    ++total;
    const bool has_allow = std::any_of(effective.authorization_policies.begin(), effective.authorization_policies.end(),
                                       [&](const std::string& id) { return !is_deny[id]; });
    if (!has_allow) unselected.push_back(w.name);
  }
  for (const auto& [space, entry] : open_by_namespace) {
    const auto& [total, unselected] = entry;
    if (unselected.empty()) continue;
    std::vector<std::string> shown(unselected.begin(), unselected.begin() + std::min<size_t>(unselected.size(), 5));
    findings.push_back(MakeFinding(
        v1::SEVERITY_WARNING, "namespace_isolation_gap", space,
        StrCat("no ALLOW AuthorizationPolicy selects ", unselected.size(), " of its ", total, " workload(s) (",
               Join(shown, ", "), unselected.size() > shown.size() ? ", ..." : "",
               "): any source may connect (default allow)")));
  }

  for (const auto& info : infos) {
    if (info.kind == "AuthorizationPolicy" && info.l7_rules > 0) {
      findings.push_back(
          info.deny ? MakeFinding(v1::SEVERITY_INFO, "rule_never_matches_l4", info.id,
                                  StrCat(info.l7_rules, " of ", info.rules,
                                         " DENY rule(s) use L7 fields: enforced on their L4 parts alone, so they "
                                         "deny more (", info.where, ")"))
                    : MakeFinding(v1::SEVERITY_WARNING, "rule_never_matches_l4", info.id,
                                  StrCat(info.l7_rules, " of ", info.rules,
                                         " ALLOW rule(s) use L7 fields and never match at L4 (", info.where, ")")));
    }
    const bool root = info.namespace_name == policies.root_namespace();
    // A root-namespace AuthorizationPolicy applies in every namespace; a root PeerAuthentication
    // is mesh-wide only without a selector.
    const bool everywhere = root && (info.kind == "AuthorizationPolicy" || info.selector.empty());
    const bool selects = std::any_of(workloads.all().begin(), workloads.all().end(), [&](const workload::Workload& w) {
      return (everywhere || w.namespace_name == info.namespace_name) && Selects(info.selector, w.labels);
    });
    if (!selects) {
      std::string labels;
      for (const auto& [key, value] : info.selector) StrAppend(&labels, labels.empty() ? "" : ",", key, "=", value);
      findings.push_back(MakeFinding(
          v1::SEVERITY_WARNING, "policy_selects_nothing", info.id,
          StrCat(info.kind, " selects no workload: ",
                 labels.empty() ? StrCat("namespace ", info.namespace_name, " has no workloads")
                                : StrCat("none ", everywhere ? "in the mesh" : StrCat("in namespace ", info.namespace_name),
                                         " has labels ", labels),
                 " (", info.where, ")")));
    }
  }
  SortFindings(findings);
  return findings;
}

std::vector<v1::Finding> AuditLive(const LiveAuditInput& input) {
  std::vector<v1::Finding> findings;
  const auto now = input.now;
  for (const LiveAuditInput::Svid& svid : input.svids) {
    const bool never_issued = svid.renewal_due == std::chrono::system_clock::time_point{};
    if (never_issued && svid.failures > 0) {
      findings.push_back(MakeFinding(v1::SEVERITY_CRITICAL, "svid_rotation_overdue", svid.spiffe_id,
                                     StrCat("never issued: ", svid.failures, " failure(s), last: ", svid.last_error)));
      continue;
    }
    // A minute of grace: the renewal tick runs at most that late.
    if (!never_issued && now > svid.renewal_due + std::chrono::minutes(1)) {
      const bool soon = svid.not_after - now < std::chrono::hours(1);
      findings.push_back(MakeFinding(
          soon ? v1::SEVERITY_CRITICAL : v1::SEVERITY_WARNING, "svid_rotation_overdue", svid.spiffe_id,
          StrCat("renewal was due ", Ago(now - svid.renewal_due), " ago; ", svid.failures, " failure(s) in a row",
                 svid.last_error.empty() ? "" : StrCat(", last: ", svid.last_error), "; the SVID expires ",
                 svid.not_after > now ? StrCat("in ", Ago(svid.not_after - now)) : std::string("now"))));
    }
  }

  std::vector<std::string> root_subjects;
  auto check_ca = [&](const std::string& pem, std::string_view role) {
    absl::StatusOr<std::vector<identity::CertificateSummary>> certs = identity::SummarizeCertificates(pem);
    if (!certs.ok()) return;
    for (const identity::CertificateSummary& cert : *certs) {
      if (role == "root") root_subjects.push_back(cert.subject);
      const auto left = cert.not_after - now;
      if (left > std::chrono::hours(24 * 30)) continue;
      const bool critical = left <= std::chrono::hours(24 * 7);
      findings.push_back(MakeFinding(critical ? v1::SEVERITY_CRITICAL : v1::SEVERITY_WARNING, "ca_expiring",
                                     StrCat(role, " ", cert.subject),
                                     left <= std::chrono::seconds(0)
                                         ? StrCat("expired ", Ago(-left), " ago (serial ", cert.serial_hex, ")")
                                         : StrCat("expires in ", Ago(left), " (serial ", cert.serial_hex, ")")));
    }
  };
  check_ca(input.trust_bundle_pem, "root");
  if (!input.intermediate_pem.empty()) check_ca(input.intermediate_pem, "intermediate");

  for (const LiveAuditInput::Svid& svid : input.svids) {
    if (svid.chain_pem.empty()) continue;
    absl::StatusOr<std::vector<identity::CertificateSummary>> chain = identity::SummarizeCertificates(svid.chain_pem);
    if (!chain.ok() || chain->empty()) continue;
    const identity::CertificateSummary& leaf = chain->front();
    const bool issued_by_root =
        std::find(root_subjects.begin(), root_subjects.end(), leaf.issuer) != root_subjects.end();
    if (chain->size() == 1 && !issued_by_root) {
      findings.push_back(MakeFinding(
          v1::SEVERITY_CRITICAL, "chain_missing_intermediate", svid.spiffe_id,
          StrCat("presents its leaf alone, issued by '", leaf.issuer,
                 "', which is not a trust root: peers fail with \"unable to get local issuer certificate\"")));
    }
  }

  if (input.ktls_fallback) {
    findings.push_back(MakeFinding(v1::SEVERITY_INFO, "ktls_fallback", "node",
                                   StrCat("datapath userspace-tls: ", input.datapath_reason)));
  }
  SortFindings(findings);
  return findings;
}

void SortFindings(std::vector<v1::Finding>& findings) {
  std::stable_sort(findings.begin(), findings.end(), [](const v1::Finding& a, const v1::Finding& b) {
    return std::make_tuple(-static_cast<int>(a.severity()), a.code(), a.subject()) <
           std::make_tuple(-static_cast<int>(b.severity()), b.code(), b.subject());
  });
}

}  // namespace meshtls::inspect
