// JSON and YAML renderings of any status API message, by reflection, so both forms show the
// same tree and new .proto fields appear without code changes.
#include <google/protobuf/descriptor.h>
#include <google/protobuf/reflection.h>
#include <google/protobuf/util/time_util.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>

#include "absl/strings/escaping.h"
#include "meshtls/ctl/format.h"

namespace meshtls::ctl {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using google::protobuf::Reflection;
using Json = nlohmann::ordered_json;

Json SingleValue(const Message& m, const FieldDescriptor* f, int index);

Json MessageValue(const Message& m) {
  const Descriptor* d = m.GetDescriptor();
  if (d->full_name() == "google.protobuf.Timestamp") {
    return google::protobuf::util::TimeUtil::ToString(
        static_cast<const google::protobuf::Timestamp&>(m));
  }
  if (d->full_name() == "google.protobuf.Duration") {
    return google::protobuf::util::TimeUtil::ToString(
        static_cast<const google::protobuf::Duration&>(m));
  }
  const Reflection* r = m.GetReflection();
  Json out = Json::object();
  for (int i = 0; i < d->field_count(); ++i) {
    const FieldDescriptor* f = d->field(i);
    if (f->is_map()) {
      // Proto maps have no order; sort by the key's own type (ports numerically).
      std::vector<std::pair<Json, Json>> entries;
      for (int j = 0; j < r->FieldSize(m, f); ++j) {
        const Message& entry = r->GetRepeatedMessage(m, f, j);
        const Descriptor* ed = entry.GetDescriptor();
        entries.emplace_back(SingleValue(entry, ed->map_key(), -1), SingleValue(entry, ed->map_value(), -1));
      }
      std::sort(entries.begin(), entries.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
      Json map = Json::object();
      for (auto& [key, value] : entries) {
        map[key.is_string() ? key.get<std::string>() : key.dump()] = std::move(value);
      }
      out[f->name()] = std::move(map);
    } else if (f->is_repeated()) {
      Json list = Json::array();
      for (int j = 0; j < r->FieldSize(m, f); ++j) list.push_back(SingleValue(m, f, j));
      out[f->name()] = std::move(list);
    } else if (f->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE && !r->HasField(m, f)) {
      out[f->name()] = nullptr;
    } else {
      out[f->name()] = SingleValue(m, f, -1);
    }
  }
  return out;
}

// index < 0: the singular field.
Json SingleValue(const Message& m, const FieldDescriptor* f, int index) {
  const Reflection* r = m.GetReflection();
  const bool rep = index >= 0;
  switch (f->cpp_type()) {
    case FieldDescriptor::CPPTYPE_INT32: return rep ? r->GetRepeatedInt32(m, f, index) : r->GetInt32(m, f);
    case FieldDescriptor::CPPTYPE_INT64: return rep ? r->GetRepeatedInt64(m, f, index) : r->GetInt64(m, f);
    case FieldDescriptor::CPPTYPE_UINT32: return rep ? r->GetRepeatedUInt32(m, f, index) : r->GetUInt32(m, f);
    case FieldDescriptor::CPPTYPE_UINT64: return rep ? r->GetRepeatedUInt64(m, f, index) : r->GetUInt64(m, f);
    case FieldDescriptor::CPPTYPE_DOUBLE: return rep ? r->GetRepeatedDouble(m, f, index) : r->GetDouble(m, f);
    case FieldDescriptor::CPPTYPE_FLOAT: return rep ? r->GetRepeatedFloat(m, f, index) : r->GetFloat(m, f);
    case FieldDescriptor::CPPTYPE_BOOL: return rep ? r->GetRepeatedBool(m, f, index) : r->GetBool(m, f);
    case FieldDescriptor::CPPTYPE_ENUM: {
      const int value = rep ? r->GetRepeatedEnumValue(m, f, index) : r->GetEnumValue(m, f);
      const auto* ev = f->enum_type()->FindValueByNumber(value);
      if (ev == nullptr) return value;  // from a newer agent
      return ev->name();
    }
    case FieldDescriptor::CPPTYPE_STRING: {
      std::string s = rep ? r->GetRepeatedString(m, f, index) : r->GetString(m, f);
      if (f->type() == FieldDescriptor::TYPE_BYTES) return absl::Base64Escape(s);
      return s;
    }
    case FieldDescriptor::CPPTYPE_MESSAGE:
      return MessageValue(rep ? r->GetRepeatedMessage(m, f, index) : r->GetMessage(m, f));
  }
  return nullptr;
}

// Strings a YAML reader would take for something else (a number, bool, null, timestamp or
// sexagesimal) must be quoted; yaml-cpp only checks for syntax, not for such look-alikes.
bool NeedsQuotes(const std::string& s) {
  if (s.empty()) return true;
  std::string lower;
  for (char c : s) lower.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(c))));
  static constexpr const char* kWords[] = {"true", "false", "yes", "no", "on", "off", "y", "n",
                                           "null", "~", ".inf", "-.inf", "+.inf", ".nan"};
  for (const char* w : kWords) {
    if (lower == w) return true;
  }
  const unsigned char first = static_cast<unsigned char>(s[0]);
  if (std::isdigit(first)) return true;
  if ((first == '-' || first == '+' || first == '.') && s.size() > 1 &&
      std::isdigit(static_cast<unsigned char>(s[1]))) {
    return true;
  }
  return false;
}

void EmitYaml(YAML::Emitter& out, const Json& value) {
  switch (value.type()) {
    case Json::value_t::object:
      if (value.empty()) {
        out << YAML::Flow << YAML::BeginMap << YAML::EndMap;
        return;
      }
      out << YAML::BeginMap;
      for (const auto& [key, item] : value.items()) {
        out << YAML::Key;
        if (NeedsQuotes(key)) out << YAML::DoubleQuoted;
        out << key << YAML::Value;
        EmitYaml(out, item);
      }
      out << YAML::EndMap;
      return;
    case Json::value_t::array:
      if (value.empty()) {
        out << YAML::Flow << YAML::BeginSeq << YAML::EndSeq;
        return;
      }
      out << YAML::BeginSeq;
      for (const auto& item : value) EmitYaml(out, item);
      out << YAML::EndSeq;
      return;
    case Json::value_t::string: {
      const auto& s = value.get_ref<const std::string&>();
      if (NeedsQuotes(s)) out << YAML::DoubleQuoted;
      out << s;
      return;
    }
    case Json::value_t::boolean: out << value.get<bool>(); return;
    case Json::value_t::number_integer: out << value.get<int64_t>(); return;
    case Json::value_t::number_unsigned: out << value.get<uint64_t>(); return;
    case Json::value_t::number_float: out << value.get<double>(); return;
    case Json::value_t::null:
    case Json::value_t::binary:
    case Json::value_t::discarded: out << YAML::Null; return;
  }
}

}  // namespace

nlohmann::ordered_json ToJsonValue(const Message& message) { return MessageValue(message); }

std::string ToJson(const Message& message, bool pretty) {
  // Proto strings are UTF-8 by contract; replace rather than throw should an agent break it.
  return ToJsonValue(message).dump(pretty ? 2 : -1, ' ', false, Json::error_handler_t::replace) + "\n";
}

std::string ToYaml(const Message& message) { return JsonToYaml(ToJsonValue(message)); }

std::string JsonToYaml(const nlohmann::ordered_json& value) {
  YAML::Emitter out;
  out.SetNullFormat(YAML::LowerNull);
  EmitYaml(out, value);
  return std::string(out.c_str()) + "\n";
}

}  // namespace meshtls::ctl
