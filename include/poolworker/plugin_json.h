#pragma once

/// @file
/// @brief The JSON forms of the plain types of `run.h` and `backend.h`, and the mapping between
/// `ErrorKind` and the C ABI's `poolworker_status`, as both sides of a plugin boundary use them.
///
/// The shapes are those listed in `plugin.h` and `docs/plugins.md`; the executable plugin
/// protocol uses the same ones. Every reader checks types and says what is wrong, so that a
/// plugin's malformed answer becomes a clear error rather than an exception.

#include <optional>
#include <string>

#include <poolworker/backend.h>
#include <poolworker/json.h>
#include <poolworker/plugin.h>
#include <poolworker/result.h>
#include <poolworker/run.h>

namespace poolworker::plugin {

/// @brief The C status of an error kind.
inline poolworker_status statusOf(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::Transient:
      return POOLWORKER_ERR_TRANSIENT;
    case ErrorKind::InfrastructureFailed:
      return POOLWORKER_ERR_INFRASTRUCTURE;
    case ErrorKind::RunFailed:
      return POOLWORKER_ERR_RUN_FAILED;
    case ErrorKind::InvalidConfiguration:
      return POOLWORKER_ERR_INVALID_CONFIGURATION;
    case ErrorKind::NotFound:
      return POOLWORKER_ERR_NOT_FOUND;
    case ErrorKind::Unauthorized:
      return POOLWORKER_ERR_UNAUTHORIZED;
    case ErrorKind::Unsupported:
      return POOLWORKER_ERR_UNSUPPORTED;
    case ErrorKind::Cancelled:
      return POOLWORKER_ERR_CANCELLED;
    case ErrorKind::Internal:
      return POOLWORKER_ERR_INTERNAL;
  }
  return POOLWORKER_ERR_INTERNAL;
}

/// @brief The error kind of a C status; unknown values (from a newer or buggy plugin) are
/// `Internal`. Only meaningful for a status other than `POOLWORKER_OK`.
inline ErrorKind kindOf(poolworker_status status) {
  switch (status) {
    case POOLWORKER_ERR_TRANSIENT:
      return ErrorKind::Transient;
    case POOLWORKER_ERR_INFRASTRUCTURE:
      return ErrorKind::InfrastructureFailed;
    case POOLWORKER_ERR_RUN_FAILED:
      return ErrorKind::RunFailed;
    case POOLWORKER_ERR_INVALID_CONFIGURATION:
      return ErrorKind::InvalidConfiguration;
    case POOLWORKER_ERR_NOT_FOUND:
      return ErrorKind::NotFound;
    case POOLWORKER_ERR_UNAUTHORIZED:
      return ErrorKind::Unauthorized;
    case POOLWORKER_ERR_UNSUPPORTED:
      return ErrorKind::Unsupported;
    case POOLWORKER_ERR_CANCELLED:
      return ErrorKind::Cancelled;
    default:
      return ErrorKind::Internal;
  }
}

/// @brief Parses `text` as a JSON object; `what` names it in the error.
inline Result<Json> parseObject(std::string_view text, const std::string& what) {
  Json parsed = Json::parse(text.begin(), text.end(), nullptr, false);
  if (parsed.is_discarded()) {
    return makeError(ErrorKind::Internal, what + " is not valid JSON");
  }
  if (!parsed.is_object()) {
    return makeError(ErrorKind::Internal,
                     what + " must be a JSON object, not " + std::string(parsed.type_name()));
  }
  return parsed;
}

namespace detail {
inline std::string stringField(const Json& object, const char* key) {
  auto it = object.find(key);
  return it != object.end() && it->is_string() ? it->get<std::string>() : std::string();
}

inline Result<std::optional<int>> exitCodeField(const Json& object, const std::string& what) {
  auto it = object.find("exit_code");
  if (it == object.end() || it->is_null()) {
    return std::optional<int>();
  }
  if (!it->is_number_integer()) {
    return makeError(ErrorKind::Internal, what + ": 'exit_code' must be an integer or null");
  }
  return std::optional<int>(it->get<int>());
}
}  // namespace detail

/// @brief {"flow_run_id": ..., ...}: every field of `RunContext`.
inline Json toJson(const RunContext& run) {
  return Json{{"flow_run_id", run.flow_run_id},
              {"flow_run_name", run.flow_run_name},
              {"flow_id", run.flow_id},
              {"flow_name", run.flow_name},
              {"deployment_id", run.deployment_id},
              {"deployment_name", run.deployment_name},
              {"work_pool_name", run.work_pool_name},
              {"work_pool_id", run.work_pool_id},
              {"worker_name", run.worker_name},
              {"api_url", run.api_url}};
}

/// @brief Reads a `RunContext`; missing fields are empty.
inline RunContext runContextFromJson(const Json& json) {
  RunContext run;
  if (!json.is_object()) {
    return run;
  }
  run.flow_run_id = detail::stringField(json, "flow_run_id");
  run.flow_run_name = detail::stringField(json, "flow_run_name");
  run.flow_id = detail::stringField(json, "flow_id");
  run.flow_name = detail::stringField(json, "flow_name");
  run.deployment_id = detail::stringField(json, "deployment_id");
  run.deployment_name = detail::stringField(json, "deployment_name");
  run.work_pool_name = detail::stringField(json, "work_pool_name");
  run.work_pool_id = detail::stringField(json, "work_pool_id");
  run.worker_name = detail::stringField(json, "worker_name");
  run.api_url = detail::stringField(json, "api_url");
  return run;
}

/// @brief {"run": {...}, "configuration": {...}}.
inline Json toJson(const StartRequest& request) {
  return Json{{"run", toJson(request.run)}, {"configuration", request.configuration}};
}

/// @brief Reads a start request.
inline Result<StartRequest> startRequestFromJson(const Json& json) {
  StartRequest request;
  request.run = runContextFromJson(json.value("run", Json::object()));
  auto it = json.find("configuration");
  if (it == json.end() || !it->is_object()) {
    return makeError(ErrorKind::InvalidConfiguration, "the request has no 'configuration' object");
  }
  request.configuration = *it;
  return request;
}

/// @brief {"backend": ..., "infrastructure_pid": ..., "data": {...}}.
inline Json toJson(const RunHandle& handle) {
  return Json{{"backend", handle.backend},
              {"infrastructure_pid", handle.infrastructure_pid},
              {"data", handle.data}};
}

/// @brief Reads a handle; `what` names its source in errors.
inline Result<RunHandle> runHandleFromJson(const Json& json, const std::string& what) {
  RunHandle handle;
  handle.backend = detail::stringField(json, "backend");
  auto pid = json.find("infrastructure_pid");
  if (pid == json.end() || !pid->is_string() || pid->get<std::string>().empty()) {
    return makeError(ErrorKind::Internal,
                     what + ": 'infrastructure_pid' must be a non-empty string");
  }
  handle.infrastructure_pid = pid->get<std::string>();
  if (auto data = json.find("data"); data != json.end() && !data->is_null()) {
    handle.data = *data;
  }
  return handle;
}

/// @brief {"exit_code": n or null, "detail": ...}.
inline Json toJson(const Outcome& outcome) {
  return Json{{"exit_code", outcome.exit_code ? Json(*outcome.exit_code) : Json()},
              {"detail", outcome.detail}};
}

/// @brief Reads an outcome.
inline Result<Outcome> outcomeFromJson(const Json& json, const std::string& what) {
  auto code = detail::exitCodeField(json, what);
  if (!code) {
    return std::move(code).error();
  }
  Outcome outcome;
  outcome.exit_code = *code;
  outcome.detail = detail::stringField(json, "detail");
  return outcome;
}

/// @brief {"running": bool, "exit_code": ..., "detail": ...}.
inline Json toJson(const Recovery& recovery) {
  Json out = toJson(recovery.outcome);
  out["running"] = recovery.running;
  return out;
}

/// @brief Reads a recovery answer.
inline Result<Recovery> recoveryFromJson(const Json& json, const std::string& what) {
  auto running = json.find("running");
  if (running == json.end() || !running->is_boolean()) {
    return makeError(ErrorKind::Internal, what + ": 'running' must be true or false");
  }
  Recovery recovery;
  recovery.running = running->get<bool>();
  if (!recovery.running) {
    auto outcome = outcomeFromJson(json, what);
    if (!outcome) {
      return std::move(outcome).error();
    }
    recovery.outcome = std::move(outcome).value();
  }
  return recovery;
}

/// @brief [{"key", "type", "default", "description"}, ...].
inline Json toJson(const std::vector<OptionSpec>& options) {
  Json out = Json::array();
  for (const auto& option : options) {
    out.push_back(Json{{"key", option.key},
                       {"type", option.type},
                       {"default", option.default_value},
                       {"description", option.description}});
  }
  return out;
}

/// @brief Reads option specs; `what` names their source in errors.
inline Result<std::vector<OptionSpec>> optionsFromJson(const Json& json, const std::string& what) {
  std::vector<OptionSpec> out;
  if (json.is_null()) {
    return out;
  }
  if (!json.is_array()) {
    return makeError(ErrorKind::InvalidConfiguration, what + ": options must be a JSON array");
  }
  for (const auto& item : json) {
    if (!item.is_object() || !item.contains("key") || !item["key"].is_string()) {
      return makeError(ErrorKind::InvalidConfiguration,
                       what + ": each option must be an object with a string 'key'");
    }
    OptionSpec spec;
    spec.key = item["key"].get<std::string>();
    spec.type = detail::stringField(item, "type");
    spec.default_value = item.value("default", Json());
    spec.description = detail::stringField(item, "description");
    out.push_back(std::move(spec));
  }
  return out;
}

}  // namespace poolworker::plugin
