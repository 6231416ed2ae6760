#pragma once

/// @file
/// @brief Where a backend writes what a user should read about a run.

#include <string_view>

namespace poolworker {

/// @brief Severity of a message about a run.
enum class LogLevel { Debug, Info, Warning, Error };

/// @brief The log of one run, or of the worker when no run is concerned.
///
/// Messages given to `log` reach the worker's own log tagged with the run's id, and the run's
/// logs in Prefect (logger `prefect.flow_runs.worker`), where a user looks when a run crashed.
/// `output` carries the infrastructure's own output (a process's stdout and stderr, a
/// container's logs) when the job configuration asks for `stream_output`; it is copied to the
/// worker's stdout and stderr, as Prefect's workers do.
///
/// Thread-safety: both methods may be called from any thread.
class LogSink {
 public:
  virtual ~LogSink() = default;

  /// @brief Records a message about the run. It must not contain secrets.
  virtual void log(LogLevel level, std::string_view message) = 0;

  /// @brief Copies a chunk of the infrastructure's output. Chunks need not be whole lines.
  /// @param chunk bytes as produced; invalid UTF-8 is tolerated.
  /// @param is_stderr true for the error stream.
  virtual void output(std::string_view chunk, bool is_stderr) = 0;
};

}  // namespace poolworker
