#include "backends/kubernetes/kube_api.h"

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>

namespace poolworker::backends::kubernetes {

namespace {

std::string where(const ApiAction& action) {
  std::string out = action.resource;
  if (!action.name.empty()) {
    out += " '" + action.name + "'";
  }
  if (!action.namespace_.empty()) {
    out += " in namespace '" + action.namespace_ + "'";
  }
  return out;
}

}  // namespace

Error apiError(const common::HttpResponse& response, const ApiAction& action,
               const std::string& server) {
  const Json status = Json::parse(response.body, nullptr, false);
  std::string message;
  std::string reason;
  if (status.is_object()) {
    message = status.value("message", "");
    reason = status.value("reason", "");
  }
  if (message.empty()) {
    message = response.body.substr(0, 500);
  }
  const int code = response.status;
  const std::string quoted = message.empty() ? "" : ": " + message;
  switch (code) {
    case 401:
      return makeError(ErrorKind::Unauthorized,
                       "the Kubernetes API server at " + server +
                           " refused the credentials (401 Unauthorized) to " + action.verb + " " +
                           where(action) + quoted,
                       code);
    case 403:
      return makeError(
          ErrorKind::Unauthorized,
          "forbidden by RBAC: the worker's account may not " + action.verb + " " + action.resource +
              (action.namespace_.empty() ? std::string()
                                         : " in namespace '" + action.namespace_ + "'") +
              " (grant the verb '" + action.verb + "' on '" + action.resource + "' in its Role)" +
              quoted,
          code);
    case 404:
      if (!action.namespace_.empty() && action.name.empty() &&
          message.find("namespaces \"" + action.namespace_ + "\" not found") != std::string::npos) {
        return makeError(ErrorKind::InfrastructureFailed,
                         "namespace '" + action.namespace_ +
                             "' does not exist in the cluster (set the job variable 'namespace' "
                             "to an existing one)" +
                             quoted,
                         code);
      }
      return makeError(ErrorKind::NotFound, where(action) + " not found" + quoted, code);
    case 409:
      return makeError(ErrorKind::InfrastructureFailed,
                       "conflict while trying to " + action.verb + " " + where(action) + quoted,
                       code);
    case 410:
      return makeError(ErrorKind::Transient, "resource version expired (410 Gone)" + quoted, code);
    case 422:
      return makeError(ErrorKind::InvalidConfiguration,
                       "the Kubernetes API server rejected the " + action.resource +
                           " manifest as invalid" + quoted,
                       code);
    case 400:
      return makeError(ErrorKind::InvalidConfiguration,
                       "the Kubernetes API server refused to " + action.verb + " " + where(action) +
                           " (400 Bad Request)" + quoted,
                       code);
    default:
      break;
  }
  const bool transient = code == 429 || code >= 500;
  return makeError(transient ? ErrorKind::Transient : ErrorKind::InfrastructureFailed,
                   "the Kubernetes API server answered " + std::to_string(code) + " " + reason +
                       " to " + action.verb + " " + where(action) + quoted,
                   code);
}

KubeApi::KubeApi(boost::asio::io_context& io, KubeConnection connection)
    : io_(io), connection_(std::move(connection)) {
  auto endpoint = common::parseHttpEndpoint(connection_.server, connection_.tls, "80", "443");
  if (!endpoint) {
    setup_error_ = makeError(
        ErrorKind::InvalidConfiguration,
        "the API server address of " + connection_.source + ": " + endpoint.error().message);
    return;
  }
  common::HttpClientOptions options;
  options.service_name = "the Kubernetes API server";
  options.user_agent = std::string("poolworker/") + POOLWORKER_VERSION;
  client_ = std::make_unique<common::HttpClient>(io, std::move(endpoint).value(), options);
  usable_ = true;
}

Result<common::HttpRequest> KubeApi::makeRequest(const std::string& method,
                                                 const std::string& target) {
  if (!usable_) {
    return setup_error_;
  }
  common::HttpRequest request;
  request.method = method;
  request.target = target;
  request.headers.emplace_back("Accept", "application/json");
  if (connection_.token.present()) {
    auto token = connection_.token.get();
    if (!token) {
      return makeError(ErrorKind::InfrastructureFailed,
                       "no token for " + connection_.source + ": " + token.error().message);
    }
    request.headers.emplace_back("Authorization", "Bearer " + *token);
  }
  return request;
}

void KubeApi::call(const std::string& method, const std::string& target, const Json& body,
                   const ApiAction& action, std::function<void(Result<Json>)> done,
                   std::chrono::milliseconds timeout) {
  auto request = makeRequest(method, target);
  if (!request) {
    // Callbacks never run inline.
    auto error = request.error();
    auto task = [done = std::move(done), error]() { done(error); };
    boost::asio::post(io_, std::move(task));
    return;
  }
  if (!body.is_null()) {
    request->body = body.dump();
    request->content_type = "application/json";
  }
  request->timeout = timeout;
  const std::string server = connection_.server;
  client_->request(std::move(request).value(), [done = std::move(done), action,
                                                server](Result<common::HttpResponse> answer) {
    if (!answer) {
      Error error = std::move(answer).error();
      if (error.kind == ErrorKind::Transient) {
        error.message = "the Kubernetes API server is unreachable: " + error.message;
      }
      done(std::move(error));
      return;
    }
    if (answer->status < 200 || answer->status >= 300) {
      done(apiError(*answer, action, server));
      return;
    }
    Json parsed = Json::parse(answer->body, nullptr, false);
    if (parsed.is_discarded()) {
      done(makeError(ErrorKind::Internal, "the Kubernetes API server answered " + action.verb +
                                              " " + action.resource +
                                              " with a body that is not JSON"));
      return;
    }
    done(std::move(parsed));
  });
}

std::shared_ptr<common::HttpCall> KubeApi::stream(const std::string& target,
                                                  common::StreamHandlers handlers) {
  auto request = makeRequest("GET", target);
  if (!request) {
    auto task = [on_done = std::move(handlers.on_done), error = request.error()]() {
      on_done(error);
    };
    boost::asio::post(io_, std::move(task));
    return nullptr;
  }
  return client_->stream(std::move(request).value(), std::move(handlers));
}

void KubeApi::cancelAll() {
  if (client_) {
    client_->cancelAll();
  }
}

}  // namespace poolworker::backends::kubernetes
