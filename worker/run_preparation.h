#pragma once

// From a flow run to what a backend starts: Prefect's precedence of job variables, templating,
// block and variable resolution, then `prepare_for_flow_run` (env, labels, name).

#include <map>
#include <string>
#include <vector>

#include <poolworker/json.h>
#include <poolworker/result.h>
#include <poolworker/run.h>

#include "worker/async.h"

namespace poolworker {
namespace prefect {
class PrefectClient;
}  // namespace prefect

/// @brief The version of Prefect whose behaviour poolworker follows, used where Prefect writes
/// its own version (the `prefect.io/version` label, worker events).
inline constexpr const char* kPrefectCompatVersion = "3.8.8";

/// @brief What the worker knows about the world when it prepares a run.
struct PreparationContext {
  Json pool;                 ///< The work pool (name, id, base_job_template).
  Json flow_run;             ///< The flow run.
  Json deployment;           ///< The deployment, or null.
  Json flow;                 ///< The flow, or null.
  std::string worker_name;
  std::string worker_id;     ///< Cloud only; empty otherwise.
  std::map<std::string, std::string> settings_env;  ///< Explicitly set PREFECT_* settings.
  std::string api_url;
};

/// @brief A run ready for a backend, plus what must be masked when it is shown.
struct PreparedRun {
  StartRequest request;
  /// Strings that are secrets (API credentials, values read from block documents): `render`
  /// masks them.
  std::vector<std::string> secrets;
};

/// @brief Converts an ISO 8601 timestamp to UTC in Python's `isoformat()` form
/// ("2026-08-21T16:27:43.123456+00:00", microseconds omitted when zero). Returns the input
/// unchanged when it cannot be parsed.
std::string pythonIsoformatUtc(const std::string& timestamp);

/// @brief Builds the RunContext (ids and names) of a run.
RunContext makeRunContext(const PreparationContext& ctx);

/// @brief The pure steps after templating and resolution: coercion of the shared fields and
/// Prefect's `prepare_for_flow_run` (env with settings, PREFECT__FLOW_RUN_ID and attribution;
/// `prefect.io/*` labels; rendered name). `command` stays null when not configured: the
/// backend supplies its default.
Result<Json> prepareConfiguration(Json configuration, const PreparationContext& ctx);

/// @brief The whole preparation of a run, fetching the block documents and variables its
/// configuration refers to.
asio::awaitable<Result<PreparedRun>> prepareRun(prefect::PrefectClient& client,
                                                const PreparationContext& ctx);

/// @brief Replaces every occurrence of each secret (4 characters or longer) in every string of
/// `value` with "********". Keys are left alone.
Json maskSecretsInJson(const Json& value, const std::vector<std::string>& secrets);

}  // namespace poolworker
