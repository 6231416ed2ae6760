#pragma once

// One call of an executable plugin: `<exe> <command>` with a JSON request on stdin, run on the
// worker's event loop without blocking it, under a deadline.

#include <chrono>
#include <functional>
#include <optional>
#include <string>

namespace boost::asio {
class io_context;
}  // namespace boost::asio

namespace poolworker::backends::plugins {

/// @brief How a call ended.
struct CallResult {
  std::optional<int> exit_code;  ///< Set when the program exited by itself.
  int signal = 0;                ///< The signal that ended it, else 0.
  bool timed_out = false;        ///< Killed by poolworker because the deadline passed.
  std::string spawn_error;       ///< Non-empty when the program could not be started at all.
  std::string out;               ///< Everything it wrote to stdout.
  std::string last_stderr;       ///< Its last non-empty stderr line, for error messages.
};

/// @brief Runs `program command` with `input` on stdin. Each stderr line goes to `on_stderr`
/// as it arrives. After `deadline` the program's process group is killed (SIGKILL) and the
/// result says `timed_out`. `done` is called once, on `io`'s thread.
///
/// The program runs in a session of its own, so that a hung plugin and whatever it started in
/// its group can be killed together; a plugin that must start something that outlives the call
/// (a flow process) starts it in a session of its own. A result is delivered once the program
/// has exited and its stdout is closed, or shortly after its exit when a descendant keeps
/// stdout open.
void runPluginCall(boost::asio::io_context& io, const std::string& program,
                   const std::string& command, std::string input,
                   std::chrono::milliseconds deadline,
                   std::function<void(std::string_view line)> on_stderr,
                   std::function<void(CallResult)> done);

/// @brief The same, blocking until the result is there (for start-up and the CLI), on a
/// private event loop.
CallResult runPluginCallSync(const std::string& program, const std::string& command,
                             std::string input, std::chrono::milliseconds deadline,
                             std::function<void(std::string_view line)> on_stderr = {});

}  // namespace poolworker::backends::plugins
