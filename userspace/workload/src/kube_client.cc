#include "kube_client.h"

#include <curl/curl.h>
#include <yaml-cpp/yaml.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>

#include "absl/strings/escaping.h"
#include "meshtls/common/status.h"
#include "meshtls/common/strings.h"

namespace meshtls::workload {
namespace {

absl::StatusOr<std::string> ReadWholeFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(StrCat("cannot read ", path));
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

std::string Trim(std::string text) {
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r' || text.back() == ' ')) text.pop_back();
  return text;
}

}  // namespace

absl::StatusOr<KubeApiConfig> KubeApiConfig::InCluster(const std::string& service_account_dir) {
  const char* host = std::getenv("KUBERNETES_SERVICE_HOST");
  const char* port = std::getenv("KUBERNETES_SERVICE_PORT");
  if (host == nullptr || *host == '\0' || port == nullptr || *port == '\0') {
    return absl::FailedPreconditionError(
        "not running in a Kubernetes pod: KUBERNETES_SERVICE_HOST/PORT are not set (set "
        "kubernetes.kubeconfig to use a kubeconfig file instead)");
  }
  KubeApiConfig config;
  const std::string_view h(host);
  config.server = h.find(':') != std::string_view::npos ? StrCat("https://[", h, "]:", port)
                                                        : StrCat("https://", h, ":", port);
  config.token_file = service_account_dir + "/token";
  config.ca_file = service_account_dir + "/ca.crt";
  for (const std::string& needed : {config.token_file, config.ca_file}) {
    if (!std::ifstream(needed)) {
      return absl::FailedPreconditionError(StrCat(
          "cannot read ", needed, " (is automountServiceAccountToken off for the agent's pod?)"));
    }
  }
  return config;
}

absl::StatusOr<KubeApiConfig> KubeApiConfig::FromKubeconfig(const std::string& path) {
  absl::StatusOr<std::string> text = ReadWholeFile(path);
  if (!text.ok()) return text.status();
  const std::filesystem::path base = std::filesystem::path(path).parent_path();
  auto relative = [&](const std::string& file) {
    return file.empty() || file[0] == '/' ? file : (base / file).string();
  };
  auto decode = [&](const YAML::Node& node, std::string_view what, std::string* out) -> absl::Status {
    if (!node) return absl::OkStatus();
    if (!absl::Base64Unescape(node.as<std::string>(), out)) {
      return absl::InvalidArgumentError(StrCat(path, ": ", what, " is not valid base64"));
    }
    return absl::OkStatus();
  };
  try {
    const YAML::Node root = YAML::Load(*text);
    const std::string current = root["current-context"] ? root["current-context"].as<std::string>() : "";
    if (current.empty()) return absl::InvalidArgumentError(StrCat(path, ": no current-context"));
    auto named = [&](const char* list, const std::string& name) -> YAML::Node {
      for (const YAML::Node& item : root[list]) {
        if (item["name"] && item["name"].as<std::string>() == name) return item;
      }
      return YAML::Node();
    };
    const YAML::Node context = named("contexts", current)["context"];
    if (!context) return absl::InvalidArgumentError(StrCat(path, ": context '", current, "' is not defined"));
    const std::string cluster_name = context["cluster"] ? context["cluster"].as<std::string>() : "";
    const std::string user_name = context["user"] ? context["user"].as<std::string>() : "";
    const YAML::Node cluster = named("clusters", cluster_name)["cluster"];
    if (!cluster || !cluster["server"]) {
      return absl::InvalidArgumentError(StrCat(path, ": cluster '", cluster_name, "' has no server"));
    }
    KubeApiConfig config;
    config.server = cluster["server"].as<std::string>();
    if (config.server.rfind("https://", 0) != 0) {
      return absl::InvalidArgumentError(
          StrCat(path, ": server ", config.server, " is not https:// (the agent only talks TLS to the API)"));
    }
    if (cluster["certificate-authority"]) config.ca_file = relative(cluster["certificate-authority"].as<std::string>());
    RETURN_IF_ERROR(decode(cluster["certificate-authority-data"], "certificate-authority-data", &config.ca_pem));
    config.insecure_skip_tls_verify =
        cluster["insecure-skip-tls-verify"] && cluster["insecure-skip-tls-verify"].as<bool>();
    const YAML::Node user = named("users", user_name)["user"];
    if (user) {
      if (user["token"]) config.token = user["token"].as<std::string>();
      if (user["tokenFile"]) config.token_file = relative(user["tokenFile"].as<std::string>());
      if (user["client-certificate"]) config.client_cert_file = relative(user["client-certificate"].as<std::string>());
      if (user["client-key"]) config.client_key_file = relative(user["client-key"].as<std::string>());
      RETURN_IF_ERROR(decode(user["client-certificate-data"], "client-certificate-data", &config.client_cert_pem));
      RETURN_IF_ERROR(decode(user["client-key-data"], "client-key-data", &config.client_key_pem));
      if (user["exec"] || user["auth-provider"]) {
        return absl::InvalidArgumentError(StrCat(
            path, ": user '", user_name,
            "' uses an exec or auth-provider plugin, which the agent does not run; give it a token, tokenFile or client certificate"));
      }
    }
    return config;
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(StrCat(path, ": not a kubeconfig: ", e.what()));
  }
}

std::string KubeApiConfig::Describe() const {
  std::string auth = !token_file.empty()                                   ? StrCat("token from ", token_file)
                     : !token.empty()                                      ? std::string("a fixed token")
                     : !client_cert_file.empty() || !client_cert_pem.empty() ? std::string("a client certificate")
                                                                           : std::string("no credentials");
  return StrCat(server, " (", auth, insecure_skip_tls_verify ? ", server certificate NOT verified" : "", ")");
}

namespace kube {
namespace {

void GlobalInit() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

struct Transfer {
  CURL* curl = nullptr;
  const std::function<bool(std::string_view)>* on_line = nullptr;
  const std::atomic<bool>* stop = nullptr;
  std::string buffer;  // a partial line (streaming) or the whole body
  bool stopped_by_reader = false;
  long status = 0;
};

size_t OnData(char* data, size_t size, size_t count, void* user) {
  auto* t = static_cast<Transfer*>(user);
  const size_t n = size * count;
  if (t->status == 0) curl_easy_getinfo(t->curl, CURLINFO_RESPONSE_CODE, &t->status);
  t->buffer.append(data, n);
  if (t->on_line == nullptr || t->status != 200) return n;
  size_t start = 0;
  for (size_t nl; (nl = t->buffer.find('\n', start)) != std::string::npos; start = nl + 1) {
    const std::string_view line(t->buffer.data() + start, nl - start);
    if (line.empty()) continue;
    if (!(*t->on_line)(line)) {
      t->stopped_by_reader = true;
      return 0;  // aborts the transfer
    }
  }
  t->buffer.erase(0, start);
  return n;
}

int OnProgress(void* user, curl_off_t, curl_off_t, curl_off_t, curl_off_t) {
  auto* t = static_cast<Transfer*>(user);
  return t->stop != nullptr && t->stop->load() ? 1 : 0;
}

}  // namespace

std::string Query(std::initializer_list<std::pair<std::string_view, std::string>> params) {
  std::string out;
  for (const auto& [key, value] : params) {
    if (!out.empty()) out += '&';
    char* escaped = curl_easy_escape(nullptr, value.data(), static_cast<int>(value.size()));
    out += StrCat(key, "=", escaped != nullptr ? escaped : "");
    curl_free(escaped);
  }
  return out;
}

absl::StatusOr<std::unique_ptr<Client>> Client::Create(KubeApiConfig config) {
  GlobalInit();
  if (config.server.rfind("https://", 0) != 0) {
    return absl::InvalidArgumentError(StrCat("API server '", config.server, "' is not an https:// URL"));
  }
  while (!config.server.empty() && config.server.back() == '/') config.server.pop_back();
  return std::unique_ptr<Client>(new Client(std::move(config)));
}

absl::StatusOr<std::string> Client::BearerToken() const {
  if (config_.token_file.empty()) return config_.token;
  // Read every time: kubelet rewrites projected service-account tokens well before they expire.
  absl::StatusOr<std::string> token = ReadWholeFile(config_.token_file);
  if (!token.ok()) return absl::UnauthenticatedError(std::string(token.status().message()));
  return Trim(*std::move(token));
}

absl::StatusOr<Response> Client::Get(const std::string& path_and_query, std::chrono::seconds timeout) {
  return Perform(path_and_query, timeout, nullptr, nullptr);
}

absl::StatusOr<Response> Client::Stream(const std::string& path_and_query, std::chrono::seconds timeout,
                                        const std::function<bool(std::string_view)>& on_line,
                                        const std::atomic<bool>& stop) {
  return Perform(path_and_query, timeout, &on_line, &stop);
}

absl::StatusOr<Response> Client::Perform(const std::string& path_and_query, std::chrono::seconds timeout,
                                         const std::function<bool(std::string_view)>* on_line,
                                         const std::atomic<bool>* stop) {
  ASSIGN_OR_RETURN(std::string token, BearerToken());
  std::unique_ptr<CURL, decltype(&curl_easy_cleanup)> curl(curl_easy_init(), curl_easy_cleanup);
  if (!curl) return absl::ResourceExhaustedError("curl_easy_init failed");
  CURL* c = curl.get();
  Transfer transfer;
  transfer.curl = c;
  transfer.on_line = on_line;
  transfer.stop = stop;

  const std::string url = config_.server + path_and_query;
  curl_slist* headers = curl_slist_append(nullptr, "Accept: application/json");
  if (!token.empty()) headers = curl_slist_append(headers, StrCat("Authorization: Bearer ", token).c_str());
  std::unique_ptr<curl_slist, decltype(&curl_slist_free_all)> header_list(headers, curl_slist_free_all);
  char error[CURL_ERROR_SIZE] = {};

  curl_easy_setopt(c, CURLOPT_URL, url.c_str());
  curl_easy_setopt(c, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(c, CURLOPT_ERRORBUFFER, error);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);  // worker threads: no SIGALRM for DNS timeouts
  curl_easy_setopt(c, CURLOPT_TCP_KEEPALIVE, 1L);
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 10L);
  curl_easy_setopt(c, CURLOPT_TIMEOUT, static_cast<long>(timeout.count()));
  curl_easy_setopt(c, CURLOPT_USERAGENT, "meshtls-agent");
  curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, OnData);
  curl_easy_setopt(c, CURLOPT_WRITEDATA, &transfer);
  curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
  curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, OnProgress);
  curl_easy_setopt(c, CURLOPT_XFERINFODATA, &transfer);
  curl_easy_setopt(c, CURLOPT_SSLVERSION, CURL_SSLVERSION_TLSv1_2);
  curl_blob ca_blob{const_cast<char*>(config_.ca_pem.data()), config_.ca_pem.size(), CURL_BLOB_NOCOPY};
  curl_blob cert_blob{const_cast<char*>(config_.client_cert_pem.data()), config_.client_cert_pem.size(),
                      CURL_BLOB_NOCOPY};
  curl_blob key_blob{const_cast<char*>(config_.client_key_pem.data()), config_.client_key_pem.size(),
                     CURL_BLOB_NOCOPY};
  if (!config_.ca_pem.empty()) curl_easy_setopt(c, CURLOPT_CAINFO_BLOB, &ca_blob);
  if (!config_.ca_file.empty()) curl_easy_setopt(c, CURLOPT_CAINFO, config_.ca_file.c_str());
  if (!config_.client_cert_pem.empty()) curl_easy_setopt(c, CURLOPT_SSLCERT_BLOB, &cert_blob);
  if (!config_.client_key_pem.empty()) curl_easy_setopt(c, CURLOPT_SSLKEY_BLOB, &key_blob);
  if (!config_.client_cert_file.empty()) curl_easy_setopt(c, CURLOPT_SSLCERT, config_.client_cert_file.c_str());
  if (!config_.client_key_file.empty()) curl_easy_setopt(c, CURLOPT_SSLKEY, config_.client_key_file.c_str());
  if (config_.insecure_skip_tls_verify) {
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 0L);
    curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 0L);
  }

  const CURLcode code = curl_easy_perform(c);
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &transfer.status);
  Response response;
  response.status = transfer.status;
  if (on_line == nullptr || transfer.status != 200) response.body = std::move(transfer.buffer);
  if (code == CURLE_OK || transfer.stopped_by_reader) return response;
  if (code == CURLE_ABORTED_BY_CALLBACK) return absl::CancelledError("stopped");
  const std::string detail = error[0] != '\0' ? std::string(error) : std::string(curl_easy_strerror(code));
  if (code == CURLE_OPERATION_TIMEDOUT) return absl::DeadlineExceededError(StrCat("GET ", url, ": ", detail));
  return absl::UnavailableError(StrCat("GET ", url, ": ", detail));
}

}  // namespace kube
}  // namespace meshtls::workload
