#pragma once

// The deployment file of `poolworker serve`: what it holds, how it is read and checked, and the
// bodies sent to Prefect's API for it. Everything here is checked before anything is registered,
// so that a typo never leaves half of a file's deployments registered.

#include <optional>
#include <string>
#include <vector>

#include <poolworker/json.h>
#include <poolworker/result.h>

namespace poolworker::serve {

/// @brief One schedule of a deployment, as Prefect's `DeploymentScheduleCreate`.
struct ScheduleSpec {
  /// The schedule object: `{"interval", "anchor_date", "timezone"}`,
  /// `{"cron", "timezone", "day_or"}` or `{"rrule", "timezone"}`.
  Json schedule;
  bool active = true;
  Json parameters = Json::object();  ///< Parameters this schedule's runs get on top.
  std::optional<std::string> slug;
};

/// @brief How a deployment's runs are started on this machine.
struct JobSpec {
  Json env = Json::object();  ///< Extra environment; a null value removes a variable.
  std::string command;        ///< Whole command; empty: `<python> -m prefect.engine`.
  std::string python;         ///< Interpreter of the default command; empty: the backend's.
};

/// @brief One deployment of the file.
struct DeploymentSpec {
  std::string name;
  std::string flow_name;    ///< From the file, else `@flow(name=...)`, else the function.
  std::string entrypoint;   ///< `path/file.py:function`, relative to `working_dir`.
  std::string working_dir;  ///< Absolute.
  std::string description;  ///< Empty: none (null).
  std::string version;      ///< Empty: none (null).
  std::vector<std::string> tags;
  Json parameters = Json::object();
  Json parameter_openapi_schema;  ///< From the file, else derived from the function's signature.
  bool enforce_parameter_schema = true;
  std::optional<int> concurrency_limit;
  Json concurrency_options;  ///< `{"collision_strategy", "grace_period_seconds"}` or null.
  std::vector<ScheduleSpec> schedules;
  JobSpec job;
  int line = 0;  ///< Where it starts in the file (1-based), for messages.
};

/// @brief The whole file.
struct ServeFile {
  std::string path;
  std::string name;  ///< Runner name; empty: derived from the file name.
  std::optional<bool> pause_on_shutdown;
  std::optional<int> limit;
  std::vector<DeploymentSpec> deployments;
};

/// @brief Where the checks look things up (injectable for tests).
struct CheckEnvironment {
  /// The time zone database; `$TZDIR` or /usr/share/zoneinfo by default.
  std::string zoneinfo_dir;
};

/// @brief The default check environment of this machine.
CheckEnvironment defaultCheckEnvironment();

/// @brief Reads and checks a deployment file. Every error is `InvalidConfiguration` and names
/// the file, the line and the key (or the deployment) at fault.
Result<ServeFile> loadServeFile(const std::string& path, const CheckEnvironment& env);

/// @brief Parses and checks YAML text as if read from `path` (relative paths resolve against
/// `path`'s folder).
Result<ServeFile> parseServeFile(const std::string& text, const std::string& path,
                                 const CheckEnvironment& env);

/// @brief Checks a cron string as Prefect's `CronSchedule` accepts it: five fields (or six,
/// the last being seconds) of numbers, names, `*`, ranges, steps and lists, `L` in the day of
/// the month, `L` and `#` in the day of the week, or one of `@yearly`, `@annually`,
/// `@monthly`, `@weekly`, `@daily`, `@midnight`, `@hourly`. Random and hashed expressions
/// (`R`, `H`) are refused as Prefect refuses them.
/// @return an empty string when valid, else what is wrong.
std::string checkCron(const std::string& cron);

/// @brief Checks an RFC 5545 recurrence rule in the form Prefect's `RRuleSchedule` takes:
/// an `RRULE:`/`DTSTART`/`EXDATE`/`RDATE`/`EXRULE` line set or a bare `FREQ=...` rule, each
/// rule with a valid FREQ and known parts, at most 6500 characters.
/// @return an empty string when valid, else what is wrong.
std::string checkRrule(const std::string& rrule);

/// @brief True when `name` is a time zone of the database in `zoneinfo_dir` (a TZif file).
bool timezoneExists(const std::string& name, const std::string& zoneinfo_dir);

/// @brief True when `text` is an ISO 8601 date-time Prefect parses (`2026-01-01T00:00:00`,
/// optionally with fractional seconds and `Z` or an offset; a space may replace the `T`).
bool isIsoDateTime(const std::string& text);

/// @brief What a plain text read of a Python file tells about one of its functions.
struct FunctionInfo {
  bool found = false;
  std::string flow_name;  ///< `name=` of an `@flow(...)` decorator, if any.
  Json parameter_schema;  ///< Prefect's parameter schema for the signature.
};

/// @brief Finds `def function(` (or `async def`) at the top level of Python source, reads the
/// `@flow(name=...)` decorator above it and derives Prefect's parameter schema from the
/// signature: names, positions, literal defaults, and JSON types for the annotations `int`,
/// `float`, `str`, `bool`, `list`, `dict` (and their `list[...]`/`dict[...]` forms). This is
/// a text check, not Python: other annotations get no type, and defaults that are not
/// literals are left out.
FunctionInfo inspectFunction(const std::string& source, const std::string& function);

/// @brief The schedule list of a deployment body (`DeploymentScheduleCreate` objects).
Json schedulesJson(const DeploymentSpec& spec);

/// @brief The body of `POST /deployments/` for a deployment, as `flow.serve` sends it: no work
/// pool, no job variables, not paused.
Json deploymentBody(const DeploymentSpec& spec, const std::string& flow_id);

/// @brief The job variables a run of this deployment starts with (process backend): its
/// working directory, environment, and command.
Json jobVariables(const DeploymentSpec& spec);

}  // namespace poolworker::serve
