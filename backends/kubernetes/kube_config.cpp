#include "backends/kubernetes/kube_config.h"

#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
#include <vector>

#include <yaml-cpp/yaml.h>

namespace poolworker::backends::kubernetes {
namespace {

namespace fs = std::filesystem;

constexpr auto kTokenMaxAge = std::chrono::minutes(1);

Error invalid(std::string message) {
  return makeError(ErrorKind::InvalidConfiguration, std::move(message));
}

Result<std::string> readFile(const fs::path& path, const std::string& what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return invalid("cannot read " + what + " '" + path.string() + "'");
  }
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

std::string trim(std::string text) {
  const auto first = text.find_first_not_of(" \t\r\n");
  if (first == std::string::npos) {
    return {};
  }
  const auto last = text.find_last_not_of(" \t\r\n");
  return text.substr(first, last - first + 1);
}

// One named entry of a kubeconfig (a cluster, user or context) and the folder its relative
// paths are resolved against: with several KUBECONFIG files, the one that defined it.
struct Entry {
  YAML::Node node;
  fs::path base;
};

struct Merged {
  std::map<std::string, Entry> clusters;
  std::map<std::string, Entry> users;
  std::map<std::string, Entry> contexts;
  std::string current_context;
};

std::string scalar(const YAML::Node& node, const char* key) {
  const YAML::Node value = node[key];
  if (!value || !value.IsScalar()) {
    return {};
  }
  return value.as<std::string>();
}

Result<void> mergeDocument(const std::string& text, const fs::path& base, const std::string& source,
                           Merged& merged) {
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    return invalid(source + " is not valid YAML: " + e.what());
  }
  if (!root || root.IsNull()) {
    return success();
  }
  if (!root.IsMap()) {
    return invalid(source + " must be a mapping with clusters, users and contexts");
  }
  const auto collect = [&](const char* list, const char* inner,
                           std::map<std::string, Entry>& into) -> Result<void> {
    const YAML::Node items = root[list];
    if (!items || items.IsNull()) {
      return success();
    }
    if (!items.IsSequence()) {
      return invalid(source + ": '" + list + "' must be a list");
    }
    for (const auto& item : items) {
      const std::string name = item.IsMap() ? scalar(item, "name") : std::string();
      if (name.empty()) {
        return invalid(source + ": an entry of '" + list + "' has no name");
      }
      YAML::Node body = item[inner];
      if (body && !body.IsNull() && !body.IsMap()) {
        return invalid(source + ": " + list + "['" + name + "']." + inner + " must be a mapping");
      }
      into.emplace(name, Entry{body ? body : YAML::Node(YAML::NodeType::Map), base});
    }
    return success();
  };
  try {
    if (auto r = collect("clusters", "cluster", merged.clusters); !r) {
      return r;
    }
    if (auto r = collect("users", "user", merged.users); !r) {
      return r;
    }
    if (auto r = collect("contexts", "context", merged.contexts); !r) {
      return r;
    }
    if (merged.current_context.empty()) {
      merged.current_context = scalar(root, "current-context");
    }
  } catch (const YAML::Exception& e) {
    return invalid(source + ": " + e.what());
  }
  return success();
}

fs::path resolvePath(const std::string& path, const fs::path& base) {
  fs::path p(path);
  if (p.is_relative() && !base.empty()) {
    return base / p;
  }
  return p;
}

// A PEM value given either inline as base64 (`<key>-data`) or as a file name (`<key>`).
Result<std::string> pemValue(const Entry& entry, const std::string& key, const std::string& where) {
  const std::string data = scalar(entry.node, (key + "-data").c_str());
  if (!data.empty()) {
    auto decoded = base64Decode(data);
    if (!decoded) {
      return invalid(where + ": " + key + "-data is not valid base64");
    }
    return *decoded;
  }
  const std::string file = scalar(entry.node, key.c_str());
  if (file.empty()) {
    return std::string();
  }
  return readFile(resolvePath(file, entry.base), where + " " + key);
}

bool truthy(const YAML::Node& node, const char* key) {
  const std::string value = scalar(node, key);
  return value == "true" || value == "True" || value == "yes";
}

std::string hostKey(const std::string& server, const std::string& identity) {
  return server + "|" + identity;
}

Result<KubeConnection> connectionOf(const Merged& merged, const std::string& wanted_context,
                                    const std::string& source) {
  const std::string context_name = wanted_context.empty() ? merged.current_context : wanted_context;
  if (context_name.empty()) {
    return invalid(source + " has no current-context; name one with cluster_config.context_name");
  }
  const auto context = merged.contexts.find(context_name);
  if (context == merged.contexts.end()) {
    return invalid(source + " has no context named '" + context_name + "'");
  }
  const std::string cluster_name = scalar(context->second.node, "cluster");
  const std::string user_name = scalar(context->second.node, "user");
  const auto cluster = merged.clusters.find(cluster_name);
  if (cluster == merged.clusters.end()) {
    return invalid(source + ": context '" + context_name + "' names cluster '" + cluster_name +
                   "', which is not defined");
  }
  const std::string where = source + " (context " + context_name + ")";
  KubeConnection connection;
  connection.source = where;
  connection.context_namespace = scalar(context->second.node, "namespace");
  connection.server = scalar(cluster->second.node, "server");
  if (connection.server.empty()) {
    return invalid(where + ": cluster '" + cluster_name + "' has no server");
  }
  connection.tls.enabled = connection.server.rfind("https://", 0) == 0;
  connection.tls.verify = !truthy(cluster->second.node, "insecure-skip-tls-verify");
  auto ca = pemValue(cluster->second, "certificate-authority", where);
  if (!ca) {
    return ca.error();
  }
  connection.tls.ca_pem = std::move(ca).value();

  std::string identity = "anonymous";
  if (!user_name.empty()) {
    const auto user = merged.users.find(user_name);
    if (user == merged.users.end()) {
      return invalid(where + ": user '" + user_name + "' is not defined");
    }
    const YAML::Node& u = user->second.node;
    if (u["exec"] && !u["exec"].IsNull()) {
      return invalid(where + ": user '" + user_name +
                     "' uses an exec credential plugin, which poolworker does not run; use a "
                     "token, a tokenFile or a client certificate");
    }
    if (u["auth-provider"] && !u["auth-provider"].IsNull()) {
      return invalid(where + ": user '" + user_name +
                     "' uses an auth-provider, which poolworker does not support");
    }
    if (!scalar(u, "username").empty()) {
      return invalid(where + ": user '" + user_name +
                     "' uses basic authentication (username/password), which Kubernetes "
                     "removed; use a token or a client certificate");
    }
    auto cert = pemValue(user->second, "client-certificate", where);
    if (!cert) {
      return cert.error();
    }
    auto key = pemValue(user->second, "client-key", where);
    if (!key) {
      return key.error();
    }
    if (cert->empty() != key->empty()) {
      return invalid(where + ": user '" + user_name +
                     "' needs both a client certificate and its key");
    }
    connection.tls.cert_pem = std::move(cert).value();
    connection.tls.key_pem = std::move(key).value();
    if (const std::string token = scalar(u, "token"); !token.empty()) {
      connection.token = BearerToken::fixed(token);
    } else if (const std::string file = scalar(u, "tokenFile"); !file.empty()) {
      connection.token = BearerToken::fromFile(resolvePath(file, user->second.base));
    }
    identity = "user:" + user_name;
  }
  connection.key = hostKey(connection.server, where + "|" + identity);
  return connection;
}

}  // namespace

BearerToken BearerToken::fixed(std::string token) {
  BearerToken t;
  t.token_ = std::move(token);
  return t;
}

BearerToken BearerToken::fromFile(std::filesystem::path path) {
  BearerToken t;
  t.path_ = std::move(path);
  t.cache_ = std::make_shared<Cache>();
  return t;
}

Result<std::string> BearerToken::get() const {
  if (path_.empty()) {
    return token_;
  }
  const std::lock_guard lock(cache_->mutex);
  const auto now = std::chrono::steady_clock::now();
  std::error_code ec;
  const auto mtime = fs::last_write_time(path_, ec);
  const bool fresh = !cache_->token.empty() && now - cache_->read_at < kTokenMaxAge &&
                     (ec || mtime == cache_->mtime);
  if (fresh) {
    return cache_->token;
  }
  auto text = readFile(path_, "the token file");
  if (!text) {
    if (!cache_->token.empty()) {
      return cache_->token;  // Keep the last good token through a rotation's brief gap.
    }
    return text.error();
  }
  std::string token = trim(std::move(text).value());
  if (token.empty()) {
    if (!cache_->token.empty()) {
      return cache_->token;
    }
    return invalid("the token file '" + path_.string() + "' is empty");
  }
  cache_->token = std::move(token);
  cache_->read_at = now;
  cache_->mtime = ec ? fs::file_time_type{} : mtime;
  return cache_->token;
}

std::optional<std::string> base64Decode(std::string_view text) {
  std::string out;
  unsigned int buffer = 0;
  int bits = 0;
  bool padding = false;
  for (const char c : text) {
    int value = -1;
    if (c >= 'A' && c <= 'Z') {
      value = c - 'A';
    } else if (c >= 'a' && c <= 'z') {
      value = c - 'a' + 26;
    } else if (c >= '0' && c <= '9') {
      value = c - '0' + 52;
    } else if (c == '+' || c == '-') {
      value = 62;
    } else if (c == '/' || c == '_') {
      value = 63;
    } else if (c == '=') {
      padding = true;
      continue;
    } else if (c == ' ' || c == '\n' || c == '\r' || c == '\t') {
      continue;
    } else {
      return std::nullopt;
    }
    if (padding) {
      return std::nullopt;  // Data after padding.
    }
    buffer = (buffer << 6U) | static_cast<unsigned int>(value);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>((buffer >> static_cast<unsigned int>(bits)) & 0xFFU));
    }
  }
  return out;
}

Result<KubeConnection> parseKubeconfig(const std::string& text, const std::string& context,
                                       const std::filesystem::path& base_directory,
                                       const std::string& source) {
  Merged merged;
  if (auto r = mergeDocument(text, base_directory, source, merged); !r) {
    return r.error();
  }
  return connectionOf(merged, context, source);
}

Result<KubeConnection> loadKubeconfigFiles(const std::string& kubeconfig_env,
                                           const std::filesystem::path& home,
                                           const std::string& context) {
  std::vector<fs::path> files;
  if (!kubeconfig_env.empty()) {
    std::stringstream list(kubeconfig_env);
    std::string item;
    while (std::getline(list, item, ':')) {
      if (!item.empty()) {
        files.emplace_back(item);
      }
    }
  } else if (!home.empty()) {
    files.push_back(home / ".kube" / "config");
  }
  Merged merged;
  std::string source;
  for (const auto& file : files) {
    std::error_code ec;
    if (!fs::exists(file, ec)) {
      continue;  // kubectl skips missing KUBECONFIG entries too.
    }
    const std::string name = "the kubeconfig " + file.string();
    auto text = readFile(file, "the kubeconfig");
    if (!text) {
      return text.error();
    }
    if (auto r = mergeDocument(*text, file.parent_path(), name, merged); !r) {
      return r.error();
    }
    source = source.empty() ? name : source + " (merged with " + file.string() + ")";
  }
  if (source.empty()) {
    return makeError(ErrorKind::NotFound,
                     kubeconfig_env.empty()
                         ? "no Kubernetes configuration: not in a cluster and no " +
                               (home / ".kube" / "config").string()
                         : "no Kubernetes configuration: none of the KUBECONFIG files exists");
  }
  return connectionOf(merged, context, source);
}

Result<KubeConnection> inClusterConnection(const std::string& service_host,
                                           const std::string& service_port,
                                           const std::filesystem::path& directory) {
  if (service_host.empty() || service_port.empty()) {
    return makeError(ErrorKind::NotFound, "not running in a Kubernetes cluster");
  }
  KubeConnection connection;
  const bool ipv6 = service_host.find(':') != std::string::npos;
  connection.server =
      "https://" + (ipv6 ? "[" + service_host + "]" : service_host) + ":" + service_port;
  connection.tls.enabled = true;
  connection.tls.verify = true;
  auto ca = readFile(directory / "ca.crt", "the service account's CA");
  if (!ca) {
    return ca.error();
  }
  if (trim(*ca).empty()) {
    return invalid("the service account's CA '" + (directory / "ca.crt").string() + "' is empty");
  }
  connection.tls.ca_pem = std::move(ca).value();
  connection.token = BearerToken::fromFile(directory / "token");
  if (auto token = connection.token.get(); !token) {
    return token.error();
  }
  if (auto ns = readFile(directory / "namespace", "the service account's namespace"); ns) {
    connection.context_namespace = trim(std::move(ns).value());
  }
  connection.source = "the pod's service account (" + directory.string() + ")";
  connection.key = hostKey(connection.server, "in-cluster");
  return connection;
}

ConnectionEnvironment ConnectionEnvironment::fromProcess() {
  const auto env = [](const char* name) {
    const char* value = std::getenv(name);
    return value == nullptr ? std::string() : std::string(value);
  };
  ConnectionEnvironment e;
  e.service_host = env("KUBERNETES_SERVICE_HOST");
  e.service_port = env("KUBERNETES_SERVICE_PORT");
  e.kubeconfig = env("KUBECONFIG");
  e.home = env("HOME");
  return e;
}

Result<KubeConnection> resolveConnection(const Json& cluster_config,
                                         const ConnectionEnvironment& environment) {
  if (cluster_config.is_object()) {
    const Json config = cluster_config.value("config", Json());
    if (!config.is_object()) {
      return invalid("cluster_config.config must be a kubeconfig object");
    }
    std::string context;
    if (const auto it = cluster_config.find("context_name");
        it != cluster_config.end() && it->is_string()) {
      context = it->get<std::string>();
    }
    // YAML is a superset of JSON: the block's object reads as a kubeconfig document.
    auto connection =
        parseKubeconfig(config.dump(), context, fs::path(), "the cluster_config kubeconfig");
    if (connection) {
      connection->key += "|inline:" + std::to_string(std::hash<std::string>{}(config.dump()));
    }
    return connection;
  }
  if (!cluster_config.is_null()) {
    return invalid("cluster_config must be a KubernetesClusterConfig block or null, not " +
                   std::string(cluster_config.type_name()));
  }
  auto in_cluster = inClusterConnection(environment.service_host, environment.service_port,
                                        environment.service_account_directory);
  if (in_cluster || in_cluster.error().kind != ErrorKind::NotFound) {
    return in_cluster;
  }
  return loadKubeconfigFiles(environment.kubeconfig, environment.home, "");
}

}  // namespace poolworker::backends::kubernetes
