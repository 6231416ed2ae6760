#pragma once

// Out-of-process backends: any executable in a plugin directory that follows the protocol of
// docs/plugins.md ("Executable plugins"). poolworker runs `<exe> info` once when it loads the
// plugin, then one short-lived `<exe> <command>` per call, with a JSON request on stdin and a
// JSON answer on stdout, under a deadline. A plugin that crashes or hangs fails the call (and
// so the run), never the worker.

#include <chrono>
#include <string>

#include <poolworker/backend.h>

namespace boost::asio {
class io_context;
}  // namespace boost::asio

namespace poolworker::backends::plugins {

/// @brief Version of the executable plugin protocol this poolworker speaks.
inline constexpr int kExecutableProtocolVersion = 1;

/// @brief Exit codes of an executable plugin, and what they mean. Any other code, a death by
/// signal, a missing or invalid answer, or a missed deadline is a bug in the plugin.
namespace exit_code {
inline constexpr int kOk = 0;
inline constexpr int kRunFailed = 80;
inline constexpr int kInfrastructureFailed = 81;
inline constexpr int kInvalidConfiguration = 82;
inline constexpr int kTransient = 83;
inline constexpr int kNotFound = 84;
inline constexpr int kUnsupported = 85;
}  // namespace exit_code

/// @brief Options every executable plugin accepts besides its own.
inline constexpr char kCallTimeoutOption[] = "call_timeout_seconds";
inline constexpr char kPollIntervalOption[] = "poll_interval_seconds";

/// @brief Runs `<path> info`, checks the answer and returns a factory for the plugin.
/// @param io the event loop its calls will run on.
/// @param info_timeout how long `info` may take.
/// @return the factory, or an error saying why the plugin is refused.
Result<BackendFactoryPtr> loadExecutablePlugin(boost::asio::io_context& io, const std::string& path,
                                               std::chrono::milliseconds info_timeout);

}  // namespace poolworker::backends::plugins
