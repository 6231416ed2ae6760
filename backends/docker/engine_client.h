#pragma once

/// @file
/// @brief The Docker Engine API as the backend uses it: versioned requests over the shared HTTP
/// client, the version negotiated once, and the engine's error answers turned into `Error`s.

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <poolworker/json.h>
#include <poolworker/result.h>

#include "backends/common/http_client.h"
#include "backends/docker/engine_version.h"

namespace boost::asio {
class io_context;
}  // namespace boost::asio

namespace poolworker::backends::docker {

/// @brief Settings of an engine client.
struct EngineClientOptions {
  /// Deadline of ordinary requests (DOCKER_CLIENT_TIMEOUT, 60 s by default).
  std::chrono::milliseconds timeout{60000};
  /// API version to speak instead of the negotiated one; empty: negotiate. For tests.
  std::string api_version;
};

/// @brief The text of an engine error answer: its `message`, else the body, else the status.
std::string engineMessage(const common::HttpResponse& response);

/// @brief An `Error` for an engine answer that is not a success.
///
/// Kinds: 400 `InvalidConfiguration`, 401 and 403 `Unauthorized`, 404 `NotFound`, 502 to 504
/// `Transient`, anything else `InfrastructureFailed`.
/// @param response the answer.
/// @param what what was attempted, e.g. "creating the container".
/// @return the error: "<what>: <engine message>".
Error engineError(const common::HttpResponse& response, const std::string& what);

/// @brief A Docker engine, reached through `common::HttpClient`.
///
/// Requests take unversioned paths ("/containers/create"); the client prefixes the API
/// version, negotiating it first when needed (`GET /version`, once; callers that arrive
/// meanwhile wait for the same answer). A failed negotiation is retried by the next request.
/// Not thread-safe: use it on the event loop's thread.
class EngineClient : public std::enable_shared_from_this<EngineClient> {
 public:
  /// @brief A client of the engine at `endpoint`.
  EngineClient(boost::asio::io_context& io, common::HttpEndpoint endpoint,
               EngineClientOptions options);

  /// @brief Negotiates the API version, or answers the cached result.
  void negotiate(std::function<void(Result<EngineVersion>)> done);

  /// @brief The engine's version once negotiated.
  const std::optional<EngineVersion>& engine() const { return engine_; }

  /// @brief The API version in use once negotiated, else empty.
  const std::string& apiVersion() const { return api_version_; }

  /// @brief Sends a versioned request and buffers the answer.
  /// @param method e.g. "POST".
  /// @param path unversioned path and query, e.g. "/containers/abc/json".
  /// @param body JSON body, or nullopt for none.
  /// @param done receives the answer (any status) or a transport error.
  /// @param timeout deadline; zero: the client's default.
  /// @param headers extra header fields.
  /// @return the call, to cancel it.
  std::shared_ptr<common::HttpCall> request(
      std::string method, std::string path, std::optional<Json> body,
      std::function<void(Result<common::HttpResponse>)> done,
      std::chrono::milliseconds timeout = std::chrono::milliseconds(0),
      std::vector<std::pair<std::string, std::string>> headers = {});

  /// @brief Sends a versioned request whose 2xx answer is streamed (see
  /// `common::HttpClient::stream`). It has no overall deadline; connecting and receiving the
  /// head must happen within the client's timeout.
  std::shared_ptr<common::HttpCall> stream(
      std::string method, std::string path, std::optional<Json> body,
      common::StreamHandlers handlers,
      std::vector<std::pair<std::string, std::string>> headers = {});

  /// @brief `GET /_ping` (unversioned): succeeds when the engine answers "OK".
  void ping(std::function<void(Result<void>)> done);

  /// @brief Cancels everything in flight; later requests fail with `Cancelled`.
  void shutdown();

  /// @brief Where the engine listens.
  const common::HttpEndpoint& endpoint() const { return http_.endpoint(); }

  /// @brief The deadline of ordinary requests.
  std::chrono::milliseconds timeout() const { return options_.timeout; }

 private:
  class DeferredCall;

  Error decorate(Error error) const;
  void start(const std::shared_ptr<DeferredCall>& call);

  boost::asio::io_context& io_;
  common::HttpClient http_;
  EngineClientOptions options_;
  std::optional<EngineVersion> engine_;
  std::string api_version_;
  bool negotiating_ = false;
  bool shut_down_ = false;
  std::vector<std::function<void(Result<EngineVersion>)>> negotiation_waiters_;
};

}  // namespace poolworker::backends::docker
