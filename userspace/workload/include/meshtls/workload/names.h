#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

// Name rules and key suggestions shared by the YAML readers (workload file, agent configuration),
// so both accept the same names and suggest fixes the same way.
namespace meshtls::workload {

bool IsDns1123Label(std::string_view name);      // [a-z0-9]([-a-z0-9]*[a-z0-9])?, at most 63
bool IsDns1123Subdomain(std::string_view name);  // such labels joined by '.', at most 253
// Kubernetes label keys ([prefix/]name) and values (may be empty).
bool IsLabelKey(std::string_view key);
bool IsLabelValue(std::string_view value);

// The known key that `key` was most likely meant to be: the same ignoring case, '-' and '_'
// (service_account → serviceAccount), or within a small edit distance (namspace → namespace).
std::optional<std::string> SuggestKey(std::string_view key,
                                      const std::vector<std::string_view>& known);

}  // namespace meshtls::workload
