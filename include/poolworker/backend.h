#pragma once

/// @file
/// @brief The Backend interface: how poolworker starts, follows, stops and re-finds a flow run's
/// infrastructure, and the factory through which a backend is registered.
///
/// A backend knows its own infrastructure (processes, containers, Kubernetes Jobs) and nothing
/// of Prefect's API. It reports what happened to the infrastructure; the worker turns that into
/// Prefect states, logs and metrics. Built-in backends and plugins implement the same interface.
///
/// Lifecycle of one run (after Nomad's task drivers):
///   1. `start(request)` creates the infrastructure and returns a `RunHandle` as soon as it
///      exists (a pid, a container id). The worker journals the handle and reports its
///      `infrastructure_pid` to Prefect.
///   2. `wait(handle)` completes when the infrastructure has ended, with its `Outcome`.
///   3. `kill(handle, grace)` stops it: politely, then by force once `grace` has passed.
///   4. After a worker restart, `recover(handle)` re-attaches to a journalled run; when it is
///      still running the worker calls `wait` again.
///
/// Threading: the worker calls every method on its event-loop thread (see `Executor`) and
/// expects every callback on that thread too, exactly once. Methods must not block.

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <poolworker/executor.h>
#include <poolworker/json.h>
#include <poolworker/log_sink.h>
#include <poolworker/result.h>
#include <poolworker/run.h>

namespace poolworker {

/// @brief A completion callback. Called exactly once, on the worker's event-loop thread.
template <typename T>
using Callback = std::function<void(Result<T>)>;

/// @brief One option a backend accepts in the worker's configuration file.
struct OptionSpec {
  std::string key;            ///< Name under `backends.<name>` in the YAML config, e.g. "python".
  std::string type;           ///< "string", "integer", "number", "boolean", "object" or "array".
  Json default_value;         ///< Value used when the option is absent (null when none).
  std::string description;    ///< One sentence for `poolworker backends` and the docs.
};

/// @brief Describes a backend: what `poolworker backends` prints.
struct BackendInfo {
  std::string name;         ///< Worker type it serves, e.g. "process"; a pool's `type`.
  std::string version;      ///< Version of the backend itself.
  std::string origin;       ///< "built-in", or the path of the plugin it was loaded from.
  std::string description;  ///< One line about what it runs the flows on.
  std::vector<OptionSpec> options;  ///< Options it accepts; any other key is an error.
};

/// @brief What a backend instance is given when it is created.
struct BackendContext {
  /// The worker's event loop. Lives longer than the backend.
  Executor* executor = nullptr;
  /// Name of the worker, for labels and for naming infrastructure.
  std::string worker_name;
  /// A directory that belongs to this backend instance, for files it keeps between restarts.
  std::string state_directory;
  /// The options from `backends.<name>` of the configuration file, already checked against
  /// `BackendInfo::options` and completed with their defaults.
  Json options = Json::object();
  /// The worker's own log, for messages that concern no single run.
  std::shared_ptr<LogSink> worker_log;
};

/// @brief Runs flow runs on one kind of infrastructure.
class Backend {
 public:
  virtual ~Backend() = default;

  /// @brief Creates the infrastructure for a run and starts it.
  ///
  /// Completes as soon as the infrastructure exists, with a handle whose `infrastructure_pid`
  /// identifies it. Must not wait for the run to end. An error means nothing was left running
  /// (or what was created has been cleaned up); its kind tells the worker why:
  /// `InvalidConfiguration` for a bad job configuration, `InfrastructureFailed` when the
  /// infrastructure refused the run, `Transient` when it could not be reached.
  /// @param request the run's identity and its prepared job configuration.
  /// @param log the run's log; keep it for as long as the run is followed.
  /// @param done receives the handle or the error.
  virtual void start(const StartRequest& request, std::shared_ptr<LogSink> log,
                     Callback<RunHandle> done) = 0;

  /// @brief Follows a started or recovered run until its infrastructure ends.
  ///
  /// Completes with the outcome. An error means the backend lost track of the run (its
  /// infrastructure may still be running); the worker then reports the run as lost.
  /// @param handle as returned by `start` or given to `recover`.
  /// @param log the run's log (for streamed output and messages).
  /// @param done receives the outcome.
  virtual void wait(const RunHandle& handle, std::shared_ptr<LogSink> log,
                    Callback<Outcome> done) = 0;

  /// @brief Stops a run's infrastructure: politely first, then by force after `grace`.
  ///
  /// Completes once the infrastructure is gone or the forceful stop has been sent. An
  /// infrastructure that is already gone is a success. A pending `wait` on the same handle
  /// then completes with the outcome.
  /// @param handle the run to stop.
  /// @param grace how long to wait between the polite and the forceful stop.
  /// @param done receives success or the error that prevented the stop.
  virtual void kill(const RunHandle& handle, std::chrono::milliseconds grace,
                    Callback<void> done) = 0;

  /// @brief Re-attaches to a run journalled by an earlier worker process.
  ///
  /// Completes with `Recovery{running = true}` when the infrastructure still runs (the worker
  /// then calls `wait`), or with how it ended. `NotFound` means no trace of it is left.
  /// @param handle as stored in the journal.
  /// @param log the run's log.
  /// @param done receives what was found.
  virtual void recover(const RunHandle& handle, std::shared_ptr<LogSink> log,
                       Callback<Recovery> done) = 0;

  /// @brief Checks that the infrastructure can take runs (the engine answers, the cluster is
  /// reachable). The worker reports ready only once this succeeded. The default succeeds.
  virtual void check(Callback<void> done) { done(success()); }

  /// @brief Describes what `start` would create for `request`, without creating anything: the
  /// argv, environment and directory of a process, the create body of a container, the manifest
  /// of a Kubernetes Job. `poolworker render` prints it so that users see what their job
  /// variables did; compatibility tests compare it with Prefect's own workers. Synchronous and
  /// side-effect free. The default answers `Unsupported`.
  virtual Result<Json> preview(const StartRequest& request) {
    (void)request;
    return makeError(ErrorKind::Unsupported, "this backend cannot preview its infrastructure");
  }

  /// @brief Stops the backend's own background work (watches, timers) before destruction.
  /// Runs keep going; they are recovered by the next worker. The default does nothing.
  virtual void shutdown() {}
};

/// @brief Owning pointer to a backend.
using BackendPtr = std::unique_ptr<Backend>;

/// @brief Describes a backend and creates instances of it. One per backend, in the registry.
class BackendFactory {
 public:
  virtual ~BackendFactory() = default;

  /// @brief Name, version, origin and options of the backend.
  virtual BackendInfo info() const = 0;

  /// @brief The default base job template for pools of this type: an object with
  /// `job_configuration` and `variables`, the same shape Prefect's own workers produce.
  virtual Json defaultBaseJobTemplate() const = 0;

  /// @brief Creates a backend instance.
  /// @return the backend, or `InvalidConfiguration` when the options are unusable.
  virtual Result<BackendPtr> create(const BackendContext& context) = 0;
};

/// @brief Owning pointer to a backend factory.
using BackendFactoryPtr = std::unique_ptr<BackendFactory>;

}  // namespace poolworker
