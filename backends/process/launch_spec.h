#pragma once

/// @file
/// @brief Turns a process run's job configuration into what is needed to start its process:
/// argv, environment, working directory, and the program file that will be executed.

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <poolworker/json.h>
#include <poolworker/result.h>

namespace poolworker::backends::process {

/// @brief Everything needed to start one flow run's process.
struct LaunchSpec {
  std::vector<std::string> argv;  ///< The command, split; argv[0] as the user wrote it.
  std::string program;            ///< The file to execute, found from argv[0]; set by resolve.
  std::vector<std::string> env;   ///< "NAME=value" entries of the child's environment.
  std::string working_dir;        ///< Absolute working directory; empty: use a temporary one.
  bool stream_output = true;      ///< Copy the child's stdout and stderr to the run's log.
  bool default_command = false;   ///< True when argv is `<python> -m prefect.engine`.
};

/// @brief Reads a boolean the way pydantic does in lax mode.
///
/// Accepts true/false, the numbers 0 and 1, and the strings "0", "1", "true", "false", "t",
/// "f", "yes", "no", "y", "n", "on", "off" in any letter case.
/// @param value the JSON value.
/// @param field the job configuration field, for the error message.
/// @return the boolean, or `InvalidConfiguration` naming the field.
Result<bool> parseLaxBool(const Json& value, std::string_view field);

/// @brief Checks a job configuration and derives the command, environment, working directory and
/// output mode from it. Does not touch the file system except to check `working_dir`.
///
/// `command` is split like `shlex.split`; when null, missing or blank the command is
/// `<python> -m prefect.engine`. The environment is `base_env` overlaid with the configuration's
/// `env` (a null value removes the variable). A relative `working_dir` resolves against the
/// worker's current directory and must be an existing directory.
/// @param configuration the prepared job configuration (an object).
/// @param python the interpreter for the default command.
/// @param base_env the worker's own environment as "NAME=value" entries.
/// @return the spec (without `program`), or `InvalidConfiguration` naming the field.
Result<LaunchSpec> buildLaunchSpec(const Json& configuration, const std::string& python,
                                   const std::vector<std::string>& base_env);

/// @brief Finds the file `spec.argv[0]` refers to, as `execvp` would in the child: a name with
/// a slash is taken relative to the working directory, any other name is searched on the
/// child's `PATH` (default "/bin:/usr/bin"). Sets `spec.program`.
/// @param spec the spec; its `working_dir` must be set.
/// @return success, or `InvalidConfiguration` saying that the command or interpreter is missing
///   or not executable.
Result<void> resolveProgram(LaunchSpec& spec);

/// @brief Describes why the run's command could not be executed, for an `errno` from `execve`.
/// @param spec the spec that was started.
/// @param error the `errno` value.
/// @return a message such as "command './run.sh' is not executable".
std::string describeExecError(const LaunchSpec& spec, int error);

/// @brief The worker's environment (`environ`) as "NAME=value" entries.
std::vector<std::string> currentEnvironment();

/// @brief Creates a fresh private directory named like Python's
/// `tempfile.TemporaryDirectory(suffix="prefect")` under `$TMPDIR` (default `/tmp`).
/// @return its absolute path, or `InfrastructureFailed`.
Result<std::string> createTempWorkingDir();

/// @brief True when `path` looks like a directory made by `createTempWorkingDir`, so that a
/// handle read back from disk can never make the backend remove anything else.
bool isTempWorkingDirName(const std::string& path);

}  // namespace poolworker::backends::process
