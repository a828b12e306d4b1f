#include "meshtls/ctl/format.h"

#include <algorithm>
#include <map>

#include "meshtls/common/strings.h"
#include "meshtls/ctl/humanize.h"

namespace meshtls::ctl {
namespace {

std::string JoinList(const google::protobuf::RepeatedPtrField<std::string>& items, std::string_view sep = ", ") {
  return Join(std::vector<std::string>(items.begin(), items.end()), sep);
}

// For the forms that are a function of the message alone.
std::optional<std::string> Structured(const google::protobuf::Message& m, const RenderOptions& options) {
  switch (options.format) {
    case OutputFormat::kJson: return ToJson(m);
    case OutputFormat::kYaml: return ToYaml(m);
    case OutputFormat::kTable: break;
  }
  return std::nullopt;
}

std::chrono::seconds Until(const google::protobuf::Timestamp& t, const RenderOptions& options) {
  return std::chrono::duration_cast<std::chrono::seconds>(ToTimePoint(t) - options.now);
}

bool IsSet(const google::protobuf::Timestamp& t) { return t.seconds() != 0 || t.nanos() != 0; }

std::string Left(std::chrono::seconds left) {
  return left.count() <= 0 ? "expired" : HumanDuration(left);
}

std::string Endpoint(const std::string& workload, const std::string& address) {
  if (workload.empty()) return address;
  if (address.empty()) return workload;
  return StrCat(workload, " (", address, ")");
}

// logfmt-style value: bare if it is one word, else double-quoted with \" and \\ escaped.
std::string LogfmtValue(const std::string& v) {
  const bool bare = !v.empty() && std::none_of(v.begin(), v.end(), [](char c) {
    return c == ' ' || c == '"' || c == '=' || c == '\\' || static_cast<unsigned char>(c) < 0x20;
  });
  if (bare) return v;
  std::string out = "\"";
  for (char c : v) {
    if (c == '"' || c == '\\') out.push_back('\\');
    if (c == '\n') {
      out.append("\\n");
      continue;
    }
    out.push_back(c);
  }
  out.push_back('"');
  return out;
}

}  // namespace

std::optional<OutputFormat> ParseOutputFormat(std::string_view name) {
  if (name == "table") return OutputFormat::kTable;
  if (name == "json") return OutputFormat::kJson;
  if (name == "yaml") return OutputFormat::kYaml;
  return std::nullopt;
}

std::string DatapathName(v1::Datapath datapath) {
  switch (datapath) {
    case v1::DATAPATH_KTLS_SPLICE: return "ktls-splice";
    case v1::DATAPATH_USERSPACE_TLS: return "userspace-tls";
    case v1::DATAPATH_PLAINTEXT: return "plaintext";
    default: return "unknown";
  }
}

std::string ModeName(v1::MtlsMode mode) {
  switch (mode) {
    case v1::MTLS_MODE_STRICT: return "STRICT";
    case v1::MTLS_MODE_PERMISSIVE: return "PERMISSIVE";
    case v1::MTLS_MODE_DISABLE: return "DISABLE";
    default: return "-";
  }
}

std::string EventKindName(v1::EventKind kind) {
  switch (kind) {
    case v1::EVENT_KIND_HANDSHAKE: return "handshake";
    case v1::EVENT_KIND_DENIAL: return "denial";
    case v1::EVENT_KIND_ROTATION: return "rotation";
    case v1::EVENT_KIND_RELOAD: return "reload";
    case v1::EVENT_KIND_CLOSE: return "close";
    default: return "unknown";
  }
}

absl::StatusOr<std::vector<v1::EventKind>> ParseEventKinds(std::string_view list) {
  static constexpr v1::EventKind kAll[] = {v1::EVENT_KIND_HANDSHAKE, v1::EVENT_KIND_DENIAL,
                                           v1::EVENT_KIND_ROTATION, v1::EVENT_KIND_RELOAD,
                                           v1::EVENT_KIND_CLOSE};
  std::vector<v1::EventKind> kinds;
  for (std::string_view part : Split(list, ',')) {
    const std::string name = ToLower(part);
    if (name.empty()) continue;
    auto it = std::find_if(std::begin(kAll), std::end(kAll), [&](v1::EventKind k) { return EventKindName(k) == name; });
    if (it == std::end(kAll)) {
      return absl::InvalidArgumentError(StrCat("unknown event kind '", part,
                                               "': use handshake, denial, rotation, reload, close"));
    }
    if (std::find(kinds.begin(), kinds.end(), *it) == kinds.end()) kinds.push_back(*it);
  }
  return kinds;
}

bool IsWorkloadName(std::string_view name) {
  const size_t slash = name.find('/');
  return slash != std::string_view::npos && slash > 0 && slash + 1 < name.size() &&
         name.find('/', slash + 1) == std::string_view::npos;
}

std::string RenderStatus(const v1::GetStatusResponse& s, const RenderOptions& options) {
  if (auto text = Structured(s, options)) return *text;
  KeyValues agent;
  agent.Add("Version", s.build().empty() ? s.version() : StrCat(s.version(), " (", s.build(), ")"));
  agent.Add("Node", s.node_name());
  agent.Add("Trust domain", s.trust_domain());
  agent.Add("Uptime", s.has_uptime() ? HumanDuration(s.uptime()) : "");
  agent.Add("Datapath", s.datapath_reason().empty() ? DatapathName(s.datapath())
                                                    : StrCat(DatapathName(s.datapath()), ": ", s.datapath_reason()));
  agent.Add("Worker loops", StrCat(s.worker_loops()));
  const auto& k = s.kernel();
  agent.Add("Kernel", k.kernel_release());
  std::string ktls = k.ktls_available() ? "available" : "not available";
  if (!k.ktls_detail().empty()) StrAppend(&ktls, ": ", k.ktls_detail());
  agent.Add("kTLS", ktls);
  agent.Add("kTLS ciphers", JoinList(k.ktls_ciphers()));
  if (!k.ktls_self_test().empty()) agent.Add("kTLS self-test", k.ktls_self_test());
  if (!k.ktls_rekey_detail().empty()) {
    agent.Add("kTLS KeyUpdate", StrCat(k.ktls_rekey() ? "yes: " : "no: ", k.ktls_rekey_detail()));
  }
  agent.Add("Local-leg shortcut", k.local_leg_shortcut() ? "on" : "off");
  if (!k.openssl_version().empty()) agent.Add("OpenSSL", k.openssl_version());
  if (!k.openssl_builtin_ec_detail().empty()) {
    agent.Add("Built-in EC keys", k.openssl_builtin_ec_detail());
  }
  std::string out = agent.Render();

  StrAppend(&out, "\nServed workloads (", s.served_workloads_size(), "):\n");
  for (const auto& w : s.served_workloads()) StrAppend(&out, "  ", w, "\n");

  const auto& c = s.counters();
  KeyValues counters;
  counters.Add("Handshakes ok", StrCat(c.handshakes_ok()));
  counters.Add("Handshakes failed", StrCat(c.handshakes_failed()));
  counters.Add("Denied", StrCat(c.denied()));
  counters.Add("Plaintext refused", StrCat(c.plaintext_refused()));
  counters.Add("Passthrough", StrCat(c.passthrough()));
  counters.Add("Limit refusals", StrCat(c.limit_refusals()));
  counters.Add("Pending handshakes", StrCat(c.pending_handshakes()));
  counters.Add("Active connections", StrCat(c.active_connections()));
  StrAppend(&out, "\nCounters:\n", counters.Render("  "));

  StrAppend(&out, "\nBPF programs (", s.bpf_programs_size(), "):\n");
  if (s.bpf_programs_size() > 0) {
    Table bpf({"NAME", "ATTACH POINT", "PROGRAM ID", "LINK ID", "PINNED AT"});
    for (const auto& p : s.bpf_programs()) {
      bpf.AddRow({p.name(), p.attach_point(), StrCat(p.program_id()), StrCat(p.link_id()), p.pin_path()});
    }
    StrAppend(&out, bpf.Render("  "));
  }
  return out;
}

std::string RenderWorkloads(const v1::ListWorkloadsResponse& r, const RenderOptions& options) {
  if (auto text = Structured(r, options)) return *text;
  std::string out;
  if (r.workloads_size() == 0) {
    out = "No workloads.\n";
  } else {
    Table table({"NAMESPACE", "NAME", "NODE", "SERVED", "IPS", "MODE", "SPIFFE ID"});
    for (const auto& w : r.workloads()) {
      table.AddRow({w.namespace_(), w.name(), w.node(), w.served_here() ? "yes" : "no", JoinList(w.ips(), ","),
                    ModeName(w.mode()), w.spiffe_id()});
    }
    out = table.Render();
  }
  KeyValues footer;
  if (!r.source().empty()) footer.Add("Source", r.source());
  if (!r.last_reload_error().empty()) footer.Add("Last reload failed", r.last_reload_error());
  std::string tail = footer.Render();
  if (!tail.empty()) StrAppend(&out, "\n", tail);
  return out;
}

std::string RenderConnections(const v1::ListConnectionsResponse& r, const RenderOptions& options) {
  if (auto text = Structured(r, options)) return *text;
  if (r.connections_size() == 0) return "No connections.\n";
  Table table({"ID", "DIRECTION", "SOURCE", "DESTINATION", "PEER IDENTITY", "TLS", "CIPHER", "DATAPATH", "SENT",
               "RECEIVED", "AGE"});
  for (const auto& c : r.connections()) {
    // The identity that was verified is the other side's: the client's for inbound.
    const bool inbound = c.direction() == "inbound";
    std::string peer = inbound ? c.source_identity() : c.destination_identity();
    if (peer.empty()) peer = inbound ? c.destination_identity() : c.source_identity();
    std::string datapath = DatapathName(c.datapath());
    if (c.datapath() == v1::DATAPATH_KTLS_SPLICE && !c.ktls()) StrAppend(&datapath, " (kTLS off)");
    if (c.datapath() == v1::DATAPATH_USERSPACE_TLS && c.ktls()) StrAppend(&datapath, " (kTLS on)");
    table.AddRow({StrCat(c.id()), c.direction(), Endpoint(c.source_workload(), c.source_address()),
                  Endpoint(c.destination_workload(), c.destination_address()), peer, c.tls_version(), c.cipher(),
                  datapath, HumanBytes(c.bytes_sent()), HumanBytes(c.bytes_received()),
                  c.has_age() ? HumanDuration(c.age()) : ""});
  }
  return table.Render();
}

std::string RenderCertificates(const v1::ListCertificatesResponse& r, const RenderOptions& options) {
  if (auto text = Structured(r, options)) return *text;
  std::string out;
  if (r.certificates_size() == 0) {
    out = "No certificates.\n";
  } else {
    Table table({"SPIFFE ID", "SERIAL", "NOT BEFORE", "NOT AFTER", "LEFT", "NEXT ROTATION", "ROTATIONS", "FAILURES",
                 "LAST ERROR"});
    for (const auto& c : r.certificates()) {
      std::string next;
      if (IsSet(c.rotate_at())) {
        const auto in = Until(c.rotate_at(), options);
        next = in.count() <= 0 ? "due" : StrCat("in ", HumanDuration(in));
      }
      table.AddRow({c.spiffe_id(), c.serial(), Rfc3339(c.not_before()), Rfc3339(c.not_after()),
                    Left(std::chrono::seconds(c.seconds_left())), next, StrCat(c.rotations()),
                    StrCat(c.consecutive_failures()), c.last_error()});
    }
    out = table.Render();
  }
  StrAppend(&out, "\nTrust bundle (", r.trust_bundle_size(), r.trust_bundle_size() == 1 ? " root" : " roots", "):\n");
  if (r.trust_bundle_size() > 0) {
    Table roots({"SUBJECT", "SERIAL", "NOT AFTER", "LEFT"});
    for (const auto& t : r.trust_bundle()) {
      roots.AddRow({t.subject(), t.serial(), Rfc3339(t.not_after()),
                    IsSet(t.not_after()) ? Left(Until(t.not_after(), options)) : ""});
    }
    StrAppend(&out, roots.Render("  "));
  }
  return out;
}

std::string RenderPolicy(const v1::GetPolicyResponse& r, const RenderOptions& options) {
  if (auto text = Structured(r, options)) return *text;
  std::string out;
  if (r.workloads_size() == 0) {
    out = "No workloads served here.\n";
  } else {
    Table table({"WORKLOAD", "MODE", "PEER AUTHENTICATION", "PORT MODES", "AUTHORIZATION POLICIES", "SUMMARY"});
    for (const auto& w : r.workloads()) {
      const std::map<uint32_t, v1::MtlsMode> ports(w.port_modes().begin(), w.port_modes().end());
      std::vector<std::string> port_modes;
      for (const auto& [port, mode] : ports) port_modes.push_back(StrCat(port, "=", ModeName(mode)));
      table.AddRow({w.workload(), ModeName(w.mode()), w.peer_authentication(), Join(port_modes, ","),
                    JoinList(w.authorization_policies(), ","), w.summary()});
    }
    out = table.Render();
  }
  KeyValues footer;
  footer.Add("Policy directory", r.policy_dir());
  if (IsSet(r.loaded_at())) {
    const auto ago = std::chrono::duration_cast<std::chrono::seconds>(options.now - ToTimePoint(r.loaded_at()));
    footer.Add("Loaded", StrCat(Rfc3339(r.loaded_at()), " (", ago.count() < 0 ? "in the future" : StrCat(HumanDuration(ago), " ago"), ")"));
  } else {
    footer.Add("Loaded", "never");
  }
  if (!r.last_reload_error().empty()) footer.Add("Last reload failed", r.last_reload_error());
  StrAppend(&out, "\n", footer.Render());
  for (const auto& w : r.warnings()) StrAppend(&out, "Warning: ", w, "\n");
  return out;
}

std::string RenderRotation(const v1::RotateCertificatesResponse& r, const RenderOptions& options) {
  if (auto text = Structured(r, options)) return *text;
  if (r.rotated_size() == 0) return "No certificate was rotated.\n";
  Table table({"SPIFFE ID", "NEW SERIAL", "NOT AFTER", "VALID FOR", "NEXT ROTATION"});
  for (const auto& c : r.rotated()) {
    std::string next;
    if (IsSet(c.rotate_at())) {
      const auto in = Until(c.rotate_at(), options);
      next = in.count() <= 0 ? "due" : StrCat("in ", HumanDuration(in));
    }
    table.AddRow({c.spiffe_id(), c.serial(), Rfc3339(c.not_after()), Left(std::chrono::seconds(c.seconds_left())),
                  next});
  }
  return StrCat(table.Render(), "\nRotated ", r.rotated_size(), r.rotated_size() == 1 ? " certificate.\n" : " certificates.\n");
}

std::string SeverityName(v1::Severity severity) {
  switch (severity) {
    case v1::SEVERITY_INFO: return "info";
    case v1::SEVERITY_WARNING: return "warning";
    case v1::SEVERITY_CRITICAL: return "critical";
    default: return "-";
  }
}

std::optional<v1::Severity> ParseSeverity(std::string_view name) {
  if (name == "info") return v1::SEVERITY_INFO;
  if (name == "warning") return v1::SEVERITY_WARNING;
  if (name == "critical") return v1::SEVERITY_CRITICAL;
  return std::nullopt;
}

// Structured output with the short names scripts compare against ("ALLOW", "STRICT", "warning")
// and null for "no policy", rather than the proto's enum value names.
static std::optional<std::string> StructuredShort(nlohmann::ordered_json value, const RenderOptions& options) {
  switch (options.format) {
    case OutputFormat::kJson: return value.dump(2, ' ', false, nlohmann::ordered_json::error_handler_t::replace) + "\n";
    case OutputFormat::kYaml: return JsonToYaml(value);
    case OutputFormat::kTable: break;
  }
  return std::nullopt;
}

std::string RenderCheckAccess(const v1::CheckAccessResponse& r, const RenderOptions& options) {
  if (options.format != OutputFormat::kTable) {
    nlohmann::ordered_json value = ToJsonValue(r);
    value["decision"] = r.decision() == v1::DECISION_ALLOW ? "ALLOW" : "DENY";
    value["mtls_mode"] = ModeName(r.mtls_mode());
    if (r.policy().empty()) value["policy"] = nullptr;
    if (r.peer_authentication().empty()) value["peer_authentication"] = nullptr;
    return *StructuredShort(std::move(value), options);
  }
  KeyValues head;
  head.Add("Decision", r.decision() == v1::DECISION_ALLOW ? "ALLOW" : "DENY");
  head.Add("mTLS mode", StrCat(ModeName(r.mtls_mode()), " (",
                               r.peer_authentication().empty() ? std::string("no PeerAuthentication: Istio's default")
                                                               : StrCat("PeerAuthentication ", r.peer_authentication(),
                                                                        ", ", r.mtls_mode_level(), " level"),
                               ")"));
  head.Add("Source", r.source_principal().empty() ? std::string("plaintext (no identity)") : r.source_principal());
  head.Add("Policy", r.policy().empty() ? std::string("-") : r.policy());
  head.Add("Reason", StrCat(r.reason(), ": ", r.detail()));
  std::string out = head.Render();
  if (r.considered_size() == 0) {
    out += "\nNo AuthorizationPolicy selects this workload.\n";
  } else {
    Table table({"ACTION", "POLICY", "MATCHED", "WHY"});
    for (const auto& c : r.considered()) table.AddRow({c.action(), c.policy(), c.matched() ? "yes" : "no", c.why()});
    StrAppend(&out, "\n", table.Render());
  }
  for (const auto& w : r.warnings()) StrAppend(&out, "Warning: ", w, "\n");
  return out;
}

std::string RenderAudit(const v1::AuditResponse& r, const RenderOptions& options) {
  if (options.format != OutputFormat::kTable) {
    nlohmann::ordered_json value = ToJsonValue(r);
    for (int i = 0; i < r.findings_size(); ++i) value["findings"][i]["severity"] = SeverityName(r.findings(i).severity());
    return *StructuredShort(std::move(value), options);
  }
  if (r.findings_size() == 0) return "No findings.\n";
  Table table({"SEVERITY", "FINDING", "SUBJECT", "DETAIL"});
  std::map<v1::Severity, int> counts;
  for (const auto& f : r.findings()) {
    table.AddRow({SeverityName(f.severity()), f.code(), f.subject(), f.detail()});
    counts[f.severity()]++;
  }
  return StrCat(table.Render(), "\n", r.findings_size(), " finding(s): ", counts[v1::SEVERITY_CRITICAL], " critical, ",
                counts[v1::SEVERITY_WARNING], " warning, ", counts[v1::SEVERITY_INFO], " info\n");
}

std::string RenderEvent(const v1::Event& e, const RenderOptions& options) {
  switch (options.format) {
    case OutputFormat::kJson: return ToJson(e, /*pretty=*/false);
    case OutputFormat::kYaml: return StrCat("---\n", ToYaml(e));
    case OutputFormat::kTable: break;
  }
  // Time, kind and result at fixed widths so a scrolling terminal still reads as columns; the
  // rest as key=value, which greps and parses.
  std::string kind = EventKindName(e.kind());
  for (char& ch : kind) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
  std::string out = fmt::format("{:<24}  {:<9}  {:<6}", Rfc3339(e.time(), /*millis=*/true), kind,
                                e.result().empty() ? "-" : e.result());
  const std::pair<const char*, const std::string*> fields[] = {
      {"workload", &e.workload()}, {"peer", &e.peer()}, {"reason", &e.reason()}, {"detail", &e.detail()}};
  for (const auto& [key, value] : fields) {
    if (!value->empty()) StrAppend(&out, " ", key, "=", LogfmtValue(*value));
  }
  while (!out.empty() && out.back() == ' ') out.pop_back();
  out.push_back('\n');
  return out;
}

std::string DroppedEventsWarning(uint64_t dropped) {
  return StrCat("warning: ", dropped, dropped == 1 ? " event" : " events",
                " dropped: this client reads too slowly\n");
}

}  // namespace meshtls::ctl
