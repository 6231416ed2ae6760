#pragma once

/// @file
/// @brief The process backend: each flow run is a local process, started under the
/// `poolworker-run` shim in a session of its own so that it outlives the worker.

#include <chrono>
#include <memory>
#include <string>

#include <poolworker/backend.h>

namespace boost::asio {
class io_context;
}  // namespace boost::asio

namespace poolworker::backends::process {

/// @brief Settings of one process backend instance, from its options and context.
struct ProcessBackendSettings {
  std::string python = "python3";  ///< Interpreter of the default command, looked up on PATH.
  std::string shim_path;           ///< Absolute path of the `poolworker-run` program.
  std::string state_directory;     ///< Where the runs' status files are kept.
};

/// @brief Where `poolworker-run` is expected: beside the running executable, else in
/// `../libexec/poolworker/` relative to it.
/// @return the first of the two that exists, else the first.
std::string defaultShimPath();

/// @brief Runs flow runs as local processes.
///
/// Each run is a `poolworker-run` shim, leader of its own session and process group, which runs
/// the command in that group, forwards its output and records its exit status in a file under
/// the state directory. The handle's `infrastructure_pid` is "<hostname>:<shim pid>"; its data
/// holds the pid, the pid's start time and the boot id, so that a later worker re-finds the run
/// and never signals a process that merely reuses the pid.
///
/// Exits are watched through pidfds on the event loop: no thread and no timer per run. Blocking
/// file removals (temporary working directories) run on one helper thread.
class ProcessBackend final : public Backend {
 public:
  /// @brief Creates a backend.
  /// @param io the event loop that runs the backend's watches; outlives the backend.
  /// @param executor the worker's executor on that loop (for timers); outlives the backend.
  /// @param settings the resolved settings.
  ProcessBackend(boost::asio::io_context& io, Executor& executor, ProcessBackendSettings settings);
  ~ProcessBackend() override;
  ProcessBackend(const ProcessBackend&) = delete;
  ProcessBackend& operator=(const ProcessBackend&) = delete;

  void start(const StartRequest& request, std::shared_ptr<LogSink> log,
             Callback<RunHandle> done) override;
  void wait(const RunHandle& handle, std::shared_ptr<LogSink> log, Callback<Outcome> done) override;
  void kill(const RunHandle& handle, std::chrono::milliseconds grace, Callback<void> done) override;
  void recover(const RunHandle& handle, std::shared_ptr<LogSink> log,
               Callback<Recovery> done) override;
  void check(Callback<void> done) override;

  /// @brief What `start` would run, as {"argv": [...], "env": {...}, "working_dir": path or
  /// null (a fresh temporary directory), "stream_output": bool}. `env` holds only what the job
  /// configuration sets: the process also inherits the worker's own environment. Values are not
  /// redacted; the caller hides secrets before printing.
  Result<Json> preview(const StartRequest& request) override;

  void shutdown() override;

 private:
  class Core;
  std::shared_ptr<Core> core_;
};

}  // namespace poolworker::backends::process
