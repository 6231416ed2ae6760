#pragma once

/// @file
/// @brief The Docker job configuration: the prepared `configuration` of a run, checked and
/// typed, with the defaults of prefect-docker's `DockerWorkerJobConfiguration`.

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <poolworker/json.h>
#include <poolworker/result.h>

#include "backends/docker/image_ref.h"

namespace poolworker::backends::docker {

/// @brief The image used when the configuration names none, as Prefect's worker does
/// (`prefecthq/prefect:<prefect version>-python<version>`).
inline constexpr char kDefaultImage[] = "prefecthq/prefect:3.8.8-python3.12";

/// @brief The Prefect version written in the `io.prefect.version` label.
inline constexpr char kPrefectVersion[] = "3.8.8";

/// @brief The command run when the configuration has none.
inline constexpr char kDefaultCommand[] = "prefect flow-run execute";

/// @brief One run's Docker job configuration.
struct DockerJob {
  std::optional<std::string> command;  ///< Shell-like command line; nullopt: the default.
  Json env = Json::object();           ///< Environment, an object of strings (or nulls).
  Json labels = Json::object();        ///< Labels, an object of strings, `prefect.io/*` style.
  std::optional<std::string> name;     ///< Container name before slugifying.
  std::string image = kDefaultImage;   ///< Image reference.
  std::optional<RegistryCredentials> registry_credentials;  ///< For pulls.
  std::optional<PullPolicy> image_pull_policy;              ///< nullopt: from the tag.
  std::vector<std::string> networks;                        ///< Networks to attach.
  std::optional<std::string> network_mode;                  ///< e.g. "host", "bridge".
  bool auto_remove = false;                                 ///< HostConfig.AutoRemove.
  std::vector<std::string> volumes;   ///< Checked volume strings, relative sources resolved.
  bool stream_output = true;          ///< Copy the container's output to the run's log sink.
  std::optional<Json> mem_limit;      ///< As given (string or integer).
  std::optional<Json> memswap_limit;  ///< As given (string or integer).
  bool privileged = false;            ///< HostConfig.Privileged.
  Json container_create_kwargs = Json::object();  ///< docker-py keyword arguments.
};

/// @brief Reads a prepared job configuration. Unknown keys are ignored, as Prefect ignores
/// them; known keys of the wrong type are errors naming the key.
/// @param configuration the run's configuration.
/// @param base directory that explicit relative bind sources are resolved against.
/// @return the job, or `InvalidConfiguration`.
Result<DockerJob> parseJobConfiguration(const Json& configuration,
                                        const std::filesystem::path& base);

}  // namespace poolworker::backends::docker
