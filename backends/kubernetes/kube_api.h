#pragma once

/// @file
/// @brief Requests to one Kubernetes API server: authentication headers, JSON bodies, and
/// error answers (`Status` objects) turned into messages a user can act on.

#include <chrono>
#include <functional>
#include <memory>
#include <string>

#include <poolworker/json.h>
#include <poolworker/result.h>

#include "backends/common/http_client.h"
#include "backends/kubernetes/kube_config.h"

namespace boost::asio {
class io_context;
}  // namespace boost::asio

namespace poolworker::backends::kubernetes {

/// @brief What a request does, for error messages: "create" "jobs" in "default".
struct ApiAction {
  std::string verb;        ///< Kubernetes verb: create, get, list, watch, delete.
  std::string resource;    ///< Resource, e.g. "jobs" or "pods/log".
  std::string namespace_;  ///< Namespace, or empty.
  std::string name;        ///< Object name, or empty.
};

/// @brief Turns a non-2xx answer of the API server into an error a user understands:
/// 401 and 403 name the verb and resource (RBAC), 404 a missing namespace or object, 409 a
/// conflict, 422 the API's own validation message, 410 an expired resource version, 429 and
/// 5xx are transient. The Status body's `message` is quoted.
Error apiError(const common::HttpResponse& response, const ApiAction& action,
               const std::string& server);

/// @brief A client of one API server (one `KubeConnection`).
///
/// Not thread-safe: use it on the event loop's thread.
class KubeApi {
 public:
  KubeApi(boost::asio::io_context& io, KubeConnection connection);

  /// @brief The connection it uses.
  const KubeConnection& connection() const { return connection_; }

  /// @brief Sends a request with a JSON body (when `body` is not null) and parses the JSON
  /// answer. A non-2xx answer becomes `apiError`.
  void call(const std::string& method, const std::string& target, const Json& body,
            const ApiAction& action, std::function<void(Result<Json>)> done,
            std::chrono::milliseconds timeout = std::chrono::seconds(30));

  /// @brief Sends a GET whose answer is streamed (a watch, a followed log).
  std::shared_ptr<common::HttpCall> stream(const std::string& target,
                                           common::StreamHandlers handlers);

  /// @brief Cancels every request in flight.
  void cancelAll();

 private:
  Result<common::HttpRequest> makeRequest(const std::string& method, const std::string& target);

  boost::asio::io_context& io_;
  KubeConnection connection_;
  std::unique_ptr<common::HttpClient> client_;
  Error setup_error_;
  bool usable_ = false;
};

}  // namespace poolworker::backends::kubernetes
