#pragma once

/// @file
/// @brief Where the Kubernetes API server is and how to authenticate to it: an inline kubeconfig
/// (the job configuration's `cluster_config`), the pod's service account, or a kubeconfig file,
/// tried in that order as Prefect's Kubernetes worker does.

#include <chrono>
#include <filesystem>
#include <mutex>
#include <optional>
#include <string>

#include <poolworker/json.h>
#include <poolworker/result.h>

#include "backends/common/http_client.h"

namespace poolworker::backends::kubernetes {

/// @brief A bearer token, fixed or read from a file that is re-read as it rotates (projected
/// service-account tokens are replaced about every hour; kubernetes_asyncio re-reads the file
/// when its copy is a minute old, this re-reads it then or as soon as the file changed).
class BearerToken {
 public:
  BearerToken() = default;
  /// @brief A token that never changes.
  static BearerToken fixed(std::string token);
  /// @brief A token read from `path` on first use and again when it may have rotated.
  static BearerToken fromFile(std::filesystem::path path);

  /// @brief True when there is a token (fixed or from a file).
  bool present() const { return !token_.empty() || !path_.empty(); }

  /// @brief The current token; an error naming the file when it cannot be read or is empty.
  Result<std::string> get() const;

  /// @brief The file the token comes from, or empty.
  const std::filesystem::path& path() const { return path_; }

 private:
  std::string token_;
  std::filesystem::path path_;
  struct Cache {
    std::mutex mutex;
    std::string token;
    std::chrono::steady_clock::time_point read_at{};
    std::filesystem::file_time_type mtime{};
  };
  std::shared_ptr<Cache> cache_;
};

/// @brief A resolved way to reach one API server.
struct KubeConnection {
  /// The API server's URL, e.g. "https://10.0.0.1:443".
  std::string server;
  /// TLS: CA, client certificate and key as PEM text (never file names, so that an inline
  /// kubeconfig and a file one behave alike), and whether to verify the server.
  common::TlsSettings tls;
  /// The bearer token, if the user authenticates with one.
  BearerToken token;
  /// The namespace of the kubeconfig context (or of the service account); empty: none.
  std::string context_namespace;
  /// Where this came from, for messages: "the kubeconfig /home/u/.kube/config (context kind)".
  std::string source;
  /// Identifies the cluster and credentials, so that runs that use the same ones share one
  /// watch. Contains no secret.
  std::string key;
};

/// @brief Reads a kubeconfig document (YAML or JSON text) at its current context or at
/// `context`. Relative file names in it are resolved against `base_directory`.
/// @param text the kubeconfig.
/// @param context the context to use; empty: `current-context`.
/// @param base_directory where relative `certificate-authority`, `client-certificate`,
///   `client-key` and `tokenFile` paths are resolved.
/// @param source names the kubeconfig in messages, e.g. "the kubeconfig ~/.kube/config".
/// @return the connection, or `InvalidConfiguration` naming the missing or bad entry.
Result<KubeConnection> parseKubeconfig(const std::string& text, const std::string& context,
                                       const std::filesystem::path& base_directory,
                                       const std::string& source);

/// @brief Reads the kubeconfig files of a `KUBECONFIG` value (colon-separated; the first file
/// that sets a name wins, as kubectl merges them), or `~/.kube/config` when it is empty.
/// @param kubeconfig_env the value of `KUBECONFIG`, or empty.
/// @param home the user's home directory.
/// @param context the context to use; empty: `current-context`.
Result<KubeConnection> loadKubeconfigFiles(const std::string& kubeconfig_env,
                                           const std::filesystem::path& home,
                                           const std::string& context);

/// @brief The in-cluster connection of a pod: `https://$KUBERNETES_SERVICE_HOST:$..._PORT`,
/// the CA `ca.crt`, the token `token` (re-read as it rotates) and the `namespace` of
/// `service_account_directory`.
/// @return the connection; `NotFound` when not in a cluster (host or port unset);
///   `InvalidConfiguration` when the service-account files are missing or empty.
Result<KubeConnection> inClusterConnection(const std::string& service_host,
                                           const std::string& service_port,
                                           const std::filesystem::path& service_account_directory);

/// @brief What the environment offers, for `resolveConnection`.
struct ConnectionEnvironment {
  std::string service_host;  ///< KUBERNETES_SERVICE_HOST.
  std::string service_port;  ///< KUBERNETES_SERVICE_PORT.
  /// Where a pod's service account is mounted.
  std::filesystem::path service_account_directory = "/var/run/secrets/kubernetes.io/serviceaccount";
  std::string kubeconfig;      ///< KUBECONFIG.
  std::filesystem::path home;  ///< HOME.

  /// @brief The environment of this process.
  static ConnectionEnvironment fromProcess();
};

/// @brief Picks the connection of a run in Prefect's order: the `cluster_config` block of its
/// job configuration (`{"config": <kubeconfig object>, "context_name": ...}`), else the
/// in-cluster service account, else `KUBECONFIG` or `~/.kube/config`.
/// @param cluster_config the job configuration's `cluster_config`, or null.
/// @param environment what the process environment offers.
Result<KubeConnection> resolveConnection(const Json& cluster_config,
                                         const ConnectionEnvironment& environment);

/// @brief Decodes standard base64 (with or without padding, whitespace ignored).
/// @return the bytes, or nullopt when `text` is not base64.
std::optional<std::string> base64Decode(std::string_view text);

}  // namespace poolworker::backends::kubernetes
