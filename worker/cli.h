#pragma once

// The command line of poolworker: `start` (the drop-in for `prefect worker start`), `serve`
// (the equivalent of `flow.serve`), `template`,
// `render`, `backends`, `--help` and `--version`.

#include <optional>
#include <string>
#include <vector>

#include <poolworker/result.h>

#include "worker/settings.h"

namespace poolworker::cli {

/// @brief What the command line asked for.
struct Command {
  std::string name;             ///< "start", "template", "render", "backends", "help", "version".
  StartFlags start;             ///< Flags of `start` (and the shared ones of `render`).
  std::string type;             ///< `template --type`.
  std::string deployment;       ///< `render --deployment` (flow/deployment or id).
  std::string flow_run;         ///< `render --flow-run`.
  std::string job_variables;    ///< `render --job-variables` (JSON).
  bool infrastructure = false;  ///< `render --infrastructure`: the backend's preview instead.
  std::string help_topic;       ///< Command whose help was asked for ("" = overview).
  std::string serve_file;       ///< `serve FILE`: the deployment file.
  bool no_pause_on_shutdown = false;         ///< `serve --no-pause-on-shutdown`.
  std::optional<std::string> query_seconds;  ///< `serve --query-seconds`.
};

/// @brief Parses argv (without the program name). Errors are usage errors with a message.
Result<Command> parse(const std::vector<std::string>& args);

/// @brief The help text of a command ("" for the overview).
std::string helpText(const std::string& command);

/// @brief Runs poolworker; returns the process exit code.
int main(int argc, char** argv);

}  // namespace poolworker::cli
