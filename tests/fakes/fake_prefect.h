#pragma once

/// @file
/// @brief An in-process fake of the Prefect 3 server's REST API, for worker tests.
///
/// The fake serves HTTP on 127.0.0.1 (an ephemeral port) from its own thread and follows the
/// real server's semantics for everything a worker does: status codes and error bodies,
/// request validation (`extra="forbid"` models answer 422), the orchestration rules of
/// `CoreFlowPolicy` that a worker meets when it proposes states, the work-pool poll query with
/// its queue priorities and concurrency limits, auth and CSRF. A test seeds pools,
/// deployments and flow runs, drives a worker against `apiUrl()`, injects faults, and inspects
/// what the worker did. Every public method is thread-safe.
///
/// Where the fake does not implement something the real server would accept (a filter field,
/// a sort order), it answers 500 with a message that says so, so that a gap in the fake shows
/// up as a test failure rather than as a silently wrong answer.

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <poolworker/json.h>

namespace poolworker::testing {

/// @brief One request the fake received, with the answer it gave.
struct RecordedRequest {
  /// Method as sent, e.g. "POST".
  std::string method;
  /// Decoded path relative to the API root, e.g. "/flow_runs/<id>/set_state".
  std::string path;
  /// Request target as sent, e.g. "/api/work_pools/p?x=1".
  std::string target;
  /// Header fields by lower-cased name.
  std::map<std::string, std::string> headers;
  /// The request body.
  std::string body;
  /// Status answered; 0 when the connection was dropped without an answer.
  int status = 0;
  /// Body answered.
  std::string response_body;
  /// When the request arrived.
  std::chrono::system_clock::time_point time;

  /// @brief The request body parsed as JSON, or null when it is empty or not JSON.
  Json json() const;
};

/// @brief Server settings, as `PREFECT_SERVER_*` settings would give them.
struct FakePrefectOptions {
  /// `PREFECT_SERVER_API_AUTH_STRING`: when set, requests need `Authorization: Basic ...`.
  std::optional<std::string> auth_string;
  /// `PREFECT_SERVER_API_CSRF_PROTECTION_ENABLED`.
  bool csrf_enabled = false;
  /// `PREFECT_SERVER_API_CSRF_TOKEN_EXPIRATION`.
  std::chrono::seconds csrf_token_lifetime{3600};
  /// `PREFECT_SERVER_API_DEFAULT_LIMIT`: default and maximum `limit` of list calls.
  int default_limit = 200;
  /// `PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS`.
  std::chrono::seconds concurrency_slot_wait{30};
  /// Keep each request's headers and bodies in `requests()`. A benchmark that sends hundreds
  /// of thousands of requests turns it off; method, path, status and time are always kept.
  bool record_bodies = true;
};

/// @brief Everything `createFlowRun` can set.
struct FlowRunSpec {
  /// The deployment the run belongs to; it gives the flow, pool, queue and parameters.
  std::string deployment_id;
  /// The flow of a run without a deployment (ignored when `deployment_id` is set).
  std::string flow_id;
  /// Pool and queue of a run without a deployment; empty means none.
  std::string work_pool;
  std::string work_queue;
  /// Run name; a generated one when empty.
  std::string name;
  /// The run's own job variables (`flow_run.job_variables`).
  Json job_variables = Json::object();
  /// Parameters, merged over the deployment's.
  Json parameters = Json::object();
  /// Scheduled start relative to now (negative: in the past).
  std::chrono::milliseconds scheduled_in{0};
  /// Initial state; SCHEDULED runs get a `scheduled_time`.
  std::string state_type = "SCHEDULED";
  /// Initial state name; the capitalised type when empty.
  std::string state_name;
  /// `empirical_policy.retries`.
  std::optional<int> retries;
  /// Run tags.
  std::vector<std::string> tags;
};

/// @brief The fake Prefect server. Starts serving in the constructor and stops in the
/// destructor.
class FakePrefect {
 public:
  /// @brief Starts the server on an ephemeral port of 127.0.0.1.
  /// @param options server settings.
  explicit FakePrefect(FakePrefectOptions options = {});
  /// @brief Stops the server and joins its thread. Held or delayed answers are never sent.
  ~FakePrefect();
  FakePrefect(const FakePrefect&) = delete;
  FakePrefect& operator=(const FakePrefect&) = delete;

  /// @brief The API URL, `http://127.0.0.1:<port>/api`.
  std::string apiUrl() const;
  /// @brief The bound port.
  uint16_t port() const;

  // ---- Server settings at run time ------------------------------------------------------

  /// @brief Sets or clears the basic-auth string (`user:password`).
  void setAuthString(std::optional<std::string> auth_string);
  /// @brief Turns CSRF protection on or off.
  void setCsrfEnabled(bool enabled);
  /// @brief Makes every CSRF token issued so far expired.
  void expireCsrfTokens();
  /// @brief Maintenance mode: every request is answered 503 with `Prefect-Maintenance: true`.
  /// @param on whether the mode is active.
  /// @param retry_after_seconds value of the `Retry-After` header; none when empty.
  void setMaintenance(bool on, std::optional<double> retry_after_seconds = 1.0);

  // ---- Seeding ------------------------------------------------------------------------

  /// @brief Creates a work pool and its `default` queue, as `POST /work_pools/` would.
  /// @return the pool's id.
  std::string createWorkPool(const std::string& name, const std::string& type,
                             Json base_job_template = Json::object(),
                             std::optional<int> concurrency_limit = std::nullopt);
  /// @brief Creates a queue in a pool. Without a priority it takes the first free one.
  /// @return the queue's id.
  std::string createWorkQueue(const std::string& pool, const std::string& name,
                              std::optional<int> priority = std::nullopt,
                              std::optional<int> concurrency_limit = std::nullopt);
  /// @brief Pauses or resumes a pool.
  void setWorkPoolPaused(const std::string& pool, bool paused);
  /// @brief Pauses or resumes a queue.
  void setWorkQueuePaused(const std::string& pool, const std::string& queue, bool paused);
  /// @brief Sets a queue's concurrency limit (empty: none).
  void setWorkQueueConcurrencyLimit(const std::string& pool, const std::string& queue,
                                    std::optional<int> limit);
  /// @brief Creates a flow.
  /// @return the flow's id.
  std::string createFlow(const std::string& name);
  /// @brief Creates a deployment of `flow_id` on `pool`/`queue`.
  /// @param concurrency_limit the deployment concurrency limit; none when empty.
  /// @param collision_strategy `ENQUEUE` or `CANCEL_NEW`.
  /// @return the deployment's id.
  std::string createDeployment(const std::string& flow_id, const std::string& name,
                               const std::string& pool, const std::string& queue = "default",
                               Json job_variables = Json::object(),
                               std::optional<int> concurrency_limit = std::nullopt,
                               const std::string& collision_strategy = "ENQUEUE");
  /// @brief Merges `fields` into a deployment (e.g. `{"pull_steps": [...]}`).
  void updateDeployment(const std::string& id, const Json& fields);
  /// @brief Deletes a deployment; its runs keep their `deployment_id`.
  void deleteDeployment(const std::string& id);
  /// @brief Creates a SCHEDULED run of a deployment or, given a flow id, of that flow alone.
  /// @param scheduled_in the scheduled start relative to now.
  /// @return the run's id.
  std::string createFlowRun(const std::string& deployment_or_flow_id,
                            Json job_variables = Json::object(),
                            std::chrono::milliseconds scheduled_in = std::chrono::milliseconds(0),
                            Json parameters = Json::object());
  /// @brief Creates a flow run from a full specification.
  /// @return the run's id.
  std::string createFlowRun(const FlowRunSpec& spec);
  /// @brief Deletes a flow run.
  void deleteFlowRun(const std::string& id);
  /// @brief Creates a block document of the type with slug `type_slug`.
  /// @param secret_keys top-level keys of `data` that are obfuscated unless
  /// `include_secrets=true`.
  /// @return the document's id.
  std::string createBlockDocument(const std::string& type_slug, const std::string& name, Json data,
                                  std::vector<std::string> secret_keys = {});
  /// @brief Creates or replaces a Prefect variable.
  void createVariable(const std::string& name, Json value);

  // ---- Inspection ---------------------------------------------------------------------

  /// @brief A flow run as `GET /flow_runs/{id}` returns it; null when unknown.
  Json flowRun(const std::string& id) const;
  /// @brief Every flow run.
  std::vector<Json> flowRuns() const;
  /// @brief Every state the run has had, oldest first (each with id, type, name, timestamp,
  /// message, state_details).
  std::vector<Json> stateHistory(const std::string& id) const;
  /// @brief The logs received for one flow run, in arrival order.
  std::vector<Json> logsFor(const std::string& flow_run_id) const;
  /// @brief Every log received.
  std::vector<Json> logs() const;
  /// @brief Every event received by `POST /events`.
  std::vector<Json> events() const;
  /// @brief A work pool as `GET /work_pools/{name}` returns it; null when unknown.
  Json workPool(const std::string& name) const;
  /// @brief A work queue; null when unknown.
  Json workQueue(const std::string& pool, const std::string& name) const;
  /// @brief A deployment; null when unknown.
  Json deployment(const std::string& id) const;
  /// @brief Every heartbeat received: `{"work_pool", "name", "heartbeat_interval_seconds",
  /// "raw" (the request body), "time"}`.
  std::vector<Json> heartbeats() const;
  /// @brief Every request received, oldest first.
  std::vector<RecordedRequest> requests() const;
  /// @brief How many requests match `method` ("" or "*" for any) and `path_regex` (the whole
  /// API-relative path must match).
  int countRequests(const std::string& method, const std::string& path_regex) const;
  /// @brief The distinct User-Agent values seen, in order of first appearance.
  std::vector<std::string> userAgents() const;
  /// @brief Forgets the recorded requests.
  void clearRequests();

  // ---- Acting as a user or another client ----------------------------------------------

  /// @brief Proposes a state as the UI would, through the same orchestration rules.
  /// @param name the state name; the capitalised type when empty.
  /// @param force skip the orchestration rules (as `force=true` does).
  /// @return the OrchestrationResult.
  Json setState(const std::string& id, const std::string& type, const std::string& name = "",
                const std::string& message = "", bool force = false);
  /// @brief Merges fields into a flow run (e.g. `{"infrastructure_pid": "12"}`).
  void updateFlowRun(const std::string& id, const Json& fields);

  /// @brief Waits until `predicate` holds. It is checked now and after every request and
  /// every change made through this class.
  /// @return false when `timeout` passed first.
  bool waitUntil(const std::function<bool(FakePrefect&)>& predicate,
                 std::chrono::milliseconds timeout);

  // ---- Fault injection ----------------------------------------------------------------
  // Each fault applies to the next `count` requests whose method matches (`""` or `"*"`:
  // any) and whose API-relative path matches `path_regex` entirely. Faults apply before
  // authentication and routing, as a proxy in front of the server would.

  /// @brief Answers with `status` and `body` instead of handling the request.
  /// @param retry_after_seconds adds a `Retry-After` header.
  void failNext(const std::string& method, const std::string& path_regex, int status, int count = 1,
                std::string body = "", std::optional<double> retry_after_seconds = std::nullopt);
  /// @brief Closes the connection without an answer, and without handling the request.
  void dropNext(const std::string& method, const std::string& path_regex, int count = 1);
  /// @brief Handles the request at once but sends the answer only after `delay`; other
  /// connections are served meanwhile.
  void delayNext(const std::string& method, const std::string& path_regex,
                 std::chrono::milliseconds delay, int count = 1);
  /// @brief Handles the request at once but holds its answer until the next request on the
  /// same route has been answered. Each held answer consumes one of `count`.
  void reorderNext(const std::string& method, const std::string& path_regex, int count = 1);
  /// @brief Removes every pending fault and sends every held answer.
  void clearFaults();
  /// @brief Makes the next `set_state` of a run answer `result` (`{"status": ...,
  /// "details": {...}, "state": ...}`) instead of running the rules. ACCEPT writes the
  /// proposed state; REJECT with a `state` writes that state; other answers write nothing
  /// and return the current state unless `result` has one.
  void injectOrchestration(const std::string& flow_run_id, Json result);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

/// @brief Formats a time the way the server does: `2026-08-21T16:27:43.123456Z`.
std::string formatPrefectTime(std::chrono::system_clock::time_point time);

/// @brief Parses what the server accepts: RFC 3339 / ISO 8601 with `T` or a space, optional
/// fraction, `Z` or `±HH:MM` (no offset: UTC).
std::optional<std::chrono::system_clock::time_point> parsePrefectTime(const std::string& text);

}  // namespace poolworker::testing
