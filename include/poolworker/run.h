#pragma once

/// @file
/// @brief The plain data a backend receives and returns for one flow run.

#include <optional>
#include <string>

#include <poolworker/json.h>

namespace poolworker {

/// @brief Who and what a run is, as Prefect knows it. Backends use it for names, labels and logs.
///
/// Every field is a plain string; an empty string means "not known" (a run without a deployment
/// has an empty `deployment_id`).
struct RunContext {
  std::string flow_run_id;      ///< UUID of the flow run.
  std::string flow_run_name;    ///< Generated name of the run, e.g. "crimson-otter".
  std::string flow_id;          ///< UUID of the flow.
  std::string flow_name;        ///< Name of the flow.
  std::string deployment_id;    ///< UUID of the deployment, empty for ad-hoc runs.
  std::string deployment_name;  ///< Name of the deployment.
  std::string work_pool_name;   ///< Name of the work pool the run came from.
  std::string work_pool_id;     ///< UUID of that work pool.
  std::string worker_name;      ///< Name of this worker, as sent in its heartbeats.
  std::string api_url;          ///< PREFECT_API_URL the worker uses (no credentials in it).
};

/// @brief Everything a backend needs to start one run.
struct StartRequest {
  /// Identity of the run.
  RunContext run;
  /// The run's job configuration: the pool's base job template rendered with the deployment's
  /// and the flow run's job variables, blocks and variables resolved, and prepared as Prefect
  /// prepares it. For every backend this means: `env` is an object of string values holding
  /// the Prefect settings, `PREFECT__FLOW_RUN_ID`, the attribution variables and the user's
  /// env (nulls removed); `labels` is an object of strings with Prefect's `prefect.io/*`
  /// labels; `name` is rendered; `command` is a string, or null for the backend's default.
  /// The remaining keys are the backend's own (e.g. `image`, `job_manifest`).
  Json configuration;
};

/// @brief How a backend finds a run again: returned by `Backend::start`, stored in the journal,
/// handed back to `wait`, `kill` and `recover`, possibly by a later worker process.
struct RunHandle {
  /// Name of the backend that created the handle.
  std::string backend;
  /// The value reported to Prefect as the flow run's `infrastructure_pid`.
  std::string infrastructure_pid;
  /// Backend-private data (a process id and start time, a container id, a namespace and Job
  /// name). Must survive a JSON round trip: it is written to disk as is.
  Json data = Json::object();
};

/// @brief What happened to a run's infrastructure when it ended.
///
/// A backend reports facts; the worker decides the Prefect state from them.
struct Outcome {
  /// Exit code of the flow's process or container. Signals are negative (-9 for SIGKILL), as
  /// Prefect reports them. Empty when the infrastructure ended without an exit code (a pod
  /// evicted, a Job deleted) or when the code could not be learnt (a run adopted after a
  /// restart whose process has already been reaped).
  std::optional<int> exit_code;
  /// What happened, in a sentence a user understands, e.g. "Pod evicted: the node was low on
  /// memory". Empty for a plain exit.
  std::string detail;

  /// @brief True when the infrastructure ended cleanly (exit code 0).
  bool succeeded() const { return exit_code.has_value() && *exit_code == 0; }
};

/// @brief The answer of `Backend::recover`.
struct Recovery {
  /// True when the run's infrastructure still exists and the backend re-attached to it: the
  /// worker then calls `wait` on the handle.
  bool running = false;
  /// When `running` is false: how the infrastructure ended, as far as the backend can tell.
  Outcome outcome;
};

}  // namespace poolworker
