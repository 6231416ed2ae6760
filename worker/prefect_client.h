#pragma once

// The client of Prefect's REST API: the calls a worker makes, with Prefect's headers, auth,
// CSRF protocol and retry policy. Transport is the project's HTTP client (Boost.Beast) on the
// worker's own io_context, with a few keep-alive connections; results come back as `Result`
// values, never as exceptions.

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <poolworker/json.h>
#include <poolworker/result.h>

#include "worker/async.h"
#include "worker/settings.h"

namespace poolworker::backends::common {
class HttpClient;
}  // namespace poolworker::backends::common

namespace poolworker::prefect {

/// @brief HTTP methods the client uses.
enum class Method { Get, Post, Patch, Delete };

/// @brief Status given to the observer for a request the server never received.
inline constexpr int kNotSent = -1;

/// @brief Called after every HTTP exchange, for metrics: method, endpoint template (e.g.
/// "/flow_runs/{id}/set_state"), status (0 for a transport error, `kNotSent` for a request
/// that never left: a pooled connection the server had closed, resent at once) and duration.
using RequestObserver = std::function<void(const char* method, const std::string& endpoint,
                                           int status, double seconds)>;

/// @brief How one call behaves.
struct CallOptions {
  CallOptions() = default;
  CallOptions(std::string endpoint_template, bool retry_transient = true,  // NOLINT
              std::optional<int> retries = std::nullopt)
      : endpoint(std::move(endpoint_template)), retry(retry_transient), max_retries(retries) {}

  /// Endpoint template for metrics; defaults to the path.
  std::string endpoint;
  /// Retry transient failures (408, 429, 502, 503, extra codes, transport errors).
  bool retry = true;
  /// Overrides the number of retries (PREFECT_CLIENT_MAX_RETRIES otherwise).
  std::optional<int> max_retries;
};

/// @brief The answer of `POST /flow_runs/{id}/set_state`.
struct OrchestrationResult {
  std::string status;        ///< "ACCEPT", "REJECT", "ABORT" or "WAIT".
  std::string reason;        ///< details.reason, when given.
  double delay_seconds = 0;  ///< details.delay_seconds for WAIT.
  Json state;                ///< The state now in effect (may be null for ABORT).

  std::string stateType() const;
  std::string stateName() const;
};

/// @brief Builds the `state` object of a set_state body (StateCreate: only the fields the
/// server accepts), with a fresh `transition_id` in its details.
Json makeState(const std::string& type, const std::string& name, const std::string& message,
               const std::string& flow_run_id);

/// @brief A random RFC 4122 version 4 UUID, lower case.
std::string newUuid();

/// @brief Formats a time as RFC 3339 with microseconds and an explicit UTC offset.
std::string formatTimestamp(std::chrono::system_clock::time_point time);

/// @brief Percent-encodes one path segment (names may hold spaces and other characters).
std::string encodePathSegment(const std::string& segment);

/// @brief An asynchronous client of one Prefect API.
///
/// Every method must be called on the io_context's thread and resumes there. Requests run
/// concurrently, on that thread: the client starts no thread of its own.
class PrefectClient {
 public:
  /// @param io the worker's event loop, where results are delivered.
  /// @param settings URL, credentials, timeouts, retries, TLS and custom headers.
  /// @param user_agent sent on every request.
  PrefectClient(asio::io_context& io, ApiSettings settings, std::string user_agent);
  ~PrefectClient();
  PrefectClient(const PrefectClient&) = delete;
  PrefectClient& operator=(const PrefectClient&) = delete;

  /// @brief Sets the function told about every HTTP exchange.
  void setObserver(RequestObserver observer) { observer_ = std::move(observer); }

  /// @brief Adds the attribution headers (X-Prefect-Worker-Name / -Id) to every request.
  void setWorkerIdentity(std::string name, std::string id);

  /// @brief Starts fetching the CSRF token now, when the server may want one, so that the first
  /// mutating call need not wait for it. Errors are left to that call, which asks again.
  void prefetchCsrfToken();

  /// @brief Abandons every request in flight (they complete with `Cancelled`) and refuses new
  /// ones. Called when the worker stops.
  void cancelAll();

  /// @brief Sends one request and returns the parsed JSON body (null for an empty body).
  /// Errors: `Transient` (transport, timeouts, 5xx, 408/429 after retries), `Unauthorized`
  /// (401/403), `NotFound` (404), `InvalidConfiguration` (400/422), `Internal` otherwise;
  /// `http_status` is set whenever the server answered.
  asio::awaitable<Result<Json>> call(Method method, const std::string& path,
                                     std::optional<Json> body = std::nullopt,
                                     CallOptions options = {});

  // ---- The endpoints a worker uses ------------------------------------------------------

  /// GET /health: true when the API answered as a Prefect server does.
  asio::awaitable<Result<Json>> health();
  /// GET /work_pools/{name}
  asio::awaitable<Result<Json>> readWorkPool(const std::string& name);
  /// POST /work_pools/ with name, type and optionally the base job template.
  asio::awaitable<Result<Json>> createWorkPool(const std::string& name, const std::string& type,
                                               const std::optional<Json>& base_job_template);
  /// PATCH /work_pools/{name} {"base_job_template": ...}
  asio::awaitable<Result<Json>> updateWorkPoolTemplate(const std::string& name,
                                                       const Json& base_job_template);
  /// POST /work_pools/{name}/workers/heartbeat
  asio::awaitable<Result<Json>> heartbeat(const std::string& pool, const std::string& worker_name,
                                          int heartbeat_interval_seconds);
  /// POST /work_pools/{name}/get_scheduled_flow_runs
  asio::awaitable<Result<Json>> getScheduledFlowRuns(const std::string& pool,
                                                     const std::vector<std::string>& queues,
                                                     std::chrono::system_clock::time_point before);
  /// GET /flow_runs/{id}
  asio::awaitable<Result<Json>> readFlowRun(const std::string& id);
  /// GET /flow_run_states/?flow_run_id= (every state of the run, oldest first)
  asio::awaitable<Result<Json>> readFlowRunStates(const std::string& id);
  /// GET /deployments/{id}
  asio::awaitable<Result<Json>> readDeployment(const std::string& id);
  /// GET /deployments/name/{flow}/{deployment}
  asio::awaitable<Result<Json>> readDeploymentByName(const std::string& flow_name,
                                                     const std::string& deployment_name);
  /// GET /flows/{id}
  asio::awaitable<Result<Json>> readFlow(const std::string& id);
  /// POST /flow_runs/{id}/set_state. The `state` object comes from `makeState`.
  asio::awaitable<Result<OrchestrationResult>> setFlowRunState(const std::string& id,
                                                               const Json& state, bool force,
                                                               bool retry = true);
  /// PATCH /flow_runs/{id} {"infrastructure_pid": ...}
  asio::awaitable<Result<Json>> setInfrastructurePid(const std::string& id, const std::string& pid);
  /// PATCH /flow_runs/{id}/labels
  asio::awaitable<Result<Json>> updateFlowRunLabels(const std::string& id, const Json& labels);
  /// POST /flow_runs/filter
  asio::awaitable<Result<Json>> filterFlowRuns(const Json& filter);
  /// POST /logs/ (an array of LogCreate)
  asio::awaitable<Result<Json>> createLogs(const Json& logs);
  /// POST /events (an array of Event)
  asio::awaitable<Result<Json>> emitEvents(const Json& events);
  /// GET /block_documents/{id}?include_secrets=true
  asio::awaitable<Result<Json>> readBlockDocument(const std::string& id);
  /// GET /block_types/slug/{slug}/block_documents/name/{name}?include_secrets=true
  asio::awaitable<Result<Json>> readBlockDocumentByName(const std::string& type_slug,
                                                        const std::string& name);
  /// GET /variables/name/{name}
  asio::awaitable<Result<Json>> readVariable(const std::string& name);

  /// @brief The API URL, for messages.
  const std::string& url() const { return settings_.url; }
  /// @brief True once any request got an HTTP answer.
  bool hasSucceeded() const { return has_succeeded_; }

 private:
  struct RawResponse;

  asio::awaitable<Result<RawResponse>> sendOnce(Method method, const std::string& path,
                                                const std::optional<std::string>& body,
                                                const std::string& endpoint);
  asio::awaitable<Result<void>> ensureCsrfToken();
  asio::awaitable<Result<void>> fetchCsrfToken();
  std::chrono::milliseconds retryDelay(int attempt, const RawResponse* response) const;

  asio::io_context& io_;
  ApiSettings settings_;
  std::string user_agent_;
  std::string base_path_;  ///< The URL's path ("/api"), before every endpoint's.
  std::unique_ptr<backends::common::HttpClient> http_;
  bool cancelled_ = false;
  RequestObserver observer_;
  std::string worker_name_;
  std::string worker_id_;
  bool has_succeeded_ = false;
  bool csrf_enabled_ = false;
  std::string csrf_client_;
  std::string csrf_token_;
  std::chrono::system_clock::time_point csrf_expiration_{};
  std::shared_ptr<Started<Result<void>>> csrf_fetch_;  ///< The token fetch in flight, if any.
};

}  // namespace poolworker::prefect
