#pragma once

/// @file
/// @brief `container_create_kwargs`: docker-py keyword arguments of `containers.create`,
/// translated to the Engine API's JSON the way docker-py would send them.

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <poolworker/json.h>
#include <poolworker/result.h>

namespace poolworker::backends::docker {

/// @brief What `container_create_kwargs` adds to a create body.
struct TranslatedKwargs {
  Json config = Json::object();       ///< Top-level fields, Engine names (`User`, `Entrypoint`).
  Json host_config = Json::object();  ///< `HostConfig` fields, Engine names (`ShmSize`).
  std::optional<Json> extra_hosts;    ///< `extra_hosts` as given (a list or an object).
  std::optional<Json> networking_config;  ///< `networking_config` as given.
  std::optional<std::string> platform;    ///< `platform`, sent in the query string.
  bool detach = false;                    ///< `detach`: nothing is attached.
  bool stdin_open = false;                ///< `stdin_open`.
  bool tty = false;                       ///< `tty`: the output is a raw stream.
  std::vector<std::string> warnings;      ///< Things the user should hear about.
};

/// @brief Translates `container_create_kwargs`.
///
/// Keys named like a job variable (`image`, `command`, `env`, `volumes`, ...) are dropped, as
/// Prefect drops them (`volumes` with a warning). `environment`, `network` and `version`
/// collide with what the worker passes itself and are errors. Every key of docker-py's
/// `RUN_CREATE_KWARGS` and `RUN_HOST_CONFIG_KWARGS` is understood, plus `ports`,
/// `networking_config`, `platform` and `extra_hosts`; any other key is an error, as docker-py
/// raises on it. Values are converted as docker-py converts them (sizes, devices, ulimits,
/// healthchecks, port bindings, ...), and options the API version does not know are errors.
/// @param kwargs an object.
/// @param api_version the Engine API version the body is for.
/// @return the translated fields, or `InvalidConfiguration` naming the key.
Result<TranslatedKwargs> translateCreateKwargs(const Json& kwargs, std::string_view api_version);

/// @brief Every key `translateCreateKwargs` accepts (for documentation and tests).
std::vector<std::string> supportedCreateKwargs();

}  // namespace poolworker::backends::docker
